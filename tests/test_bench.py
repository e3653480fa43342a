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


@pytest.mark.timeout(120)
def test_author_core_pins_the_author_alone_and_is_never_written(tmp_path):
    """``--author-core`` (the diagnostic of the repair tail, BENCHMARKS.md): the image's
    author alone on the first CPU, its receivers on the others; refused with --write."""
    bench = [sys.executable, str(ROOT / "scripts" / "bench.py"), "compare"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(bench + ["--author-core", "--write"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode == 2 and "diagnostic" in r.stderr, r.stderr
    require_lan()
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    out = tmp_path / "pinned.json"
    r = subprocess.run(bench + ["--quick", "--only", "image-2", "--systems", "p2pboard",
                                "--author-core", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=110, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    [res] = json.loads(out.read_text())["results"]
    cpus = sorted(os.sched_getaffinity(0))
    assert res["converged"] and res["extra"]["cpus"] == [cpus[:1]] + [cpus[1:]] * 2, res


@pytest.mark.timeout(120)
def test_receive_quick_measures_a_receiver_with_and_without_coalescing(tmp_path):
    """``bench.py receive --quick`` (its own namespace): the in-process split and one
    receiver through a real socket, coalescing on and off, every datagram received."""
    out = tmp_path / "receive.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "receive",
                        "--quick", "--json", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=110, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["datagrams"] == 500
    assert set(data["in_process"]) == {"decode", "decode_apply", "engine"}
    runs = data["socket"]
    assert sorted(x["coalesce"] for x in runs) == [False, True]
    for x in runs:
        assert x["got"] == 500 and x["stamped"] and x["us_per_datagram"] > 0, x
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_receive

    data.update(command="bench.py receive --quick", date="today", machine="this one")
    assert "| 10,000 | on |" in bench_receive.markdown(data)
