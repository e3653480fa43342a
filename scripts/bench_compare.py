"""The side-by-side comparison of issue #5: p2pboard against a TCP relay, ZeroMQ PUB/SUB,
plain multicast and the bare socket, on the same workloads, on a simulated switched LAN.

How a run works
---------------
For every link rate (100 Mbit/s, 1 Gbit/s, unlimited) and every workload, :func:`run`
builds a :class:`tests.netlab.Lan`: one network namespace per host on one bridge, every
host's link given the rate in both directions with tbf (host side and bridge side), kernel
loss with nftables on every receiver where the workload asks for it (all IP packets, so
TCP pays for loss too). Then each system in turn starts one scripts/bench_peer.py process
per host (the relay server on a host of its own), waits until they are all connected,
says go, waits until every receiver holds everything the authors sent (or nothing has
moved for a while), and collects the peers' reports. The link counters of every host
(``tx_bytes`` less 14 bytes of Ethernet header per frame) give the bytes on the wire.

Workloads (sizes configurable, see scripts/bench.py compare --help):

* ``strokes-N``: N peers all drawing mouse-rate strokes (120 points/s, widths 2-20).
* ``strokes-Nx1``: N peers, one of them drawing: the latency without the CPU of this one
  machine saturated by N peers rasterising each other's strokes.
* ``image-R``: one peer pastes a photo-like 1920x1080 image, R receivers.
* ``image-R-lossP``: the same with P% kernel loss at every receiver.
* ``latejoin``: a peer joins a board holding that image (p2pboard; the relay replays its
  history; ZeroMQ PUB/SUB and plain multicast have no late join).
* ``idle-N``: N peers doing nothing.

Repeats: the stroke and loss workloads, whose figures move most from run to run on a
shared machine, run ``repeat`` rounds in the same simulated LAN, the systems taking turns
within each round (so a busy minute of the machine falls on all of them alike). Their
figures are pooled (:func:`pool`): latency percentiles over every (record, receiver) pair
of every round, repair latencies over every recovery, counts summed; the per-round p99s
(or repair p95s) are kept beside them, to show the spread.

The host's speed: before the first workload and after each link rate, scripts/bench.py
times a fixed piece of work in its own process with nothing else running (decoding and
applying the photo's datagrams, scripts/bench_receive.py's ``gauge``). A shared host is
slower in a busy hour, for every system alike; the report shows these figures, so a run
made in such an hour can be told from a change in the code.

Limits: everything runs on this one machine, so all peers share its CPU cores (2 here):
16 receivers decoding an image are 16 processes on 2 cores, and that, not the network,
often decides. The other workloads run once.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netlab import Lan  # noqa: E402

SYSTEMS = ("p2pboard", "relay", "zmq", "mcast", "socket")
RELIABLE = ("p2pboard", "relay", "zmq")
GROUP = "239.255.77.77"
PROFILES: list[Path] = []  # py-spy outputs written in this run
BOARD = (1920, 1080)


def progress(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # strokes, image, latejoin, idle
    peers: int  # processes on the board (authors and receivers)
    systems: tuple[str, ...]
    seconds: float = 0.0  # strokes: drawing time per peer; idle: idle time
    image: tuple[int, int] = BOARD
    loss: float = 0.0  # percent, at every receiver
    timeout: float = 60.0  # most time to wait for delivery
    drawers: int | None = None  # strokes: how many of the peers draw (None: all)


def plan(quick: bool, stroke_peers=(2, 4, 8, 16), image_receivers=(4, 16),
         loss_receivers=16, losses=(1, 10), stroke_seconds=10.0, idle_seconds=5.0,
         image=BOARD, timeout=60.0) -> list[Workload]:
    if quick:
        small = (640, 360)
        return [
            Workload("strokes-3", "strokes", 3, SYSTEMS[:4], seconds=0.5, timeout=15),
            Workload("image-2", "image", 3, SYSTEMS, image=small, timeout=15),
            Workload("image-2-loss10", "image", 3, ("p2pboard",), image=small, loss=10,
                     timeout=15),
            Workload("latejoin", "latejoin", 2, ("p2pboard", "relay"), image=small, timeout=15),
            Workload("idle-3", "idle", 3, ("p2pboard",), seconds=1.0),
        ]
    out = [Workload(f"strokes-{n}", "strokes", n, SYSTEMS[:4], seconds=stroke_seconds,
                    timeout=timeout) for n in stroke_peers]
    out.append(Workload("strokes-8x1", "strokes", 8, SYSTEMS[:4], seconds=stroke_seconds,
                        timeout=timeout, drawers=1))
    out += [Workload(f"image-{r}", "image", r + 1, SYSTEMS, image=image, timeout=timeout)
            for r in image_receivers]
    out += [Workload(f"image-{loss_receivers}-loss{p:g}", "image", loss_receivers + 1,
                     SYSTEMS, image=image, loss=p, timeout=timeout) for p in losses]
    out.append(Workload("latejoin", "latejoin", 2, ("p2pboard", "relay"), image=image,
                        timeout=timeout))
    out.append(Workload("idle-8", "idle", 8, SYSTEMS[:4], seconds=idle_seconds))
    return out


class Proc:
    """A bench_peer.py process on one host, its stdout read by a thread into a queue."""

    def __init__(self, lan: Lan, host: int, cfg: dict, logdir: Path, name: str) -> None:
        self.name = name
        self.err = logdir / f"{name}.err"
        argv = [sys.executable, str(ROOT / "scripts" / "bench_peer.py"), json.dumps(cfg)]
        # BENCH_PROFILE="system:workload:index,...": sample those peers with py-spy from
        # "go" until everything was delivered (not their start-up and joining), writing
        # collapsed stacks to BENCH_PROFILE_DIR/system-workload-index.txt
        wanted = os.environ.get("BENCH_PROFILE", "").split(",")
        key = f"{cfg['system']}:{cfg['workload'].get('name')}:{cfg['index']}"
        self.profile_out: Path | None = None
        self._spy: subprocess.Popen | None = None
        if key in wanted:
            self.profile_out = Path(os.environ.get("BENCH_PROFILE_DIR", logdir)) / (
                key.replace(":", "-") + ".txt")
            PROFILES.append(self.profile_out)
        self.proc = lan.run(host, argv,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=open(self.err, "w"), text=True, bufsize=1, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
        if os.environ.get("BENCH_AUTHOR_CORE") == "1" and cfg["workload"].get("author") is not None:
            # bench.py compare --author-core: `ip netns exec` execs the peer in place, so the
            # pid is the peer's (a diagnostic: on a LAN every host has cores of its own)
            cpus = sorted(os.sched_getaffinity(0))
            author = cfg["index"] == cfg["workload"]["author"]
            os.sched_setaffinity(self.proc.pid, cpus[:1] if author else cpus[1:])
        self.q: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.q.put(line)
        self.q.put("")

    def start_profile(self) -> None:
        """Attach py-spy (if this peer is to be profiled); the network namespace does not
        matter to it, the process id is the same everywhere (``ip netns exec`` execs)."""
        if self.profile_out is None:
            return
        spy = Path(sys.executable).parent / "py-spy"
        self._spy = subprocess.Popen(
            [str(spy) if spy.exists() else "py-spy", "record", "--pid", str(self.proc.pid),
             "--rate", "250", "--format", "raw", "--nonblocking", "--output",
             str(self.profile_out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # attached before the workload starts

    def stop_profile(self) -> None:
        if self._spy is not None:
            self._spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            try:
                self._spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._spy.kill()
            self._spy = None

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no {event!r} within {timeout} s") from None
            if not line:
                tail = self.err.read_text()[-2000:]
                raise RuntimeError(f"{self.name} exited waiting for {event!r}: {tail}")
            msg = json.loads(line)
            if msg.get("event") == event:
                return msg

    def ask(self, cmd: str, event: str, timeout: float = 30.0) -> dict:
        self.send(cmd)
        return self.expect(event, timeout)

    def quit(self) -> None:
        self.stop_profile()  # a run that failed half way
        try:
            if self.proc.poll() is None:
                self.send("quit")
                self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


@dataclass
class Result:
    system: str
    workload: str
    rate: str
    peers: int
    ran: bool = False
    converged: bool = False
    expect_converge: bool = True
    error: str | None = None
    seconds: float = 0.0  # wall time of the whole run
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    image_seconds: float | None = None  # until every receiver holds the whole image
    pixels_per_s_per_receiver: float | None = None  # median receiver
    delivered_fraction: float | None = None  # of records (datagrams for socket) expected
    sender_cpu_s: float | None = None
    server_cpu_s: float | None = None
    receiver_cpu_s_mean: float | None = None
    wire_bytes: int = 0  # IP bytes sent by every host
    wire_datagrams: int = 0
    pixels_painted: int = 0
    bytes_per_pixel: float | None = None
    loss_events: int | None = None
    nacks: int | None = None
    repairs: int | None = None
    nacks_per_loss: float | None = None
    repairs_per_loss: float | None = None
    repair_p50_ms: float | None = None
    repair_p95_ms: float | None = None
    unrecovered: int | None = None
    divergent_pixels: int | None = None
    latejoin_seconds: float | None = None
    idle_datagrams_per_s_per_peer: float | None = None
    idle_cpu_percent_per_peer: float | None = None
    peak_memory_mb: float | None = None
    extra: dict = field(default_factory=dict)
    #: raw figures for :func:`pool` (latencies of every pair, every repair), not saved
    samples: dict = field(default_factory=dict, repr=False)


def run_system(lan: Lan, wl: Workload, system: str, rate: str, port: int,
               logdir: Path) -> Result:
    res = Result(system, wl.name, rate, wl.peers,
                 expect_converge=system in RELIABLE or (wl.loss == 0 and wl.kind != "idle"))
    t_run = time.monotonic()
    n = wl.peers
    addrs = [lan.addr(i) for i in range(n)]
    work = dict(name=wl.name, kind=wl.kind, seconds=wl.seconds, image=list(wl.image),
                drawers=wl.drawers,
                author=0 if wl.kind in ("image", "latejoin") else None)
    base = dict(system=system, group=GROUP, port=port, size=list(BOARD), addrs=addrs,
                peers=n if wl.kind != "latejoin" else 1, server=lan.addr(n), workload=work)
    procs: list[Proc] = []
    server = None
    try:
        if system == "relay":
            server = Proc(lan, n, {**base, "system": "relay-server", "index": n}, logdir,
                          f"{system}-{wl.name}-{rate}-server")
            server.expect("ready", 60)
        starters = 1 if wl.kind == "latejoin" else n
        for i in range(starters):
            procs.append(Proc(lan, i, {**base, "index": i}, logdir,
                              f"{system}-{wl.name}-{rate}-{i}"))
        for p in procs:
            p.expect("ready", 90)
        end = time.monotonic() + 30
        while True:
            oks = [p.ask("link", "link")["ok"] for p in procs]
            if all(oks):
                break
            if time.monotonic() > end:
                raise RuntimeError(f"only {sum(oks)} of {len(oks)} peers connected")
            time.sleep(0.05)
        before = [lan.link_counters(i) for i in range(n + 1)]
        everyone = procs + ([server] if server else [])
        for p in everyone:
            p.start_profile()
        for p in everyone:
            p.send("go")
        drawn = [p.expect("drawn", wl.timeout + 30) for p in everyone]
        t_drawn = time.monotonic()
        if wl.kind == "idle":
            time.sleep(max(0.0, wl.seconds - (time.monotonic() - t_drawn)))
        elif wl.kind == "latejoin":
            author = procs[0]
            digest = author.ask("report", "report", 60)["digest"]
            own = drawn[0]["own"]
            if system != "p2pboard":  # the relay must hold it all before the joiner comes
                time.sleep(0.3)
            joiner = Proc(lan, 1, {**base, "index": 1, "role": "joiner"}, logdir,
                          f"{system}-{wl.name}-{rate}-joiner")
            procs.append(joiner)
            joiner.expect("ready", 60)
            j = joiner.ask(f"join {digest} {own}", "joined", wl.timeout + 30)
            res.latejoin_seconds = round(j["seconds"], 3)
            res.converged = bool(j["ok"])
        else:
            own = [d["own"] for d in drawn[:len(procs)]]
            total = sum(own)
            want = [total - o for o in own]
            last_progress, last = time.monotonic(), None
            while True:
                # p2pboard peers hash their canvas only once progress stalls (to tell a
                # board completed by a snapshot, whose records never pass through apply)
                full = system == "p2pboard" and time.monotonic() - last_progress > 0.25
                st = [p.ask("status full" if full else "status", "status") for p in procs]
                got = [x["remote"] for x in st]
                if all(g >= w for g, w in zip(got, want)):
                    break
                if full and all(x["synced"] for x in st) and \
                        len({x["digest"] for x in st}) == 1:
                    got = want  # the rest came in snapshots
                    break
                now = time.monotonic()
                if got != last:
                    last, last_progress = got, now
                if now - last_progress > (3.0 if system in RELIABLE else 1.0) or \
                        now - t_drawn > wl.timeout:
                    break
                time.sleep(0.05)
            res.delivered_fraction = round(
                sum(min(g, w) for g, w in zip(got, want)) / max(1, sum(want)), 5)
        elapsed = time.monotonic() - t_drawn
        after = [lan.link_counters(i) for i in range(n + 1)]
        if wl.kind == "idle":
            elapsed = max(elapsed, 1e-3)
        for p in everyone:
            p.stop_profile()
        reports = [p.ask("report", "report", 120) for p in procs]
        srv = server.ask("report", "report", 60) if server else None
        res.ran = True
        measure(res, wl, system, procs, reports, srv, before, after, drawn, elapsed)
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
        res.error = f"{type(err).__name__}: {err}"[:2000]
        progress(f"  {system} FAILED: {res.error}")
    finally:
        for p in procs + ([server] if server else []):
            p.quit()
        for p in list(lan.procs):
            if p.poll() is None:
                p.kill()
        lan.procs.clear()
        res.seconds = round(time.monotonic() - t_run, 1)
    return res


def measure(res: Result, wl: Workload, system: str, procs, reports, srv, before, after,
            drawn, elapsed: float) -> None:
    wire = sum((a[0] - b[0]) - 14 * (a[1] - b[1]) for a, b in zip(after, before))
    res.wire_datagrams = sum(a[1] - b[1] for a, b in zip(after, before))
    res.wire_bytes = wire
    res.peak_memory_mb = round(max(r["hwm_kb"] for r in reports) / 1024, 1)
    if os.environ.get("BENCH_AUTHOR_CORE") == "1":
        res.extra["cpus"] = [r["cpus"] for r in reports]  # each peer's, author first
    if srv:
        res.server_cpu_s = round(srv["cpu"], 3)
        res.extra["server_peak_memory_mb"] = round(srv["hwm_kb"] / 1024, 1)
    if wl.kind == "idle":
        res.idle_datagrams_per_s_per_peer = round(res.wire_datagrams / elapsed / wl.peers, 2)
        res.idle_cpu_percent_per_peer = round(
            statistics.mean(r["cpu"] for r in reports) / elapsed * 100, 3)
        res.converged = True
        return
    if wl.kind == "latejoin":
        res.extra["joiner_peak_memory_mb"] = round(reports[-1]["hwm_kb"] / 1024, 1)
        return
    # pixels painted and who authored what
    if system == "p2pboard":
        res.pixels_painted = sum(r["stats"]["pixels_painted"] for r in reports)
    elif system != "socket":
        res.pixels_painted = sum(r["pixels_painted"] for r in reports)
    else:
        res.pixels_painted = wl.image[0] * wl.image[1]
    if res.pixels_painted:
        res.bytes_per_pixel = round(wire / res.pixels_painted, 4)
    # convergence
    digests = {r.get("digest") for r in reports}
    complete = res.delivered_fraction is not None and res.delivered_fraction >= 1.0
    res.converged = complete and (system == "socket" or len(digests) == 1)
    div = [r.get("divergent") for r in reports if r.get("divergent") is not None]
    res.divergent_pixels = sum(div) if div else (0 if res.converged else None)
    # latency from the author's local apply to each remote apply
    ids = [r.get("id") for r in reports]
    own_times = {}
    for r in reports:
        for a, s, i, t in r["times"]:
            if a == r.get("id"):
                own_times[(a, s, i)] = t
    lats = []
    last_by_receiver = []
    for r in reports:
        last = 0.0
        for a, s, i, t in r["times"]:
            if a != r.get("id"):
                t0 = own_times.get((a, s, i))
                if t0 is not None:
                    lats.append(t - t0)
                last = max(last, t)
        last_by_receiver.append(max(last, r.get("t_merge") or 0.0))
    res.samples["latency"] = lats  # for pool(); not written to the JSON
    # the garbage collector's full collections while the workload ran (JSON only): every
    # peer reads nothing while one runs
    if all("gc_full" in r for r in reports):
        res.extra["gc_full_per_peer"] = round(statistics.mean(r["gc_full"] for r in reports), 2)
        res.extra["gc_full_max_ms"] = round(1000 * max(r["gc_full_max_s"] for r in reports), 1)
    if wl.kind == "strokes":
        res.latency_p50_ms = ms(pct(lats, 50))
        res.latency_p99_ms = ms(pct(lats, 99))
        res.sender_cpu_s = round(statistics.mean(r["cpu"] for r in reports), 3)
        # share of one core each peer used from go until everything was delivered
        res.extra["cpu_percent_per_peer"] = round(
            100 * res.sender_cpu_s / (wl.seconds + elapsed), 1)
        res.extra["drawers"] = wl.drawers or wl.peers
        res.extra["drawing_seconds"] = wl.seconds
    if wl.kind == "image":
        author = reports[0]
        res.sender_cpu_s = round(author["cpu"], 3)
        res.receiver_cpu_s_mean = round(statistics.mean(r["cpu"] for r in reports[1:]), 3)
        # of which in user space (the rest in the kernel), JSON only: says whether a
        # receiver's time goes to its own code or to the network stack
        res.extra["sender_user_cpu_s"] = round(author["cpu_user"], 3)
        res.extra["receiver_user_cpu_s_mean"] = round(
            statistics.mean(r["cpu_user"] for r in reports[1:]), 3)
        t0 = author["t_start"]
        pixels = wl.image[0] * wl.image[1]
        if system == "socket":
            expected = drawn[0]["own"]
            durs = [(r["last"] - t0, r["count"]) for r in reports[1:]]
            rates = [pixels * c / expected / d for d, c in durs if d > 0]
            if res.converged:
                res.image_seconds = round(max(d for d, _ in durs), 3)
            lost = [expected - c for _, c in durs]
            res.unrecovered = sum(lost)
        else:
            durs = [last - t0 for last in last_by_receiver[1:]]
            rates = [pixels / d for d in durs if d > 0] if res.converged else []
            if res.converged:
                res.image_seconds = round(max(durs), 3)
        if rates:
            res.pixels_per_s_per_receiver = round(statistics.median(rates))
        lost_sets = []
        if system in ("p2pboard", "mcast"):
            n_sent = (author["stats"]["data_sent"] if system == "p2pboard"
                      else max((s for a, s, i in own_times), default=0))
            sent = set(range(1, n_sent + 1))
            for r in reports[1:]:
                seen = set(r.get("seen", {}).get(str(author["id"]), []))
                lost_sets.append(sent - seen)
            union = set().union(*lost_sets) if lost_sets else set()
            res.loss_events = len(union)
            res.extra["datagrams_lost_at_receivers"] = sum(len(s) for s in lost_sets)
        if system == "p2pboard":
            st = [r["stats"] for r in reports]
            res.nacks = sum(s["nacks_sent"] for s in st)
            # every repair datagram: retransmissions and parity (asked for or proactive)
            res.repairs = sum(s["repairs_sent"] + s.get("parity_sent", 0) for s in st)
            res.extra["parity_sent"] = sum(s.get("parity_sent", 0) for s in st)
            res.extra["parity_proactive"] = sum(s.get("parity_proactive", 0) for s in st)
            for k in ("parity_rebuilt", "ignored_parity", "rejected_parity", "rejected_malformed",
                      "repairs_held_down", "repairs_refused", "nacks_suppressed",
                      "rejected_window", "rejected_repair", "rate_cuts"):
                res.extra[k] = sum(s.get(k, 0) for s in st)
            if res.loss_events:
                res.nacks_per_loss = round(res.nacks / res.loss_events, 3)
                res.repairs_per_loss = round(res.repairs / res.loss_events, 3)
            lat = [x for r in reports for x in r["repair_latencies"]]
            res.samples["repair"] = lat
            res.samples["recovered"] = (sum(s.get("recovered_after_nack", 0) for s in st),
                                        sum(s["recovered"] for s in st))
            res.repair_p50_ms, res.repair_p95_ms = ms(pct(lat, 50)), ms(pct(lat, 95))
            if lat:
                res.extra["repairs_over_10ms"] = round(sum(x > 0.01 for x in lat) / len(lat), 4)
                res.extra["repair_p90_ms"] = ms(pct(lat, 90))
                # losses whose receiver had NACKed before it got them (a round trip)
                res.extra["recovered_after_nack"] = round(
                    sum(s.get("recovered_after_nack", 0) for s in st)
                    / max(1, sum(s["recovered"] for s in st)), 4)
            res.unrecovered = sum(s["missing"] + s["unrecoverable"] for s in st)
            res.extra["snapshots_received"] = sum(s["snapshots_received"] for s in st)
        elif system == "mcast":
            res.unrecovered = res.extra["datagrams_lost_at_receivers"]
        elif system in ("relay", "zmq"):
            res.unrecovered = 0 if res.converged else None


def repeats(wl: Workload, repeat: int) -> int:
    """Rounds of ``wl``: ``repeat`` for the strokes and image workloads (with loss or
    without), else one (late join, idle)."""
    return repeat if wl.kind in ("strokes", "image") or wl.loss else 1


def pool(rounds: list[Result]) -> Result:
    """One result from several rounds of the same system, workload and rate."""
    if len(rounds) == 1:
        return rounds[0]
    ok = [r for r in rounds if r.ran]
    first = rounds[0]
    out = Result(first.system, first.workload, first.rate, first.peers,
                 expect_converge=first.expect_converge)
    out.extra["rounds"] = len(rounds)
    out.seconds = round(sum(r.seconds for r in rounds), 1)
    errors = [r.error for r in rounds if r.error]
    out.error = errors[0] if errors else None
    if len(ok) < len(rounds):
        out.extra["rounds_failed"] = len(rounds) - len(ok)
    if not ok:
        return out
    out.ran = True
    out.converged = len(ok) == len(rounds) and all(r.converged for r in ok)

    def total(name):
        vals = [getattr(r, name) for r in ok]
        return None if any(v is None for v in vals) else sum(vals)

    def median(name):
        vals = [getattr(r, name) for r in ok if getattr(r, name) is not None]
        return statistics.median(vals) if vals else None

    out.delivered_fraction = min((r.delivered_fraction for r in ok
                                  if r.delivered_fraction is not None), default=None)
    out.wire_bytes, out.wire_datagrams = total("wire_bytes"), total("wire_datagrams")
    out.pixels_painted = total("pixels_painted")
    if out.pixels_painted:
        out.bytes_per_pixel = round(out.wire_bytes / out.pixels_painted, 4)
    out.peak_memory_mb = max(r.peak_memory_mb for r in ok if r.peak_memory_mb is not None)
    for name in ("sender_cpu_s", "server_cpu_s", "receiver_cpu_s_mean"):
        v = median(name)
        setattr(out, name, None if v is None else round(v, 3))
    lats = [x for r in ok for x in r.samples.get("latency", [])]
    if first.latency_p99_ms is not None:
        out.latency_p50_ms, out.latency_p99_ms = ms(pct(lats, 50)), ms(pct(lats, 99))
        out.extra["latency_p99_ms_rounds"] = [r.latency_p99_ms for r in ok]
        out.extra["cpu_percent_per_peer"] = round(statistics.mean(
            r.extra["cpu_percent_per_peer"] for r in ok), 1)
        out.extra["drawers"] = first.extra.get("drawers")
        out.extra["drawing_seconds"] = first.extra.get("drawing_seconds")
    gcs = [r.extra for r in ok if "gc_full_per_peer" in r.extra]
    if gcs:
        out.extra["gc_full_per_peer"] = round(
            statistics.mean(e["gc_full_per_peer"] for e in gcs), 2)
        out.extra["gc_full_max_ms"] = max(e["gc_full_max_ms"] for e in gcs)
    if first.image_seconds is not None or any(r.image_seconds is not None for r in ok):
        # a time is only a time if every round delivered everything
        times = [r.image_seconds for r in ok]
        out.image_seconds = statistics.median(times) if None not in times else None
        out.extra["image_seconds_rounds"] = times
        out.pixels_per_s_per_receiver = median("pixels_per_s_per_receiver")
        for k in ("sender_user_cpu_s", "receiver_user_cpu_s_mean"):
            vals = [r.extra[k] for r in ok if k in r.extra]
            if vals:
                out.extra[k] = round(statistics.median(vals), 3)
    for name in ("loss_events", "nacks", "repairs", "unrecovered", "divergent_pixels"):
        setattr(out, name, total(name))
    if out.loss_events:
        if out.nacks is not None:
            out.nacks_per_loss = round(out.nacks / out.loss_events, 3)
        if out.repairs is not None:
            out.repairs_per_loss = round(out.repairs / out.loss_events, 3)
    rep = [x for r in ok for x in r.samples.get("repair", [])]
    if rep:
        out.repair_p50_ms, out.repair_p95_ms = ms(pct(rep, 50)), ms(pct(rep, 95))
        out.extra["repair_p95_ms_rounds"] = [r.repair_p95_ms for r in ok]
        out.extra["repair_p90_ms"] = ms(pct(rep, 90))
        out.extra["repairs_over_10ms"] = round(sum(x > 0.01 for x in rep) / len(rep), 4)
        after, recovered = (sum(r.samples["recovered"][i] for r in ok if "recovered" in r.samples)
                            for i in (0, 1))
        out.extra["recovered_after_nack"] = round(after / max(1, recovered), 4)
    for k, v in first.extra.items():  # counters: summed over the rounds
        if k not in out.extra and isinstance(v, int) and all(
                isinstance(r.extra.get(k), int) for r in ok):
            out.extra[k] = sum(r.extra[k] for r in ok)
    return out


def run(workloads: list[Workload], rates: list[str | None], systems: tuple[str, ...],
        results: list[Result] | None = None, on_result=None, repeat: int = 1) -> list[Result]:
    """Every system on every workload at every rate, appended to ``results``;
    ``on_result(result)`` is called after each (pooled) result."""
    results = [] if results is None else results
    logdir = Path(tempfile.mkdtemp(prefix="p2pbench-logs-"))
    port = 41000 + os.getpid() % 2000
    t0 = time.monotonic()
    for rate in rates:
        rname = rate or "unlimited"
        for wl in workloads:
            todo = [s for s in wl.systems if s in systems]
            if not todo:
                continue
            progress(f"{time.monotonic() - t0:6.1f} s  {rname} {wl.name}: building "
                     f"{wl.peers + 1} hosts")
            with Lan(wl.peers + 1) as lan:
                lan.shape(rate)
                if wl.loss:
                    for i in range(1, wl.peers):
                        lan.loss(i, wl.loss, proto=None)
                n = repeats(wl, repeat)
                rounds: dict[str, list[Result]] = {system: [] for system in todo}
                for k in range(n):
                    for system in todo:
                        port += 1
                        r = run_system(lan, wl, system, rname, port, logdir)
                        rounds[system].append(r)
                        turn = f" (round {k + 1} of {n})" if n > 1 else ""
                        progress(f"{time.monotonic() - t0:6.1f} s  {rname} {wl.name} "
                                 f"{system}{turn}: {summary(r)}")
                for system in todo:
                    r = pool(rounds[system])
                    results.append(r)
                    if on_result is not None:
                        on_result(r)
                    if n > 1:
                        progress(f"{time.monotonic() - t0:6.1f} s  {rname} {wl.name} "
                                 f"{system}, {n} rounds pooled: {summary(r)}")
    return results


def summary(r: Result) -> str:
    if not r.ran:
        return f"did not run ({r.error})"
    bits = [("converged" if r.converged else "NOT converged")]
    for label, v, unit in (("p99", r.latency_p99_ms, " ms"), ("image", r.image_seconds, " s"),
                           ("join", r.latejoin_seconds, " s"),
                           ("idle", r.idle_datagrams_per_s_per_peer, " dgram/s"),
                           ("delivered", r.delivered_fraction, ""),
                           ("B/px", r.bytes_per_pixel, "")):
        if v is not None:
            bits.append(f"{label} {v}{unit}")
    return ", ".join(bits) + f" ({r.seconds} s)"


def to_json(results: list[Result]) -> list[dict]:
    out = []
    for r in results:
        d = asdict(r)
        del d["samples"]
        out.append(d)
    return out
