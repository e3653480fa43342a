"""The board: pixels as a last-writer-wins register per pixel, with undo, as a CRDT.

How it works
------------
Every fragment (:mod:`p2pboard.ops`) paints a set of pixels at a stamp. A pixel shows the
colour of the *visible* fragment with the highest stamp covering it, or the background.
Two fragments may share a stamp: the segments of one stroke (one operation, one colour),
and, sent by a hostile peer only, two operations of one author with one Lamport time. Then
the higher colour wins (RGBA read as a little-endian u32), so that the pixel is still a
maximum, the same for every order of arrival; taking whichever came first made boards
differ for good, and anti-entropy fetch each other's state over and over.
Clearing is a fragment covering every pixel with the background colour. Visibility is a
register per operation ``(author, opno)``: :class:`~p2pboard.ops.Toggle` records of the
author switch it, the one with the highest ``opno`` wins, and the default is visible. All
of these are max-merges, so two boards that applied the same records hold the same pixels,
whatever the order, duplicates or timing.

Storage is two layers. The *base* holds, per pixel, the colour and stamp of the winner
among operations that can no longer change: an author's operation becomes final once we
hold all of that author's records up to ``opno + UNDO_WINDOW`` (:meth:`Board.settle`, driven
by the session engine), because no toggle of it can come later. Final operations are
folded into the base and forgotten (undone ones are simply dropped). The *log* keeps the
recent operations, keyed by ``(author, datagram seq, record index)`` so duplicates are
recognised; once an operation is complete (we hold every record of it), its pieces of one
colour are joined into one entry (:meth:`Board.compact`: a stroke comes in about 17
pieces, one a datagram). The *view* is the per-pixel maximum of the base and the visible
log entries. A new fragment updates the view in place; hiding an operation recomputes
only the pixels it still won, from the operations whose box (kept per operation) meets
it; a rebuild, a redo and a fold paint each operation's pieces of one colour as one set
of pixels.
Received pieces of a picture (a paste comes as bands of rows cut into column strips, one a
datagram) are logged at once but painted in runs: up to :data:`PENDING_MAX` wait, and the
strips of a band that follow each other are painted as one rectangle. Whatever reads the
view (pixels, digest, a snapshot, an undo) paints them first, so nothing ever sees the
view without them; a maximum does not depend on the order things are painted in.

Limits: the log is capped at :data:`LOG_PIXEL_CAP` pixels. Past it the oldest operations
are folded early ("forced folds", counted); an undo that later reaches such an operation
cannot take it back on this peer. In normal use (undo depth 200 of one's own strokes) the
cap is never reached. Toggle registers are capped at :data:`MAX_TOGGLES`.
"""

from __future__ import annotations

import heapq
import sys
from dataclasses import dataclass

import numpy as np
import xxhash

from .ops import BACKGROUND, UNDO_WINDOW, Clear, Image, Paint, Record, Toggle, side_by_side

#: Most pixels kept in the log of not-yet-final operations (about 4 bytes each).
LOG_PIXEL_CAP = 48 << 20
#: Most undo/redo registers kept for operations that are not final.
MAX_TOGGLES = 1 << 16
#: Most stamps whose one colour is remembered (Board._keys, about 100 bytes each).
MAX_STAMP_KEYS = 1 << 16
#: Received pieces of pictures held back to be painted together (Board._flush): a band of
#: a 1920-pixel photo is about 28 of them.
PENDING_MAX = 64
#: Keys of joined entries (Board._compact): ``(author, seq, JOINED - idx)`` for the greatest
#: key ``(author, seq, idx)`` among the pieces joined. A datagram's records are numbered
#: from 0 and never reach JOINED_MIN, so a joined entry never takes the key of a piece.
JOINED = 0xFFFF
JOINED_MIN = 0x8000
_BG = np.array(BACKGROUND, dtype=np.uint8)


def _key(rgba: np.ndarray) -> np.ndarray:
    """The tie-break key of an array of RGBA pixels (last axis): the four bytes as a
    little-endian u32, one per pixel (a view where the layout allows)."""
    if not rgba.flags.c_contiguous and rgba.strides[-1] != 1:
        rgba = np.ascontiguousarray(rgba)
    return rgba.view("<u4")[..., 0]


def _rgba_key(rgba) -> int:
    return int.from_bytes(bytes(rgba), "little")


_LITTLE = sys.byteorder == "little"


def _native(rgba) -> int:
    return int.from_bytes(bytes(rgba), sys.byteorder)


def _piece_key(key: tuple[int, int, int]) -> tuple[int, int, int]:
    """The greatest piece key a (joined) entry's key stands for."""
    return key if key[2] < JOINED_MIN else (key[0], key[1], JOINED - key[2])


