#!/usr/bin/env bash
# First-use setup, idempotent: a virtual environment in .venv with p2pboard and its extras,
# and (as root, only when missing) the Debian tools the tests use: ip, nft, Xvfb, xdotool.
# Quiet when there is nothing to do. Sourced or run by scripts/run.sh and scripts/test.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.p2pboard-stamp"
EXTRAS="${P2PBOARD_EXTRAS:-ui,test,secure,bench}"

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
if [[ ! -x $VENV/bin/python ]]; then
    say "creating a virtual environment in .venv"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
            ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            say "installing python$ver-venv (apt)"
            apt-get update -qq >/dev/null
            apt-get install -y -qq "python$ver-venv" >/dev/null || apt-get install -y -qq python3-venv >/dev/null
            "$PY" -m venv "$VENV" || die "cannot create a virtual environment"
        else
            die "cannot create a virtual environment: install python3-venv"
        fi
    fi
fi

want="$(cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16) $EXTRAS"
if [[ ! -f $STAMP || "$(cat "$STAMP")" != "$want" ]]; then
    say "installing p2pboard and its dependencies into .venv (first use; a minute or two)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel \
        || die "pip could not upgrade itself (no access to the package index?)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$EXTRAS]" \
        || die "pip install -e .[$EXTRAS] failed"
    echo "$want" > "$STAMP"
fi
