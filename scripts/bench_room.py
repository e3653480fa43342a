"""What a busy room's history costs one peer: ``scripts/bench.py room``.

A peer keeps every operation that may still be undone in its board's log (board.py):
after 8 people have drawn without a pause for two minutes, over 6,000 strokes received
in over 100,000 pieces. This builds such a log in process (no socket; virtual time):
``--authors`` engines each draw the comparison's mouse-like strokes (120 points a second,
widths 2 to 20, scripts/bench_systems.py) for ``--seconds``, interleaved as in a room,
and one more engine receives every datagram, as every peer of the room does. Then, on
that receiver, wall time of:

* an **undo** and a **redo** of each author's latest stroke (the receiver taking in the
  author's toggle and showing the result);
* a **clear** by one author, its **undo** (every operation under it shows again: the view
  is rebuilt from the base and the log) and its **redo**;
* a **late joiner**'s share of the snapshot: the receiver writing its state
  (store.dump), a fresh board loading it and showing it;
* a **full garbage collection** of the receiver's process (the authors dropped first), and
  the objects it walks (p2pboard/gcpause.py says when the app runs one).

After every step the receiver's view is checked against a rebuild from its base and log,
so the figures are of a board that is right. Limits: one process, one core, in process:
no network, no other peers competing for the core (so these are lower bounds of what a
peer on the benchmark's shared cores would see); medians and maxima of the undos of one
run; the shared machine is noisy (expect 10-20% between runs).
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_systems as bs  # noqa: E402
import numpy as np  # noqa: E402
from p2pboard import store  # noqa: E402
from p2pboard.board import Board  # noqa: E402
from p2pboard.session import Engine  # noqa: E402

SIZE = (1920, 1080)
RATE = 120  # points a second, each author


def _addr(i: int) -> tuple[str, int]:
    return (f"198.18.0.{i + 1}", 47777)


def _check(board: Board) -> None:
    """The view equals a rebuild from the base and the log (or the run is void)."""
    want = board.pixels.copy()
    board._rebuild = True
    if not np.array_equal(board.pixels, want):
        raise AssertionError("the receiver's view differs from a rebuild of its board")


def _meet(engines: list[Engine], addrs: list[tuple[str, int]]) -> float:
    """Let the engines find each other and finish joining, as a room's peers have long
    done (a peer that never joined never learns that an operation is complete, and its
    board would keep every piece): the virtual time after it."""
    t = 0.0
    for _ in range(80):
        t += 0.05
        for e, addr in zip(engines, addrs):
            e.handle_timer(t)
            for d in e.datagrams_to_send(t):
                for f in engines:
                    if f is not e:
                        f.receive_datagram(d, addr, t)
        if not any(e.joining for e in engines) and t > 2.0:
            break
    if any(e.joining for e in engines):
        raise AssertionError("the room's engines did not finish joining")
    return t


def build(authors: int, seconds: float, progress=None) -> tuple[list[Engine], Engine, float]:
    """The room: (authors' engines, the receiver's, virtual time at the end)."""
    rx = Engine(None, peer_id=1000, now=0.0)
    eng = [Engine(None, peer_id=i + 1, now=0.0) for i in range(authors)]
    t = _meet(eng + [rx], [_addr(i) for i in range(authors)] + [_addr(authors)])

    def deliver(i: int) -> None:
        for d in eng[i].datagrams_to_send(t):
            rx.receive_datagram(d, _addr(i), t)

    strokes = [bs.strokes(1000 + i, *SIZE, int(seconds * RATE)) for i in range(authors)]
    current: list[list | None] = [None] * authors
    left = authors
    ticks = 0
    while left:
        t += 1 / RATE
        ticks += 1
        for i, e in enumerate(eng):
            if strokes[i] is None:
                continue
            if current[i] is None:
                nxt = next(strokes[i], None)
                if nxt is None:
                    strokes[i] = None
                    left -= 1
                    continue
                color, width, pts = nxt
                current[i] = [e.begin(t), color, width, list(pts)[::-1]]
            op, color, width, pts = current[i]
            e.extend_stroke(op, [pts.pop()], width, color, t)
            if not pts:
                current[i] = None
            deliver(i)
        # timers, as every peer's event loop runs them (the receiver joins complete
        # strokes' pieces on one, Board.compact); what the receiver sends goes nowhere
        for i, e in enumerate(eng):
            if e.get_timer() <= t:
                e.handle_timer(t)
                deliver(i)
        if rx.get_timer() <= t:
            rx.handle_timer(t)
            rx.datagrams_to_send(t)
        if progress and ticks % (RATE * 20) == 0:
            progress(f"room: {ticks / RATE:.0f} s of drawing built, "
                     f"{len(rx.board._log):,} log entries")
    return eng, rx, t


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(authors: int = 8, seconds: float = 120.0, progress=None) -> dict:
    t_build = time.perf_counter()
    eng, rx, t = build(authors, seconds, progress)
    b = rx.board
    out: dict = dict(authors=authors, seconds=seconds, size=list(SIZE),
                     build_s=round(time.perf_counter() - t_build, 1),
                     pieces=rx.stats.data_received, log_entries=len(b._log),
                     live_ops=b.live_ops,
                     live_pixels=b.live_pixels)
    _check(b)

    def toggle(i: int, what: str) -> float:
        nonlocal t
        t += 0.05
        getattr(eng[i], what)(t)
        out_ = eng[i].datagrams_to_send(t)

        def take() -> None:
            for d in out_:
                rx.receive_datagram(d, _addr(i), t)
            b.pixels  # noqa: B018 - shows it (pieces waiting are painted on read)
        return _timed(take)

    undo, redo = [], []
    for i in range(authors):
        undo.append(toggle(i, "undo"))
        _check(b)
        redo.append(toggle(i, "redo"))
        _check(b)
    out.update(undo_ms_median=round(1e3 * statistics.median(undo), 2),
               undo_ms_max=round(1e3 * max(undo), 2),
               redo_ms_median=round(1e3 * statistics.median(redo), 2),
               redo_ms_max=round(1e3 * max(redo), 2))
    t += 0.05
    eng[0].clear(t)
    cleared = eng[0].datagrams_to_send(t)

    def take_clear() -> None:
        for d in cleared:
            rx.receive_datagram(d, _addr(0), t)
        b.pixels  # noqa: B018
    out["clear_ms"] = round(1e3 * _timed(take_clear), 1)
    _check(b)
    out["undo_clear_ms"] = round(1e3 * toggle(0, "undo"), 1)
    _check(b)
    out["redo_clear_ms"] = round(1e3 * toggle(0, "redo"), 1)
    _check(b)
    toggle(0, "undo")  # the drawing shows again, for the late joiner
    _check(b)

    # a late joiner's share: the snapshot written, loaded and shown by a fresh board
    sources = {s: (1, 1) for s in range(1, authors + 1)}
    snap = {}
    out["dump_ms"] = round(1e3 * _timed(lambda: snap.setdefault("b", store.dump(b, sources))), 1)
    out["snapshot_bytes"] = len(snap["b"])

    def join() -> None:
        loaded, _ = store.load(snap["b"], *SIZE)
        fresh = Board(*SIZE)
        fresh.merge(loaded)
        snap["fresh"] = fresh
    out["load_and_show_ms"] = round(1e3 * _timed(join), 1)
    if snap["fresh"].digest() != b.digest():
        raise AssertionError("the late joiner's board differs from the receiver's")
    del snap["fresh"]

    del eng
    gc.collect()
    out["gc_tracked_objects"] = len(gc.get_objects())
    out["gc_full_ms"] = round(1e3 * min(_timed(gc.collect) for _ in range(3)), 1)
    return out


def markdown(data: dict) -> str:
    r = data
    return f"""## Undo, clear and join in a busy room

