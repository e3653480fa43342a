#!/usr/bin/env bash
# The README's test command: set up on first use, then run the whole suite inside a private
# network namespace (nothing the tests send can leave the machine). Extra arguments go to
# pytest. Under CI (CI set) nothing may be skipped: no namespace is a failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh

export KIVY_NO_ARGS=1 KIVY_NO_CONSOLELOG=1 KIVY_NO_FILELOG=1
export KIVY_HOME="${KIVY_HOME:-$(mktemp -d)}"
export PYTHONDONTWRITEBYTECODE=1

inner='set -e
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
export P2PBOARD_IN_NETNS=1
set +e
"$0" -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "no tests were collected" >&2; rc=1; fi
exit $rc'

PY="$ROOT/.venv/bin/python"
if [[ $(id -u) == 0 ]] && unshare -n true 2>/dev/null; then
    exec unshare -n -- bash -c "$inner" "$PY" "$@"
elif unshare -rn true 2>/dev/null; then
    exec unshare -rn -- bash -c "$inner" "$PY" "$@"
elif [[ -n ${CI:-} ]]; then
    echo "scripts/test.sh: cannot create a network namespace (need root or unprivileged user namespaces); under CI nothing may be skipped" >&2
    exit 1
else
    echo "scripts/test.sh: no network namespace available: the tests that open sockets will be skipped" >&2
    set +e
    "$PY" -m pytest "$@"
    rc=$?
    [[ $rc -eq 5 ]] && rc=1
    exit $rc
fi
