"""Rasterisation: the one routine that turns strokes into pixels, the same on every peer.

A stroke is a polyline drawn with a round brush of integer ``width``: a pixel belongs to it
when its centre lies within ``width / 2`` of one of the segments (of the point itself for a
one-point stroke). The test is done in exact integer arithmetic on integer coordinates:
with segment ``A -> B``, ``d = B - A`` and pixel ``P``, the squared distance is
``|P - A|^2 - (P-A).d^2 / |d|^2`` inside the segment and the distance to the nearer end
outside it; multiplying through by ``4 |d|^2`` leaves only int64 products, so no peer,
platform or NumPy version can round differently. Work is vectorised over boxes that follow
the segment in strips of :data:`STRIP` pixels, clipped to the canvas first, so a long
diagonal costs about its own area and a far-off point costs nothing.

Only the author rasterises (peers receive the resulting pixels), but a single routine keeps
the local preview, the API and the UI's straight-line tool identical.
"""

from __future__ import annotations

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
    n = max(1, (max(abs(x1 - x0), abs(y1 - y0)) + STRIP - 1) // STRIP)
    out = []
    for k in _strip_range(x0, y0, x1, y1, r + 2, w, h, n):
        # Strip k covers the part of the segment between t = k/n and (k+1)/n; integer
        # floor/ceil bounds keep the boxes a superset of that part.
        ax, bx = x0 + (x1 - x0) * k // n, x0 - ((x0 - x1) * (k + 1) // n)
        ay, by = y0 + (y1 - y0) * k // n, y0 - ((y0 - y1) * (k + 1) // n)
        lo_x, hi_x = max(min(ax, bx) - r - 1, 0), min(max(ax, bx) + r + 1, w - 1)
        lo_y, hi_y = max(min(ay, by) - r - 1, 0), min(max(ay, by) + r + 1, h - 1)
        if lo_x <= hi_x and lo_y <= hi_y:
            out.append((lo_x, lo_y, hi_x, hi_y))
    return out


def segment_work(x0: int, y0: int, x1: int, y1: int, width: int, w: int, h: int) -> int:
    """Pixel centres :func:`_segment` will test for this segment (its cost)."""
    r = (width + 1) // 2
    return sum((c - a + 1) * (d - b + 1) for a, b, c, d in _boxes(x0, y0, x1, y1, r, w, h))


def _segment(x0: int, y0: int, x1: int, y1: int, width: int, w: int, h: int) -> np.ndarray:
    r = (width + 1) // 2
    boxes = _boxes(x0, y0, x1, y1, r, w, h)
    if not boxes:
        return _EMPTY
    grids = [np.mgrid[b:d + 1, a:c + 1] for a, b, c, d in boxes]
    ys = np.concatenate([g[0].ravel() for g in grids]).astype(np.int64)
    xs = np.concatenate([g[1].ravel() for g in grids]).astype(np.int64)
    px, py = xs - x0, ys - y0
    dx, dy = x1 - x0, y1 - y0
    dd = dx * dx + dy * dy
    pp = px * px + py * py
    w2 = width * width
    if dd == 0:
        inside = 4 * pp <= w2
    else:
        dot = px * dx + py * dy
        qx, qy = xs - x1, ys - y1
        to_end = 4 * (qx * qx + qy * qy) <= w2
        to_start = 4 * pp <= w2
        to_line = 4 * (pp * dd - dot * dot) <= w2 * dd
        inside = np.where(dot <= 0, to_start, np.where(dot >= dd, to_end, to_line))
    return (ys[inside] * w + xs[inside]).astype(np.int64)


def segment_pixels(p0: tuple[int, int], p1: tuple[int, int], width: int, w: int,
                   h: int) -> np.ndarray:
    """Flat indices (sorted, unique) of one segment drawn with a round brush."""
    (x0, y0), (x1, y1) = _check([p0, p1]).tolist()
    _check_width(width)
    return np.unique(_segment(x0, y0, x1, y1, int(width), w, h))


def stroke_pixels(points: Iterable[tuple[int, int]], width: int, w: int, h: int) -> np.ndarray:
    """Flat indices (sorted, unique) of a polyline drawn with a round brush of ``width``."""
    pts = _check(list(points))
    _check_width(width)
    if len(pts) == 0:
        return _EMPTY
    if len(pts) == 1:
        x, y = pts[0].tolist()
        return np.unique(_segment(x, y, x, y, int(width), w, h))
    parts = [_segment(a[0], a[1], b[0], b[1], int(width), w, h)
             for a, b in zip(pts[:-1].tolist(), pts[1:].tolist())]
    return np.unique(np.concatenate(parts))


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
