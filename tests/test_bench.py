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
    data = json.loads(out.read_text())
    results = data["results"]
    assert {x["system"] for x in results if x["ran"]} == SYSTEMS, results
    # the host's speed, before and after the workloads, goes into the report
    assert [g["at"] for g in data["gauge"]] == ["start", "after 1gbit"], data["gauge"]
    assert all(0 < g["us"] < 10_000 for g in data["gauge"]), data["gauge"]
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_report

    text = bench_report.markdown(data)
    assert f"{data['gauge'][0]['us']} at the start" in text
    assert f"{data['gauge'][1]['us']} after the 1gbit rows" in text
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
def test_receive_quick_measures_p2pboards_receiver_and_the_plain_one(tmp_path):
    """``bench.py receive --quick`` (its own namespace): the in-process split (warm, and
    with the caches made cold before each datagram), a stroke datagram cold through the
    board, the engine and the edge, and one receiver through a real socket: p2pboard's,
    coalescing on and off, and the plain one (blocking recv, decode, apply), every
    datagram received."""
    out = tmp_path / "receive.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "receive",
                        "--quick", "--json", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=110, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["datagrams"] == 500
    assert set(data["in_process"]) == {"decode", "decode_apply", "engine", "cold"}
    assert set(data["in_process"]["cold"]) == {"decode", "decode_apply", "engine"}
    assert all(v > 0 for v in data["in_process"]["cold"].values()), data["in_process"]
    # a stroke datagram, cold, to the board, the engine and the edge (which adds to both)
    cold = data["strokes_cold"]
    assert set(cold) == {"board", "engine", "edge"} and all(v > 0 for v in cold.values()), cold
    runs = data["socket"]
    assert sorted((x["system"], x["coalesce"]) for x in runs) == [
        ("p2pboard", False), ("p2pboard", True), ("plain", False)]
    for x in runs:
        assert x["got"] == 500 and x["receivers"] == 1 and x["us_per_datagram"] > 0, x
        assert x["stamped"] == (x["system"] == "p2pboard"), x
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_receive

    data.update(command="bench.py receive --quick", date="today", machine="this one")
    table = bench_receive.markdown(data)
    assert "| 10,000 | 1 | p2pboard, coalescing on |" in table
    assert "| 10,000 | 1 | plain (blocking recv, decode, apply) |" in table


