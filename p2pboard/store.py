"""The board as bytes: snapshots for late joiners, and (later) files on disk.

``dump(board, sources)`` writes everything a peer needs to continue from a board: the base
layer, the log of operations that may still be undone with their undo registers, how far
each author's operations are final, and for each source up to which datagram the state
covers it (``sources[author] = (contiguous seq, settled opno)``). ``load`` reads it back.

Layout (all big-endian): ``b"PBZ1"``, the raw length (u64), then zlib of the raw bytes:
a fixed header (:data:`_HEAD`), the sources, final-opno marks, undo registers, a palette of
the base layer's distinct stamps, one palette index per pixel (u8/u16/u32 as needed), the
base colours with PNG's *Sub* filter (difference to the left pixel: flat areas become
zeros), the log entries (:data:`_ENTRY`; each a record as a datagram brought it, or the
joined pieces of a complete operation, keyed with a record index of board.JOINED_MIN or
more), then the Paint indices as deltas and the Image pixels. A blank 1920x1080 board
is about 50 kB (deflate tops out near 1000:1); a photo fills most of its 8 MB.

``load`` trusts nothing: lengths are checked before anything is allocated, decompression is
bounded by the declared length, every index and rectangle is checked against the canvas,
and any inconsistency raises :class:`StoreError`.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .board import Board, Entry
from .ops import UNDO_WINDOW, Clear, Image, Paint

MAGIC = b"PBZ1"
_OUTER = struct.Struct("!4sQ")
_HEAD = struct.Struct("!8sHHIIIIIQQ")
_RAW_MAGIC = b"PBSTATE1"
_SOURCE = struct.Struct("!III")
_FOLDED = struct.Struct("!II")
_TOGGLE = struct.Struct("!IIIB")
_ENTRY = struct.Struct("!IIHBII4sHHHHI")
KIND_PAINT, KIND_IMAGE, KIND_CLEAR = 1, 2, 3
MAX_SOURCES = 1 << 16
MAX_ENTRIES = 1 << 20


class StoreError(ValueError):
    """Bytes that are not a valid board state."""


def max_raw(width: int, height: int) -> int:
    """Largest raw state accepted for a board of this size."""
    from .board import LOG_PIXEL_CAP
    return 64 * 1024 * 1024 + 16 * width * height + 8 * LOG_PIXEL_CAP


def dump(board: Board, sources: dict[int, tuple[int, int]], level: int = 1) -> bytes:
    """The board's state (and ``sources``) as compressed bytes.

    Streamed through the compressor part by part (the filtered colours a band of rows at
    a time), so the raw state is never assembled: a peer serves a snapshot to every
    joiner, and for a 1920x1080 photo board that took 87 MB besides the 6 MB result."""
    b = board
    b._sync()
    w, h = b.width, b.height
    palette, inverse = _palette(b._base_stamp)
    inverse = inverse.astype(inverse.dtype.newbyteorder(">"), copy=False)
    colors = b._base_color.reshape(h, w, 4)
    toggles = [(a, t, o, int(v)) for a, regs in b._toggles.items() for t, (o, v) in regs.items()]
    entries, paints, images = [], [], []
    for e in b._log.values():
        r = e.rec
        author, seq, idx = e.key
        if isinstance(r, Paint):
            entries.append(_ENTRY.pack(author, seq, idx, KIND_PAINT, r.opno, r.lamport,
                                       bytes(r.color), 0, 0, 0, 0, e.size))
            paints.append(e.index)
        elif isinstance(r, Image):
            ih, iw = r.rgba.shape[:2]
            entries.append(_ENTRY.pack(author, seq, idx, KIND_IMAGE, r.opno, r.lamport,
                                       b"\0\0\0\0", r.x, r.y, iw, ih, 0))
            images.append(r.rgba)
        else:
            entries.append(_ENTRY.pack(author, seq, idx, KIND_CLEAR, r.opno, r.lamport,
                                       b"\0\0\0\0", 0, 0, 0, 0, 0))
    ndelta = 4 * sum(int(ix.size) for ix in paints)
    nimage = sum(4 * im.shape[0] * im.shape[1] for im in images)
    head = b"".join([
        _HEAD.pack(_RAW_MAGIC, w, h, len(sources), len(b._folded), len(toggles), len(entries),
                   palette.size, ndelta, nimage),
        b"".join(_SOURCE.pack(a, c, s) for a, (c, s) in sorted(sources.items())),
        b"".join(_FOLDED.pack(a, o) for a, o in sorted(b._folded.items())),
        b"".join(_TOGGLE.pack(*t) for t in toggles),
        palette.astype(">u8").tobytes(),
    ])
    log = b"".join(entries)
    raw_len = len(head) + inverse.nbytes + colors.nbytes + len(log) + ndelta + nimage
    comp = zlib.compressobj(level)
    out = [_OUTER.pack(MAGIC, raw_len)]

    def feed(part) -> None:
        # in pieces of _PIECE bytes: zlib grows its output buffer for one call by
        # doubling, so one call on 8 MB of photo held 21 MB at its peak
        view = memoryview(part).cast("B")
        for i in range(0, len(view), _PIECE):
            out.append(comp.compress(view[i:i + _PIECE]))

    feed(head)
    feed(inverse)
    for y in range(0, h, _BAND_ROWS):  # PNG's Sub filter, a band at a time
        band = colors[y:y + _BAND_ROWS]
        filtered = band.copy()
        filtered[:, 1:] -= band[:, :-1]
        feed(filtered)
    feed(log)
    for i, j in _runs([len(p) for p in paints]):
        # each entry's indices as steps from the one before, its first from 0: a batch of
        # entries in one go (one at a time, a busy room's log took seconds)
        batch = paints[i:j]
        ix = np.concatenate(batch).astype(np.int64)
        d = np.diff(ix, prepend=0)
        starts = np.cumsum([0] + [len(p) for p in batch[:-1]])
        d[starts] = ix[starts]
        feed(d.astype(">u4"))
    for im in images:
        feed(np.ascontiguousarray(im, dtype=np.uint8))
    out.append(comp.flush())
    return b"".join(out)


#: rows of the base colours filtered at a time by :func:`dump`, and the most bytes it
#: hands the compressor in one call
_BAND_ROWS = 64
_PIECE = 1 << 20
#: pixel indices of log entries encoded or decoded together: a few arrays of them, 8 bytes
#: an index, are in flight at once (about 10 MB), where a log holds up to LOG_PIXEL_CAP
_INDEX_BATCH = 1 << 18


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``[i, j)`` of items whose ``sizes`` add up to about _INDEX_BATCH (an
    item bigger than that alone)."""
    out: list[tuple[int, int]] = []
    i = total = 0
    for j, n in enumerate(sizes):
        if j > i and total + n > _INDEX_BATCH:
            out.append((i, j))
            i, total = j, 0
        total += n
    if i < len(sizes):
        out.append((i, len(sizes)))
    return out


