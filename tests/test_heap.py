"""Freed memory goes back to the OS once it has piled up (heap.py), and the edge asks
for that between bursts, never while datagrams wait."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from p2pboard import heap
from p2pboard.config import Config
from p2pboard.net import edge as edge_mod
from p2pboard.net.edge import Edge
from p2pboard.session import Engine

MB = 1 << 20


def test_it_trims_only_after_growth_and_counts_what_came_back():
    rss = [100 * MB]
    calls = []

    def trim(pad: int) -> int:
        calls.append(pad)
        rss[0] -= 20 * MB  # what the trim gave back
        return 1

    t = heap.Trimmer(trim=trim, rss=lambda: rss[0], growth=32 * MB)
    assert t.available and t.base == 100 * MB
    rss[0] = 131 * MB
    assert t.poll() == 0 and calls == []  # grown, but not enough
    rss[0] = 133 * MB
    assert t.poll() == 20 * MB and calls == [0]
    assert t.base == 113 * MB  # the next trim counts from what is left
    rss[0] = 140 * MB
    assert t.poll() == 0 and len(calls) == 1
    assert (t.trims, t.released) == (1, 20 * MB)


def test_without_statm_it_does_nothing():
    calls = []
    t = heap.Trimmer(trim=calls.append, rss=lambda: None)
    assert not t.available and t.poll() == 0 and calls == []


@pytest.mark.skipif(heap._malloc_trim() is None or heap.resident_bytes() is None,
                    reason="glibc's malloc_trim and /proc are Linux and glibc only")
def test_freed_blocks_pinned_in_the_heap_go_back():
    """Every other one of 128 blocks of 1 MB freed: the live ones pin the freed ones in
    glibc's heap, resident, until the trim gives them back."""
    big = np.ones(16 * MB, np.uint8)
    del big  # freeing a mapped 16 MB block makes glibc put 1 MB blocks in its heap
    # Free memory that earlier tests left resident in the heap would take the new blocks
    # without the resident size growing: give it back first, so the blocks fault in afresh.
    heap._malloc_trim()(0)
    t = heap.Trimmer(growth=32 * MB)
    start = t.base
    blocks = [np.ones(MB, np.uint8) for _ in range(128)]
    del blocks[::2]
    held = heap.resident_bytes() - start
    assert held >= 96 * MB, "freed blocks were already given back: nothing to test"
    assert t.poll() >= 32 * MB and t.trims == 1
    assert heap.resident_bytes() - start < 72 * MB  # the 64 live blocks, about
    assert len(blocks) == 64


class _Sock:
    def __init__(self) -> None:
        import socket

        self._pair = socket.socketpair()

    def recvfrom(self, n: int):
        raise BlockingIOError

    def sendto(self, d: bytes, dest) -> None:
        pass

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def close(self) -> None:
        for s in self._pair:
            s.close()


class _Counting:
    available = True

    def __init__(self) -> None:
        self.polls = 0

    def poll(self) -> int:
        self.polls += 1
        return 0


def test_the_edge_trims_between_bursts_only(monkeypatch):
    monkeypatch.setattr(edge_mod, "TRIM_EVERY", 0.01)

    async def go() -> tuple[int, int, int]:
        ed = Edge(Engine(Config(size=(64, 48)), peer_id=1), _Sock(), ("239.1.2.3", 5000))
        ed.heap = counting = _Counting()
        ed.start()
        await asyncio.sleep(0.1)
        idle = counting.polls
        ed._queue.append((b"x", None, 0.0, False))  # a burst being worked through
        polls = counting.polls
        await asyncio.sleep(0.05)
        busy = counting.polls - polls
        ed._queue.clear()
        ed.close()
        polls = counting.polls
        await asyncio.sleep(0.05)
        return idle, busy, counting.polls - polls

    idle, busy, after_close = asyncio.run(go())
    assert idle >= 3 and busy == 0 and after_close == 0


def test_the_edge_does_not_trim_during_a_stream(monkeypatch):
    """A paste streaming in at 10,000 datagrams a second: no trim until it has been quiet
    for TRIM_QUIET, even though the queue empties between the reads."""
    from .test_edge import StreamSocket

    monkeypatch.setattr(edge_mod, "TRIM_EVERY", 0.005)
    monkeypatch.setattr(edge_mod, "TRIM_QUIET", 0.2)

    async def go() -> tuple[int, int, int]:
        loop = asyncio.get_running_loop()
        e = Engine(Config(size=(64, 48)), peer_id=1, now=loop.time())
        sock = StreamSocket(loop, 1e-4, 3000)
        ed = Edge(e, sock, ("239.1.2.3", 5000), loop=loop)
        ed.heap = counting = _Counting()
        ed.start()
        while sock.taken < 300:  # the stream has begun
            await asyncio.sleep(0.001)
        polls = counting.polls
        while sock.taken < len(sock.items):
            await asyncio.sleep(0.001)
        during = counting.polls - polls
        await asyncio.sleep(0.1)
        soon = counting.polls - polls - during
        await asyncio.sleep(0.3)
        later = counting.polls - polls - during - soon
        ed.close()
        return during, soon, later

    during, soon, later = asyncio.run(go())
    assert during == 0 and soon == 0 and later >= 5
