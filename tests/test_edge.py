"""The asyncio edge's receive queue, with a stand-in socket (no network): repairs and
NACKs jump the read-ahead queue, the rest keeps its order, batches yield to the loop, and
the queue is bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from p2pboard import seal, wire
from p2pboard.ops import Clear
from p2pboard.config import Config
from p2pboard.net import edge as edge_mod
from p2pboard.net.edge import Edge
from p2pboard.session import Engine

SIZE = (64, 48)


class FakeSocket:
    """recvfrom hands out queued datagrams, then would block; sendto records."""

    def __init__(self, datagrams: list[bytes]) -> None:
        self.inbox = list(datagrams)
        self.sent: list[bytes] = []

    def recvfrom(self, n: int):
        if not self.inbox:
            raise BlockingIOError
        return self.inbox.pop(0), ("10.0.0.9", 5000)

    def sendto(self, d: bytes, dest) -> None:
        self.sent.append(d)

    def fileno(self) -> int:  # pragma: no cover - only start() needs it
        return -1

    def close(self) -> None:
        pass


def data(seq: int, flags: int = 0) -> bytes:
    return wire.encode_header(wire.MsgType.DATA, 77, seq, SIZE, flags) + wire.encode_clear(
        Clear(77, seq, seq))


def nack() -> bytes:
    return wire.encode_nack(78, 1, SIZE, wire.Nack(77, 1, ((1, 2),)))


def test_urgent_is_repairs_nacks_and_snapshot_requests_and_offers_only():
    e = Engine(Config(size=SIZE), peer_id=1)
    assert e.urgent(data(5, wire.FLAG_REPAIR))
    assert e.urgent(nack())
    assert e.urgent(wire.encode_snap_req(78, 1, SIZE, wire.SnapReq(9, 0)))
    assert e.urgent(wire.encode_snap_meta(78, 1, SIZE, wire.SnapMeta(79, 9, 5, 4000, 1000)))
    assert not e.urgent(wire.encode_snap_chunk(78, 1, SIZE, wire.SnapChunk(0, 5, 0, b"x" * 1000)))
    assert not e.urgent(data(5))
    assert not e.urgent(wire.encode_empty(wire.MsgType.HEARTBEAT, 77, 5, SIZE))
    assert not e.urgent(b"")
    assert not e.urgent(b"XX\x02\x04\x01" + bytes(20))
    cfg = Config(size=SIZE)
    key = seal.derive_key("pass", cfg.group, cfg.port, n=2**4)
    sealed = Engine(Config(size=SIZE, key=key), peer_id=2)
    assert not sealed.urgent(nack())  # sealed boards keep their order


def run_edge(inbox: list[bytes], monkeypatch, batch: int = 4):
    monkeypatch.setattr(edge_mod, "PROCESS_BATCH", batch)
    order: list[bytes] = []

    async def main():
        e = Engine(Config(size=SIZE), peer_id=1)
        real = e.receive_datagram
        e.receive_datagram = lambda d, a, now, noted=False: (order.append(d),
                                                             real(d, a, now, noted))
        ed = Edge(e, FakeSocket(inbox), ("239.0.0.1", 5000), loop=asyncio.get_running_loop())
        ed._readable()  # after a quiet time: one datagram, handed over at once
        assert order == inbox[:1] and not ed._queue
        del order[:]
        ed._readable()  # called again at once: a burst is waiting, read as a batch
        first = list(order)
        for _ in range(20):
            await asyncio.sleep(0)
        ed.close()
        return ed, first

    ed, first = asyncio.run(main())
    return ed, first, order


def test_every_datagram_queued_is_shown_to_the_engine_as_it_is_read(monkeypatch):
    """The engine finds gaps in what waits in the queue (Engine.note_read): every datagram
    queued in order, none that jumps the queue, each before it is handed over, with what
    note_read said handed over with it. (One handed over at once is not queued.)"""
    monkeypatch.setattr(edge_mod, "PROCESS_BATCH", 4)
    inbox = [data(s) for s in range(1, 8)] + [data(3, wire.FLAG_REPAIR)] + [data(8)]
    events: list[tuple] = []

    async def main():
        e = Engine(Config(size=SIZE), peer_id=1)
        real = e.receive_datagram

        def note(d, addr, at, now):
            events.append(("read", d))
            return int.from_bytes(d[9:13], "big") % 2 == 0  # what the engine says

        def receive(d, addr, now, noted=False):
            events.append(("handed", d, noted))
            real(d, addr, now, noted)

        e.note_read, e.receive_datagram = note, receive
        ed = Edge(e, FakeSocket(inbox), ("239.0.0.1", 5000), loop=asyncio.get_running_loop())
        ed._readable()  # one datagram, handed over at once
        ed._readable()  # the burst behind it: queued
        for _ in range(100):  # let the loop hand the rest over, a batch per turn
            if not (ed._queue or ed._urgent):
                break
            await asyncio.sleep(0)
        ed.close()

    asyncio.run(main())
    assert events[0] == ("handed", inbox[0], False)
    reads = [ev[1] for ev in events if ev[0] == "read"]
    assert reads == inbox[1:7] + inbox[8:]  # in order; not the repair
    for d in reads:
        seq = int.from_bytes(d[9:13], "big")
        assert events.index(("read", d)) < events.index(("handed", d, seq % 2 == 0))
    assert ("handed", inbox[7], False) in events


def test_repairs_and_nacks_go_before_the_backlog_and_the_rest_keeps_its_order(monkeypatch):
    backlog = [data(s) for s in range(1, 11)]
    repair, n = data(3, wire.FLAG_REPAIR), nack()
    ed, first, order = run_edge(backlog[:6] + [repair] + backlog[6:] + [n], monkeypatch)
    assert first[:2] == [repair, n]  # the first batch starts with them
    assert len(first) == 4  # then yields to the loop after a batch
    assert [d for d in order if d not in (repair, n)] == backlog[1:]  # in order, every one
    assert len(order) == 11
    assert ed.queue_peak == 11


def test_the_engine_knows_when_the_oldest_datagram_still_queued_arrived(monkeypatch):
    """Silence and timeouts are judged at that time (Engine._heard_until): a peer seconds
    behind on its queue has not yet heard what the others sent meanwhile."""
    monkeypatch.setattr(edge_mod, "PROCESS_BATCH", 4)
    seen: list[tuple[int, float | None, float]] = []

    async def main():
        e = Engine(Config(size=SIZE), peer_id=1)
        real = e.receive_datagram

        def spy(d, a, now, noted=False):
            seen.append((e.backlog, e.queued_since, now))
            real(d, a, now, noted)

        e.receive_datagram = spy
        ed = Edge(e, FakeSocket([data(s) for s in range(1, 11)]), ("239.0.0.1", 5000),
                  loop=asyncio.get_running_loop())
        ed._readable()  # one datagram at once: nothing queued
        ed._readable()  # the rest as a batch, four at a time
        for _ in range(20):
            await asyncio.sleep(0)
        ed.close()
        return e

    e = asyncio.run(main())
    assert len(seen) == 10 and seen[0][:2] == (0, None)
    for backlog, since, now in seen[1:-1]:
        assert backlog > 0 and since is not None and since <= now + 1e-9
    assert seen[-1][:2] == (0, None) and e.queued_since is None


def test_the_read_ahead_queue_is_bounded(monkeypatch):
    monkeypatch.setattr(edge_mod, "QUEUE_MAX", 5)
    sock_items = [data(s) for s in range(1, 21)]
    ed, first, order = run_edge(sock_items, monkeypatch, batch=2)
    assert ed.queue_peak <= 5
    assert order == sock_items[1:]  # the kernel's buffer held the rest; nothing lost here


def test_mouse_rate_datagrams_go_to_the_engine_one_wake_up_each(monkeypatch):
    """Datagrams that come one at a time (strokes) are read one per wake-up and handed to
    the engine at once, without the read-ahead queue or a second read that would find
    the socket empty."""
    reads = []

    class Counting(FakeSocket):
        def recvfrom(self, n: int):
            reads.append(bool(self.inbox))
            return super().recvfrom(n)

    # every datagram comes after a quiet gap (none counts as a burst), without the test
    # waiting on the wall clock for one
    monkeypatch.setattr(edge_mod, "BURST_GAP", 0.0)

    async def main():
        loop = asyncio.get_running_loop()
        e = Engine(Config(size=SIZE), peer_id=1, now=loop.time())
        got = []
        real = e.receive_datagram
        e.receive_datagram = lambda d, a, now, noted=False: (got.append(d), real(d, a, now, noted))
        sock = Counting([])
        ed = Edge(e, sock, ("239.0.0.1", 5000), loop=loop)
        for s in range(1, 6):
            sock.inbox.append(data(s))
            ed._readable()
            assert not ed._queue and ed.queue_peak == 0
        ed.close()
        return got

    got = asyncio.run(main())
    assert got == [data(s) for s in range(1, 6)]
    assert reads == [True] * 5  # never a read of an empty socket


class FullSocket(FakeSocket):
    """Takes ``room`` datagrams, then would block until the test makes room again."""

    def __init__(self, room: int) -> None:
        super().__init__([])
        self.room = room
        import socket

        self._pair = socket.socketpair()  # a real, always-writable fd for add_writer

    def sendto(self, d: bytes, dest) -> None:
        if self.room <= 0:
            raise BlockingIOError
        self.room -= 1
        self.sent.append(d)

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def close(self) -> None:
        for s in self._pair:
            s.close()


def test_a_full_send_buffer_holds_data_back_and_the_engine_waits_for_it():
    """The link is slower than the pacer: the socket says EAGAIN. The engine then releases
    only control messages and repairs (and does not grow its rate); once the socket takes
    more, everything goes, in order."""

    async def main():
        loop = asyncio.get_running_loop()
        e = Engine(Config(size=SIZE), peer_id=1, now=loop.time())
        sock = FullSocket(room=3)
        ed = Edge(e, sock, ("239.0.0.1", 5000), loop=loop)
        ed.pump()  # the start-up SESSION and SNAP_REQ
        for i in range(40):
            e.paint(__import__("numpy").arange(i * 10, i * 10 + 5), (1, 2, 3, 255),
                    loop.time())
            e._flush(loop.time())
        ed.pump()
        assert e.blocked and ed._backlog
        for i in range(40, 50):  # drawn while the socket is full: kept by the engine
            e.paint(__import__("numpy").arange(i * 10, i * 10 + 5), (1, 2, 3, 255),
                    loop.time())
            e._flush(loop.time())
        pace = e.pace
        for _ in range(5):
            ed.pump()
        assert len(e._data) == 10 and e.pace == pace  # not released, rate not grown
        sock.room = 10_000
        for _ in range(200):
            await asyncio.sleep(0.002)
            if not e.has_pending() and not ed._backlog:
                break
        assert not e.blocked and not ed._backlog and not e._data
        seqs = [int.from_bytes(d[9:13], "big") for d in sock.sent
                if d[3] == wire.MsgType.DATA]
        assert seqs == sorted(seqs) and len(seqs) == 50
        ed.close()

    asyncio.run(main())


class StreamSocket(FullSocket):
    """A datagram becomes readable every ``gap`` seconds of loop time. Its fd polls
    readable all the time, so the loop calls the edge whenever it watches the socket: how
    many datagrams each read finds is the edge's own choice."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gap: float, count: int) -> None:
        super().__init__(room=10_000)
        self._pair[1].send(b"x")
        self.loop, self.gap, self.t0 = loop, gap, loop.time()
        self.items = [data(s) for s in range(1, count + 1)]
        self.taken = 0
        self.batches = 0  #: reads that found datagrams
        self._streak = 0

    def recvfrom(self, n: int):
        due = min(len(self.items), int((self.loop.time() - self.t0) / self.gap))
        if self.taken >= due:
            if self._streak:
                self.batches += 1
                self._streak = 0
            raise BlockingIOError
        self.taken += 1
        self._streak += 1
        return self.items[self.taken - 1], ("10.0.0.9", 5000)


