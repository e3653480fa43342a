#!/usr/bin/env bash
# The README's test command: set up on first use, then run the whole suite inside a private
# network namespace (nothing the tests send can leave the machine). Extra arguments go to
# pytest. Under CI (CI set) nothing may be skipped: no namespace is a failure.
#
# The namespace also gets its own mount namespace with a private /run/netns, so the named
# namespaces of tests/netns.py's Lan never show up on the host and die with the run even
# if a test is killed before it could delete them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

export KIVY_NO_ARGS=1 KIVY_NO_CONSOLELOG=1 KIVY_NO_FILELOG=1
if [[ -z ${KIVY_HOME:-} ]]; then
    KIVY_HOME="$(mktemp -d "${TMPDIR:-/tmp}/p2pboard-kivy.XXXXXX")"
    trap 'rm -rf "$KIVY_HOME"' EXIT
fi
export KIVY_HOME
export PYTHONDONTWRITEBYTECODE=1

inner='set -e
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
mkdir -p /run/netns 2>/dev/null && mount -t tmpfs -o mode=0755 p2pboard-netns /run/netns 2>/dev/null || true
export P2PBOARD_IN_NETNS=1
set +e
"$0" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "scripts/test.sh: no tests were collected" >&2; rc=1; fi
exit $rc'

PY="$ROOT/.venv/bin/python"
set +e
if [[ $(id -u) == 0 ]] && unshare -n -m true 2>/dev/null; then
    unshare -n -m -- bash -c "$inner" "$PY" "$@"
    exit $?
elif unshare -rn -m true 2>/dev/null; then
    unshare -rn -m -- bash -c "$inner" "$PY" "$@"
    exit $?
elif [[ -n ${CI:-} ]]; then
    echo "scripts/test.sh: cannot create a network namespace (need root or unprivileged user" \
        "namespaces); under CI nothing may be skipped" >&2
    exit 1
else
    echo "scripts/test.sh: no network namespace available: the tests that open sockets" \
        "will be skipped" >&2
    "$PY" -m pytest "$@"
    rc=$?
    if [[ $rc -eq 5 ]]; then echo "scripts/test.sh: no tests were collected" >&2; rc=1; fi
    exit $rc
fi