def _paint_indices(deltas: np.ndarray, counts: list[int], width: int, n: int):
    """Each paint entry's pixel indices (int32, its own array: a view would keep its whole
    batch alive while any entry of it is in the log) and the box
    they cover (x0, y0, x1, y1; exclusive), decoded from the stream of steps a batch of
    entries at a time. Raises StoreError where an entry's indices do not increase or
    leave the board of ``n`` pixels."""
    pos = 0
    for i, j in _runs(counts):
        c = np.array(counts[i:j], dtype=np.int64)
        total = int(c.sum())
        d = deltas[pos:pos + total].astype(np.int64)
        pos += total
        starts = np.zeros(len(c), dtype=np.int64)
        np.cumsum(c[:-1], out=starts[1:])
        ends = starts + c - 1
        rising = d > 0
        rising[starts] = True  # (an entry's first is a pixel index, 0 allowed)
        if not bool(rising.all()):
            raise StoreError("paint indices not increasing")
        ix = np.cumsum(d)
        ix -= np.repeat(ix[starts] - d[starts], c)
        if int(ix[ends].max()) >= n:
            raise StoreError("paint indices off the board")
        xs = ix % width
        boxes = zip(np.minimum.reduceat(xs, starts).tolist(), (ix[starts] // width).tolist(),
                    (np.maximum.reduceat(xs, starts) + 1).tolist(),
                    (ix[ends] // width + 1).tolist())
        ix32 = ix.astype(np.int32)
        for a, k, box in zip(starts.tolist(), c.tolist(), boxes):
            yield ix32[a:a + k].copy(), box


def _index_type(npal: int) -> type:
    """The smallest unsigned type for an index into a palette of ``npal`` stamps."""
    return np.uint8 if npal <= 256 else np.uint16 if npal <= 65536 else np.uint32


def _palette(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(stamps, return_inverse=True)``, the inverse in :func:`_index_type`, in
    linear time for the usual board: stamps come in runs (a stroke, an image, the
    untouched background), so only the value of each run is sorted, not every pixel (a
    full sort of 2 M stamps takes ~150 ms)."""
    if stamps.size == 0:
        palette, inverse = np.unique(stamps, return_inverse=True)
        return palette, inverse.astype(_index_type(palette.size))
    starts = np.flatnonzero(stamps[1:] != stamps[:-1]) + 1
    starts = np.concatenate((np.zeros(1, np.intp), starts))
    palette, run_index = np.unique(stamps[starts], return_inverse=True)
    lengths = np.diff(np.append(starts, stamps.size))
    return palette, np.repeat(run_index.astype(_index_type(palette.size)), lengths)


class _Reader:
    def __init__(self, raw: bytes) -> None:
        self.raw = memoryview(raw)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.raw):
            raise StoreError("truncated state")
        out = self.raw[self.pos:self.pos + n]
        self.pos += n
        return out


def load(blob: bytes, width: int, height: int) -> tuple[Board, dict[int, tuple[int, int]]]:
    """Read a state written by :func:`dump` for a board of ``width`` x ``height``."""
    try:
        return _load(blob, width, height)
    except StoreError:
        raise
    except (ValueError, struct.error, zlib.error, MemoryError, IndexError) as err:
        raise StoreError(f"invalid state: {err}") from None


def _load(blob: bytes, width: int, height: int):
    if len(blob) < _OUTER.size:
        raise StoreError("truncated state")
    magic, raw_len = _OUTER.unpack_from(blob)
    if magic != MAGIC:
        raise StoreError("not a p2pboard state (bad magic)")
    if raw_len > max_raw(width, height):
        raise StoreError(f"state of {raw_len} bytes is larger than any board of this size")
    d = zlib.decompressobj()
    raw = d.decompress(memoryview(blob)[_OUTER.size:], raw_len)
    if len(raw) != raw_len or d.unconsumed_tail or not d.eof or d.unused_data:
        raise StoreError("state length does not match its contents")
    r = _Reader(raw)
    (rmagic, w, h, nsrc, nfold, ntog, nent, npal, ndelta, nimage) = _HEAD.unpack(
        r.take(_HEAD.size))
    if rmagic != _RAW_MAGIC:
        raise StoreError("not a p2pboard state (bad inner magic)")
    if (w, h) != (width, height):
        raise StoreError(f"state is for a {w}x{h} board, not {width}x{height}")
    if nsrc > MAX_SOURCES or nfold > MAX_SOURCES or nent > MAX_ENTRIES:
        raise StoreError("state has too many sources or entries")
    from .board import MAX_TOGGLES
    if ntog > MAX_TOGGLES:
        raise StoreError("state has too many undo registers")
    n = w * h
    if npal == 0 or npal > n:
        raise StoreError("bad stamp palette")
    sources = {}
    for a, c, s in _SOURCE.iter_unpack(r.take(nsrc * _SOURCE.size)):
        if a == 0 or a in sources:
            raise StoreError("bad source table")
        sources[a] = (c, s)
    board = Board(w, h, view=False)  # a view, if ever, once read (most are merged only)
    for a, o in _FOLDED.iter_unpack(r.take(nfold * _FOLDED.size)):
        if a == 0 or a in board._folded:
            raise StoreError("bad final marks")
        board._folded[a] = o
    for a, t, o, v in _TOGGLE.iter_unpack(r.take(ntog * _TOGGLE.size)):
        if v > 1 or not 0 < o - t <= UNDO_WINDOW:
            raise StoreError("bad undo register")
        if t <= board._folded.get(a, 0):
            # For an operation that is final: nothing to undo. Dropped, not refused:
            # boards before 2026-12-04 could hold such a register after a merge, and then
            # wrote it into every snapshot and autosave file.
            continue
        regs = board._toggles.setdefault(a, {})
        if t in regs:
            raise StoreError("duplicate undo register")
        regs[t] = (o, bool(v))
        board._ntoggles += 1
    palette = np.frombuffer(r.take(npal * 8), dtype=">u8").astype(np.uint64)
    if npal > 1 and not bool(np.all(palette[1:] > palette[:-1])):
        raise StoreError("stamp palette not sorted")
    itype = _index_type(npal)
    isize = np.dtype(itype).itemsize
    inv = np.frombuffer(r.take(n * isize), dtype=np.dtype(itype).newbyteorder(">"))
    if int(inv.max()) >= npal:
        raise StoreError("stamp index out of the palette")
    board._base_stamp[:] = palette[inv]
    board._forget_keys(int(palette[-1]) if npal else 0)  # colours at those stamps: unknown
    filtered = np.frombuffer(r.take(n * 4), dtype=np.uint8).reshape(h, w, 4)
    np.cumsum(filtered, axis=1, dtype=np.uint8, out=board._base_color.reshape(h, w, 4))
    heads = list(_ENTRY.iter_unpack(r.take(nent * _ENTRY.size)))
    deltas = np.frombuffer(r.take(ndelta), dtype=">u4") if ndelta % 4 == 0 else None
    if deltas is None:
        raise StoreError("bad index stream")
    images = r.take(nimage)
    if r.pos != len(r.raw):
        raise StoreError("trailing bytes in state")
    counts = [h[11] for h in heads if h[3] == KIND_PAINT]
    if 0 in counts or sum(counts) != deltas.size:
        raise StoreError("bad paint entry")
    paint_ix = _paint_indices(deltas, counts, w, n)
    log = board._log
    ipos = 0
    for (a, seq, idx, kind, opno, lamport, color, x, y, iw, ih, count) in heads:
        if a == 0 or opno <= board._folded.get(a, 0):
            raise StoreError("bad log entry")
        if kind == KIND_PAINT:
            # (checked as decoded; made here rather than by Board._entry, a box each)
            ix, box = next(paint_ix)
            key = (a, seq, idx)
            if key in log:
                raise StoreError("log entry repeated")
            board._add(Entry(key, Paint(a, opno, lamport, tuple(color), ix), ix, box, count,
                             (a, opno)))
            continue
        if kind == KIND_IMAGE:
            size = iw * ih * 4
            if iw == 0 or ih == 0 or ipos + size > len(images):
                raise StoreError("bad image entry")
            rgba = np.frombuffer(images[ipos:ipos + size], dtype=np.uint8).reshape(ih, iw, 4)
            ipos += size
            rec = Image(a, opno, lamport, x, y, rgba.copy())
        elif kind == KIND_CLEAR:
            rec = Clear(a, opno, lamport)
        else:
            raise StoreError(f"unknown entry kind {kind}")
        key = (a, seq, idx)
        entry = board._entry(key, rec)
        if entry is None or key in board._log:
            raise StoreError("log entry off the board or repeated")
        board._add(entry)
    if ipos != len(images):
        raise StoreError("unused bytes in the entry streams")
    return board, sources  # (its view is made from base and log when first read)


__all__ = ["MAGIC", "StoreError", "dump", "load", "Entry"]