def stream_through_edge(gap: float, count: int):
    """Run a stream through a started edge: (all in order, batches read, pauses)."""

    async def main():
        loop = asyncio.get_running_loop()
        e = Engine(Config(size=SIZE), peer_id=1, now=loop.time())
        got: list[bytes] = []
        real = e.receive_datagram
        e.receive_datagram = lambda d, a, now, noted=False: (got.append(d), real(d, a, now, noted))
        sock = StreamSocket(loop, gap, count)
        ed = Edge(e, sock, ("239.0.0.1", 5000), loop=loop)
        ed.start()
        deadline = loop.time() + 20 + count * gap
        while len(got) < count and loop.time() < deadline:
            await asyncio.sleep(0.005)
        ed.close()
        return got == sock.items, sock.batches, ed.pauses

    return asyncio.run(main())


def test_a_fast_stream_is_read_in_batches_and_mouse_rate_at_once():
    """At 10,000 datagrams a second (a paste on a fast LAN) the edge, once caught up,
    stops watching the socket for a moment so that each wake-up reads a batch. At mouse
    rate it never waits."""
    in_order, batches, pauses = stream_through_edge(gap=1e-4, count=2000)
    assert in_order
    # Watching all the time, the edge would read each datagram as it came: 2,000 reads.
    # (How often it pauses is the machine's: 27-59 times on a quiet one, none when a busy
    # one keeps the loop so late that it never catches up, and every read is a batch
    # anyway. The pause itself: test_caught_up_on_a_stream_the_edge_pauses_reading.)
    assert batches <= 2000 // 4
    in_order, batches, pauses = stream_through_edge(gap=5e-3, count=30)
    assert in_order
    # Never paused. (Each read finds one datagram unless the loop itself ran late, which a
    # busy machine can make it do: the count of reads is the machine's, not the edge's.)
    assert pauses == 0 and batches >= 15


