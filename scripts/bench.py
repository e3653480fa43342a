#!/usr/bin/env python3
"""Benchmarks, each run inside a private network namespace it creates itself.

    .venv/bin/python scripts/bench.py ui [--peers 8] [--strokes 40] [--write]
    .venv/bin/python scripts/bench.py compare [--quick] [--write] [--rates ...] [--only ...]
    .venv/bin/python scripts/bench.py receive [--quick] [--write]
    .venv/bin/python scripts/bench.py room [--authors 8] [--seconds 120] [--write]

``ui``: a real p2pboard window (Kivy, under Xvfb) on a 1920x1080 board while N headless
peer processes draw strokes at mouse rate at the same time. Sampled from the window four
times a second: frames per second, time between frames (p50/p99/max), the window's own
per-frame work (texture blit of the dirty rectangle, cursors), and the kernel's drop
counter for its socket (/proc/net/udp). At the end every peer and the window must hold
the same board. ``--write`` puts the result into docs/BENCHMARKS.md (between markers).

``compare`` (issue #5, root only): p2pboard side by side with a TCP relay, ZeroMQ
PUB/SUB, plain multicast and the bare socket, on a simulated switched LAN of network
namespaces whose links tbf limits to 100 Mbit/s and 1 Gbit/s (and unlimited), on strokes,
a pasted image (also under kernel loss), a late joiner and idle peers. Progress goes to
stderr; ``--write`` puts the JSON and plots into docs/bench/ and the tables into
docs/BENCHMARKS.md; ``--quick`` (under a minute, one rate, small image) is the smoke test
that tests/test_bench.py runs: it checks that every system ran and converged, not speed.
``--profile SYSTEM:WORKLOAD:INDEX`` runs that peer under py-spy. How it works and its
limits: scripts/bench_compare.py (runs), bench_peer.py (one peer), bench_systems.py (the
competitors), bench_report.py (tables, plots, targets), bench_profile.py (py-spy summary).

``receive``: what receiving the same photo costs one peer, in process and through a real
socket at several rates, with the edge's read coalescing on and off
(scripts/bench_receive.py).

``room``: what a busy room's history costs one peer, in process: undo, redo, clear, its
undo, a late joiner's snapshot and a full garbage collection, after N authors drew for
S seconds (scripts/bench_room.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def ensure_netns() -> None:
    """Re-run this script inside a fresh network namespace with multicast on lo."""
    if os.environ.get("P2PBOARD_IN_NETNS") == "1":
        return
    inner = ("ip link set lo up && ip link set lo multicast on && "
             "ip route add 224.0.0.0/4 dev lo && P2PBOARD_IN_NETNS=1 exec \"$0\" \"$@\"")
    flag = "-n" if os.geteuid() == 0 else "-rn"
    os.execvp("unshare", ["unshare", flag, "--", "bash", "-c", inner, sys.executable,
                          *sys.argv])


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python "
            f"{platform.python_version()}")


def bench_ui(peers: int, strokes: int) -> dict:
    from tests.test_loopback import Peer

    from tests.test_ui import start_xvfb

    tmp = Path(tempfile.mkdtemp(prefix="p2pbench-"))
    xvfb, disp = start_xvfb("1400x900x24")
    procs: list = []
    try:
        state = tmp / "state.json"
        env = {**os.environ, "DISPLAY": disp, "P2PBOARD_UI_STATE": str(state),
               "P2PBOARD_UI_CONTROL": str(tmp / "ctl"), "P2PBOARD_UI_GEOMETRY": "0,0,1280,800",
               "KIVY_NO_ARGS": "1", "KIVY_NO_CONSOLELOG": "1", "PYTHONPATH": str(ROOT)}
        (tmp / "ctl").write_text("")
        port = 47000 + os.getpid() % 1000
        app = subprocess.Popen([sys.executable, "-m", "p2pboard", "--iface", "127.0.0.1",
                                "--port", str(port), "--name", "window"], env=env, cwd=ROOT,
                               stdout=open(tmp / "app.log", "w"), stderr=subprocess.STDOUT)
        procs.append(app)

        def read() -> dict:
            try:
                return json.loads(state.read_text())
            except (OSError, ValueError):
                return {}

        end = time.monotonic() + 60
        while not read().get("digest") or read().get("joining"):
            if time.monotonic() > end or app.poll() is not None:
                raise RuntimeError("the window did not start: " + (tmp / "app.log").read_text())
            time.sleep(0.2)
        progress(f"window up; starting {peers} drawing peers")
        # The drawing peers stand for other machines: niced, so that they take the CPU
        # the window leaves rather than the other way round (2 cores here for everything).
        ps = [Peer(f"p{i}", port, size="1920x1080", prefix=["nice", "-n", "19"])
              for i in range(peers)]
        procs.extend(p.proc for p in ps)
        time.sleep(2.0)
        before = read()
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(len(ps))
        for i, p in enumerate(ps):
            p.send(f"draw {100 + i} {strokes}")
        waits = [pool.submit(p.expect, "drawn", 600) for p in ps]
        samples = []
        done = 0
        t0 = time.monotonic()
        while done < len(ps):
            time.sleep(0.25)
            samples.append(read())
            done = sum(1 for w in waits if w.done())
            progress(f"{time.monotonic() - t0:5.1f} s: {done}/{len(ps)} peers done, "
                     f"{samples[-1].get('fps', 0):.0f} fps")
        drawing_s = time.monotonic() - t0
        after = read()
        digests = {p.sync(60)["digest"] for p in ps}
        end = time.monotonic() + 30
        while read().get("digest") not in digests and time.monotonic() < end:
            time.sleep(0.2)
        final = read()
        stats = [p.stats() for p in ps]
        for p in ps:
            p.quit()
        fps = [s["fps"] for s in samples if s.get("fps")]
        gaps99 = [s["frame_gap_ms"][1] for s in samples if s.get("frame_gap_ms")]
        gapmax = [s["frame_gap_ms"][2] for s in samples if s.get("frame_gap_ms")]
        work99 = [s["frame_work_ms"][1] for s in samples if s.get("frame_work_ms")]
        pixels = sum(s["pixels_painted"] for s in stats)
        return dict(
            peers=peers, strokes_per_peer=strokes, drawing_seconds=round(drawing_s, 1),
            pixels_painted=pixels,
            fps_min=round(min(fps), 1), fps_median=round(sorted(fps)[len(fps) // 2], 1),
            frame_gap_p99_ms_worst=round(max(gaps99), 1),
            frame_gap_max_ms=round(max(gapmax), 1),
            frame_work_p99_ms_worst=round(max(work99), 2),
            kernel_drops=(after.get("kernel_drops") or 0) - (before.get("kernel_drops") or 0),
            window_gaps=after.get("gaps", 0) - before.get("gaps", 0),
            converged=len(digests) == 1 and final.get("digest") in digests,
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        xvfb.terminate()
        xvfb.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_lan_netns() -> None:
    """Re-run this script inside a fresh network namespace (multicast on lo) with its own
    mount namespace and a private /run/netns, so the named namespaces of the simulated LAN
    never show on the host and die with the run. Needs real root."""
    if os.environ.get("P2PBOARD_IN_NETNS") == "1":
        return
    if os.geteuid() != 0:
        sys.exit("bench.py compare needs root (named network namespaces, tc, nft)")
    inner = ("ip link set lo up && ip link set lo multicast on && "
             "ip route add 224.0.0.0/4 dev lo && mkdir -p /run/netns && "
             "mount -t tmpfs -o mode=0755 p2pbench-netns /run/netns && "
             "P2PBOARD_IN_NETNS=1 exec \"$0\" \"$@\"")
    os.execvp("unshare", ["unshare", "-n", "-m", "--", "bash", "-c", inner, sys.executable,
                          *sys.argv])


def compare_main(argv: list[str]) -> int:
    """``bench.py compare``: see scripts/bench_compare.py."""
    import bench_compare as bc
    import bench_receive

    ap = argparse.ArgumentParser(prog="bench.py compare", description=bc.__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test (under a minute): every system runs and converges")
    ap.add_argument("--rates", default=None,
                    help="link rates, comma-separated (tc syntax, or 'unlimited'); "
                         "default 100mbit,1gbit,unlimited (--quick: 1gbit)")
    ap.add_argument("--systems", default=",".join(bc.SYSTEMS))
    ap.add_argument("--only", default="", help="run only these workloads (names, "
                    "comma-separated: strokes-8, image-16, image-16-loss10, latejoin, ...)")
    ap.add_argument("--stroke-peers", default="2,4,8,16")
    # long enough that every system's peers go through the garbage collector's periodic
    # full collections, as in any session (one every 4-10 s of drawing here): with 3 s they
    # fell in the window only sometimes
    ap.add_argument("--stroke-seconds", type=float, default=10.0)
    ap.add_argument("--image-receivers", default="4,16")
    ap.add_argument("--loss-receivers", type=int, default=16)
    ap.add_argument("--losses", default="1,10")
    ap.add_argument("--loss-rates", default="1gbit",
                    help="rates at which the loss workloads run (they are the slowest)")
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=None,
                    help="rounds of the strokes and loss workloads, the systems taking turns, "
                         "their figures pooled (default 3; --quick: 1)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--from-json", help="run nothing: write the docs (--write) from the "
                    "results an earlier run saved with --json")
    ap.add_argument("--profile", default="",
                    help="run these peers under py-spy: SYSTEM:WORKLOAD:INDEX,... (with "
                         "--write, their summaries go into docs/BENCHMARKS.md instead of the "
                         "comparison)")
    ap.add_argument("--author-core", action="store_true",
                    help="diagnostic: the author of the image workloads alone on the first "
                         "CPU, every other process of the run on the others (not a LAN's "
                         "conditions, so never written into the docs' tables)")
    ap.add_argument("--write", action="store_true",
                    help="write docs/BENCHMARKS.md, docs/bench/*.json and the plots")
    a = ap.parse_args(argv)
    if a.author_core and (a.write or a.from_json):
        ap.error("--author-core is a diagnostic: its figures are not written into the docs")
    if a.author_core and len(os.sched_getaffinity(0)) < 2:
        ap.error("--author-core needs at least 2 CPUs")
    if a.from_json:
        import bench_report

        data = json.loads(Path(a.from_json).read_text())
        if a.write:
            bench_report.write(data, ROOT / "docs")
            write_section("compare", bench_report.markdown(data))
        for row in bench_report.targets(data):
            print(" | ".join(row))
        return 0
    ensure_lan_netns()
    if a.author_core:
        os.environ["BENCH_AUTHOR_CORE"] = "1"
    if a.profile:
        os.environ["BENCH_PROFILE"] = a.profile
        os.environ["BENCH_PROFILE_DIR"] = tempfile.mkdtemp(prefix="p2pbench-prof-")
    ints = lambda s: tuple(int(v) for v in s.split(",") if v)  # noqa: E731
    if a.rates is None:
        a.rates = "1gbit" if a.quick else "100mbit,1gbit,unlimited"
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    rates = [None if r == "unlimited" else r for r in a.rates.split(",")]
    wls = bc.plan(a.quick, stroke_peers=ints(a.stroke_peers), image_receivers=ints(a.image_receivers),
                  loss_receivers=a.loss_receivers,
                  losses=tuple(float(v) for v in a.losses.split(",") if v),
                  stroke_seconds=a.stroke_seconds, idle_seconds=a.idle_seconds,
                  timeout=a.timeout)
    if a.only:
        wls = [w for w in wls if w.name in a.only.split(",")]
    systems = tuple(s for s in a.systems.split(",") if s)
    t0 = time.monotonic()
    loss_rates = [None if r == "unlimited" else r for r in a.loss_rates.split(",")]
    results: list = []
    # The host's speed before, between and after the workloads (bench_receive.gauge):
    # what this hour of a shared host gave every system alike.
    photo = bench_receive.paste_datagrams()
    gauges = [dict(at="start", us=bench_receive.gauge(photo))]
    progress(f"host speed: {gauges[0]['us']} us a datagram to decode and apply the photo")

    def snapshot() -> dict:
        return dict(command="scripts/bench.py compare " + " ".join(argv), machine=machine(),
                    cpus=len(os.sched_getaffinity(0)),  # the cores every peer shared
                    date=time.strftime("%Y-%m-%d %H:%M"),
                    seconds=round(time.monotonic() - t0, 1), gauge=gauges,
                    results=bc.to_json(results))

    def saved(_result) -> None:  # a partial run is not lost if it is stopped
        if a.json:
            Path(a.json).write_text(json.dumps(snapshot(), indent=1))

    for rate in rates:
        this = [w for w in wls if not w.loss or a.quick or rate in loss_rates]
        bc.run(this, [rate], systems, results, on_result=saved, repeat=a.repeat)
        gauges.append(dict(at=f"after {rate or 'unlimited'}", us=bench_receive.gauge(photo)))
        progress(f"host speed: {gauges[-1]['us']} us a datagram")
    took = time.monotonic() - t0
    data = snapshot()
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=1))
    if a.write and a.profile:
        import bench_profile

        text = [f"""## Where p2pboard's receive path spends its time