@pytest.mark.timeout(120)
def test_room_measures_every_step_on_a_board_checked_against_a_rebuild(tmp_path):
    """``bench.py room`` with 3 authors drawing 4 s each: the log it builds (finished
    strokes joined into one entry each), every step timed, the late joiner's board equal
    to the receiver's (the run checks the view against a rebuild after each step and
    fails otherwise); and bad flags refused."""
    bench = [sys.executable, str(ROOT / "scripts" / "bench.py"), "room"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "room.json"
    r = subprocess.run([*bench, "--authors", "3", "--seconds", "4", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=100, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["authors"] == 3 and data["pieces"] == 3 * 4 * 120, data
    # every stroke but each author's last (its end not known yet) is one entry
    assert 0 < data["live_ops"] <= data["log_entries"] < data["live_ops"] + 3 * 120, data
    for k in ("undo_ms_median", "undo_ms_max", "redo_ms_median", "clear_ms", "undo_clear_ms",
              "redo_clear_ms", "dump_ms", "load_and_show_ms", "gc_full_ms"):
        assert data[k] > 0, k
    assert data["undo_ms_median"] <= data["undo_ms_max"]
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_room

    table = bench_room.markdown(data)
    assert "| an author's undo of its latest stroke (median, max of 3) |" in table
    bad = subprocess.run([*bench, "--authors", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, env=env)
    assert bad.returncode == 2 and "--authors must be at least 1" in bad.stderr


def test_room_check_catches_a_view_that_differs_from_its_rebuild():
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_room
    import numpy as np

    from p2pboard.board import Board
    from p2pboard.ops import Paint

    b = Board(8, 8)
    b.apply(Paint(1, 1, 1, (9, 9, 9, 255), np.arange(5)), 1, 1, 0)
    bench_room._check(b)
    b._color[2] = (1, 2, 3, 4)  # the view drifted from what base and log say
    with pytest.raises(AssertionError, match="differs from a rebuild"):
        bench_room._check(b)


def _bench_compare():
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_compare

    return bench_compare


def test_rounds_are_pooled_sample_by_sample_and_count_by_count():
    """Three rounds of one cell become one result: percentiles over every sample of every
    round (not a mean of percentiles), counts summed, a time only if every round
    delivered, converged only if every round did."""
    bc = _bench_compare()

    def round_(lat, repair, nacks, converged=True, image=1.0):
        r = bc.Result("p2pboard", "image-16-loss10", "1gbit", 17, ran=True, converged=converged,
                      latency_p99_ms=bc.ms(bc.pct(lat, 99)), image_seconds=image,
                      repair_p95_ms=bc.ms(bc.pct(repair, 95)), loss_events=100, nacks=nacks,
                      repairs=50, unrecovered=0, divergent_pixels=0, wire_bytes=1000,
                      wire_datagrams=10, pixels_painted=500, peak_memory_mb=100.0,
                      extra={"cpu_percent_per_peer": 10.0, "parity_sent": 7})
        r.samples = {"latency": lat, "repair": repair, "recovered": (1, 10)}
        return r

    fast = [0.001] * 97
    rounds = [round_(fast + [0.002] * 3, [0.001] * 18 + [0.004] * 2, 3),
              round_(fast + [0.003] * 3, [0.001] * 18 + [0.030] * 2, 5),
              round_(fast + [0.009] * 3, [0.002] * 20, 4, image=1.4)]
    p = bc.pool(rounds)
    assert p.ran and p.converged and p.extra["rounds"] == 3
    assert p.extra["latency_p99_ms_rounds"] == [2.0, 3.0, 9.0]
    assert p.latency_p99_ms == 3.0  # of the 300 samples pooled (not the mean, 4.67)
    assert p.extra["repair_p95_ms_rounds"] == [4.0, 30.0, 2.0]
    assert p.repair_p95_ms == 4.0  # of the 60 recoveries pooled
    assert bc.ms(bc.pct([x for r in rounds for x in r.samples["repair"]], 95)) == 4.0
    assert (p.loss_events, p.nacks, p.nacks_per_loss) == (300, 12, 0.04)
    assert p.extra["parity_sent"] == 21 and p.extra["recovered_after_nack"] == 0.1
    assert p.image_seconds == 1.0 and p.bytes_per_pixel == 2.0
    rounds[1].converged, rounds[1].image_seconds = False, None
    p = bc.pool(rounds)
    assert not p.converged and p.image_seconds is None
    assert bc.pool(rounds[:1]) is rounds[0]
    assert "samples" not in bc.to_json([p])[0]


@pytest.mark.timeout(120)
def test_repeat_runs_the_systems_in_turns_and_pools_them(tmp_path):
    require_lan()
    out = tmp_path / "rounds.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "compare",
                        "--quick", "--only", "strokes-3", "--systems", "p2pboard,mcast",
                        "--repeat", "2", "--json", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=110, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-4000:]
    turns = [line.split("strokes-3 ")[1].split(":")[0] for line in r.stderr.splitlines()
             if "(round" in line]
    assert turns == ["p2pboard (round 1 of 2)", "mcast (round 1 of 2)",
                     "p2pboard (round 2 of 2)", "mcast (round 2 of 2)"], r.stderr
    results = json.loads(out.read_text())["results"]
    assert [x["system"] for x in results] == ["p2pboard", "mcast"]
    for x in results:
        assert x["converged"] and x["extra"]["rounds"] == 2
        assert len(x["extra"]["latency_p99_ms_rounds"]) == 2 and x["latency_p99_ms"] > 0


def test_the_bulk_budget_is_the_ceilings_time_over_08_shared_by_every_receivers_datagram():
    """What 80% of the socket ceiling leaves a receiver, from a run's own figures: the cores'
    CPU in the allowed time, less the cheaper multicast author's, per receiver per datagram,
    and which receivers that is enough for."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_report

    def cell(system, image_s, sender, receiver, datagrams=3000):
        return dict(workload="image-4", system=system, rate="1gbit", peers=5,
                    image_seconds=image_s, wire_datagrams=datagrams * 2, sender_cpu_s=sender,
                    receiver_cpu_s_mean=receiver, extra={"rounds": 2})

    def data(ceiling_s, cpus=2):
        return {"machine": f"{cpus} CPUs (x), Linux", "results": [
            cell("socket", ceiling_s, 0.01, 0.006), cell("mcast", 0.3, 0.12, 0.06),
            cell("p2pboard", 0.4, 0.2, 0.09)]}

    b = bench_report.bulk_budget(data(0.4), "image-4", "1gbit")
    # 0.5 s allowed, 1.0 CPU second on 2 cores, less plain's author (0.12 s), over 4 x 3000
    assert (b["cores"], b["receivers"], b["datagrams"]) == (2, 4, 3000)
    assert b["allowed_s"] == pytest.approx(0.5) and b["author_cpu_s"] == 0.12
    assert b["left_us"] == pytest.approx(0.88 / 12000 * 1e6)  # 73.3 us
    assert b["cost_us"] == pytest.approx({"socket": 2.0, "mcast": 20.0, "p2pboard": 30.0})
    assert b["reach"] == "yes"
    assert bench_report.bulk_budget(data(0.15), "image-4", "1gbit")["reach"] == (
        "for plain multicast, not for p2pboard")  # 0.255 s over 12000: 21.3 us
    assert bench_report.bulk_budget(data(0.1), "image-4", "1gbit")["reach"] == (
        "not for plain multicast either")  # 12.7 us
    assert bench_report.bulk_budget(data(0.05), "image-4", "1gbit")["reach"] == (
        "no: less than reading alone costs")  # 0.125 CPU s less 0.12: 0.4 us
    assert bench_report.bulk_budget(data(0.04), "image-4", "1gbit")["reach"] == (
        "no: the author's CPU alone is more")  # 0.1 CPU s
    with_cpus = data(0.05, cpus=1) | {"cpus": 8}  # the JSON's own count wins
    assert bench_report.bulk_budget(with_cpus, "image-4", "1gbit")["cores"] == 8
    assert bench_report.bulk_budget(data(0.4) | {"machine": "?"}, "image-4", "1gbit") is None