def test_caught_up_on_a_stream_the_edge_pauses_reading():
    """The mechanism behind the batches: with the arrival rate of a stream and nothing
    left to process, the edge stops watching the socket for COALESCE_BATCH datagrams'
    time (at most COALESCE_MAX), then reads again; at mouse rate it never stops."""

    async def main():
        loop = asyncio.get_running_loop()
        e = Engine(Config(size=SIZE), peer_id=1, now=loop.time())
        ed = Edge(e, FakeSocket([]), ("239.0.0.1", 5000), loop=loop)
        calls = []
        loop.remove_reader = lambda fd: calls.append(("remove", fd))
        loop.add_reader = lambda fd, cb: calls.append(("add", fd))
        ed._watching = True
        ed.rate = 100.0  # mouse rate: keeps watching
        ed._process()
        assert ed.pauses == 0 and ed._watching and not calls
        ed.rate = 10 * edge_mod.COALESCE_RATE
        ed._process()
        assert ed.pauses == 1 and not ed._watching and calls == [("remove", -1)]
        wait = ed._paused.when() - loop.time()
        assert 0 < wait <= min(edge_mod.COALESCE_MAX, edge_mod.COALESCE_BATCH / ed.rate) + 1e-3
        end = loop.time() + 5.0
        while not ed._watching and loop.time() < end:  # until the pause's timer has run
            await asyncio.sleep(0)
        assert ed._watching and calls[-1] == ("add", -1)
        ed.close()

    asyncio.run(main())