Command: `{data['command']}` ({data['date']}; {machine()}). py-spy samples the
named peer process (a receiver) from "go" until everything was delivered (not its start-up
and join); percentages are of the samples py-spy took as busy, which include the event
loop's wait in `epoll` (`EpollSelector.select`): the rest is the peer's own work."""]
        for path in bc.PROFILES:
            if path.exists():
                text.append(bench_profile.markdown(path, path.stem))
        write_section("profile", "\n\n".join(text))
    elif a.write:
        import bench_report

        bench_report.write(data, ROOT / "docs")
        write_section("compare", bench_report.markdown(data))
    bad = [r for r in results if not r.ran or (r.expect_converge and not r.converged)]
    ran = {r.system for r in results if r.ran}
    progress(f"done in {took:.0f} s: {len(results)} runs, systems that ran: "
             f"{', '.join(sorted(ran))}; {len(bad)} failed or did not converge")
    for r in bad:
        progress(f"  {r.rate} {r.workload} {r.system}: {bc.summary(r)}")
    missing = set(systems) - ran
    return 1 if bad or missing else 0


def receive_main(argv: list[str]) -> int:
    """``bench.py receive``: see scripts/bench_receive.py."""
    import bench_receive

    ap = argparse.ArgumentParser(prog="bench.py receive",
                                 description=bench_receive.__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 500 datagrams at one rate (CI runs it)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    a = ap.parse_args(argv)
    ensure_netns()
    data = bench_receive.run(progress, quick=a.quick)
    publish("receive", argv, data, a.json, a.write and bench_receive.markdown)
    return 0 if all(r["got"] == r["datagrams"] for r in data["socket"]) else 1


def room_main(argv: list[str]) -> int:
    """``bench.py room``: see scripts/bench_room.py."""
    import bench_room

    ap = argparse.ArgumentParser(prog="bench.py room",
                                 description=bench_room.__doc__.split("\n\n")[0])
    ap.add_argument("--authors", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120.0,
                    help="drawing time of each author (default 120)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    a = ap.parse_args(argv)
    if a.authors < 1 or a.seconds <= 0:
        ap.error("--authors must be at least 1 and --seconds above 0")
    ensure_netns()  # (it opens no socket; every benchmark runs in a namespace all the same)
    data = bench_room.run(a.authors, a.seconds, progress)
    publish("room", argv, data, a.json, a.write and bench_room.markdown)
    return 0


def publish(name: str, argv: list[str], data: dict, json_path: str | None, markdown) -> None:
    """Stamp a run's results with its command, machine and date, print them, and write
    them to ``json_path`` and, if ``markdown`` (a function of them) is given, into
    docs/BENCHMARKS.md's section ``name``."""
    data.update(command=" ".join([f"scripts/bench.py {name}", *argv]), machine=machine(),
                date=time.strftime("%Y-%m-%d %H:%M"))
    print(json.dumps(data, indent=1))
    if json_path:
        Path(json_path).write_text(json.dumps(data, indent=1))
    if markdown:
        write_section(name, markdown(data))


