"""The wire codec: round trips, and hostile bytes that must raise DecodeError and nothing else."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pboard import ops, wire
from p2pboard.ops import Clear, Image, Paint, Toggle

W, H = 200, 120
SIZE = (W, H)
ME = 0xA1B2C3D4


def _datagram(records: list[bytes], seq: int = 7) -> bytes:
    return wire.encode_header(wire.MsgType.DATA, ME, seq, SIZE) + b"".join(records)


def zstd_frame(raw: bytes, sized: bool = True) -> bytes:
    return zstandard.ZstdCompressor(write_content_size=sized).compress(raw)


def zstd_claiming(size: int) -> bytes:
    """A frame header (single segment, 8-byte content size) claiming ``size`` bytes, then
    a raw last block of 0 bytes."""
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + struct.pack("<Q", size) + b"\x01\x00\x00"


def image_piece(enc: int, payload: bytes, w: int = 2, h: int = 2) -> bytes:
    return wire.IMAGE_REC.pack(wire.REC_IMAGE, 1, 1, 0, 0, w, h, enc, len(payload)) + payload


def decode(records: list[bytes]):
    return wire.decode_records(_datagram(records)[wire.HEADER.size:], ME, W, H)


pixel_sets = st.lists(st.tuples(st.integers(0, W - 1), st.integers(0, H - 1)), min_size=1,
                      max_size=400).map(lambda pts: np.unique(np.array([y * W + x for x, y in pts],
                                                                       dtype=np.int64)))
colors = st.tuples(*[st.integers(0, 255)] * 4)


@given(pixel_sets, colors, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_paint_round_trip(index, color, lamport, opno):
    p = Paint(ME, opno, lamport, color, index)
    pieces = wire.encode_paint(p, W)
    got = []
    for rec, frag in pieces:
        assert len(rec) <= wire.BODY_BUDGET
        (dec,) = decode([rec])
        assert (dec.author, dec.opno, dec.lamport, dec.color) == (ME, opno, lamport, color)
        assert np.array_equal(dec.index, frag.index)
        got.append(dec.index)
    assert np.array_equal(np.sort(np.concatenate(got)), index)


def test_big_paint_splits_into_datagrams():
    rng = np.random.default_rng(1)
    index = np.unique(rng.integers(0, W * H, 9000))
    pieces = wire.encode_paint(Paint(ME, 1, 1, (1, 2, 3, 4), index), W)
    assert len(pieces) > 1
    assert all(len(r) <= wire.BODY_BUDGET for r, _ in pieces)
    assert np.array_equal(np.sort(np.concatenate([f.index for _, f in pieces])), index)


def test_stroke_costs_well_under_a_byte_per_pixel():
    # a solid 12-pixel-wide band, like a brush stroke
    ys, xs = np.mgrid[40:52, 10:190]
    index = np.sort((ys * W + xs).ravel())
    pieces = wire.encode_paint(Paint(ME, 1, 1, (0, 0, 0, 255), index), W)
    nbytes = sum(len(r) for r, _ in pieces)
    assert nbytes < 0.1 * index.size


@given(st.integers(1, 60), st.integers(1, 40), st.integers(0, 50), st.integers(0, 30),
       st.sampled_from(["noise", "flat", "gradient"]), st.booleans())
@settings(max_examples=80, deadline=None)
def test_image_round_trip(w, h, x, y, kind, opaque):
    rng = np.random.default_rng(w * 1000 + h)
    if kind == "noise":
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    elif kind == "flat":
        rgba = np.full((h, w, 4), 77, np.uint8)
    else:
        rgba = (np.arange(h * w * 4) % 251).astype(np.uint8).reshape(h, w, 4)
    if opaque:
        rgba[..., 3] = 255
    img = Image(ME, 3, 9, x, y, rgba)
    board = np.zeros((H, W, 4), np.uint8)
    for rec, frag in wire.encode_image(img):
        assert len(rec) <= wire.BODY_BUDGET
        enc = wire.IMAGE_REC.unpack_from(rec)[7]
        # alpha is left out exactly when every pixel of the piece is opaque (or it goes raw)
        assert enc in ((wire.IMG_RGB_SUB_ZSTD, wire.IMG_RAW) if (frag.rgba[..., 3] == 255).all()
                       else (wire.IMG_SUB_ZSTD, wire.IMG_RAW))
        (dec,) = decode([rec])
        # an opaque compressed piece stays Sub-filtered until read (ops.Image)
        assert (dec.sub is not None) == (enc == wire.IMG_RGB_SUB_ZSTD)
        assert dec.rgba.dtype == np.uint8 and np.array_equal(dec.rgba, frag.rgba)
        assert dec.sub is None and dec.shape == frag.rgba.shape
        hh, ww = dec.rgba.shape[:2]
        board[dec.y:dec.y + hh, dec.x:dec.x + ww] = dec.rgba
    assert np.array_equal(board[y:y + h, x:x + w], rgba)


def test_strips_still_filtered_are_unfiltered_together():
    """ops.side_by_side: a band's strips as decoded (Sub-filtered, each piece's first
    column as it is) give the band, in one pass or mixed with pieces already read, and
    are left as they were."""
    rng = np.random.default_rng(11)
    band = rng.integers(0, 256, (5, 180, 4), dtype=np.uint8)
    band[..., 3] = 255
    pieces = [dec for rec, _ in wire.encode_image(Image(ME, 1, 1, 0, 0, band), budget=300)
              for dec in decode([rec])]
    assert len(pieces) > 3 and all(p.sub is not None and p.y == 0 for p in pieces)
    assert np.array_equal(ops.side_by_side(pieces), band)
    assert all(p.sub is not None for p in pieces)  # nothing un-filtered one by one
    pieces[1].rgba  # read: un-filtered by itself
    assert np.array_equal(ops.side_by_side(pieces), band)
    with pytest.raises(TypeError):
        Image(ME, 1, 1, 0, 0)
    with pytest.raises(TypeError):
        Image(ME, 1, 1, 0, 0, band, sub=band[..., :3])


def test_an_opaque_photo_costs_less_without_alpha():
    """Sub-filtered alpha is all zeros, but still costs bits on every pixel: leaving it out
    of opaque pieces saves over a tenth of a photo's bytes (and datagrams)."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:120, 0:200]
    rgb = np.stack([xx, yy, xx + yy], axis=-1) + rng.integers(0, 24, (120, 200, 3))
    rgba = np.full((120, 200, 4), 255, np.uint8)
    rgba[..., :3] = (rgb % 256).astype(np.uint8)
    opaque = sum(len(r) for r, _ in wire.encode_image(Image(ME, 1, 1, 0, 0, rgba)))
    rgba[..., 3] = 254  # translucent: alpha must travel
    full = sum(len(r) for r, _ in wire.encode_image(Image(ME, 1, 1, 0, 0, rgba)))
    assert opaque < 0.9 * full, (opaque, full)