def test_a_datagram_that_waited_in_the_kernel_makes_the_edge_read_the_backlog_first():
    """After the peer was away (a long task, no CPU), the first datagram's arrival stamp
    is old: the edge reads what waits behind it before handing any over, so the engine
    knows its backlog (and when it began) before a timer judges silence."""
    seen: list[tuple[int, float | None]] = []

    async def main():
        loop = asyncio.get_running_loop()
        e = Engine(Config(size=SIZE), peer_id=1, now=loop.time())
        real = e.receive_datagram

        def spy(d, a, now, noted=False):
            seen.append((e.backlog, e.queued_since))
            real(d, a, now, noted)

        e.receive_datagram = spy
        ed = Edge(e, FakeSocket([data(s) for s in range(1, 6)]), ("239.0.0.1", 5000),
                  loop=loop)
        recv = ed._recv
        away = loop.time() - 2.0
        ed._recv = lambda now, off: (lambda g: g and (g[0], g[1], away))(recv(now, off))
        ed._readable()
        end = loop.time() + 5.0
        while len(seen) < 5 and loop.time() < end:  # until the queued batch is processed
            await asyncio.sleep(0)
        ed.close()

    asyncio.run(main())
    assert [b for b, _ in seen] == [4, 3, 2, 1, 0]
    assert all(since is not None for _, since in seen[:-1])


