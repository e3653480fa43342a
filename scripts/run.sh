#!/usr/bin/env bash
# The README's run command: set up on first use, then start p2pboard with the given flags.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
P2PBOARD_SYSTEM_TOOLS=0 P2PBOARD_EXTRAS="${P2PBOARD_EXTRAS:-ui,secure}" bash "$ROOT/scripts/setup.sh"
export KIVY_NO_ARGS=1 KIVY_NO_CONSOLELOG=${KIVY_NO_CONSOLELOG:-1}
exec "$ROOT/.venv/bin/python" -m p2pboard "$@"
