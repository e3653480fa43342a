#!/usr/bin/env bash
# First-use setup, idempotent: a virtual environment in .venv with p2pboard and its extras,
# and (as root, only when missing) the Debian tools the tests use: ip, nft, Xvfb, xdotool.
# Quiet when there is nothing to do. Sourced or run by scripts/run.sh and scripts/test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.p2pboard-stamp"
EXTRAS="${P2PBOARD_EXTRAS:-ui,test,secure,bench,fuzz}"

say() { echo "p2pboard setup: $*" >&2; }
die() { say "$*"; exit 1; }

# --- system tools (root only; others get a hint from the tests that need them)
want_tools=${P2PBOARD_SYSTEM_TOOLS:-1}
if [[ $want_tools == 1 && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    pkgs=()
    command -v ip >/dev/null || pkgs+=(iproute2)
    command -v nft >/dev/null || pkgs+=(nftables)
    command -v Xvfb >/dev/null || pkgs+=(xvfb libgl1 libgl1-mesa-dri)
    command -v xdotool >/dev/null || pkgs+=(xdotool)
    command -v unshare >/dev/null || pkgs+=(util-linux)
    if ((${#pkgs[@]})); then
        say "installing ${pkgs[*]} (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
            || die "apt-get install ${pkgs[*]} failed"
    fi
fi

# --- Python 3.11 or newer
PY=""
for cand in python3.13 python3.12 python3.11 python3; do
    if command -v "$cand" >/dev/null &&
        "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PY="$cand"; break
    fi
done
[[ -n $PY ]] || die "p2pboard needs Python 3.11 or newer (python3 --version says: $(python3 --version 2>&1))"

# --- the virtual environment
if [[ -e $VENV ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
    die ".venv exists but .venv/bin/python does not run (moved, or made by another user or Python?); delete .venv and run this again"
fi
if [[ ! -e $VENV ]]; then
    say "creating a virtual environment in .venv with $PY"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"  # only what this run just created
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            say "installing python$ver-venv (apt)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >/dev/null || die "apt-get update failed"
            apt-get install -y -qq "python$ver-venv" >/dev/null 2>&1 \
                || apt-get install -y -qq python3-venv >/dev/null \
                || die "apt-get install python3-venv failed"
            "$PY" -m venv "$VENV" || { rm -rf "$VENV"; die "cannot create a virtual environment with $PY"; }
        else
            die "cannot create a virtual environment with $PY: install python3-venv (Debian/Ubuntu) and run this again"
        fi
    fi
    rm -f "$STAMP"
fi

# Reinstall when the metadata changes (a hash, so a touch alone does not count) or extras
# not installed yet are asked for (run.sh asks for fewer than test.sh: no reinstall then).
hash="$(sha256sum < "$ROOT/setup.cfg" | cut -c1-16)"
have_hash="" have_extras=""
[[ -f $STAMP ]] && read -r have_hash have_extras < "$STAMP" || true
missing=""
for e in ${EXTRAS//,/ }; do
    [[ ",$have_extras," == *",$e,"* ]] || missing="$missing $e"
done
if [[ $have_hash != "$hash" || -n $missing ]]; then
    if [[ $have_hash == "$hash" ]]; then  # keep what is installed, add what is missing
        all=""
        for e in ${have_extras//,/ } ${EXTRAS//,/ }; do
            [[ ",$all," == *",$e,"* ]] || all="${all:+$all,}$e"
        done
        EXTRAS=$all
    fi
    want="$hash $EXTRAS"
    say "installing p2pboard and its dependencies into .venv (first use; a minute or two)"
    log="$(mktemp "${TMPDIR:-/tmp}/p2pboard-pip.XXXXXX")"
    pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; }
    pip install -q --upgrade pip setuptools wheel \
        || { cat "$log" >&2; rm -f "$log"; die "pip could not upgrade itself (no access to the package index?); its output is above"; }
    pip install -q -e "$ROOT[$EXTRAS]" \
        || { cat "$log" >&2; rm -f "$log"; die "pip install -e .[$EXTRAS] failed; its output is above"; }
    rm -f "$log"
    echo "$want" > "$STAMP"
fi