Command: `{data['command']}` ({data['date']}; {data['machine']}). How it works and its
limits: scripts/bench_room.py. In process, one receiving peer, after {r['authors']} authors
drew without a pause for {r['seconds']:.0f} s each at mouse rate: it received
{r['pieces']:,} stroke pieces (a datagram each), and its log holds {r['live_ops']:,}
operations that may still be undone in {r['log_entries']:,} entries ({r['live_pixels']:,}
pixels). Wall time on the receiver, the view checked against a rebuild after each step:

| step | time |
|---|---|
| an author's undo of its latest stroke (median, max of {r['authors']}) | {r['undo_ms_median']} ms, {r['undo_ms_max']} ms |
| its redo (median, max) | {r['redo_ms_median']} ms, {r['redo_ms_max']} ms |
| a clear | {r['clear_ms']} ms |
| undoing the clear (the whole view rebuilt from base and log) | {r['undo_clear_ms']} ms |
| redoing it | {r['redo_clear_ms']} ms |
| writing the snapshot a late joiner gets ({r['snapshot_bytes']:,} bytes) | {r['dump_ms']} ms |
| the joiner loading it and showing the board | {r['load_and_show_ms']} ms |
| a full garbage collection ({r['gc_tracked_objects']:,} objects tracked) | {r['gc_full_ms']} ms |
"""
