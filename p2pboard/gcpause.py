"""Keeping the garbage collector's full collections out of the way of drawing.

CPython frees most objects by reference counting; its cycle collector runs besides, by
generations, and every so often a full collection walks every object it tracks, while
the peer reads nothing. Two kinds of object make those walks long:

* start-up objects that live as long as the process (modules, classes, functions, the
  UI's widgets): about 23,000 in a headless peer, several times that with the window;
* the board's log of operations that are not final yet (board.py): two tracked objects
  per stroke segment until the stroke is complete, then two per stroke; each author's
  last 1024 operations (up to 48 million pixels in all).

A headless peer after a few seconds of drawing walked about 36,000 objects in 14-17 ms of
CPU; in the 8-peer stroke benchmark every peer, allocating alike, did so at the same
moment, and that stall of 40-70 ms made the run's p99 latency (docs/BENCHMARK-HISTORY.md).
CPython starts a full collection when what survived the younger generations since the
last one exceeds a quarter of what the last one kept, so they keep coming as the log
grows, each longer: one engine taking in 8 authors drawing without a pause (in process,
2026-12-05) collected after 14, 27, 41, 55, 70, 87, 109, 136 and 171 s of drawing, for
13 ms at first and 144 ms at the last (190,000 log entries, 400,000 tracked objects).
That was before complete strokes were joined into one log entry each (board.py): in the
room of ``scripts/bench.py room`` (8 authors, 2 minutes) the log now holds 6,817 entries
instead of 115,200, and a full collection takes 38-54 ms instead of 156.

What the app does (:func:`manage`, once its board is open; cli.py):

1. collect once and move every object alive at that moment into the permanent generation
   (``gc.freeze``), which no collection walks again;
2. defer automatic full collections (the third threshold set out of reach; the young
   generations are collected as before, within microseconds);
3. run the deferred ones itself (:class:`Deferred`, polled by :func:`collect_when_quiet`)
   when the board has been quiet, no drawing in or out (DATA datagrams; heartbeats and
   other control traffic do not count), for :data:`QUIET` seconds, at most
   every :data:`MIN_GAP` seconds; and after :data:`MAX_GAP` seconds without a quiet
   moment, at once, so reference cycles that became garbage are freed within minutes
   even in a room that never stops drawing.

Limits: an object frozen at start-up is never examined again, so a reference cycle that
only becomes garbage later among those objects is never freed (whatever start-up made and
dropped is, by the collection just before the freeze). Between deferred collections,
cyclic garbage waits: at most MAX_GAP seconds of it. Library users of
:func:`p2pboard.start_board` keep Python's defaults unless they call these themselves.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

#: the third threshold while full collections are deferred: never reached
DEFER = 1 << 30
#: seconds without drawing in or out after which a deferred full collection may run
QUIET = 0.5
#: seconds at least between deferred full collections
MIN_GAP = 30.0
#: seconds at most: then one runs even while the peer is busy
MAX_GAP = 300.0
#: seconds between looks at the peer's activity
POLL = 0.25


def freeze_startup(defer: bool = True) -> int:
    """Collect, exempt every object alive now from later collections and (``defer``)
    defer automatic full collections to :class:`Deferred`. The number of objects frozen.
    Once per process: if objects are frozen already (a board opened again after a failed
    start), nothing more is frozen, so that nothing of a session is."""
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
    if defer:
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, DEFER)
    return gc.get_freeze_count()


def deferred() -> bool:
    """Are automatic full collections deferred (by :func:`freeze_startup`)?"""
    return gc.isenabled() and gc.get_threshold()[2] >= DEFER


class Deferred:
    """Decides when a deferred full collection runs. ``collect`` and ``pending`` (collections
    of the middle generation since the last full one: whether anything could have become
    garbage there) stand in for the gc module in tests."""

    def __init__(self, now: float, collect: Callable[[int], int] = gc.collect,
                 pending: Callable[[], int] = lambda: gc.get_count()[2],
                 is_deferred: Callable[[], bool] = deferred) -> None:
        self._collect = collect
        self._pending = pending
        self._is_deferred = is_deferred
        self.last = now  #: when the last full collection ran (or when we started)
        self._activity: int | None = None
        self._quiet_since = now
        self.collections = 0  #: full collections run
        self.forced = 0  #: ... of which after MAX_GAP without a quiet moment

    def poll(self, now: float, activity: int) -> bool:
        """``activity``: a count that grows with the board's work (drawing in and out).
        Runs a full collection if one is due; whether it did."""
        if activity != self._activity:
            self._activity, self._quiet_since = activity, now
        if not self._is_deferred() or self._pending() == 0:
            return False
        gap = now - self.last
        forced = gap >= MAX_GAP
        if not forced and (gap < MIN_GAP or now - self._quiet_since < QUIET):
            return False
        self._collect(2)
        self.last = now
        self.collections += 1
        self.forced += forced
        return True


async def collect_when_quiet(board, every: float = POLL) -> None:
    """Poll ``board`` (a :class:`p2pboard.api.Board`) for quiet moments and run the deferred
    full collections in them, until it is closed."""
    loop = asyncio.get_running_loop()
    d = Deferred(loop.time())
    while not board.closed:
        await asyncio.sleep(every)
        s = board.engine.stats  # (Board.stats would also read the kernel's counters)
        d.poll(loop.time(), s.data_received + s.data_sent)


_tasks: set[asyncio.Task] = set()


def start(board) -> asyncio.Task:
    """:func:`collect_when_quiet` as a task of the running loop (kept referenced here)."""
    task = asyncio.ensure_future(collect_when_quiet(board))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


def manage(board) -> None:
    """What the app does once ``board`` is open: :func:`freeze_startup`, then
    :func:`start` the poller that runs the deferred full collections."""
    freeze_startup()
    start(board)