def test_our_datagrams_loop_back_only_while_another_peer_is_on_this_host(monkeypatch):
    """Two real boards on one host, on one end of a veth pair in the private namespace
    (nobody has joined the group on the other end): they hear each other only through the
    loop.
    Alone, a board turns the loop off after ``local_quiet`` (it no longer reads a copy of
    each datagram it sends); a second board starting on the same host is heard at once,
    the first turns the loop back on before answering, and the newcomer gets the board;
    once it has left, the loop goes off again."""
    import pytest

    from p2pboard import open_board
    from p2pboard.session import Timers

    from .netns import require_lan, sh

    require_lan()  # root and the ip tool
    if not sys.platform.startswith("linux"):
        pytest.skip("the loop is controlled on Linux only")
    link, addr = f"pbloop{os.getpid() % 10000}", "10.254.7.1"
    sh("ip", "link", "add", link, "type", "veth", "peer", "name", link + "p")
    try:
        sh("ip", "addr", "add", f"{addr}/32", "dev", link)
        for end in (link, link + "p"):
            sh("ip", "link", "set", end, "multicast", "on", "up")
        monkeypatch.setattr(edge_mod, "LOCAL_CHECK", 0.05)
        # local_quiet longer than a lone board takes to start (it waits out the join); once
        # b was heard, a waits peer_timeout
        kw = dict(group="239.255.77.9", port=47321, iface=addr, size=(64, 48),
                  timers=Timers(local_quiet=1.5, peer_timeout=2.5))
        asyncio.run(_two_boards_on_one_host(open_board, kw))
    finally:
        sh("ip", "link", "del", link, check=False)


async def _two_boards_on_one_host(open_board, kw) -> None:
    def loop_opt(board) -> int:
        return board.edge.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP)

    async def until(cond, timeout=10.0):
        end = asyncio.get_running_loop().time() + timeout
        while not cond():
            assert asyncio.get_running_loop().time() < end, "timed out"
            await asyncio.sleep(0.02)

    async with open_board(name="a", **kw) as a:
        assert a.edge.looping and loop_opt(a) == 1
        assert a.engine.stats.ignored_own > 0  # its own datagrams come back
        await until(lambda: not a.edge.looping)
        assert loop_opt(a) == 0
        await asyncio.sleep(0.1)  # copies of what went out before the switch are read
        own, sent = a.engine.stats.ignored_own, a.engine.stats.data_sent
        a.paint([(3, 4), (5, 6)], (200, 10, 10, 255))
        await until(lambda: a.engine.stats.data_sent > sent)
        # A copy looped back on a local link is in our socket within microseconds: a
        # tenth of a second without one shows there is none (an absence has no event).
        await asyncio.sleep(0.1)
        assert a.engine.stats.ignored_own == own
        async with open_board(name="b", **kw) as b:
            await until(lambda: b.digest() == a.digest())  # only through a's loop
            assert a.edge.looping and loop_opt(a) == 1 and b.edge.looping
        await until(lambda: not a.edge.looping)
        assert a.edge.loop_switches == 3
