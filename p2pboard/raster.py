"""Rasterisation: the one routine that turns strokes into pixels, the same on every peer.

A stroke is a polyline drawn with a round brush of integer ``width``: a pixel belongs to it
when its centre lies within ``width / 2`` of one of the segments (of the point itself for a
one-point stroke). The test is done in exact integer arithmetic on integer coordinates:
with segment ``A -> B``, ``d = B - A`` and pixel ``P``, ``p = P - A``, the squared distance
is ``(p x d)^2 / |d|^2`` beside the segment (``0 < p.d < |d|^2``) and the distance to the
nearer end elsewhere; multiplying through by ``4 |d|^2`` leaves only int64 products, so no
peer, platform or NumPy version can round differently. Work is vectorised over boxes that
follow the segment in strips of :data:`STRIP` pixels, clipped to the canvas first, so a
long diagonal costs about its own area and a far-off point costs nothing. A box's rows and
columns are broadcast against each other, so a mouse-rate segment (one box) costs about a
dozen NumPy operations; the boxes of a polyline are OR-ed into one mask of its bounding
box, which yields the pixels sorted and unique without a sort. :class:`Plan` counts the
work before doing any, so a receiver refuses a hostile record for its cost, unpaid.

A segment whose box lies whole on the canvas (nearly every one drawn with a mouse) has a
shape that depends only on its direction ``(dx, dy)`` and the width, not on where it is:
those shapes are kept in a small cache (:class:`ShapeCache`, least recently used out,
bounded in bytes; the 8 mirror images of a direction share one computed shape), so a
stroke's next segment usually costs a dictionary lookup and one addition instead of two
dozen NumPy operations. Cached or not, the pixels are the same.

The author rasterises for its own board and every receiver for its own from the stroke's
points (STROKE records carry geometry, not pixels); one routine keeps them, the local
preview, the API and the UI's straight-line tool identical.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

#: Widest brush, in pixels.
MAX_WIDTH = 256
#: Coordinates are accepted in -LIMIT..LIMIT (the canvas is at most 8192 wide), which keeps
#: every product below 2^62.
LIMIT = 1 << 16

_EMPTY = np.zeros(0, dtype=np.int64)


def _check(points: Sequence[tuple[int, int]]) -> np.ndarray:
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    if pts.size and int(np.abs(pts).max()) > LIMIT:
        raise ValueError(f"coordinates beyond +-{LIMIT}")
    return pts


#: A long segment is evaluated strip by strip, each strip's box ``STRIP`` pixels long, so
#: the work follows the stroke's area, not its bounding box's.
STRIP = 32


def _strip_range(x0: int, y0: int, x1: int, y1: int, m: int, w: int, h: int,
                 n: int) -> range:
    """The strips ``k`` (of ``n`` along the segment) whose part of the segment can come
    within ``m`` of the canvas: the segment is clipped to the canvas grown by ``m``
    (Liang-Barsky), and the range widened by one strip each way, so float rounding can only
    add strips, never drop one. Off-canvas geometry thus costs nothing (a hostile
    stroke of 90,000-pixel segments would otherwise be walked 32 pixels at a time)."""
    lo, hi = 0.0, 1.0
    dx, dy = x1 - x0, y1 - y0
    for p, q in ((-dx, x0 + m), (dx, w - 1 + m - x0), (-dy, y0 + m), (dy, h - 1 + m - y0)):
        if p == 0:
            if q < 0:
                return range(0)
        else:
            t = q / p
            if p < 0:
                lo = max(lo, t)
            else:
                hi = min(hi, t)
    if lo > hi:
        return range(0)
    return range(max(0, int(lo * n) - 1), min(n, int(hi * n) + 2))


def _boxes(x0: int, y0: int, x1: int, y1: int, r: int, w: int, h: int):
    """Boxes (lo_x, lo_y, hi_x, hi_y; inclusive, on the canvas) that together hold every
    pixel centre within ``r`` of the segment: one per strip along it."""
    dx, dy = x1 - x0, y1 - y0
    if (0 <= min(x0, x1) - r - 1 and max(x0, x1) + r + 1 < w
            and 0 <= min(y0, y1) - r - 1 and max(y0, y1) + r + 1 < h
            and max(abs(dx), abs(dy)) <= STRIP):
        # The common case (a mouse-rate segment on the canvas): one strip, nothing clipped.
        return [(min(x0, x1) - r - 1, min(y0, y1) - r - 1,
                 max(x0, x1) + r + 1, max(y0, y1) + r + 1)]
    n = max(1, (max(abs(dx), abs(dy)) + STRIP - 1) // STRIP)
    out = []
    for k in _strip_range(x0, y0, x1, y1, r + 2, w, h, n):
        # Strip k covers the part of the segment between t = k/n and (k+1)/n; integer
        # floor/ceil bounds keep the boxes a superset of that part.
        ax, bx = x0 + dx * k // n, x0 - ((x0 - x1) * (k + 1) // n)
        ay, by = y0 + dy * k // n, y0 - ((y0 - y1) * (k + 1) // n)
        lo_x, hi_x = max(min(ax, bx) - r - 1, 0), min(max(ax, bx) + r + 1, w - 1)
        lo_y, hi_y = max(min(ay, by) - r - 1, 0), min(max(ay, by) + r + 1, h - 1)
        if lo_x <= hi_x and lo_y <= hi_y:
            out.append((lo_x, lo_y, hi_x, hi_y))
    return out


class Plan:
    """The boxes a polyline's rasterising will test, planned before any of it is done:
    ``work`` (pixel centres to test) lets a receiver refuse a hostile record for its cost
    without paying it."""

    __slots__ = ("width", "w", "h", "parts", "work")

    def __init__(self, points: np.ndarray | list, width: int, w: int, h: int) -> None:
        """``points``: an (n, 2) integer array or a list of (x, y) pairs, within LIMIT."""
        self.width, self.w, self.h = int(width), w, h
        r = (self.width + 1) // 2
        pts = points.tolist() if isinstance(points, np.ndarray) else points
        pairs = zip(pts[:-1], pts[1:]) if len(pts) > 1 else [(pts[0], pts[0])] if pts else []
        self.parts = []  # (x0, y0, x1, y1, box)
        work = 0
        for (x0, y0), (x1, y1) in pairs:
            for box in _boxes(x0, y0, x1, y1, r, w, h):
                self.parts.append((x0, y0, x1, y1, box))
                work += (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
        self.work = work

    def pixels(self) -> np.ndarray:
        """Flat indices (sorted, unique) of the polyline."""
        parts, w = self.parts, self.w
        if not parts:
            return _EMPTY
        if len(parts) == 1:
            x0, y0, x1, y1, (a, b, c, d) = parts[0]
            offsets = shapes.offsets(x0, y0, x1, y1, self.width, a, b, c, d, w)
            if offsets is not None:
                return offsets + (b * w + a)
            inside = _inside(x0, y0, x1, y1, self.width, a, b, c, d)
            flat = np.arange(b, d + 1, dtype=np.int64)[:, None] * w + np.arange(a, c + 1)
            return flat[inside]
        lo_x = min(p[4][0] for p in parts)
        lo_y = min(p[4][1] for p in parts)
        hi_x = max(p[4][2] for p in parts)
        hi_y = max(p[4][3] for p in parts)
        bw, bh = hi_x - lo_x + 1, hi_y - lo_y + 1
        if bw * bh <= 8 * self.work + 4096:
            # Boxes of one stroke overlap: OR them into a mask of the stroke's bounding box,
            # whose set cells come out sorted and unique.
            mask = np.zeros((bh, bw), dtype=bool)
            for x0, y0, x1, y1, (a, b, c, d) in parts:
                mask[b - lo_y:d - lo_y + 1, a - lo_x:c - lo_x + 1] |= shapes.mask(
                    x0, y0, x1, y1, self.width, a, b, c, d)
            ys, xs = np.nonzero(mask)
            return (ys + lo_y).astype(np.int64) * w + (xs + lo_x)
        # Far-apart boxes (a spread-out polyline): lists of pixels, merged.
        out = []
        for x0, y0, x1, y1, (a, b, c, d) in parts:
            inside = _inside(x0, y0, x1, y1, self.width, a, b, c, d)
            flat = np.arange(b, d + 1, dtype=np.int64)[:, None] * w + np.arange(a, c + 1)
            out.append(flat[inside])
        return np.unique(np.concatenate(out))


class ShapeCache:
    """Segment shapes by ``(dx, dy, width)`` (computed once for ``|dx|, |dy|`` in either
    order, see :meth:`_mask`), for boxes that are the segment's own
    (``_boxes``' common case: nothing clipped, one strip), where ``_inside`` depends on
    nothing else. Least recently used out beyond ``limit`` bytes; shapes over ``area``
    pixels of box are never kept. Thread-safe (the UI thread draws while the network
    decodes). What it returns is read-only and shared: callers copy before changing it."""

    def __init__(self, limit: int, area: int) -> None:
        self.limit = limit
        self.area = area
        self.bytes = 0  #: what the kept arrays take
        self.hits = 0
        self.misses = 0
        self._masks: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._offsets: OrderedDict[tuple[int, int, int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _cacheable(self, x0: int, y0: int, x1: int, y1: int, width: int, a: int, b: int,
                   c: int, d: int) -> bool:
        """Is the box small enough to keep, and the segment's own (nothing clipped)?"""
        r = (width + 1) // 2
        return ((c - a + 1) * (d - b + 1) <= self.area
                and a == min(x0, x1) - r - 1 and c == max(x0, x1) + r + 1
                and b == min(y0, y1) - r - 1 and d == max(y0, y1) + r + 1)

    def _get(self, table: OrderedDict, key: tuple) -> np.ndarray | None:
        with self._lock:
            arr = table.get(key)
            if arr is not None:
                table.move_to_end(key)
                self.hits += 1
            return arr

    def _put(self, table: OrderedDict, key: tuple, arr: np.ndarray,
             computed: bool = False) -> np.ndarray:
        """Keep ``arr`` (read-only from now on) under ``key`` and return it; ``computed``:
        a shape computed from scratch (a miss, as :attr:`misses` counts them)."""
        arr.setflags(write=False)
        with self._lock:
            self.misses += computed
            if key not in table:
                table[key] = arr
                self.bytes += arr.nbytes
                self._evict()
        return arr

    def mask(self, x0: int, y0: int, x1: int, y1: int, width: int, a: int, b: int, c: int,
             d: int) -> np.ndarray:
        """``_inside(x0, y0, x1, y1, width, a, b, c, d)``, from the cache where it can be."""
        if not self._cacheable(x0, y0, x1, y1, width, a, b, c, d):
            return _inside(x0, y0, x1, y1, width, a, b, c, d)
        return self._mask((x1 - x0, y1 - y0, width))

    def _mask(self, key) -> np.ndarray:
        """The shape of a segment of direction ``key[:2]`` and width ``key[2]`` in its own
        box, from the one kept for its direction folded into ``0 <= dy <= dx``: a segment
        mirrored left to right, top to bottom or across the diagonal has the mirrored
        shape, exactly (the tests in :func:`_inside` only square or multiply the
        differences whose signs or order change). So 8 directions share one computed
        shape, and a scribble's few thousand segments fit in the cache."""
        dx, dy, width = key
        ax, ay = abs(dx), abs(dy)
        swap = ay > ax
        folded = (ay, ax, width) if swap else (ax, ay, width)
        m = self._get(self._masks, folded)
        if m is None:
            r = (width + 1) // 2
            m = self._put(self._masks, folded,
                          _inside(0, 0, folded[0], folded[1], width, -r - 1, -r - 1,
                                  folded[0] + r + 1, folded[1] + r + 1), computed=True)
        if swap:
            m = m.T
        if dx < 0:
            m = m[:, ::-1]
        if dy < 0:
            m = m[::-1]
        return m

    def offsets(self, x0: int, y0: int, x1: int, y1: int, width: int, a: int, b: int,
                c: int, d: int, w: int) -> np.ndarray | None:
        """The segment's pixels as flat offsets from its box's corner ``(a, b)`` on a
        canvas ``w`` wide (sorted), or None when its shape is not cached by nature (add
        ``b * w + a`` for the pixels)."""
        if not self._cacheable(x0, y0, x1, y1, width, a, b, c, d):
            return None
        key = (x1 - x0, y1 - y0, width, w)
        o = self._get(self._offsets, key)
        if o is None:
            rows, cols = np.nonzero(np.ascontiguousarray(self._mask(key[:3])))
            o = self._put(self._offsets, key, rows.astype(np.int64) * w + cols)
        return o

    def _evict(self) -> None:
        while self.bytes > self.limit and (self._masks or self._offsets):
            # the older of the two oldest entries goes: offsets first on a tie, since a
            # mask can rebuild them without the full computation
            table = self._offsets if self._offsets else self._masks
            _, arr = table.popitem(last=False)
            self.bytes -= arr.nbytes

    def clear(self) -> None:
        with self._lock:
            self._masks.clear()
            self._offsets.clear()
            self.bytes = self.hits = self.misses = 0


#: The process's shape cache: 8 MB holds several thousand mouse-rate shapes (a 10-pixel
#: brush's segment takes about 2 kB); boxes over 128x128 are computed every time.
shapes = ShapeCache(limit=8 << 20, area=1 << 14)


def _inside(x0: int, y0: int, x1: int, y1: int, width: int, a: int, b: int, c: int,
            d: int) -> np.ndarray:
    """Which pixel centres of the box ``a..c`` x ``b..d`` lie within ``width / 2`` of the
    segment: a (rows, columns) bool array. Rows and columns are broadcast, so only a dozen
    operations touch the whole box. The distance to the segment's line is tested through
    the cross product (``|p x d|^2 = |p|^2 |d|^2 - (p.d)^2``), which for pixels near the
    segment stays far below 2^63."""
    px = np.arange(a - x0, c - x0 + 1, dtype=np.int64)
    py = np.arange(b - y0, d - y0 + 1, dtype=np.int64)[:, None]
    lim = width * width // 4  # 4 q <= width^2  <=>  q <= floor(width^2 / 4), q an integer
    inside = (px * px + py * py) <= lim  # near the start
    dx, dy = x1 - x0, y1 - y0
    if dx or dy:
        qx, qy = px - dx, py - dy
        inside |= (qx * qx + qy * qy) <= lim  # near the end
        dd = dx * dx + dy * dy
        dot = px * dx + py * dy
        cross = px * dy - py * dx
        mid = (cross * cross) <= width * width * dd // 4  # near the line ...
        mid &= dot > 0  # ... beside the segment
        mid &= dot < dd
        inside |= mid
    return inside


def segment_work(x0: int, y0: int, x1: int, y1: int, width: int, w: int, h: int) -> int:
    """Pixel centres the rasteriser tests for this segment (its cost)."""
    r = (width + 1) // 2
    return sum((c - a + 1) * (d - b + 1) for a, b, c, d in _boxes(x0, y0, x1, y1, r, w, h))


def plan(points, width: int, w: int, h: int) -> Plan:
    """Plan a polyline (validated) for rasterising: see :class:`Plan`."""
    _check_width(width)
    return Plan(_check(points), int(width), w, h)


def segment_pixels(p0: tuple[int, int], p1: tuple[int, int], width: int, w: int,
                   h: int) -> np.ndarray:
    """Flat indices (sorted, unique) of one segment drawn with a round brush."""
    return plan([p0, p1], width, w, h).pixels()


def stroke_pixels(points: Iterable[tuple[int, int]], width: int, w: int, h: int) -> np.ndarray:
    """Flat indices (sorted, unique) of a polyline drawn with a round brush of ``width``."""
    pts = points if isinstance(points, np.ndarray) else list(points)
    return plan(pts, width, w, h).pixels()


def points_pixels(points: Iterable[tuple[int, int]], w: int, h: int) -> np.ndarray:
    """Flat indices (sorted, unique) of single pixels; those off the canvas are dropped."""
    pts = _check(list(points))
    if len(pts) == 0:
        return _EMPTY
    on = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    pts = pts[on]
    return np.unique(pts[:, 1] * w + pts[:, 0])


def _check_width(width: int) -> None:
    if not 1 <= int(width) <= MAX_WIDTH:
        raise ValueError(f"width {width} is not in 1..{MAX_WIDTH}")