def write_section(name: str, text: str) -> None:
    path = ROOT / "docs" / "BENCHMARKS.md"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "compare":
        return compare_main(argv[1:])
    if argv and argv[0] == "receive":
        return receive_main(argv[1:])
    if argv and argv[0] == "room":
        return room_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workload", choices=["ui", "compare", "receive", "room"])
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--strokes", type=int, default=40)
    ap.add_argument("--write", action="store_true", help="write docs/BENCHMARKS.md")
    a = ap.parse_args(argv)
    ensure_netns()
    r = bench_ui(a.peers, a.strokes)
    print(json.dumps(r, indent=2))
    if a.write:
        cmd = f".venv/bin/python scripts/bench.py ui --peers {a.peers} --strokes {a.strokes} --write"
        write_section("ui", f"""## The window with {a.peers} peers drawing at once

Command: `{cmd}` ({time.strftime('%Y-%m-%d')}; {machine()}). A 1280x800 window on a
1920x1080 board under Xvfb (software OpenGL), {a.peers} headless peer processes on the same
host drawing {a.strokes} strokes each at mouse rate (120 points/s, widths 2 to 20) for
{r['drawing_seconds']} s, {r['pixels_painted']:,} pixels painted; everything on the same 2 cores.

| figure | value |
|---|---|
| frames per second, median (lowest 0.25 s sample) | {r['fps_median']} ({r['fps_min']}) |
| time between frames, worst p99 over the samples | {r['frame_gap_p99_ms_worst']} ms |
| longest time between two frames | {r['frame_gap_max_ms']} ms |
| the window's own work per frame (blit + cursors), worst p99 | {r['frame_work_p99_ms_worst']} ms |
| datagrams dropped by the kernel at the window's socket | {r['kernel_drops']} |
| gaps the window had to repair | {r['window_gaps']} |
| window and every peer identical at the end | {r['converged']} |
""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
