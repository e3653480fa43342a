"""What receiving a paste costs one peer: ``scripts/bench.py receive``.

The 1920x1080 photo of ``bench.py compare``, pasted by one engine, gives the datagrams
(3,652 with protocol 6). They are measured two ways:

* **In process**, no socket: decoding only (header and records), decoding and applying
  to a board (what every system of the comparison does), and p2pboard's whole engine
  (sequence numbers, gap detection, the repair cache, loss meter, board). The fastest of
  three passes, in microseconds per datagram.
* **Through a real socket**: one receiver process (the real asyncio edge and engine, as
  ``p2pboard`` runs them, with the kernel's arrival stamps) on loopback multicast in the
  private namespace, fed by a sender process that paces the datagrams at a given rate;
  with the edge's read coalescing on (as shipped) and off. The receiver's CPU (user and
  system, from its first datagram until it holds the last), its wake-ups, and the
  datagrams each wake-up read. The sender sleeps between datagrams, so on 2 cores the
  receiver has a core to itself, as it would on a machine of its own.

Limits: one run per cell (shared machines are noisy: expect 10% between runs); loopback
has no link rate, so datagrams arrive at the pace the sender gives them.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_systems as bs  # noqa: E402
from p2pboard import wire  # noqa: E402
from p2pboard.config import Config  # noqa: E402
from p2pboard.session import Engine  # noqa: E402

SIZE = (1920, 1080)
GROUP, PORT = "239.255.7.7", 47999
#: datagrams a second: a slow link, 100 Mbit/s (about 10,000 of these), the default
#: pacing ceiling of 32 MB/s
RATES = (2_000, 5_000, 10_000, 27_000)


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


def in_process(dgrams: list[bytes]) -> dict:
    """Microseconds per datagram: decode only, decode and apply, the whole engine."""

    def decode_only() -> None:
        for d in dgrams:
            h = wire.decode_header(d)
            wire.decode_records(memoryview(d)[wire.HEADER.size:], h.sender, *SIZE)

    def decode_apply() -> None:
        rb = bs.RecordBoard(999, SIZE)
        for d in dgrams:
            rb.receive(d)

    def engine() -> None:
        e = Engine(Config(size=SIZE), peer_id=999, now=0.0)
        for i, d in enumerate(dgrams):
            e.receive_datagram(d, None, 10.0 + i * 1e-5)

    out = {}
    for name, fn in (("decode", decode_only), ("decode_apply", decode_apply),
                     ("engine", engine)):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        out[name] = round(best / len(dgrams) * 1e6, 1)
    return out


def _receiver(n: int, coalesce: bool, ready_fd: int, out_fd: int) -> None:
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
            await asyncio.sleep(0.002)
        if e.stats.data_received >= n:
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        ed.close()
        got = e.stats.data_received
        return dict(got=got, stamped=ed.stamped, wakeups=wakeups - w0, pauses=ed.pauses,
                    user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime,
                    seconds=round(t_last - t0, 3))

    res = asyncio.run(main())
    os.write(out_fd, json.dumps(res).encode())


def through_socket(dgrams: list[bytes], rate: float, coalesce: bool) -> dict:
    """One receiver process, one paced sender (this process)."""
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(ready_r)
            os.close(out_r)
            _receiver(len(dgrams), coalesce, ready_w, out_w)
        except BaseException:  # noqa: BLE001 - report, never return into the parent's code
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.close(out_w)
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
    raw = b""
    while chunk := os.read(out_r, 65536):
        raw += chunk
    os.waitpid(pid, 0)
    res = json.loads(raw) if raw else {"got": 0}
    n = len(dgrams)
    cpu = res.get("user", 0) + res.get("sys", 0)
    res.update(rate=rate, coalesce=coalesce, datagrams=n,
               us_per_datagram=round(cpu / n * 1e6, 1),
               per_wakeup=round(n / max(1, res.get("wakeups", 0)), 1))
    return res


def run(progress=print, quick: bool = False) -> dict:
    """``quick``: the first 500 datagrams at 10,000 a second only (a smoke test)."""
    dgrams = paste_datagrams()
    if quick:
        dgrams = dgrams[:500]
    progress(f"{len(dgrams)} datagrams of the photo; in process")
    result = dict(datagrams=len(dgrams),
                  bytes=sum(len(d) for d in dgrams), in_process=in_process(dgrams), socket=[])
    for rate in (10_000,) if quick else RATES:
        for coalesce in (True, False):
            r = through_socket(dgrams, rate, coalesce)
            progress(f"{rate}/s coalescing {'on' if coalesce else 'off'}: "
                     f"{r['us_per_datagram']} us a datagram, {r['per_wakeup']} a wake-up, "
                     f"got {r['got']}")
            result["socket"].append(r)
    return result


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
        f"p2pboard's whole engine {ip['engine']}.",
        "",
        "Through a real socket, one receiver with a core of its own, the datagrams paced "
        "at a given rate:",
        "",
        "| datagrams/s | read coalescing | CPU us per datagram (user + sys) | datagrams per "
        "wake-up | pauses | received |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["socket"]:
        lines.append(f"| {r['rate']:,} | {'on' if r['coalesce'] else 'off'} | "
                     f"{r['us_per_datagram']} | {r['per_wakeup']} | {r.get('pauses', 0)} | "
                     f"{r['got']:,} of {r['datagrams']:,} |")
    return "\n".join(lines)
