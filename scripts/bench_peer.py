"""One peer of a comparison run of scripts/bench.py: ``python scripts/bench_peer.py CONFIG``.

scripts/bench.py starts one of these on every simulated host (always inside a network
namespace it created: never run it by hand outside one). CONFIG is a JSON object: the
system (``p2pboard``, ``relay``, ``zmq``, ``mcast``, ``socket``, or ``relay-server``), this
peer's index, every peer's address, the board size and the workload. The peer answers one
JSON object per line on stdout and obeys one command per line on stdin:

    link            are we connected to every other peer yet? ({"ok": bool}; ZeroMQ peers
                    say hello each time, until every hello was heard)
    go              do our part of the workload: draw strokes at mouse rate, or paste the
                    image (if we are its author); answers "drawn" when everything is sent
    status          records (or, for the socket ceiling, datagrams) held from others
    join DIGEST     late joiner: join now, answer when our board shows DIGEST
    report          everything measured: apply times, CPU, peak memory, counters
    quit

Timing: every namespace shares CLOCK_MONOTONIC, so the author stamps ``time.monotonic()``
when it applies a record locally and every receiver when it first applies it; the records
are keyed (author, message number, record index), the key p2pboard's own board uses. For
p2pboard the board's ``apply`` is wrapped to take these stamps; the library is unchanged.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402

import bench_systems as bs  # noqa: E402
from p2pboard import gcpause, wire  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
POINT_INTERVAL = 1 / 120  # mouse rate


def cpu_times() -> tuple[float, float]:
    """(utime, stime) of this process in seconds, from /proc/self/stat."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def cpu_seconds() -> float:
    """utime + stime of this process."""
    return sum(cpu_times())


