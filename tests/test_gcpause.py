"""gcpause.py: start-up objects are exempted from the cycle collector, its full collections
wait for a quiet moment (or MAX_GAP), and what comes after is still collected."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from p2pboard import gcpause


class _Node:
    pass


@pytest.fixture
def gc_restored():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_freeze_exempts_what_is_alive_and_defers_full_collections(gc_restored):
    alive = _Node()
    young, middle, _ = gc.get_threshold()
    frozen = gcpause.freeze_startup()
    assert frozen == gc.get_freeze_count() > 1000  # this process's modules, functions, ...
    assert gc.is_tracked(alive) and len(gc.get_objects(2)) < frozen / 10
    assert gc.get_threshold() == (young, middle, gcpause.DEFER) and gcpause.deferred()
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle made after the freeze
    gone = weakref.ref(a)
    del a, b
    gc.collect()  # what Deferred runs
    assert gone() is None
    later = _Node()
    assert gcpause.freeze_startup() == frozen and gc.is_tracked(later)  # once per process
    assert any(o is later for g in range(3) for o in gc.get_objects(g))  # not frozen


def test_without_defer_the_thresholds_stay(gc_restored):
    before = gc.get_threshold()
    gcpause.freeze_startup(defer=False)
    assert gc.get_threshold() == before and not gcpause.deferred()


def _deferred(pending=5, is_deferred=True):
    runs = []
    state = {"pending": pending}
    d = gcpause.Deferred(0.0, collect=lambda gen: runs.append(gen) or 0,
                         pending=lambda: state["pending"], is_deferred=lambda: is_deferred)
    return d, runs, state


def test_a_deferred_collection_waits_for_min_gap_and_a_quiet_moment():
    d, runs, _ = _deferred()
    busy = iter(range(1, 10_000))
    t = 0.0
    while t < gcpause.MIN_GAP + 5:  # drawing: the activity count moves every poll
        assert not d.poll(t, next(busy))
        t += gcpause.POLL
    n = next(busy)
    assert not d.poll(t, n)  # the last datagram just now
    assert not d.poll(t + gcpause.QUIET / 2, n)
    assert d.poll(t + gcpause.QUIET, n) and runs == [2]
    assert d.last == t + gcpause.QUIET and d.collections == 1 and d.forced == 0
    assert not d.poll(t + gcpause.QUIET + 1, n)  # not again before MIN_GAP
    assert d.poll(t + gcpause.QUIET + gcpause.MIN_GAP, n) and runs == [2, 2]


def test_a_room_that_never_stops_drawing_still_collects_every_max_gap():
    d, runs, _ = _deferred()
    t, k = 0.0, 0
    while t <= 2 * gcpause.MAX_GAP + 1:
        k += 1
        d.poll(t, k)
        t += gcpause.POLL
    assert d.collections == d.forced == 2 and runs == [2, 2]


def test_nothing_runs_when_nothing_could_be_garbage_or_collections_are_not_deferred():
    d, runs, state = _deferred(pending=0)
    assert not d.poll(gcpause.MAX_GAP * 2, 1) and not d.poll(gcpause.MAX_GAP * 3, 1)
    state["pending"] = 1
    assert d.poll(gcpause.MAX_GAP * 3 + 1, 1) and runs == [2]
    d, runs, _ = _deferred(is_deferred=False)
    assert not d.poll(gcpause.MAX_GAP * 2, 1) and runs == []


def test_the_poller_stops_when_the_board_closes():
    class Stats:
        data_received = data_sent = 0

    class FakeBoard:
        closed = False
        polls = 0

        def __init__(self):
            self.third_poll = asyncio.Event()

        @property
        def engine(self):
            self.polls += 1
            if self.polls >= 3:
                self.third_poll.set()
            return type("Engine", (), {"stats": Stats})

    async def main():
        b = FakeBoard()
        task = asyncio.ensure_future(gcpause.collect_when_quiet(b, every=0.001))
        await asyncio.wait_for(b.third_poll.wait(), 1.0)  # it keeps polling while open
        assert not task.done()
        b.closed = True
        await asyncio.wait_for(task, 1.0)

    asyncio.run(main())


def test_the_app_freezes_and_defers_once_its_board_is_open(monkeypatch):
    """cli.open_with_autosave (the window's and the headless peer's way in) does both after
    start_board returned, with autosave or without."""
    from p2pboard import api, cli
    from p2pboard.autosave import DataDirError
    from p2pboard.config import Config

    calls = []

    async def start_board(**kw):
        calls.append("start")
        if kw.get("autosave"):
            raise DataDirError("no folder here")
        return "board"

    monkeypatch.setattr(api, "start_board", start_board)
    monkeypatch.setattr(gcpause, "freeze_startup", lambda: calls.append("freeze"))
    monkeypatch.setattr(gcpause, "start", lambda board: calls.append(("poll", board)))
    board = asyncio.run(cli.open_with_autosave(Config(), autosave=True, data_dir=None))
    assert board == "board" and calls == ["start", "start", "freeze", ("poll", "board")]