def test_records_share_a_datagram():
    recs = [wire.encode_clear(Clear(ME, 1, 5)), wire.encode_toggle(Toggle(ME, 2, 1, False)),
            wire.encode_toggle(Toggle(ME, 3, 1, True))]
    got = decode(recs)
    assert got[0] == Clear(ME, 1, 5)
    assert got[1] == Toggle(ME, 2, 1, False) and got[2].visible


def test_control_messages_round_trip():
    s = wire.Session("ada", (1, 2, 3, 255), wire.SESSION_PROBE,
                     (wire.SourceEntry(5, 10, 12), wire.SourceEntry(6, 0, 0)), ts=77,
                     vector=1 << 63, digest=5, count=65535, loss=6553)
    d = wire.encode_session(ME, 42, SIZE, s)
    h = wire.decode_header(d)
    assert (h.type, h.sender, h.seq, h.width, h.height) == (wire.MsgType.SESSION, ME, 42, W, H)
    assert wire.decode_session(d[wire.HEADER.size:]) == s
    n = wire.Nack(5, 2, ((3, 4), (100, 1)))
    assert wire.decode_nack(wire.encode_nack(ME, 1, SIZE, n)[wire.HEADER.size:]) == n
    m = wire.SnapMeta(9, 8, 7, 123456, wire.SNAP_CHUNK_SIZE)
    assert wire.decode_snap_meta(wire.encode_snap_meta(ME, 1, SIZE, m)[wire.HEADER.size:]) == m
    c = wire.SnapChunk(9, 7, 3, b"xyz")
    assert wire.decode_snap_chunk(wire.encode_snap_chunk(ME, 1, SIZE, c)[wire.HEADER.size:]) == c
    sn = wire.SnapNack(9, 7, ((1, 5),))
    assert wire.decode_snap_nack(wire.encode_snap_nack(ME, 1, SIZE, sn)[wire.HEADER.size:]) == sn
    out = wire.SnapNack(9, 7, ())  # no ranges: the fetcher withdraws (protocol 8)
    assert wire.decode_snap_nack(wire.encode_snap_nack(ME, 1, SIZE, out)[wire.HEADER.size:]) == out
    with pytest.raises(wire.DecodeError):  # a NACK without ranges still means nothing
        wire.decode_nack(wire.encode_nack(ME, 1, SIZE, wire.Nack(5, 2, ()))[wire.HEADER.size:])
    cur = wire.Cursor(5, 6, False)
    assert wire.decode_cursor(wire.encode_cursor(ME, 1, SIZE, cur)[wire.HEADER.size:], W, H) == cur