def _sorted_union(parts: list[np.ndarray]) -> np.ndarray:
    """The sorted union of index arrays. (np.unique hashes first in NumPy 2: 0.1 ms for a
    stroke's 2,700 indices, three times a sort and a compare.) A stroke piece's indices
    are sorted already, and the stable sort (timsort) merges such runs instead of sorting
    afresh: a stroke of 17 pieces and 4,000 indices in 37 us instead of 70. (Any order
    comes out sorted; only the speed depends on it.)"""
    ix = np.concatenate(parts)
    ix.sort(kind="stable")
    keep = np.empty(ix.size, dtype=bool)
    keep[:1] = True
    np.not_equal(ix[1:], ix[:-1], out=keep[1:])
    return ix[keep]


def _one_entry(group: list[Entry], key: tuple[int, int, int], ix: np.ndarray) -> Entry:
    """One Paint entry for pieces of one operation, Lamport time and colour: ``ix``, the
    pixels, under ``key``, with a box around theirs."""
    x0, y0, x1, y1 = group[0].box
    for g in group:
        gx0, gy0, gx1, gy1 = g.box
        x0, y0, x1, y1 = min(x0, gx0), min(y0, gy0), max(x1, gx1), max(y1, gy1)
    r = group[0].rec
    return Entry(key, Paint(r.author, r.opno, r.lamport, r.color, ix), ix, (x0, y0, x1, y1),
                 int(ix.size), group[0].op)


def _paint_groups(entries: list[Entry]) -> tuple[dict[tuple, list[Entry]], list[Entry]]:
    """Paint entries by (Lamport time, colour), and the others: the pieces of one group
    paint as one set of pixels (one stamp, one colour)."""
    groups: dict[tuple, list[Entry]] = {}
    others: list[Entry] = []
    for e in entries:
        if isinstance(e.rec, Paint):
            groups.setdefault((e.rec.lamport, e.rec.color), []).append(e)
        else:
            others.append(e)
    return groups, others


@dataclass(slots=True)
class Entry:
    """One fragment in the log."""

    key: tuple[int, int, int]  #: (author, seq, record index)
    rec: Paint | Image | Clear
    index: np.ndarray | None  #: flat pixel indices (int32) of a Paint
    box: tuple[int, int, int, int]  #: x0, y0, x1, y1 (exclusive) it covers
    size: int  #: pixels covered
    op: tuple[int, int]  #: (author, opno) of its operation


