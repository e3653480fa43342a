"""What receiving costs one peer, a paste and a stroke: ``scripts/bench.py receive``.

The 1920x1080 photo of ``bench.py compare``, pasted by one engine, gives the datagrams
(3,106 with protocol 10). They are measured two ways, and a stroke datagram a third:

* **In process**, no socket: decoding only (header and records), decoding and applying
  to a board (what every system of the comparison does), and p2pboard's whole engine
  (sequence numbers, gap detection, the repair cache, loss meter, board) in a receiver
  that has joined the author's group, as every receiver of the comparison has. The
  fastest of three passes, in microseconds per datagram. Then the same one datagram at
  a time with the core's caches made cold before each (a write over 8 MB): what a
  datagram costs a receiver that wakes after other processes ran on its core, as 16
  receivers on 2 cores do.
* **Through a real socket**, on loopback multicast in the private namespace, fed by a
  sender process that paces the datagrams at a given rate. The receiver is p2pboard's
  (the real asyncio edge and engine, as ``p2pboard`` runs them, with the kernel's arrival
  stamps), with the edge's read coalescing on (as shipped) and off; or the comparison's
  plain one (a blocking ``recv``, then the same decoding and board: what its plain
  multicast peers do). Measured: the receiver's CPU (user and system, from its first
  datagram until it holds the last), its wake-ups and the datagrams each read. With one
  receiver, the sender sleeps between datagrams, so on 2 cores the receiver has a core to
  itself, as it would on a machine of its own. With 16 receivers they share the 2 cores,
  as in the comparison's image-16 (CPU per datagram is then each receiver's mean).
* **A stroke datagram, cold**: the comparison's strokes at mouse rate, from an author
  engine to one that has joined its group (STROKE_DATAGRAMS of them, each one record),
  handed over one at a time with the core's caches made cold before each, as a receiver
  finds them that sleeps 8 ms between two: to the comparison's board (decode, apply), to
  p2pboard's engine (``receive_datagram``), and to its edge and engine (the edge's wake-up
  for a readable socket: reading, the engine, the pass after it that sends, delivers
  events and arms the timer). The edge reads from a stand-in for the socket that hands it
  the datagram with an arrival stamp, so the system call is not in it, and its loop's
  clock is the protocol time the strokes were drawn in, so that the timers between two
  datagrams (joining a finished stroke's pieces) run as they would, outside the
  measurement. The median datagram, the median of three passes. What p2pboard adds to
  the board here is what each of 7 receivers sharing 2 cores adds to the queue that sets
  the stroke rows' latency in the comparison.

Limits: one run per cell (shared machines are noisy: expect 10% between runs); loopback
has no link rate, so datagrams arrive at the pace the sender gives them.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_systems as bs  # noqa: E402
import numpy as np  # noqa: E402
from p2pboard import wire  # noqa: E402
from p2pboard.config import Config  # noqa: E402
from p2pboard.net import edge as edge_mod  # noqa: E402
from p2pboard.net.sockets import SO_TIMESTAMPNS  # noqa: E402
from p2pboard.session import Engine  # noqa: E402

SIZE = (1920, 1080)
GROUP, PORT = "239.255.7.7", 47999
#: where the photo's author (peer 7) sends from, for the in-process engine
AUTHOR_ADDR = ("10.0.0.7", PORT)
#: datagrams a second: a slow link, 100 Mbit/s (about 10,000 of these), the default
#: pacing ceiling of 32 MB/s
RATES = (2_000, 5_000, 10_000, 27_000)
#: receivers sharing the cores in the contended runs (the comparison's image-16), and rate
SHARED_RECEIVERS, SHARED_RATE = 16, 10_000
#: how often the p2pboard receiver's own harness looks whether all came: each look is a
#: wake-up of its event loop, which costs about as much as a datagram (every 2 ms, the
#: looks were about a quarter of the wake-ups at 2,000 datagrams a second; the plain
#: receiver has no such look)
WATCH = 0.05
#: bytes written over before each datagram of the cold in-process passes: more than the
#: 2 MB level-2 cache of a core of the project's machines
COLD_FLUSH = 8 << 20
#: stroke datagrams of the cold stroke passes (about 5 s of drawing at 120 points a second)
STROKE_DATAGRAMS = 600


def paste_datagrams() -> list[bytes]:
    """The DATA datagrams of the photo pasted by one engine, in order."""
    e = Engine(Config(size=SIZE, rate=1_250_000_000), peer_id=7, now=0.0)
    e.datagrams_to_send(0.0)
    e.paste(bs.photo(*SIZE), 0, 0, 0.01)
    out, t = [], 0.02
    while e.has_pending():
        out += [d for d in e.datagrams_to_send(t) if d[3] == wire.MsgType.DATA]
        t += 0.0005
    return out


def gauge(dgrams: list[bytes]) -> float:
    """How fast this host is right now: microseconds of CPU a datagram to decode
    ``dgrams`` (the photo's) and apply them to a board, as every system of the comparison
    does, the fastest of three passes. The same code on the same machine takes longer in
    a busy hour of a shared host (other tenants' work on the same hardware), which slows
    every peer of a run alike: ``bench.py compare`` measures this before, between and
    after its workloads, so a slow hour shows in its report. It sees one process's speed,
    not what waking and switching between many processes costs."""
    best = float("inf")
    for _ in range(3):
        rb = bs.RecordBoard(999, SIZE)
        t = time.process_time()
        for d in dgrams:
            rb.receive(d)
        best = min(best, time.process_time() - t)
        del rb
    return round(best / len(dgrams) * 1e6, 1)


def in_process(dgrams: list[bytes]) -> dict:
    """Microseconds per datagram: decode only, decode and apply, the whole engine. Each
    pass gets its board or engine made before the clock starts."""
    synced, t0 = synced_receiver()

    def decode_only(_) -> None:
        for d in dgrams:
            h = wire.decode_header(d)
            wire.decode_records(memoryview(d)[wire.HEADER.size:], h.sender, *SIZE)

    def decode_apply(rb: bs.RecordBoard) -> None:
        for d in dgrams:
            rb.receive(d)

    def engine(e: Engine) -> None:
        for i, d in enumerate(dgrams):
            e.receive_datagram(d, AUTHOR_ADDR, t0 + i * 1e-4)

    out = {}
    passes = (("decode", decode_only, lambda: None),
              ("decode_apply", decode_apply, lambda: bs.RecordBoard(999, SIZE)),
              ("engine", engine, lambda: copy.deepcopy(synced)))
    for name, fn, make in passes:
        best = float("inf")
        for _ in range(3):
            state = make()
            t = time.perf_counter()
            fn(state)
            best = min(best, time.perf_counter() - t)
            del state
        out[name] = round(best / len(dgrams) * 1e6, 1)
    out["cold"] = cold(dgrams, synced, t0)
    return out


def cold(dgrams: list[bytes], synced: Engine, t0: float) -> dict:
    """The same three passes one datagram at a time, each after writing over a buffer of
    COLD_FLUSH bytes (more than a core's level-2 cache), so that the datagram finds the
    code and data it needs out of the cache nearest the core, as a receiver does that wakes
    after other processes have run on its core: microseconds per datagram (the pass's
    total over its datagrams: the board paints a paste's strips in runs, every so many
    datagrams), the median of three passes."""
    flush = np.zeros(COLD_FLUSH, np.uint8)
    steps = {
        "decode": lambda _, d, i: wire.decode_records(
            memoryview(d)[wire.HEADER.size:], wire.decode_header(d).sender, *SIZE),
        "decode_apply": lambda rb, d, i: rb.receive(d),
        "engine": lambda e, d, i: e.receive_datagram(d, AUTHOR_ADDR, t0 + i * 1e-4),
    }
    makes = {"decode": lambda: None, "decode_apply": lambda: bs.RecordBoard(999, SIZE),
             "engine": lambda: copy.deepcopy(synced)}
    out = {}
    for name, step in steps.items():
        means = []
        for _ in range(3):
            state, times = makes[name](), []
            for i, d in enumerate(dgrams):
                flush[::64] += 1  # one write per cache line
                t = time.perf_counter()
                step(state, d, i)
                times.append(time.perf_counter() - t)
            means.append(sum(times) / len(times))
            del state
        out[name] = round(statistics.median(means) * 1e6, 1)
    return out



def synced_receiver() -> tuple[Engine, float]:
    """An engine that has joined the group of the photo's author (peer 7, whose first DATA
    datagram is number 1), so that the author's source is anchored: 3 s of protocol time
    trading datagrams with a stand-in for the author. With the time it ends at."""
    _, rx, t = synced_pair()
    return rx, t


def synced_pair() -> tuple[Engine, Engine, float]:
    """:func:`synced_receiver`, with the author engine it joined."""
    author = Engine(Config(size=SIZE), peer_id=7, now=0.0)
    rx = Engine(Config(size=SIZE), peer_id=999, now=0.0)
    t = 0.0
    while t < 3.0:
        t += 0.001
        for src, dst, addr in ((author, rx, AUTHOR_ADDR), (rx, author, ("10.0.0.9", PORT))):
            due = src.get_timer()
            if due is not None and due <= t:
                src.handle_timer(t)
            for d in src.datagrams_to_send(t):
                dst.receive_datagram(d, addr, t + 2e-4)
    s = rx.source_state(7)
    assert s is not None and s.anchored and s.contiguous == 0 and rx.synced(), s
    return author, rx, t


def stroke_datagrams(author: Engine, t: float, n: int) -> list[tuple[bytes, float]]:
    """What ``author`` sends from protocol time ``t`` while drawing ``n`` points of the
    comparison's strokes at 120 a second: a DATA datagram a point (checked), with its
    heartbeats and session messages, each with the time it was sent."""
    out: list[tuple[bytes, float]] = []
    sent = 0
    for color, brush, pts in bs.strokes(1007, *SIZE, n):
        op, last = author.begin(t), None
        for p in pts:
            author.extend_stroke(op, [p] if last is None else [last, p], brush, color, t)
            last = p
            for d in author.datagrams_to_send(t):
                out.append((d, t))
                sent += d[3] == wire.MsgType.DATA
            t += 1 / 120
            due = author.get_timer()
            if due is not None and due <= t:
                author.handle_timer(t)
    assert sent == n, sent
    return out


class _Handover:
    """Stands in for the edge's socket in the cold stroke pass: hands over the one
    datagram it was given, stamped as arrived 0.1 ms before, then has nothing. Its file
    descriptor is one end of an idle socket pair, for the loop to watch."""

    def __init__(self) -> None:
        self.pair = socket.socketpair()
        self.datagram: bytes | None = None

    def recvmsg(self, _size: int, _ancsize: int):
        d, self.datagram = self.datagram, None
        if d is None:
            raise BlockingIOError
        sec, frac = divmod(time.time() - 1e-4, 1.0)
        stamp = edge_mod.TIMESPEC.pack(int(sec), int(frac * 1e9))
        return d, [(socket.SOL_SOCKET, SO_TIMESTAMPNS, stamp)], 0, AUTHOR_ADDR

    def fileno(self) -> int:
        return self.pair[0].fileno()

    def sendto(self, _data: bytes, _dest) -> None:
        pass  # the receiver's own datagrams (session messages) go nowhere

    def close(self) -> None:
        for s in self.pair:
            s.close()


def cold_strokes(n: int = STROKE_DATAGRAMS, rounds: int = 3) -> dict:
    """Microseconds per stroke datagram, cold: the comparison's board, p2pboard's engine,
    its edge and engine (see the module's docstring); ``n`` datagrams, ``rounds`` passes
    of each."""
    author, synced, t0 = synced_pair()
    dgrams = stroke_datagrams(author, t0, n)
    flush = np.zeros(COLD_FLUSH, np.uint8)

    def board() -> float:
        rb, times = bs.RecordBoard(999, SIZE), []
        for d, _ in dgrams:
            flush[::64] += 1
            t = time.perf_counter()
            rb.receive(d)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def engine() -> float:
        e, times = copy.deepcopy(synced), []
        for d, at in dgrams:
            flush[::64] += 1
            t = time.perf_counter()
            e.receive_datagram(d, AUTHOR_ADDR, at + 2e-4)
            times.append(time.perf_counter() - t)
            due = e.get_timer()  # (as the edge's timer would, outside the measurement)
            if due is not None and due <= at + 3e-4:
                e.handle_timer(at + 3e-4)
            e.datagrams_to_send(at + 3e-4)
        return statistics.median(times)

    async def edge() -> float:
        loop = asyncio.get_running_loop()
        clock = [dgrams[0][1]]
        loop.time = lambda: clock[0]  # the protocol time the strokes were drawn in
        e, sock = copy.deepcopy(synced), _Handover()
        ed = edge_mod.Edge(e, sock, (GROUP, PORT), loop=loop)
        ed.stamped = True  # (the stand-in is no socket.socket, for the edge to ask)
        ed.start()
        times = []
        for d, at in dgrams:
            clock[0] = at + 2e-4
            flush[::64] += 1
            sock.datagram = d
            t = time.perf_counter()
            ed._readable()  # what the loop calls when the socket is readable
            times.append(time.perf_counter() - t)
            await asyncio.sleep(0)  # the timers due meanwhile
        ed.close()
        assert e.stats.data_received == n, e.stats.as_dict()
        return statistics.median(times)

    passes = {"board": [], "engine": [], "edge": []}
    for _ in range(rounds):
        passes["board"].append(board())
        passes["engine"].append(engine())
        passes["edge"].append(asyncio.run(edge()))
    return {k: round(statistics.median(v) * 1e6, 1) for k, v in passes.items()}


def _p2pboard_receiver(n: int, coalesce: bool, ready_fd: int, out_fd: int) -> None:
    """Child process: the edge and engine on the group until ``n`` DATA datagrams."""
    from p2pboard.net.sockets import open_multicast_socket

    if not coalesce:
        edge_mod.COALESCE_RATE = float("inf")

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        sock, info = open_multicast_socket(GROUP, PORT)
        e = Engine(Config(size=SIZE), peer_id=999, now=loop.time())
        ed = edge_mod.Edge(e, sock, (GROUP, PORT), loop=loop)
        wakeups = 0
        readable = ed._readable

        def counted() -> None:
            nonlocal wakeups
            wakeups += 1
            readable()

        ed._readable = counted
        ed.start()
        os.write(ready_fd, b"r")
        while e.stats.data_received == 0:
            await asyncio.sleep(0.0005)
        r0, w0, t0 = resource.getrusage(resource.RUSAGE_SELF), wakeups, time.monotonic()
        r1, last, t_last = r0, 0, t0
        while e.stats.data_received < n and time.monotonic() - t_last < 1.0:
            if e.stats.data_received != last:
                last, t_last = e.stats.data_received, time.monotonic()
                r1 = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.sleep(WATCH)
        if e.stats.data_received >= n:
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        ed.close()
        got = e.stats.data_received
        return dict(got=got, stamped=ed.stamped, wakeups=wakeups - w0, pauses=ed.pauses,
                    user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime,
                    seconds=round(t_last - t0, 3))

    res = asyncio.run(main())
    os.write(out_fd, json.dumps(res).encode())


def _plain_receiver(n: int, ready_fd: int, out_fd: int) -> None:
    """Child process: the comparison's plain multicast receiver (a blocking ``recv``, then
    decoding and applying to a board) until ``n`` datagrams, or a second without any."""
    from p2pboard.net.sockets import open_multicast_socket

    sock, _ = open_multicast_socket(GROUP, PORT)
    sock.setblocking(True)
    sock.settimeout(1.0)
    rb = bs.RecordBoard(999, SIZE)
    os.write(ready_fd, b"r")
    rb.receive(sock.recv(2048))
    got, r0 = 1, resource.getrusage(resource.RUSAGE_SELF)
    t0 = t_last = time.monotonic()
    while got < n:
        try:
            msg = sock.recv(2048)
        except socket.timeout:
            break  # the rest were dropped (the second of waiting is idle: no CPU)
        rb.receive(msg)
        got += 1
        t_last = time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    # (wake-ups are not counted: a blocking recv that finds a datagram waiting does not
    # sleep, and nothing here tells the two apart)
    res = dict(got=got, stamped=False, wakeups=None, pauses=0,
               user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime,
               seconds=round(t_last - t0, 3))
    os.write(out_fd, json.dumps(res).encode())


def through_socket(dgrams: list[bytes], rate: float, coalesce: bool,
                   system: str = "p2pboard", receivers: int = 1) -> dict:
    """``receivers`` receiver processes (``system``: "p2pboard" or "plain"), one paced
    sender (this process). CPU, wake-ups and datagrams received are each receiver's mean
    (``got``: the least any receiver got)."""
    kids = []
    for _ in range(receivers):
        ready_r, ready_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(ready_r)
                os.close(out_r)
                if system == "plain":
                    _plain_receiver(len(dgrams), ready_w, out_w)
                else:
                    _p2pboard_receiver(len(dgrams), coalesce, ready_w, out_w)
            except BaseException:  # noqa: BLE001 - report, never return into the parent's code
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        os.close(ready_w)
        os.close(out_w)
        kids.append((pid, ready_r, out_r))
    for _, ready_r, _ in kids:
        os.read(ready_r, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    time.sleep(0.2)
    t0 = time.monotonic()
    for i, d in enumerate(dgrams):
        ahead = t0 + i / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        s.sendto(d, (GROUP, PORT))
    s.close()
    each = []
    for pid, ready_r, out_r in kids:
        raw = b""
        while chunk := os.read(out_r, 65536):
            raw += chunk
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(out_r)
        each.append(json.loads(raw) if raw else {"got": 0})
    n = len(dgrams)

    def mean(key: str) -> float:
        return sum(r.get(key, 0) for r in each) / len(each)

    res = dict(got=min(r["got"] for r in each), stamped=all(r.get("stamped") for r in each),
               wakeups=None if system == "plain" else round(mean("wakeups")),
               pauses=round(mean("pauses")),
               user=mean("user"), sys=mean("sys"), seconds=max(r.get("seconds", 0) for r in each))
    cpu = res["user"] + res["sys"]
    res.update(rate=rate, coalesce=coalesce, system=system, receivers=receivers, datagrams=n,
               us_per_datagram=round(cpu / n * 1e6, 1),
               per_wakeup=None if system == "plain" else round(n / max(1, res["wakeups"]), 1))
    return res


def run(progress=print, quick: bool = False) -> dict:
    """``quick``: the first 500 datagrams at 10,000 a second only (a smoke test)."""
    dgrams = paste_datagrams()
    if quick:
        dgrams = dgrams[:500]
    progress(f"{len(dgrams)} datagrams of the photo; in process")
    result = dict(datagrams=len(dgrams),
                  bytes=sum(len(d) for d in dgrams), in_process=in_process(dgrams), socket=[])
    progress("stroke datagrams, cold, in process")
    result["strokes_cold"] = cold_strokes(100, 1) if quick else cold_strokes()
    cells = [(rate, system, coalesce, 1) for rate in ((10_000,) if quick else RATES)
             for system, coalesce in (("p2pboard", True), ("p2pboard", False),
                                      ("plain", False))]
    if not quick:
        cells += [(SHARED_RATE, system, system == "p2pboard", SHARED_RECEIVERS)
                  for system in ("p2pboard", "plain")]
    for rate, system, coalesce, receivers in cells:
        r = through_socket(dgrams, rate, coalesce, system, receivers)
        progress(f"{rate}/s {_label(r)}, {receivers} receiver(s): {r['us_per_datagram']} us "
                 f"a datagram, {r['per_wakeup'] or '–'} a wake-up, got {r['got']}")
        result["socket"].append(r)
    return result


def _label(r: dict) -> str:
    if r.get("system", "p2pboard") == "plain":
        return "plain (blocking recv, decode, apply)"
    return f"p2pboard, coalescing {'on' if r['coalesce'] else 'off'}"


def markdown(data: dict) -> str:
    ip, sc = data["in_process"], data["strokes_cold"]
    lines = [
        "## What receiving costs one peer: a paste, and a stroke",
        "",
        f"Command: `{data['command']}` ({data['date']}; {data['machine']}). The "
        f"1920x1080 photo's {data['datagrams']:,} datagrams ({data['bytes']:,} bytes); "
        "how it works and its limits: scripts/bench_receive.py.",
        "",
        "In process (no socket), microseconds per datagram: decoding "
        f"{ip['decode']}, decoding and applying to a board {ip['decode_apply']}, "
        f"p2pboard's whole engine {ip['engine']}. The same one datagram at a time, each "
        "finding the caches nearest the core cold (as after other processes ran there): "
        "decoding "
        f"{ip['cold']['decode']}, decoding and applying {ip['cold']['decode_apply']}, "
        f"the engine {ip['cold']['engine']}.",
        "",
        f"A stroke datagram (the comparison's strokes at mouse rate, {STROKE_DATAGRAMS} of "
        "them), handed over one at a time with cold caches, microseconds at the median: the "
        f"comparison's board {sc['board']}, p2pboard's engine {sc['engine']}, its edge and "
        f"engine {sc['edge']} (from a wake-up for a readable socket to the timer armed, "
        "the system call left out).",
        "",
        "Through a real socket, the datagrams paced at a given rate; one receiver with a "
        "core of its own, or 16 sharing the 2 cores (CPU: each receiver's mean):",
        "",
        "| datagrams/s | receivers | receiver | CPU us per datagram (user + sys) | "
        "datagrams per wake-up | pauses | received |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in data["socket"]:
        lines.append(f"| {r['rate']:,} | {r.get('receivers', 1)} | {_label(r)} | "
                     f"{r['us_per_datagram']} | {r['per_wakeup'] or '–'} | "
                     f"{r.get('pauses', 0)} | "
                     f"{r['got']:,} of {r['datagrams']:,} |")
    return "\n".join(lines)
