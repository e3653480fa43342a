"""The shared stroke rasteriser: exact, symmetric, clipped, the same as a slow reference."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pboard import api, raster

W, H = 40, 30


def reference(p0, p1, width):
    """Pixel centres within width/2 of the segment, in exact rational arithmetic."""
    (x0, y0), (x1, y1) = p0, p1
    out = []
    r2 = Fraction(width, 2) ** 2
    dx, dy = x1 - x0, y1 - y0
    dd = dx * dx + dy * dy
    for y in range(H):
        for x in range(W):
            if dd == 0:
                t = Fraction(0)
            else:
                t = min(max(Fraction((x - x0) * dx + (y - y0) * dy, dd), Fraction(0)), Fraction(1))
            cx, cy = x0 + t * dx, y0 + t * dy
            if (x - cx) ** 2 + (y - cy) ** 2 <= r2:
                out.append(y * W + x)
    return np.array(out, dtype=np.int64)


coord = st.integers(-10, 50)


@settings(max_examples=150, deadline=None)
@given(coord, coord, coord, coord, st.integers(1, 12))
def test_segment_matches_exact_reference(x0, y0, x1, y1, width):
    got = raster.segment_pixels((x0, y0), (x1, y1), width, W, H)
    assert np.array_equal(got, reference((x0, y0), (x1, y1), width))
    # direction does not matter
    assert np.array_equal(got, raster.segment_pixels((x1, y1), (x0, y0), width, W, H))


def test_small_shapes():
    assert raster.stroke_pixels([(5, 5)], 1, W, H).tolist() == [5 * W + 5]
    plus = raster.stroke_pixels([(5, 5)], 2, W, H)
    assert sorted(plus.tolist()) == sorted([5 * W + 5, 4 * W + 5, 6 * W + 5, 5 * W + 4, 5 * W + 6])
    row = raster.stroke_pixels([(2, 3), (9, 3)], 1, W, H)
    assert row.tolist() == list(range(3 * W + 2, 3 * W + 10))


def test_stroke_is_union_of_segments_and_clipped():
    pts = [(-5, -5), (20, 10), (45, 35)]
    got = raster.stroke_pixels(pts, 5, W, H)
    want = np.union1d(raster.segment_pixels(pts[0], pts[1], 5, W, H),
                      raster.segment_pixels(pts[1], pts[2], 5, W, H))
    assert np.array_equal(got, want)
    assert got.min() >= 0 and got.max() < W * H
    assert raster.stroke_pixels([(-100, -100), (-50, -90)], 10, W, H).size == 0


def test_points_and_limits():
    got = raster.points_pixels([(1, 1), (1, 1), (-1, 0), (W, 0), (0, 2)], W, H)
    assert got.tolist() == [W + 1, 2 * W]
    with pytest.raises(ValueError):
        raster.stroke_pixels([(0, 0)], 0, W, H)
    with pytest.raises(ValueError):
        raster.stroke_pixels([(0, 0)], raster.MAX_WIDTH + 1, W, H)
    with pytest.raises(ValueError):
        raster.stroke_pixels([(0, 0), (10**9, 0)], 3, W, H)


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.floats(allow_nan=True, allow_infinity=True), st.floats()
                 | st.integers(-10**20, 10**20)))
def test_a_stroke_point_is_made_as_a_list_of_points_is(p):
    """api._point (a stroke's next point, in plain Python) rounds and clips as
    api._points does (NumPy, for whole lists), and refuses what it refuses."""
    try:
        want = tuple(int(v) for v in api._points([p])[0])
    except ValueError:
        with pytest.raises(ValueError):
            api._point(p)
    else:
        assert api._point(p) == want
    with pytest.raises(ValueError):
        api._point(("a", 1))


far = st.integers(-raster.LIMIT, raster.LIMIT)


@settings(max_examples=300, deadline=None)
@given(far, far, coord, coord, st.integers(1, 40))
def test_segments_from_far_off_the_canvas_match_the_reference(x0, y0, x1, y1, width):
    """Only the strips near the canvas are walked; none with pixels on it may be skipped."""
    got = raster.segment_pixels((x0, y0), (x1, y1), width, W, H)
    assert np.array_equal(got, reference((x0, y0), (x1, y1), width))


def test_a_hostile_off_canvas_stroke_costs_nothing():
    """Found by fuzzing: 255 segments of ~90,000 pixels each, all off the canvas, once took
    tens of seconds; now the work is bounded by what lies near the canvas."""
    pts = [(32767, -32768), (-32768, 32767)] * 128
    assert raster.stroke_pixels(pts, 1, 1920, 1080).size == 0
    work = sum(raster.segment_work(a[0], a[1], b[0], b[1], 1, 1920, 1080)
               for a, b in zip(pts, pts[1:]))
    assert work < 255 * 200


def test_a_canvas_crossing_segment_from_the_coordinate_limits_is_exact():
    """Endpoints at +-2^15 on a 1920x1080 canvas, where |p|^2 |d|^2 is beyond 2^63: the
    int64 distance test must still be exact. Checked with Python integers on every pixel
    within 12 of the diagonal."""
    w, h, width = 1920, 1080, 7
    (x0, y0), (x1, y1) = (-32768, -32768), (32767, 32767)
    got = set(raster.stroke_pixels([(x0, y0), (x1, y1)], width, w, h).tolist())
    dx, dy = x1 - x0, y1 - y0
    dd = dx * dx + dy * dy
    want = set()
    for y in range(h):
        for x in range(max(0, y - 12), min(w, y + 13)):
            px, py = x - x0, y - y0
            dot = px * dx + py * dy
            if 0 < dot < dd:
                near = 4 * (px * dy - py * dx) ** 2 <= width * width * dd
            else:
                near = False
            if near:
                want.add(y * w + x)
    assert got == want
    assert len(got) > 1080 * 5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 650), st.integers(-50, 450)), min_size=1,
                max_size=12), st.integers(1, 30))
def test_a_polyline_is_the_union_of_its_segments(points, width):
    """Whichever way the boxes are combined (one box, a mask of the bounding box, or lists
    merged for spread-out points), a polyline is exactly the union of its segments."""
    w, h = 600, 400
    got = raster.stroke_pixels(points, width, w, h)
    pairs = list(zip(points[:-1], points[1:])) or [(points[0], points[0])]
    want = np.unique(np.concatenate([raster.segment_pixels(a, b, width, w, h)
                                     for a, b in pairs]))
    assert np.array_equal(got, want)
    assert got.dtype == np.int64


def _uncached(points, width, w, h):
    """The same polyline with the shape cache out of the way (every shape computed)."""
    saved = raster.shapes
    raster.shapes = raster.ShapeCache(limit=0, area=0)
    try:
        return raster.stroke_pixels(points, width, w, h)
    finally:
        raster.shapes = saved


def reference_near(p0, p1, width, w):
    """:func:`reference` on a square canvas ``w`` wide, walking only the segment's box
    (every pixel farther than width/2 from it is outside that box anyway)."""
    (x0, y0), (x1, y1) = p0, p1
    r2 = Fraction(width, 2) ** 2
    dx, dy = x1 - x0, y1 - y0
    dd = dx * dx + dy * dy
    r = width // 2 + 1
    out = []
    for y in range(max(0, min(y0, y1) - r), min(w, max(y0, y1) + r + 1)):
        for x in range(max(0, min(x0, x1) - r), min(w, max(x0, x1) + r + 1)):
            t = Fraction(0) if dd == 0 else min(max(
                Fraction((x - x0) * dx + (y - y0) * dy, dd), Fraction(0)), Fraction(1))
            if (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2 <= r2:
                out.append(y * w + x)
    return np.array(out, dtype=np.int64)


inner = st.integers(50, 110)  # with |d| <= 32 and width <= 24: boxes inside 0..200


@settings(max_examples=150, deadline=None)
@given(inner, inner, st.integers(-32, 32), st.integers(-32, 32), st.integers(1, 24))
def test_cached_shapes_are_the_exact_shapes(x0, y0, dx, dy, width):
    """Segments whose boxes lie on the canvas, where the shape cache answers: the first
    call (computed, then kept), the second (from the cache) and the same direction drawn
    elsewhere all match the exact rational reference."""
    w = h = 200
    p0, p1 = (x0, y0), (x0 + dx, y0 + dy)
    want = reference_near(p0, p1, width, w)
    for _ in range(2):
        assert np.array_equal(raster.segment_pixels(p0, p1, width, w, h), want)
    moved = raster.segment_pixels((x0 + 7, y0 + 3), (x0 + dx + 7, y0 + dy + 3), width, w, h)
    assert np.array_equal(moved, want + 3 * w + 7)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(100, 140), st.integers(100, 140)), min_size=1,
                max_size=10), st.integers(1, 30))
def test_polylines_with_cached_shapes_match_computed_ones(points, width):
    """Close points (one mask of the bounding box, OR-ed from cached shapes) and single
    segments (cached offsets) give what computing every shape gives."""
    for _ in range(2):
        assert np.array_equal(raster.stroke_pixels(points, width, 300, 250),
                              _uncached(points, width, 300, 250))


def test_the_mirror_images_of_a_direction_share_one_computed_shape():
    """A segment mirrored left to right, top to bottom or across the diagonal is drawn
    from the one shape computed for its direction folded into 0 <= dy <= dx, and each
    mirror image is still exactly the reference's."""
    cache = raster.ShapeCache(limit=1 << 20, area=1 << 14)
    saved = raster.shapes
    raster.shapes = cache
    w = 200
    try:
        for width in (1, 2, 5, 12):
            for family in ({(7, 3), (-7, 3), (7, -3), (-7, -3), (3, 7), (-3, 7), (3, -7),
                            (-3, -7)},
                           {(5, 0), (-5, 0), (0, 5), (0, -5)},
                           {(4, 4), (-4, 4), (4, -4), (-4, -4)}):
                before = cache.misses
                for dx, dy in sorted(family):
                    p0, p1 = (100, 100), (100 + dx, 100 + dy)
                    got = raster.segment_pixels(p0, p1, width, w, w)
                    assert np.array_equal(got, reference_near(p0, p1, width, w)), (dx, dy)
                    assert got.flags.writeable
                assert cache.misses == before + 1, (width, family)
    finally:
        raster.shapes = saved


def test_the_shape_cache_keeps_to_its_bytes_and_shares_nothing_writable():
    cache = raster.ShapeCache(limit=64 << 10, area=1 << 14)
    saved = raster.shapes
    raster.shapes = cache
    try:
        for width in range(1, 40):
            for dx in range(-20, 21, 5):
                got = raster.segment_pixels((500, 500), (500 + dx, 510), width, 1000, 1000)
                assert cache.bytes <= cache.limit
                assert got.flags.writeable  # the caller's own array
        assert cache.misses > 0 and cache.bytes > 0
        hits = cache.hits
        raster.segment_pixels((100, 100), (100 + 20, 110), 39, 1000, 1000)  # just kept
        assert cache.hits == hits + 1
        # a brush too wide to keep is computed every time, and never kept
        before = cache.bytes, cache.misses
        raster.segment_pixels((500, 500), (510, 500), 200, 1000, 1000)
        assert (cache.bytes, cache.misses) == before
        box = (500 - 4, 500 - 4, 510 + 4, 505 + 4)  # the segment's own (r = 3)
        mask = cache.mask(500, 500, 510, 505, 5, *box)
        assert not mask.flags.writeable and cache.mask(500, 500, 510, 505, 5, *box) is mask
    finally:
        raster.shapes = saved