class Board:
    """One peer's copy of a board of ``width`` x ``height`` RGBA pixels."""

    def __init__(self, width: int, height: int, view: bool = True) -> None:
        """``view=False``: no view until something reads or paints it (a snapshot that is
        only merged into another board never needs one: 24 MB at 1920x1080)."""
        self.width, self.height = int(width), int(height)
        n = self.width * self.height
        self._n = n
        # zeros, not a copy of zeros: the system maps the pages on first write only
        self._base_stamp = np.zeros(n, dtype=np.uint64)
        self._base_color = np.empty((n, 4), dtype=np.uint8)
        self._base_color[:] = _BG
        self._stamp: np.ndarray | None = np.zeros(n, dtype=np.uint64) if view else None
        self._color: np.ndarray | None = self._base_color.copy() if view else None
        self._log: dict[tuple[int, int, int], Entry] = {}
        self._ops: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        #: (author, opno) -> [x0, y0, x1, y1]: a box around every entry the operation has
        #: had in the log (never shrunk), so that an undo looks only at operations near it
        self._op_boxes: dict[tuple[int, int], list[int]] = {}
        self._heaps: dict[int, list[int]] = {}
        #: author -> heap of opnos that had entries added since they were last compacted
        #: (_compact), and the set of those (author, opno)
        self._fresh: dict[int, list[int]] = {}
        self._unsettled: set[tuple[int, int]] = set()
        #: author -> the highest opno up to which its operations are complete (settle);
        #: authors whose fresh operations include complete ones (compact() has work)
        self._complete: dict[int, int] = {}
        self._ready: set[int] = set()
        self._folded: dict[int, int] = {}
        self._toggles: dict[int, dict[int, tuple[int, bool]]] = {}
        self._ntoggles = 0
        self._live_pixels = 0
        self._dirty: list[int] | None = None
        #: stamp -> the colour key (see _key) of every pixel painted at that stamp, or -1
        #: where they differ. A stamp above _keys_floor that is not here was never painted;
        #: one at or below it may be anywhere in any colour (forgotten, or merged in).
        self._keys: dict[int, int] = {}
        self._keys_floor = 0
        self._rebuild = not view
        #: received pieces of pictures logged (and counted in the version) but not painted
        #: into the view yet: painted in runs by _flush, before anything reads the view
        self._pending: list[Entry] = []
        self._version = 0  # bumped by every change of the view
        self._digest: tuple[int, str] | None = None
        #: records refused: bad geometry, invalid toggles, over a cap
        self.rejected = 0
        #: records ignored because they belong to operations already final here
        self.stale = 0
        #: operations folded early because the log hit LOG_PIXEL_CAP
        self.forced_folds = 0

    # ------------------------------------------------------------------ reading

    @property
    def pixels(self) -> np.ndarray:
        """The board as a read-only uint8 array (height, width, 4), updated in place."""
        self._sync()
        v = self._color.reshape(self.height, self.width, 4).view()
        v.flags.writeable = False
        return v

    @property
    def stamps(self) -> np.ndarray:
        """The stamp each pixel shows (0 for the untouched background), read-only."""
        self._sync()
        v = self._stamp.reshape(self.height, self.width).view()
        v.flags.writeable = False
        return v

    def digest(self) -> str:
        """A hash of the pixels: equal on boards that show the same picture."""
        self._sync()
        if self._digest is None or self._digest[0] != self._version:
            # XXH3-128 (PROTOCOL.md, SESSION): 0.3 ms for 1920x1080 where BLAKE2b took
            # 8 ms, and peers compare digests every second or so while they are quiet
            self._digest = (self._version, xxhash.xxh3_128_hexdigest(self._color.data))
        return self._digest[1]

    @property
    def version(self) -> int:
        """A counter bumped by every change of the picture (equal versions: same pixels)."""
        self._sync()
        return self._version

    def frozen(self) -> Board:
        """A copy that :func:`p2pboard.store.dump` can read from another thread while this
        board goes on changing (autosave). Cheap: the base arrays are copied (about 25 MB
        for 1920x1080), the log entries shared (never changed once made), the tables
        copied. The copy has no view of its own: it is for dumping only."""
        self._sync()
        f = Board.__new__(Board)
        f.__dict__.update(self.__dict__)
        f._base_stamp = self._base_stamp.copy()
        f._base_color = self._base_color.copy()
        f._stamp = f._color = None
        f._pending = []
        f._rebuild = False
        f._dirty = None
        f._log = dict(self._log)
        f._ops = {}
        f._op_boxes = {}
        f._heaps = {}
        f._fresh, f._unsettled, f._complete, f._ready = {}, set(), {}, set()
        f._folded = dict(self._folded)
        f._toggles = {a: dict(regs) for a, regs in self._toggles.items()}
        f._keys, f._keys_floor = {}, 1 << 64  # not shared: every tie checked, if ever painted
        return f

    def take_dirty(self) -> tuple[int, int, int, int] | None:
        """The rectangle (x0, y0, x1, y1; exclusive) changed since the last call, or None."""
        self._sync()
        d, self._dirty = self._dirty, None
        return None if d is None else tuple(d)  # type: ignore[return-value]

    @property
    def live_pixels(self) -> int:
        """Pixels held in the log of operations that may still be undone."""
        return self._live_pixels

    @property
    def live_ops(self) -> int:
        return len(self._ops)

    def visible(self, author: int, opno: int) -> bool:
        regs = self._toggles.get(author)
        reg = regs.get(opno) if regs else None
        return True if reg is None else reg[1]

    # ------------------------------------------------------------------ writing

    def apply(self, rec: Record, author: int, seq: int, idx: int) -> bool:
        """Apply one record received in datagram ``seq`` of ``author``. True if it changed
        anything; duplicates, stale and invalid records return False."""
        if rec.author != author:
            self.rejected += 1
            return False
        if rec.opno <= self._folded.get(author, 0) and not isinstance(rec, Toggle):
            self.stale += 1
            return False
        if isinstance(rec, Toggle):
            return self._toggle(rec)
        key = (author, seq, idx)
        if key in self._log:
            return False
        entry = self._entry(key, rec)
        if entry is None:
            self.rejected += 1
            return False
        self._insert(entry)
        if self._live_pixels > LOG_PIXEL_CAP:
            self._force_fold()
        return True

    def _insert(self, entry: Entry) -> None:
        """Log a new entry and show it (if its operation is visible). A received piece of
        a picture waits in _pending, to be painted with the pieces next to it."""
        if self._rebuild:
            self._sync()
        self._add(entry)
        author, opno = entry.op
        if self.visible(author, opno) and (entry.key[1] == 0 or (author, 0, opno) not in self._log):
            # (A band of our own paste whose provisional entry is still in the log: that
            # entry shows the same pixels at the same stamp already.)
            if entry.key[1] and isinstance(entry.rec, Image):
                self._pending.append(entry)
                if len(self._pending) >= PENDING_MAX:
                    self._flush()
            else:
                self._paint(entry, self._stamp, self._color)
            self._mark(entry.box)

    def apply_provisional(self, rec: Image) -> tuple[int, int, int] | None:
        """Show a paste of our own at once, before its datagrams exist (the sender encodes a
        big paste as it sends it): an entry keyed ``(author, 0, opno)`` (no datagram has
        number 0), dropped with :meth:`drop_provisional` once every band of it has been
        applied under its own key. Same stamp, same pixels: the view does not change."""
        key = (rec.author, 0, rec.opno)
        entry = self._entry(key, rec)
        if entry is None or key in self._log:
            return None
        self._insert(entry)
        return key

    def drop_provisional(self, key: tuple[int, int, int] | None) -> None:
        if key is not None and key in self._log:
            self._remove(key)

    def settle(self, author: int, opno: int) -> None:
        """We hold every record of ``author`` with an opno up to ``opno``: operations more
        than UNDO_WINDOW older than that are final and move into the base, and those up
        to ``opno`` are complete: :meth:`compact` joins their pieces (when its caller
        chooses: the engine does a few milliseconds later, off the path of a datagram)."""
        if opno > self._complete.get(author, 0):
            self._complete[author] = opno
            fresh = self._fresh.get(author)
            if fresh and fresh[0] <= opno:
                self._ready.add(author)
        limit = opno - UNDO_WINDOW
        if limit <= self._folded.get(author, 0):
            return
        self._folded[author] = limit
        heap = self._heaps.get(author, [])
        while heap and heap[0] <= limit:
            o = heapq.heappop(heap)
            self._fold_op((author, o), into_base=True)
        if not heap:
            self._heaps.pop(author, None)
        regs = self._toggles.get(author)
        if regs:
            for t in [t for t in regs if t <= limit]:
                del regs[t]
                self._ntoggles -= 1
            if not regs:
                del self._toggles[author]

    def drop_covered(self, covered: dict[int, int]) -> None:
        """Forget log entries of ``author`` from datagrams up to ``covered[author]``: a
        snapshot about to be merged holds them, with their final visibility."""
        if not covered:
            return
        gone = [k for k in self._log if k[1] <= covered.get(k[0], 0)]
        for k in gone:
            self._remove(k)
        if gone:
            self._rebuild = True

    def merge(self, other: Board) -> None:
        """Merge another board of the same size (a snapshot) into this one."""
        if (other.width, other.height) != (self.width, self.height):
            raise ValueError("boards of different sizes")
        take = other._base_stamp > self._base_stamp
        tie = other._base_stamp == self._base_stamp
        take |= tie & (_key(other._base_color) > _key(self._base_color))
        self._forget_keys(int(other._base_stamp.max()))
        self._base_stamp[take] = other._base_stamp[take]
        self._base_color[take] = other._base_color[take]
        for author, limit in other._folded.items():
            if limit > self._folded.get(author, 0):
                self._folded[author] = limit
                for k in [k for k in self._log if k[0] == author
                          and self._log[k].rec.opno <= limit]:
                    self._remove(k)
                regs = self._toggles.get(author, {})
                for t in [t for t in regs if t <= limit]:
                    del regs[t]
                    self._ntoggles -= 1
        for author, regs in other._toggles.items():
            final = self._folded.get(author, 0)
            for target, (opno, vis) in regs.items():
                # An operation already final here was folded once we held every toggle
                # of it: a register for it would change nothing, and a state that has
                # one does not load (every snapshot and autosave of this board refused).
                if target > final:
                    self._set_toggle(author, target, opno, vis)
        for key, e in other._log.items():
            if e.rec.opno <= self._folded.get(e.rec.author, 0):
                continue
            mine = self._log.get(key)
            if mine is None:
                self._add(e)
            elif (key[2] >= JOINED_MIN and isinstance(mine.rec, Paint)
                  and isinstance(e.rec, Paint) and mine.op == e.op
                  and (mine.rec.lamport, mine.rec.color) == (e.rec.lamport, e.rec.color)
                  and not np.array_equal(mine.index, e.index)):
                # joined from different pieces (see _compact): keep the union
                self._remove(key)
                self._add(_one_entry([mine, e], key, _sorted_union([mine.index, e.index])))
        self._rebuild = True
        if self._live_pixels > LOG_PIXEL_CAP:
            self._force_fold()
        self._sync()

    # ------------------------------------------------------------------ internals

    def _entry(self, key, rec) -> Entry | None:
        w, h = self.width, self.height
        if isinstance(rec, Paint):
            ix = rec.index
            if ix.ndim != 1 or ix.size == 0:
                return None
            if int(ix[0]) < 0 or int(ix[-1]) >= self._n:
                return None
            ix32 = ix.astype(np.int32)
            y0, y1 = int(ix[0]) // w, int(ix[-1]) // w
            if y0 == y1:
                x0, x1 = int(ix[0]) - y0 * w, int(ix[-1]) - y0 * w
            else:
                xs = ix32 % w
                x0, x1 = int(xs.min()), int(xs.max())
            box = (x0, y0, x1 + 1, y1 + 1)
            # The log keeps one copy of the pixels (int32: half the record's int64).
            rec = Paint(rec.author, rec.opno, rec.lamport, rec.color, ix32)
            return Entry(key, rec, ix32, box, int(ix.size), (rec.author, rec.opno))
        if isinstance(rec, Image):
            shape = rec.shape
            if len(shape) != 3 or shape[2] != (4 if rec.sub is None else 3):
                return None
            ih, iw = shape[:2]
            if ih == 0 or iw == 0:
                return None
            if rec.x < 0 or rec.y < 0 or rec.x + iw > w or rec.y + ih > h:
                return None
            return Entry(key, rec, None, (rec.x, rec.y, rec.x + iw, rec.y + ih), ih * iw,
                         (rec.author, rec.opno))
        if isinstance(rec, Clear):
            return Entry(key, rec, None, (0, 0, w, h), 0, (rec.author, rec.opno))
        return None

    def _add(self, e: Entry) -> None:
        self._log[e.key] = e
        op = e.op
        if op not in self._unsettled:
            self._unsettled.add(op)
            heapq.heappush(self._fresh.setdefault(op[0], []), op[1])
            if op[1] <= self._complete.get(op[0], 0):
                self._ready.add(op[0])  # (pieces of a complete operation merged in)
        keys = self._ops.get(op)
        if keys is None:
            self._ops[op] = [e.key]
            self._op_boxes[op] = list(e.box)
            heapq.heappush(self._heaps.setdefault(op[0], []), op[1])
        else:
            keys.append(e.key)
            b, (x0, y0, x1, y1) = self._op_boxes[op], e.box
            if x0 < b[0]:
                b[0] = x0
            if y0 < b[1]:
                b[1] = y0
            if x1 > b[2]:
                b[2] = x1
            if y1 > b[3]:
                b[3] = y1
        self._live_pixels += e.size

    def _remove(self, key) -> Entry:
        e = self._log.pop(key)
        self._live_pixels -= e.size
        keys = self._ops.get(e.op)
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self._ops[e.op]  # its heap item is skipped when popped
                del self._op_boxes[e.op]
        return e

    @property
    def compact_pending(self) -> bool:
        """Has :meth:`compact` work: complete operations whose pieces are not joined?"""
        return bool(self._ready)

    def compact(self, limit: int = 1 << 30) -> bool:
        """Join the pieces of up to ``limit`` complete operations (_compact); True if more
        wait. A stroke of 7-27 pieces takes 0.03-0.14 ms, warm (10th-90th percentile)."""
        done = 0
        for author in list(self._ready):
            fresh = self._fresh.get(author)
            opno = self._complete.get(author, 0)
            while fresh and fresh[0] <= opno:
                if done >= limit:
                    return True
                op = (author, heapq.heappop(fresh))
                self._unsettled.discard(op)
                if op in self._ops:
                    self._compact(op)
                    done += 1
            if fresh is not None and not fresh:
                del self._fresh[author]
            self._ready.discard(author)
        return False

    def _compact(self, op: tuple[int, int]) -> None:
        """Make the pieces of a complete operation one log entry for each (Lamport time,
        colour) it has: a stroke's pieces, one a datagram (about 17 for a stroke of two
        seconds), become one entry with the union of their pixels. Painting it is painting
        them: one stamp, one colour. Each piece was two objects for the garbage collector to
        walk and about 10 us of Python to read from a snapshot; in a room of 8 drawing for
        two minutes, 115,200 of them. Its key is made from the greatest key of its pieces
        (JOINED), so that drop_covered drops it only when the snapshot covers every piece
        of it; a snapshot that covers only some brings those pieces back, and they are
        compacted into it again (repeated pixels paint alike, and the union drops them).
        Every peer that joins the pieces of an operation up to one key joins the same ones
        (all that exist: the operation is complete), so a key names the same pixels on
        every board; merge takes the union where one does not (Board.settle's promise
        broken)."""
        keys = self._ops[op]
        if len(keys) < 2:
            return
        log = self._log
        groups, others = _paint_groups([log[k] for k in keys])
        if len(groups) == len(keys) - len(others):
            return  # one piece of each: nothing to join
        kept = [e.key for e in others]
        for group in groups.values():
            if len(group) == 1:
                kept.append(group[0].key)
                continue
            last = max(_piece_key(e.key) for e in group)
            key = (last[0], last[1], JOINED - last[2])
            joined = _one_entry(group, key, _sorted_union([e.index for e in group]))
            for e in group:
                del log[e.key]
                self._live_pixels -= e.size
            log[key] = joined
            self._live_pixels += joined.size
            kept.append(key)
        self._ops[op] = kept

    def _fold_op(self, op, into_base: bool) -> None:
        keys = self._ops.pop(op, None)
        self._op_boxes.pop(op, None)
        if not keys:
            return
        vis = self.visible(*op)
        entries = [self._log.pop(k) for k in keys]
        for e in entries:
            self._live_pixels -= e.size
        if vis and into_base:
            self._paint_op(entries, into=(self._base_stamp, self._base_color))

    def _force_fold(self) -> None:
        while self._live_pixels > LOG_PIXEL_CAP and self._ops:
            op = min(self._ops, key=lambda o: self._log[self._ops[o][0]].rec.stamp)
            self._fold_op(op, into_base=True)
            self.forced_folds += 1

    def _set_toggle(self, author: int, target: int, opno: int, vis: bool) -> bool | None:
        """Update a register; returns the old visibility if it changed, else None."""
        regs = self._toggles.get(author)
        cur = None if regs is None else regs.get(target)
        if cur is not None and cur[0] >= opno:
            return None
        if cur is None:
            if self._ntoggles >= MAX_TOGGLES:
                self.rejected += 1
                return None
            self._ntoggles += 1
        self._toggles.setdefault(author, {})[target] = (opno, vis)
        old = True if cur is None else cur[1]
        return old

    def _toggle(self, rec: Toggle) -> bool:
        if not rec.valid:
            self.rejected += 1
            return False
        if rec.target <= self._folded.get(rec.author, 0):
            self.stale += 1
            return False
        old = self._set_toggle(rec.author, rec.target, rec.opno, rec.visible)
        if old is None:
            return False
        if old != rec.visible:
            self._sync()
            entries = [self._log[k] for k in self._ops.get((rec.author, rec.target), ())]
            if rec.visible:
                self._paint_op(entries)
                for e in entries:
                    self._mark(e.box)
            elif entries:
                self._hide(entries)
        return True

    def _forget_keys(self, upto: int) -> None:
        """Stamps up to ``upto`` may now be anywhere in any colour (merged in, or the table
        trimmed): ties at them are decided pixel by pixel from now on."""
        if upto > self._keys_floor:
            self._keys_floor = upto
            self._keys = {k: v for k, v in self._keys.items() if k > upto}

    def _learn(self, stamp: int, key: int, mixed: bool) -> None:
        """Pixels stamped ``stamp`` were painted in colour ``key`` (-1: several); ``mixed``:
        they met pixels of that stamp in another colour."""
        if stamp <= self._keys_floor:
            return
        keys = self._keys
        old = keys.get(stamp)
        if old is None:
            if len(keys) >= MAX_STAMP_KEYS:  # forget the older half (ties there: slower)
                self._forget_keys(sorted(keys)[len(keys) // 2])
                if stamp <= self._keys_floor:
                    return
                # _forget_keys made a new table: learning into the old one lost what was
                # learnt, and a stamp above the floor with no colour is taken for one never
                # painted (two boards ended different, found by the oracle test)
                keys = self._keys
            keys[stamp] = -1 if mixed else key
        elif old != key or mixed:
            keys[stamp] = -1

    def _paint_into(self, e: Entry, stamp: np.ndarray, color: np.ndarray, w: int,
                    only: np.ndarray | None = None) -> None:
        """Max-(stamp, colour) ``e`` into (stamp, color); ``only``: a flat bool mask to
        restrict to."""
        si = e.rec.stamp
        rec = e.rec
        if isinstance(rec, Paint):
            s = np.uint64(si)
            ix = e.index
            if only is not None:
                ix = ix[only[ix]]
            cur = stamp[ix]
            c = _rgba_key(rec.color)
            if self._keys.get(si) == c:
                # every pixel stamped s has this very colour (a stroke's earlier segments):
                # a tie changes nothing
                ix = ix[cur < s]
            else:
                win = cur < s
                tie = cur == s
                mixed = False
                if tie.any():  # a hostile twin, or stamps merged in
                    k = _key(color)[ix[tie]]
                    win[tie] = k < c
                    mixed = bool((k != c).any())
                ix = ix[win]
                self._learn(si, c, mixed)
            stamp[ix] = s
            # One 32-bit store per pixel rather than a 4-byte row each (the key is the
            # native u32 of the colour on a little-endian machine).
            color.view(np.uint32).reshape(-1)[ix] = c if _LITTLE else _native(rec.color)
        elif isinstance(rec, Image):
            x0, y0, x1, y1 = e.box
            h = stamp.size // w
            st2 = stamp.reshape(h, w)[y0:y1, x0:x1]
            co2 = color.reshape(h, w, 4)[y0:y1, x0:x1]
            if self._keys.get(si) != -1:  # (the other bands of a paste: known already)
                self._learn(si, -1, True)  # a picture: several colours
            if only is None and st2.max() < si:
                # Everything under it is older (a fresh paste): plain copies, no masks.
                st2[...] = si
                co2[...] = rec.rgba
                return
            s = np.uint64(si)
            m = st2 < s
            tie = st2 == s
            if tie.any():
                m |= tie & (_key(co2) < _key(rec.rgba))
            if only is not None:
                m &= only.reshape(h, w)[y0:y1, x0:x1]
            st2[m] = s
            co2[m] = rec.rgba[m]
        else:  # Clear
            s = np.uint64(si)
            m = stamp < s
            tie = stamp == s
            c = _rgba_key(BACKGROUND)
            mixed = False
            if tie.any():
                k = _key(color)
                m |= tie & (k < c)
                mixed = bool((tie & (k != c)).any())
            self._learn(si, c, mixed)
            if only is not None:
                m &= only
            stamp[m] = s
            color[m] = _BG

    def _paint(self, e: Entry, stamp, color) -> None:
        self._paint_into(e, stamp, color, self.width)

    def _hide(self, hidden: list[Entry]) -> None:
        """Rebuild the view where the entries of an operation just hidden won, from the
        base and the visible log: the pixels they cover that still show their stamp (the
        rest show something above it). One pass over the operations whose box meets
        theirs, not over the whole log: in a room of 8 drawing for two minutes the log
        holds over 100,000 entries, and a pass over it for each entry of the undone
        stroke took a third of a second on every peer."""
        if any(isinstance(e.rec, Clear) for e in hidden):
            self._rebuild = True
            self._sync()
            return
        w = self.width
        hx0 = min(e.box[0] for e in hidden)
        hy0 = min(e.box[1] for e in hidden)
        hx1 = max(e.box[2] for e in hidden)
        hy1 = max(e.box[3] for e in hidden)
        # One operation has one stamp (the segments of a stroke, the bands of a paste),
        # unless a hostile author gave its pieces Lamport times of their own.
        stamps: dict[int, list[Entry]] = {}
        for e in hidden:
            stamps.setdefault(e.rec.stamp, []).append(e)
        view = self._stamp.reshape(self.height, w)[hy0:hy1, hx0:hx1]
        only = np.zeros(self._n, dtype=bool)
        only2 = only.reshape(self.height, w)
        if len(stamps) == 1:
            self._cover(only, hidden)
            win = only2[hy0:hy1, hx0:hx1]  # (a view: ``only`` becomes what is reset)
            win &= view == np.uint64(hidden[0].rec.stamp)
        else:
            win = np.zeros(view.shape, dtype=bool)
            for s, group in stamps.items():
                mask = np.zeros(self._n, dtype=bool)
                self._cover(mask, group)
                win |= mask.reshape(self.height, w)[hy0:hy1, hx0:hx1] & (view == np.uint64(s))
            only2[hy0:hy1, hx0:hx1] = win
        rows, cols = np.nonzero(win)
        at = (rows + hy0) * w + (cols + hx0)
        self._stamp[at] = self._base_stamp[at]
        self._color[at] = self._base_color[at]
        log = self._log
        for op, keys in self._ops.items():
            x0, y0, x1, y1 = self._op_boxes[op]
            if x0 >= hx1 or x1 <= hx0 or y0 >= hy1 or y1 <= hy0 or not self.visible(*op):
                continue
            near = []
            for k in keys:
                e = log[k]
                x0, y0, x1, y1 = e.box
                if not (x0 >= hx1 or x1 <= hx0 or y0 >= hy1 or y1 <= hy0):
                    near.append(e)
            if near:
                self._paint_op(near, only)
        self._mark((hx0, hy0, hx1, hy1))

    def _cover(self, mask: np.ndarray, entries: list[Entry]) -> None:
        """Set the pixels ``entries`` cover in ``mask`` (flat bool)."""
        mask2 = mask.reshape(self.height, self.width)
        for e in entries:
            if e.index is not None:
                mask[e.index] = True
            else:
                x0, y0, x1, y1 = e.box
                mask2[y0:y1, x0:x1] = True

    def _paint_op(self, entries: list[Entry], only: np.ndarray | None = None,
                  into: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Paint entries of one operation into the view: the pieces of a stroke as one set
        of pixels (one stamp, one colour; a hostile author's other colours and Lamport
        times apart: painted at the first piece's, they made a rebuilt view differ from
        one painted piece by piece, and boards differ), strips of a picture that follow
        each other as one rectangle (see _flush). Rebuilding the view of a room where 8
        drew for two minutes (134,400 entries, 7,800 operations) took 1.2 s painted entry
        by entry. ``only``: a flat bool mask to restrict to;
        ``into``: the (stamp, color) arrays to paint, the view's if None."""
        stamp, color = into or (self._stamp, self._color)
        groups, others = _paint_groups(entries)
        strips = []
        for e in others:
            if isinstance(e.rec, Image) and only is None:
                strips.append(e)
            else:
                self._paint_into(e, stamp, color, self.width, only)
        for group in groups.values():
            e = group[0]
            if len(group) > 1:  # (repeated pixels paint alike)
                e = _one_entry(group, e.key, np.concatenate([g.index for g in group]))
            self._paint_into(e, stamp, color, self.width, only)
        if strips:
            self._paint_strips(strips, stamp, color)

    def _sync(self) -> None:
        """Bring the view up to date: the pieces waiting in _pending, or all of it."""
        if not self._rebuild:
            if self._pending:
                self._flush()
            return
        self._rebuild = False
        self._pending = []  # (painted below with everything else)
        if self._stamp is None:  # made without a view (Board(view=False)): made now
            self._stamp, self._color = self._base_stamp.copy(), self._base_color.copy()
        else:
            np.copyto(self._stamp, self._base_stamp)
            np.copyto(self._color, self._base_color)
        log = self._log
        for op, keys in self._ops.items():
            if self.visible(*op):
                self._paint_op([log[k] for k in keys])
        self._mark((0, 0, self.width, self.height))

    def _flush(self) -> None:
        """Paint the pieces waiting in _pending. A paste arrives as bands of rows, each cut
        into column strips, one a datagram: strips of one band that follow each other (same
        operation and stamp, same rows, each starting where the last ended) are painted as
        one rectangle, in one copy when nothing at or above their stamp lies under it. A
        NumPy call on a piece of a few hundred pixels costs a receiver that woke with cold
        caches several microseconds, as much as the copy (docs/BENCHMARK-HISTORY.md):
        painting a band in one go saves four of them a piece, and pieces decoded from the
        wire are un-filtered together (ops.side_by_side), not one by one. The view is a
        per-pixel maximum, so the order pieces are painted in does not change it. A piece
        waits only while its operation is visible (an undo or redo paints what waits first),
        so it is painted even if it has meanwhile been folded into the base: it shows either
        way; a rebuild of the view (_sync) paints everything and drops what waits."""
        pending, self._pending = self._pending, []
        self._paint_strips(pending, self._stamp, self._color)

    def _paint_strips(self, strips: list[Entry], stamp: np.ndarray, color: np.ndarray) -> None:
        """Paint pieces of pictures, those that follow each other in a band together."""
        run: list[Entry] = []
        for e in strips:
            if run:
                last = run[-1]
                if (e.box[0] == last.box[2] and e.box[1] == last.box[1]
                        and e.box[3] == last.box[3] and e.op == last.op
                        and e.rec.lamport == last.rec.lamport):
                    run.append(e)
                    continue
                self._paint_run(run, stamp, color)
            run = [e]
        if run:
            self._paint_run(run, stamp, color)

    def _paint_run(self, run: list[Entry], stamp: np.ndarray, color: np.ndarray) -> None:
        """Paint adjacent strips of one band (see _flush) as the one picture they make
        together: _paint_into copies it in one go where nothing at or above its stamp
        lies under it, and decides ties pixel by pixel otherwise."""
        e = run[0]
        if len(run) > 1:
            rgba = side_by_side([r.rec for r in run])
            x0, y0, _, y1 = e.box
            band = Image(e.rec.author, e.rec.opno, e.rec.lamport, x0, y0, rgba)
            e = Entry(e.key, band, None, (x0, y0, run[-1].box[2], y1),
                      rgba.shape[0] * rgba.shape[1], e.op)
        self._paint_into(e, stamp, color, self.width)

    def _mark(self, box) -> None:
        self._version += 1
        d = self._dirty
        if d is None:
            self._dirty = list(box)
        else:
            d[0], d[1] = min(d[0], box[0]), min(d[1], box[1])
            d[2], d[3] = max(d[2], box[2]), max(d[3], box[3])
