"""What receiving a paste costs one peer: ``scripts/bench.py receive``.

The 1920x1080 photo of ``bench.py compare``, pasted by one engine, gives the datagrams
(3,106 with protocol 10). They are measured two ways:

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
    return rx, t


def _p2pboard_receiver(n: int, coalesce: bool, ready_fd: int, out_fd: int) -> None:
    """Child process: the edge and engine on the group until ``n`` DATA datagrams."""
    from p2pboard.net import edge as edge_mod
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
    ip = data["in_process"]
    lines = [
        "## What receiving a paste costs one peer",
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