@pytest.mark.parametrize("bad", [
    b"", b"PB", b"XX" + bytes(15), bytes(2000),
])
def test_bad_headers(bad):
    with pytest.raises(wire.DecodeError):
        wire.decode_header(bad)


def test_hostile_records():
    good = wire.encode_paint(Paint(ME, 1, 1, (0, 0, 0, 255), np.arange(50, dtype=np.int64)), W)
    rec = good[0][0]
    cases = [
        rec[:-1],  # truncated payload
        rec[:10],  # truncated head
        bytes([99]) + rec[1:],  # unknown kind
        # box off the canvas
        wire.PAINT_REC.pack(wire.REC_PAINT, 1, 1, 0, wire.PIX_BITMAP, W - 1, 0, 8, 1, 1) + b"\xff",
        # zip bomb: a compressed bitmap that inflates past its box
        (lambda z: wire.PAINT_REC.pack(wire.REC_PAINT, 1, 1, 0, wire.PIX_BITMAP_Z, 0, 0, 8, 8,
                                       len(z)) + z)(zlib.compress(bytes(1 << 20))),
        # empty pixel set
        wire.PAINT_REC.pack(wire.REC_PAINT, 1, 1, 0, wire.PIX_BITMAP, 0, 0, 8, 1, 1) + b"\x00",
        # points outside their box
        wire.PAINT_REC.pack(wire.REC_PAINT, 1, 1, 0, wire.PIX_POINTS, 0, 0, 2, 2, 4)
        + b"\x00\x05\x00\x00",
        # image larger than the canvas / than a piece may be
        wire.IMAGE_REC.pack(wire.REC_IMAGE, 1, 1, 0, 0, W + 1, 1, wire.IMG_RAW, 0),
        wire.IMAGE_REC.pack(wire.REC_IMAGE, 1, 1, 0, 0, 2, 2, wire.IMG_RAW, 3) + b"abc",
        # compressed pixels of the wrong size for their encoding: 4 bytes a pixel where
        # an opaque piece has 3, and 3 where RGBA has 4
        image_piece(wire.IMG_RGB_SUB_ZSTD, zstd_frame(bytes(16))),
        image_piece(wire.IMG_SUB_ZSTD, zstd_frame(bytes(12))),
        # a frame that does not say its size, or says another than it holds
        image_piece(wire.IMG_RGB_SUB_ZSTD, zstd_frame(bytes(12), sized=False)),
        image_piece(wire.IMG_RGB_SUB_ZSTD, zstd_frame(bytes(12))[:-2]),
        # a frame claiming a gigabyte: refused before anything is allocated
        image_piece(wire.IMG_RGB_SUB_ZSTD, zstd_claiming(1 << 30)),
        # bytes after the frame, a second frame, not a frame at all
        image_piece(wire.IMG_RGB_SUB_ZSTD, zstd_frame(bytes(12)) + b"x"),
        image_piece(wire.IMG_RGB_SUB_ZSTD, zstd_frame(bytes(12)) + zstd_frame(bytes(12))),
        image_piece(wire.IMG_RGB_SUB_ZSTD, b"\x28\xb5\x2f\xfdnonsense"),
        image_piece(wire.IMG_RGB_SUB_ZSTD, zlib.compress(bytes(12))),
        # protocol 5's zlib encodings (1, 2) and never-defined ones are unknown
        image_piece(1, zlib.compress(bytes(16))),
        image_piece(2, zlib.compress(bytes(12))),
        wire.IMAGE_REC.pack(wire.REC_IMAGE, 1, 1, 0, 0, 2, 2, 9, 1) + b"x",
        wire.TOGGLE_REC.pack(wire.REC_TOGGLE, 2, 1, 7),
    ]
    for bad in cases:
        with pytest.raises(wire.DecodeError):
            decode([bad])