def peak_memory_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def out(**kw) -> None:
    sys.stdout.write(json.dumps(kw, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def times_list(times: dict) -> list:
    return [[a, s, i, round(t, 6)] for (a, s, i), t in times.items()]


class Common:
    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.i = cfg["index"]
        self.size = tuple(cfg["size"])
        self.work = cfg["workload"]
        self.author = self.work.get("author")  # index of the image's author, or None
        self.cpu_go = self.user_go = self.t_go = self.t_start = 0.0
        self.image = None
        if self.work["kind"] in ("image", "latejoin") and self.author == self.i:
            self.image = bs.photo(*self.work["image"], seed=self.work.get("seed", 1))
        #: note which of the author's datagrams arrived first-hand (loss events): only the
        #: image workloads count them, and elsewhere the bookkeeping (a header decoded
        #: again and a set grown, per datagram) would be CPU charged to the system measured
        self.track_seen = self.work["kind"] == "image"
        #: full collections of the garbage collector since go: (count, longest in seconds)
        self.gc_full = [0, 0.0]
        self._gc_t = 0.0
        gc.callbacks.append(self._gc_timed)

    def _gc_timed(self, phase: str, info: dict) -> None:
        """Time the full collections (every system's peers are Python processes: while
        one runs, the peer reads nothing)."""
        if info["generation"] != 2:
            return
        if phase == "start":
            self._gc_t = time.perf_counter()
        elif self.t_go:
            self.gc_full[0] += 1
            self.gc_full[1] = max(self.gc_full[1], time.perf_counter() - self._gc_t)

    def draws(self) -> bool:
        drawers = self.work.get("drawers")
        return self.work["kind"] == "strokes" and (drawers is None or self.i < drawers)

    def divergent(self, pixels: np.ndarray) -> int | None:
        """Pixels that differ from the pasted image (image workloads only)."""
        if self.work["kind"] != "image" or self.i == self.author:
            return None
        img = bs.photo(*self.work["image"], seed=self.work.get("seed", 1))
        h, w = img.shape[:2]
        return int(np.any(pixels[:h, :w] != img, axis=2).sum())

    def mark_go(self, t: float) -> None:
        """The workload starts: CPU and time count from here."""
        user, system = cpu_times()
        self.cpu_go, self.user_go, self.t_go = user + system, user, t
        self.gc_full = [0, 0.0]

    def base_report(self) -> dict:
        user, system = cpu_times()
        # cpu_user: the share of ``cpu`` spent in the process itself (the interpreter, the
        # libraries), the rest in the kernel (sockets, page faults)
        return dict(cpu=round(user + system - self.cpu_go, 4), cpu_total=user + system,
                    cpu_user=round(user - self.user_go, 4),
                    hwm_kb=peak_memory_kb(), t_go=self.t_go, t_start=self.t_start,
                    cpus=sorted(os.sched_getaffinity(0)), gc_full=self.gc_full[0],
                    gc_full_max_s=round(self.gc_full[1], 4))


# ---------------------------------------------------------------------------- p2pboard


class P2pPeer(Common):
    async def main(self) -> None:
        import p2pboard

        self.p2p = p2pboard
        self.board = None
        self.times: dict = {}
        self.remote = 0
        self.seen: dict[int, set[int]] = {}
        self.types: dict[int, int] = {}
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        if self.cfg.get("role") != "joiner":
            await self.open()
        out(event="ready")
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                break
            cmd = line[0]
            if cmd == "link":
                # Everyone heard, and done joining: a fresh peer first loads the others'
                # board, which is not the workload (the others have no join phase). And
                # settled: alone on its host, its own datagrams no longer loop back to it
                # (edge.py; 1.5 s after joining, as in any session a user draws in).
                edge = self.board.edge
                out(event="link", ok=len(self.board.peers) >= self.cfg["peers"] - 1
                    and not self.board.engine.joining
                    and not (edge.loop_controlled and edge.looping))
            elif cmd == "go":
                self.mark_go(time.monotonic())
                await self.go()
                out(event="drawn", own=self.own())
            elif cmd == "status":
                # records that came in a snapshot (after a gap too large to NACK) never pass
                # through apply: a synced board's digest tells that it holds them all. The
                # digest (a hash of the whole canvas, several ms) only when asked for
                # ("status full"): polled during the transfer, it took CPU from the peer
                # under test.
                synced = self.board.engine.synced()
                full = synced and len(line) > 1
                out(event="status", remote=self.remote, own=self.own(), synced=synced,
                    digest=self.board.digest() if full else None)
            elif cmd == "join":
                t0 = time.monotonic()
                self.mark_go(t0)
                await self.open()
                while self.board.digest() != line[1] and time.monotonic() < t0 + 60:
                    await asyncio.sleep(0.005)
                out(event="joined", seconds=time.monotonic() - t0,
                    ok=self.board.digest() == line[1])
            elif cmd == "report":
                r = self.base_report()
                b = self.board
                r.update(times=times_list(self.times), stats=b.stats, digest=b.digest(),
                         repair_latencies=list(b.engine.repair_latencies),
                         seen={str(k): sorted(v) for k, v in self.seen.items()},
                         types={str(k): v for k, v in self.types.items()},
                         divergent=self.divergent(b.pixels), id=b.id, t_merge=self.t_merge)
                out(event="report", **r)
        if self.board is not None:
            await self.board.aclose()

    async def open(self) -> None:
        c = self.cfg
        self.board = await self.p2p.start_board(group=c["group"], port=c["port"],
                                                iface=c["addrs"][self.i], name=f"b{self.i}",
                                                size=self.size)
        # as the app does once its board is open (cli.open_with_autosave)
        gcpause.manage(self.board)
        eng = self.board.engine
        apply, times = eng.board.apply, self.times
        me = eng.id

        def timed_apply(rec, author, seq, idx):
            changed = apply(rec, author, seq, idx)
            key = (author, seq, idx)
            if key not in times:
                times[key] = time.monotonic()
                if author != me:
                    self.remote += 1
            return changed

        eng.board.apply = timed_apply
        merge = eng.board.merge

        def timed_merge(other):
            merge(other)
            self.t_merge = time.monotonic()

        self.t_merge = 0.0
        eng.board.merge = timed_merge
        receive, seen, types = eng.receive_datagram, self.seen, self.types

        def counted_receive(data, addr, now, noted=False):
            try:
                h = wire.decode_header(data)
            except wire.DecodeError:
                h = None
            if h is not None:
                types[h.type] = types.get(h.type, 0) + 1
                if h.type == wire.MsgType.DATA and not h.flags & wire.FLAG_REPAIR:
                    seen.setdefault(h.sender, set()).add(h.seq)
            receive(data, addr, now, noted)

        if self.track_seen:
            eng.receive_datagram = counted_receive

    def own(self) -> int:
        me = self.board.id
        return sum(1 for k in self.times if k[0] == me)

    async def go(self) -> None:
        b = self.board
        if self.draws():
            t0 = self.t_start = time.monotonic()
            k = 0
            for color, brush, pts in bs.strokes(1000 + self.i, *self.size,
                                                int(self.work["seconds"] * 120)):
                s = b.begin_stroke(color=color, width=brush)
                for p in pts:
                    delay = t0 + k * POINT_INTERVAL - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    s.add(p)
                    k += 1
                s.end()
        elif self.image is not None:
            self.t_start = time.monotonic()
            # "drawn" once the library has it all, as for the others once their send
            # call returned: the paced sending and any repairs are part of what we measure
            b.paste(self.image, at=(0, 0))
            while b.engine.encoding:  # a big paste is encoded as it is sent
                await asyncio.sleep(0.002)


# ---------------------------------------------------------------------------- the others


class OtherPeer(Common):
    """relay, zmq, mcast and socket peers: a receive thread, drawing on the main thread."""

    def main(self) -> None:
        c = self.cfg
        system = c["system"]
        self.rb = bs.RecordBoard(0x1000 + self.i, self.size)
        self.link = None
        self.blaster = None
        self.msgs: list[bytes] = []
        if system == "socket":
            self.blaster = bs.SocketBlaster(c["group"], c["port"], c["addrs"][self.i])
            if self.image is not None:  # pre-encoded before the clock starts
                self.msgs = self.rb.paste(self.image)
        elif c.get("role") != "joiner":
            self.connect()
        out(event="ready")
        for raw in sys.stdin:
            line = raw.split()
            if not line or line[0] == "quit":
                break
            cmd = line[0]
            if cmd == "link":
                out(event="link", ok=self.blaster is not None or self.link.ready(c["peers"]))
            elif cmd == "go":
                self.mark_go(time.monotonic())
                self.go()
                out(event="drawn", own=len(self.msgs) if self.blaster else self.rb.own())
            elif cmd == "status":
                if self.blaster:
                    out(event="status", remote=self.blaster.count,
                        own=len(self.msgs))
                else:
                    out(event="status", remote=self.rb.remote, own=self.rb.own())
            elif cmd == "join":
                t0 = time.monotonic()
                self.mark_go(t0)
                self.connect()
                want = int(line[2])
                while time.monotonic() < t0 + 60:
                    if self.rb.remote >= want:
                        with self.rb.lock:
                            if self.rb.board.digest() == line[1]:
                                break
                    time.sleep(0.002)
                with self.rb.lock:
                    ok = self.rb.board.digest() == line[1]
                out(event="joined", seconds=time.monotonic() - t0, ok=ok)
            elif cmd == "report":
                r = self.base_report()
                if self.blaster:
                    bl = self.blaster
                    r.update(count=bl.count, bytes=bl.bytes, first=bl.first, last=bl.last,
                             times=[])
                else:
                    with self.rb.lock:
                        r.update(times=times_list(self.rb.times), digest=self.rb.board.digest(),
                                 divergent=self.divergent(self.rb.board.pixels),
                                 malformed=self.rb.malformed, id=self.rb.me,
                                 pixels_painted=self.rb.pixels_painted)
                    if isinstance(self.link, bs.McastLink):
                        r["seen"] = {str(k): sorted(v) for k, v in self.link.seen.items()}
                out(event="report", **r)

    def connect(self) -> None:
        c = self.cfg
        system = c["system"]
        if system == "relay":
            self.link = bs.RelayLink(self.rb, (c["server"], c["port"]))
        elif system == "zmq":
            addrs = [f"tcp://{a}:{c['port']}" for a in c["addrs"]]
            self.link = bs.ZmqLink(self.rb, addrs[self.i],
                                   [a for j, a in enumerate(addrs) if j != self.i])
        elif system == "mcast":
            self.link = bs.McastLink(self.rb, c["group"], c["port"], c["addrs"][self.i],
                                     track_seen=self.track_seen)
        else:
            raise ValueError(f"unknown system {system}")

    def go(self) -> None:
        if self.draws():
            t0 = self.t_start = time.monotonic()
            k = 0
            for color, brush, pts in bs.strokes(1000 + self.i, *self.size,
                                                int(self.work["seconds"] * 120)):
                op = self.rb.begin()
                last = None
                for p in pts:
                    delay = t0 + k * POINT_INTERVAL - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    seg = [p] if last is None else [last, p]
                    last = p
                    self.link.send(self.rb.stroke_segment(op, color, brush, seg))
                    k += 1
        elif self.blaster is not None:
            if self.msgs:
                self.t_start = time.monotonic()
                self.blaster.blast(self.msgs)
        elif self.image is not None:
            self.t_start = time.monotonic()
            self.link.send(self.rb.paste(self.image))


def relay_server(cfg: dict) -> None:
    srv = bs.RelayServer((cfg["server"], cfg["port"]))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    out(event="ready")
    cpu_go = 0.0
    for raw in sys.stdin:
        line = raw.split()
        if not line or line[0] == "quit":
            break
        if line[0] == "go":
            cpu_go = cpu_seconds()
            out(event="drawn", own=0)
        elif line[0] == "link":
            out(event="link", ok=True)
        elif line[0] == "status":
            out(event="status", remote=0, own=0)
        elif line[0] == "report":
            out(event="report", cpu=round(cpu_seconds() - cpu_go, 4), cpu_total=cpu_seconds(),
                hwm_kb=peak_memory_kb(), messages=srv.messages, times=[])
    srv.shutdown()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    if cfg["system"] == "relay-server":
        relay_server(cfg)
    elif cfg["system"] == "p2pboard":
        asyncio.run(P2pPeer(cfg).main())
    else:
        OtherPeer(cfg).main()
    os._exit(0)  # receive threads block in recv; no need to unwind them


if __name__ == "__main__":
    main()
