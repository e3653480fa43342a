"""Keeping the garbage collector's full collections short.

CPython frees most objects by reference counting; its cycle collector runs besides, by
generations, and every so often a full collection walks every object the collector
tracks. Most of those are start-up objects that live as long as the process: modules,
classes, functions, the UI's widgets. A full collection of a headless peer after a few
seconds of drawing walked about 36,000 objects, 23,000 of them from start-up, and took
14-17 ms of CPU, during which the peer reads nothing: in the 8-peer stroke benchmark all
peers, allocating alike, collected at the same moment, and that stall of 40-70 ms was
the run's p99 latency (11.7 ms against 3.5 without it, docs/BENCHMARKS.md). A peer with
the Kivy window tracks several times as many start-up objects.

:func:`freeze_startup` collects once and moves every object alive at that moment into
the collector's permanent generation (``gc.freeze``), which no collection walks again:
full collections then cost what the session made since. The app calls it once its
board is open (cli.open_with_autosave, for the window and headless peers alike).

Limits: an object frozen is never examined again, so a reference cycle that only becomes
garbage later, among objects alive at the freeze, is never freed (those made and dropped
at start-up are, by the collection just before). Objects the session keeps for long
(the undo window's records) are still walked by every full collection; they are bounded
by that window.
"""

from __future__ import annotations

import gc


def freeze_startup() -> int:
    """Collect, then exempt every object alive now from later collections; the number of
    objects now frozen (``gc.get_freeze_count()``)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