@given(st.binary(max_size=1300))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_never_crash(data):
    try:
        h = wire.decode_header(data)
    except wire.DecodeError:
        return
    body = data[wire.HEADER.size:]
    for fn in (lambda: wire.decode_records(body, ME, W, H), lambda: wire.decode_session(body),
               lambda: wire.decode_nack(body), lambda: wire.decode_snap_meta(body),
               lambda: wire.decode_snap_chunk(body), lambda: wire.decode_snap_nack(body),
               lambda: wire.decode_cursor(body, W, H), lambda: wire.decode_snap_req(body)):
        try:
            fn()
        except wire.DecodeError:
            pass
    assert h.version >= 0


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_datagrams_never_crash(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    index = np.unique(rng.integers(0, W * H, 300))
    recs = [r for r, _ in wire.encode_paint(Paint(ME, 1, 1, (0, 0, 0, 255), index), W)][:1]
    img = rng.integers(0, 256, (5, 9, 4), dtype=np.uint8)
    recs += [r for r, _ in wire.encode_image(Image(ME, 2, 2, 3, 4, img))][:1]
    blob = bytearray(b"".join(recs))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    try:
        recs_out = wire.decode_records(bytes(blob[:cut]), ME, W, H)
    except wire.DecodeError:
        return
    for r in recs_out:
        if isinstance(r, Paint):
            assert r.index.min() >= 0 and r.index.max() < W * H
        if isinstance(r, Image):
            h, w = r.rgba.shape[:2]
            assert r.x + w <= W and r.y + h <= H


# ---------------------------------------------------------------- strokes as geometry

from p2pboard import raster  # noqa: E402
from p2pboard.ops import StrokePath  # noqa: E402

stroke_points = st.lists(st.tuples(st.integers(-300, 500), st.integers(-300, 400)), min_size=1,
                         max_size=600)


@given(stroke_points, st.integers(1, raster.MAX_WIDTH), colors)
@settings(max_examples=150, deadline=None)
def test_stroke_round_trip_rasterises_the_same_pixels_everywhere(points, brush, color):
    s = StrokePath(ME, 3, 9, color, brush, np.array(points))
    pieces = wire.encode_record(s, W, height=H)
    # the sender's count of each piece's work is what a receiver will spend
    assert [work for _, _, work in wire.encode_stroke_work(s, W, H)] == [
        wire.piece_work(rec, W, H) for rec, _ in pieces]
    decoded = []
    for rec, frag in pieces:
        (got,) = decode([rec])
        assert np.array_equal(got.index, frag.index)  # the author applies what others decode
        assert (got.opno, got.lamport, got.color) == (3, 9, color)
        decoded.append(got.index)
    union = np.unique(np.concatenate(decoded)) if decoded else np.zeros(0, np.int64)
    assert np.array_equal(union, raster.stroke_pixels(points, brush, W, H))


def test_mouse_segment_is_small_on_the_wire():
    s = StrokePath(ME, 3, 9, (1, 2, 3, 255), 12, np.array([(50, 50), (58, 55)]))
    ((rec, frag),) = wire.encode_record(s, W, height=H)
    assert len(rec) == wire.STROKE_REC.size + 6
    assert frag.index.size > 100  # over 4 pixels per byte


def test_hostile_strokes_are_refused():
    head = wire.STROKE_REC.pack(wire.REC_STROKE, 1, 1, 0, 255, wire.STROKE_ABS, 2)
    # two far corners, the widest brush: bounded work, refused
    with pytest.raises(wire.DecodeError):
        wire.decode_records(head + np.array([(-5000, -5000), (5000, 5000)], ">i2").tobytes(),
                            ME, 8192, 8192)
    for bad in (
        wire.STROKE_REC.pack(wire.REC_STROKE, 1, 1, 0, 3, wire.STROKE_ABS, 0),  # no points
        wire.STROKE_REC.pack(wire.REC_STROKE, 1, 1, 0, 3, wire.STROKE_ABS, 300),  # too many
        wire.STROKE_REC.pack(wire.REC_STROKE, 1, 1, 0, 3, 7, 1) + b"\0" * 4,  # encoding
        head + b"\0" * 7,  # truncated
        wire.STROKE_REC.pack(wire.REC_STROKE, 1, 1, 0, 3, wire.STROKE_ABS, 1)
        + np.array([(-900, -900)], ">i2").tobytes(),  # nothing on the canvas
    ):
        with pytest.raises(wire.DecodeError):
            decode([bad])


def test_long_strokes_are_split_so_no_datagram_asks_too_much_work():
    import random as _r

    from p2pboard.config import Config
    from p2pboard.session import Engine
    e = Engine(Config(size=(1920, 1080)), rng=_r.Random(3))
    e.datagrams_to_send(0.0)
    rng = _r.Random(1)
    pts = [(rng.randrange(1920), rng.randrange(1080)) for _ in range(12)]
    e.stroke(pts, 120, (0, 0, 0, 255), 0.0)
    for t in range(200):
        for d in e.datagrams_to_send(t * 0.01):
            h = wire.decode_header(d)
            if h.type == wire.MsgType.DATA:
                # a receiver accepts every datagram the author sends
                wire.decode_records(memoryview(d)[wire.HEADER.size:], h.sender, 1920, 1080)
    assert np.array_equal(e.board.pixels[..., 0] == 0,
                          np.isin(np.arange(1920 * 1080), raster.stroke_pixels(pts, 120, 1920, 1080)
                                  ).reshape(1080, 1920))


def test_token_bucket_never_spins_on_rounding_dust():
    from p2pboard.pacing import TokenBucket
    b = TokenBucket(8_000_000, 96 * 1024)
    now = 1_000_000.000123  # a monotonic clock far from zero
    sent = 0
    for _ in range(100_000):
        while b.try_consume(1228, now):
            sent += 1
        nxt = b.ready_at(1228, now)
        assert nxt > now or b.try_consume(1228, now), "ready now but refused: would spin"
        now = nxt if nxt > now else now
        if sent >= 2000:
            break
    assert sent >= 2000


def test_a_short_stroke_beyond_16_bit_coordinates_goes_as_pixels():
    s = StrokePath(ME, 3, 9, (1, 2, 3, 255), 5, np.array([(10, 10), (40000, 10), (20, 20)]))
    pieces = wire.encode_record(s, W, height=H)
    assert pieces and all(rec[0] == wire.REC_PAINT for rec, _ in pieces)
    union = np.unique(np.concatenate([decode([rec])[0].index for rec, _ in pieces]))
    assert np.array_equal(union, raster.stroke_pixels([(10, 10), (40000, 10), (20, 20)], 5, W, H))


def test_parity_and_the_nacks_parity_flag_round_trip():
    p = wire.Parity(12345, wire.FEC_K + 3, bytes(range(200)))
    d = wire.encode_parity(ME, 99, SIZE, p)
    h = wire.decode_header(d)
    assert (h.type, h.sender, h.seq) == (wire.MsgType.PARITY, ME, 99)
    assert wire.decode_parity(d[wire.HEADER.size:]) == p
    k = wire.FEC_K
    assert list(p.seqs) == list(range(12345 * k + 1, 12346 * k + 1))
    n = wire.Nack(7, 5, ((10, 3),), parity=True)
    assert wire.decode_nack(wire.encode_nack(ME, 1, SIZE, n)[wire.HEADER.size:]) == n
    plain = wire.Nack(7, 5, ((10, 3),))
    assert wire.decode_nack(wire.encode_nack(ME, 1, SIZE, plain)[wire.HEADER.size:]) == plain


def test_only_parity_may_exceed_max_datagram_and_by_no_more_than_its_extra():
    longest = wire.encode_parity(ME, 1, SIZE,
                                 wire.Parity(0, wire.FEC_K, bytes(wire.BODY_BUDGET + 2)))
    assert len(longest) == wire.MAX_WIRE
    wire.decode_header(longest)
    with pytest.raises(wire.DecodeError):
        wire.decode_header(longest + b"x")
    data = wire.encode_header(wire.MsgType.DATA, ME, 1, SIZE) + bytes(wire.BODY_BUDGET + 1)
    with pytest.raises(wire.DecodeError):
        wire.decode_header(data)


def test_the_longest_datagram_crosses_an_ethernet_lan_unfragmented():
    # a 1500-byte MTU less the IPv4 (20) and UDP (8) headers; 1400 leaves room for a
    # tunnel that bridges the LAN (VXLAN's 50 bytes)
    assert wire.MAX_WIRE + 20 + 8 <= 1500 - 50
    assert wire.MAX_DATAGRAM == 1400


@pytest.mark.parametrize("body", [
    b"",
    wire.PARITY.pack(1, wire.FEC_K, wire.FEC_K, 3) + b"ab",  # symbol shorter than it says
    wire.PARITY.pack(1, 2 * wire.FEC_K, wire.FEC_K, 3) + b"abc",  # another block size
    wire.PARITY.pack(1, wire.FEC_K // 2, wire.FEC_K, 3) + b"abc",  # another block size
    wire.PARITY.pack(1, wire.FEC_K, wire.FEC_K - 1, 3) + b"abc",  # a data index, not parity
    wire.PARITY.pack(1, wire.FEC_K, wire.FEC_K, 2000) + bytes(2000),  # longer than any body
    wire.PARITY.pack(0xFFFFFFFF, wire.FEC_K, wire.FEC_K, 3) + b"abc",  # seqs past 2^32
])
def test_malformed_parity_raises_decodeerror(body):
    with pytest.raises(wire.DecodeError):
        wire.decode_parity(body)


def test_the_fullest_session_fits_a_sealed_datagram():
    from p2pboard import seal

    entries = tuple(wire.SourceEntry(i + 1, 2**32 - 2, 2**32 - 1, 2**32 - 1, 2**32 - 1)
                    for i in range(wire.MAX_SESSION_ENTRIES))
    s = wire.Session("é" * wire.MAX_NAME_BYTES, (1, 2, 3, 255), 0, entries, 2**32 - 1,
                     2**64 - 1, 2**64 - 1, 65535, 65535)
    d = wire.encode_session(ME, 2**32 - 1, SIZE, s)
    assert len(d) + seal.OVERHEAD <= wire.MAX_DATAGRAM
    assert wire.decode_session(d[wire.HEADER.size:]).entries == entries


def test_a_wide_photo_fills_its_datagrams():
    """A 1920-pixel row of a photo needs 3.5 datagrams: strips one row high would leave
    every fourth one half empty. Bands of rows cut into column strips fill them."""
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:64, 0:1920]
    rgb = np.stack([xx // 8, yy * 3, (xx + yy) // 5], axis=-1) + rng.integers(0, 40, (64, 1920, 3))
    rgba = np.full((64, 1920, 4), 255, np.uint8)
    rgba[..., :3] = (rgb % 256).astype(np.uint8)
    recs = wire.encode_image(Image(ME, 1, 1, 0, 0, rgba))
    sizes = [len(r) for r, _ in recs]
    assert max(sizes) <= wire.BODY_BUDGET
    assert sum(sizes) / len(sizes) >= 0.9 * wire.BODY_BUDGET, np.mean(sizes)
    covered = np.zeros((64, 1920), int)
    for _, frag in recs:
        hh, ww = frag.rgba.shape[:2]
        covered[frag.y:frag.y + hh, frag.x:frag.x + ww] += 1
    assert (covered == 1).all()  # every pixel in exactly one piece
    assert {frag.rgba.shape[0] for _, frag in recs} == {wire.IMAGE_BAND_ROWS}


def test_a_session_entry_held_for_less_than_nothing_is_sent_as_zero():
    """A datagram's arrival stamp can be later than the timer that sends the next SESSION
    (stamps and the loop's clock are read apart): the engine says 0, and the encoder
    never fails on a negative hold."""
    s = wire.Session("ada", (1, 2, 3, 255), 0, (wire.SourceEntry(5, 10, 12, 99, -2),), ts=77)
    d = wire.encode_session(ME, 1, SIZE, s)
    assert wire.decode_session(d[wire.HEADER.size:]).entries[0].held == 0
    from p2pboard.config import Config
    from p2pboard.session import Engine

    author = Engine(Config(size=SIZE), peer_id=7, now=0.0)
    rx = Engine(Config(size=SIZE), peer_id=9, now=0.0)
    t = 0.0
    while t < 3.0:  # datagrams stamped 0.2 ms after the timers that follow them
        t += 0.001
        for src, dst, addr in ((author, rx, ("10.0.0.7", 1)), (rx, author, ("10.0.0.9", 1))):
            due = src.get_timer()
            if due is not None and due <= t:
                src.handle_timer(t)
            src._send_session(t)  # every turn: each falls before the last stamp
            for d in src.datagrams_to_send(t):
                dst.receive_datagram(d, addr, t + 2e-4)
    assert rx.stats.sessions_sent > 1000 and rx.synced()
