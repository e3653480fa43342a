"""The comparison benchmark's smoke test: ``scripts/bench.py compare --quick`` runs every
system (p2pboard, TCP relay, ZeroMQ, plain multicast, the bare socket) on a simulated LAN
and each one that can converge does. Speed is not asserted here (docs/BENCHMARKS.md has
the figures of a full run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .netns import require_lan

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = {"p2pboard", "relay", "zmq", "mcast", "socket"}


@pytest.mark.timeout(180)
def test_compare_quick_runs_every_system_and_converges(tmp_path):
    require_lan()
    pytest.importorskip("zmq", reason="the bench extra (pyzmq) is not installed")
    out = tmp_path / "quick.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "compare",
                        "--quick", "--json", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=170, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-4000:]
    assert "[bench]" in r.stderr  # progress is shown while it runs
    results = json.loads(out.read_text())["results"]
    assert {x["system"] for x in results if x["ran"]} == SYSTEMS, results
    for x in results:
        assert x["ran"], x
        if x["expect_converge"]:
            assert x["converged"], x
