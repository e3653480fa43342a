"""The wire format: every datagram p2pboard sends, as bytes, and back.

Layout (network byte order, see docs/PROTOCOL.md for the full table):

    header  magic "PB" | version u8 | type u8 | flags u8 | sender u32 | seq u32 | width u16 | height u16

``seq`` is the sender's data sequence number: the datagram's own number in DATA, the
sender's highest data number in every other message (so each message also reports tail
loss). ``width`` and ``height`` are the sender's canvas: a peer with another size is told
apart at once, never merged into the wrong board.

A DATA datagram carries one or more records (paint, image, clear, toggle; see ops.py),
packed until the datagram is full. Pixel sets travel as a bitmap over their bounding box,
zlib-compressed when that is smaller, or as a list of points when sparse; images as
rows after PNG's "Sub" filter, each piece one Zstandard frame (it inflates a photo three
times faster than zlib at the same size). Every record is complete by itself.

Decoding treats every byte as hostile: each length is checked before use, decompression is
bounded by the exact size expected, positions are checked against the canvas, and all
failures raise :class:`DecodeError` with the numbers in the message.
"""

from __future__ import annotations

import enum
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import zstandard

from . import raster
from .ops import Clear, Color, Image, Paint, Record, StrokePath, Toggle

MAGIC = b"PB"
#: 2: SESSION carries a timestamp, per-source echoes (lag) and the anti-entropy digest.
#: 3: PARITY (erasure-coded repairs) and the NACK's parity flag.
#: 4: opaque image pieces leave alpha out (IMG_RGB_SUB_Z).
#: 5: SESSION carries its own count and the loss its sender measured (proactive parity).
#: 6: image pieces are Zstandard frames (IMG_SUB_ZSTD, IMG_RGB_SUB_ZSTD), not zlib.
#: 7: the board digest is XXH3-128, not BLAKE2b.
#: 8: a SNAP_META without length claims a request (the offer follows once the snapshot
#:    is built); a SNAP_NACK without ranges withdraws from a snapshot offered.
#: 9: parity blocks of 8 DATA datagrams (FEC_K), not 16.
#: 10: datagrams of up to 1400 bytes (MAX_DATAGRAM), not 1200.
VERSION = 10
#: Largest UDP payload we send or accept. A LAN's MTU is 1500 bytes (1472 of UDP payload);
#: 1400, as NORM's default segment, leaves room for an overlay that bridges the LAN (VXLAN,
#: GRE), so nothing is fragmented. Fewer, fuller datagrams are the cheaper: what a receiver
#: spends on a datagram grows much less than its size (BENCHMARK-HISTORY.md).
MAX_DATAGRAM = 1400

HEADER = struct.Struct("!2sBBBIIHH")
BODY_BUDGET = MAX_DATAGRAM - HEADER.size

# Records in DATA datagrams.
REC_PAINT = 1
REC_IMAGE = 2
REC_CLEAR = 3
REC_TOGGLE = 4
REC_STROKE = 5
PAINT_REC = struct.Struct("!BIIIBHHHHH")  # kind lamport opno rgba enc x0 y0 w h len
IMAGE_REC = struct.Struct("!BIIHHHHBH")  # kind lamport opno x y w h enc len
CLEAR_REC = struct.Struct("!BII")  # kind lamport opno
TOGGLE_REC = struct.Struct("!BIIB")  # kind opno target visible
_XY = struct.Struct(">hh")
STROKE_REC = struct.Struct("!BIIIBBH")  # kind lamport opno rgba width-1 enc n_points
STROKE_ABS = 0  # points as i16 (x, y) pairs
STROKE_DELTA = 1  # first point i16 (x, y), then i8 (dx, dy) steps
#: Most points in one STROKE record, and most canvas area its segments' bounding boxes may
#: cover: bounds the rasterising work one datagram can ask of us.
MAX_STROKE_POINTS = 256
MAX_STROKE_AREA = 1 << 19
MAX_DATAGRAM_STROKE_WORK = 1 << 20

PIX_BITMAP = 0  # np.packbits of the bbox mask, row-major
PIX_BITMAP_Z = 1  # the same, zlib-compressed
PIX_POINTS = 2  # u16 (dx, dy) pairs relative to the bbox origin

IMG_RAW = 0  # rows of RGBA
# 1 and 2 were the zlib encodings of protocol versions 3 to 5
IMG_SUB_ZSTD = 3  # PNG Sub filter per row, then one Zstandard frame (content size in it)
IMG_RGB_SUB_ZSTD = 4  # opaque: RGB only (alpha 255), Sub filter per row, then Zstandard

#: Largest image piece in pixels: bounds the memory one datagram can make us allocate.
MAX_IMAGE_PIECE = 1 << 18
ZLEVEL = 6  # zlib, for pixel-set bitmaps
#: An image wider than one datagram holds is sent in bands of this many rows, each cut into
#: column strips: a photo's 1920-pixel row fills 3.5 datagrams, so strips one row high
#: leave every fourth datagram half empty, while a band of 8 rows fills 28 nearly full.
IMAGE_BAND_ROWS = 8
#: Zstandard level for image pieces: 1 compresses a photo as small as zlib's level 6 does
#: (pieces are about a thousand bytes), in a third of the time.
ZSTD_LEVEL = 1
#: Largest window a Zstandard frame may ask a decoder for: a piece's own size, at most.
ZSTD_MAX_WINDOW = 1 << 20
assert MAX_IMAGE_PIECE * 4 <= ZSTD_MAX_WINDOW


class _Zstd(threading.local):
    """One compressor and one decompressor per thread (they are not thread-safe, and
    making one costs more than a piece's whole compression)."""

    def __init__(self) -> None:
        self.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True,
                                          write_checksum=False, write_dict_id=False)
        self.d = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)


_zstd = _Zstd()


def _unzstd(payload: bytes, need: int) -> bytes:
    """Exactly ``need`` bytes from one whole frame, or DecodeError: the frame must say its
    size, and say ``need``, before anything is allocated; nothing may follow it."""
    try:
        size = zstandard.get_frame_parameters(payload).content_size
        if size != need:
            raise DecodeError(f"compressed image says {size} bytes, needs {need}")
        # (max_output_size, read_across_frames, allow_extra_data) given by position: the
        # keywords cost a cold receiver about 2 us a datagram of parsing
        raw = _zstd.d.decompress(payload, need, False, False)
    except zstandard.ZstdError as err:
        raise DecodeError(f"bad compressed image: {err}") from err
    if len(raw) != need:
        raise DecodeError(f"compressed image holds {len(raw)} bytes, needs {need}")
    return raw

# Control message bodies.
SESSION_HEAD = struct.Struct("!IBBIQQHH")  # rgba flags n_entries ts vector digest count loss ; then name
SESSION_ENTRY = struct.Struct("!IIIII")  # source contiguous highest echo held
MAX_NAME_BYTES = 48
#: Session entries per message: fits MAX_DATAGRAM with the longest name and a sealed envelope.
MAX_SESSION_ENTRIES = 48
#: Timestamps in SESSION (``ts``, ``echo``, ``held``) count in these units, modulo 2^32.
TS_UNIT = 1e-5
NACK_HEAD = struct.Struct("!IBB")  # source attempt n_ranges
RANGE = struct.Struct("!IH")  # first count
MAX_NACK_RANGES = 64
MAX_RANGE_COUNT = 4096
NACK_PARITY = 0x80  # in the attempt byte: "any N datagrams of these blocks will do"
SNAP_REQ = struct.Struct("!II")  # req_id target
SNAP_META = struct.Struct("!IIIIH")  # target req_id snap_id total_len chunk_size
SNAP_CHUNK = struct.Struct("!III")  # target snap_id index ; then bytes
SNAP_NACK_HEAD = struct.Struct("!IIB")  # server snap_id n_ranges
CURSOR = struct.Struct("!HHB")  # x y flags
#: Parity repairs: a source's DATA datagrams are grouped in blocks of FEC_K by number
#: (block b holds seqs b*FEC_K+1 .. b*FEC_K+FEC_K); a PARITY datagram carries one
#: Reed-Solomon combination of a block's symbols (zfec, systematic, indices FEC_K..255).
#: A symbol is a DATA datagram's body with its 2-byte length in front, zero-padded to
#: the block's longest.
FEC_K = 8
FEC_N = 256
PARITY = struct.Struct("!IBBH")  # block k index symbol_len ; then the symbol
PARITY_EXTRA = PARITY.size + 2
#: A PARITY datagram may exceed MAX_DATAGRAM by this much (1410 bytes: still well within
#: the 1472 bytes of UDP payload a 1500-byte MTU carries).
MAX_WIRE = MAX_DATAGRAM + PARITY_EXTRA
MAX_SNAPSHOT = 256 << 20
SNAP_CHUNK_SIZE = BODY_BUDGET - SNAP_CHUNK.size
#: Smallest chunk size an offer may announce (ours are SNAP_CHUNK_SIZE, less the sealed
#: envelope): a hostile offer of 1-byte chunks would make the joiner track millions.
MIN_SNAP_CHUNK = 512

FLAG_REPAIR = 0x01  # header flag: a retransmission (by the author or another holder)
SESSION_PROBE = 0x01  # session flag: "answer with your session message soon"
SESSION_JOINING = 0x02  # session flag: still waiting for the board from the others


class MsgType(enum.IntEnum):
    DATA = 1
    HEARTBEAT = 2
    SESSION = 3
    NACK = 4
    GOODBYE = 5
    SNAP_REQ = 6
    SNAP_META = 7
    SNAP_CHUNK = 8
    SNAP_NACK = 9
    CURSOR = 10
    PARITY = 11


class DecodeError(ValueError):
    """A datagram (or part of one) that is not valid p2pboard data."""


class Header(NamedTuple):
    """The header in front of every datagram (a tuple: one is made per datagram)."""

    version: int
    type: int
    flags: int
    sender: int  #: the datagram's author (for repairs: the original author)
    seq: int  #: DATA: this datagram's number; otherwise the sender's highest
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One line of a session message: what the sender holds of one source (peer)."""

    source: int
    contiguous: int  #: every datagram up to here is held
    highest: int  #: highest datagram number seen
    echo: int = 0  #: ``ts`` of the last SESSION heard from ``source`` (0: none), for its RTT
    held: int = 0  #: TS_UNITs between hearing that SESSION and sending this one


@dataclass(frozen=True, slots=True)
class Session:
    """Periodic announcement: who I am, what I hold, and a fingerprint of my board."""

    name: str
    color: Color
    flags: int
    entries: tuple[SourceEntry, ...]
    ts: int = 0  #: sender's clock in TS_UNITs mod 2^32; echoed back so peers measure RTT
    vector: int = 0  #: hash of (source, contiguous) of all held sources; 0: not given
    digest: int = 0  #: first 8 bytes of the board digest, valid with ``vector``; 0: not given
    #: the number of this SESSION of its sender mod 2^16 (receivers count the ones they miss)
    count: int = 0
    #: share of datagrams the sender fairly surely misses (a lower bound), in 1/65535
    loss: int = 0


@dataclass(frozen=True, slots=True)
class Nack:
    source: int  #: whose datagrams are missing
    attempt: int  #: 1 for the first request; later attempts invite other holders to repair
    ranges: tuple[tuple[int, int], ...]  #: (first seq, count)
    #: The ranges name, per block of FEC_K, only how many symbols the requester still
    #: needs: the author may answer with that many new PARITY datagrams instead.
    parity: bool = False


@dataclass(frozen=True, slots=True)
class Parity:
    block: int
    index: int  #: FEC_K .. FEC_N - 1
    symbol: bytes

    @property
    def seqs(self) -> range:
        return fec_seqs(self.block)


@dataclass(frozen=True, slots=True)
class SnapReq:
    req_id: int
    target: int  #: peer asked, 0 for anyone


@dataclass(frozen=True, slots=True)
class SnapMeta:
    target: int  #: the requester
    req_id: int
    snap_id: int
    total_len: int
    chunk_size: int

    @property
    def chunks(self) -> int:
        return -(-self.total_len // self.chunk_size)


@dataclass(frozen=True, slots=True)
class SnapChunk:
    target: int
    snap_id: int
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SnapNack:
    server: int
    snap_id: int
    #: missing chunks (first, count), 1-based; none: the fetcher withdraws, it takes
    #: another server's snapshot
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Cursor:
    x: int
    y: int
    hidden: bool


# ---------------------------------------------------------------------------- header


def encode_header(mtype: int, sender: int, seq: int, size: tuple[int, int], flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, flags, sender, seq, size[0], size[1])


def decode_header(data: bytes) -> Header:
    if len(data) < HEADER.size:
        raise DecodeError(f"datagram of {len(data)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, mtype, flags, sender, seq, width, height = HEADER.unpack_from(data)
    limit = MAX_WIRE if mtype == MsgType.PARITY else MAX_DATAGRAM
    if len(data) > limit:
        raise DecodeError(f"datagram of {len(data)} bytes is over the {limit}-byte limit")
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}")
    return Header(version, mtype, flags, sender, seq, width, height)


def with_flags(datagram: bytes, flags: int) -> bytes:
    """The same datagram with other header flags (a repair re-sends the original bytes)."""
    b = bytearray(datagram)
    b[4] = flags
    return bytes(b)


# ---------------------------------------------------------------------------- pixel sets


def _bbox_of(index: np.ndarray, width: int) -> tuple[int, int, int, int, np.ndarray, np.ndarray]:
    ys, xs = np.divmod(index, width)
    x0, y0 = int(xs.min()), int(ys.min())
    return x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1, xs, ys


def _encode_pixel_set(index: np.ndarray, width: int) -> tuple[int, int, int, int, int, bytes]:
    """The smallest encoding of a non-empty sorted pixel set: (enc, x0, y0, w, h, payload)."""
    x0, y0, w, h, xs, ys = _bbox_of(index, width)
    n = len(index)
    points_len = 4 * n
    bitmap_len = (w * h + 7) // 8
    if points_len <= bitmap_len // 8 or points_len <= 16:
        pts = np.empty((n, 2), dtype=">u2")
        pts[:, 0] = xs - x0
        pts[:, 1] = ys - y0
        return PIX_POINTS, x0, y0, w, h, pts.tobytes()
    mask = np.zeros(w * h, dtype=bool)
    mask[(ys - y0) * w + (xs - x0)] = True
    raw = np.packbits(mask).tobytes()
    z = zlib.compress(raw, ZLEVEL)
    if len(z) < len(raw) and len(z) < points_len:
        return PIX_BITMAP_Z, x0, y0, w, h, z
    if points_len < len(raw):
        pts = np.empty((n, 2), dtype=">u2")
        pts[:, 0] = xs - x0
        pts[:, 1] = ys - y0
        return PIX_POINTS, x0, y0, w, h, pts.tobytes()
    return PIX_BITMAP, x0, y0, w, h, raw


def _decode_pixel_set(enc: int, x0: int, y0: int, w: int, h: int, payload: bytes,
                      width: int, height: int) -> np.ndarray:
    if w == 0 or h == 0 or x0 + w > width or y0 + h > height:
        raise DecodeError(f"pixel box {w}x{h}+{x0}+{y0} is not on the {width}x{height} canvas")
    nbits = w * h
    nbytes = (nbits + 7) // 8
    if enc == PIX_POINTS:
        if len(payload) % 4 or not payload:
            raise DecodeError(f"point list of {len(payload)} bytes is not whole (x, y) pairs")
        pts = np.frombuffer(payload, dtype=">u2").reshape(-1, 2).astype(np.int64)
        if int(pts[:, 0].max()) >= w or int(pts[:, 1].max()) >= h:
            raise DecodeError("a point lies outside its record's box")
        index = np.unique((pts[:, 1] + y0) * width + pts[:, 0] + x0)
        return index
    if enc == PIX_BITMAP_Z:
        d = zlib.decompressobj()
        try:
            raw = d.decompress(payload, nbytes)
        except zlib.error as err:
            raise DecodeError(f"bad compressed bitmap: {err}") from err
        if len(raw) != nbytes or d.unconsumed_tail or not d.eof:
            raise DecodeError(f"compressed bitmap does not hold exactly {nbytes} bytes")
    elif enc == PIX_BITMAP:
        raw = payload
        if len(raw) != nbytes:
            raise DecodeError(f"bitmap of {len(raw)} bytes for a {w}x{h} box needs {nbytes}")
    else:
        raise DecodeError(f"unknown pixel encoding {enc}")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=nbits)
    local = np.flatnonzero(bits)
    if local.size == 0:
        raise DecodeError("empty pixel set")
    ly, lx = np.divmod(local, w)
    return (ly + y0) * width + lx + x0


# ---------------------------------------------------------------------------- records


def _rgba_u32(color: Color) -> int:
    r, g, b, a = color
    return (r << 24) | (g << 16) | (b << 8) | a


def _u32_rgba(v: int) -> Color:
    return ((v >> 24) & 255, (v >> 16) & 255, (v >> 8) & 255, v & 255)


def encode_paint(p: Paint, width: int, budget: int = BODY_BUDGET) -> list[tuple[bytes, Paint]]:
    """A paint fragment as one or more records of at most ``budget`` bytes, each with the
    fragment it carries (what a receiver will decode from it)."""
    index = p.index
    if index.size == 0:
        return []
    out: list[tuple[bytes, Paint]] = []
    stack = [index]
    while stack:
        part = stack.pop()
        enc, x0, y0, w, h, payload = _encode_pixel_set(part, width)
        if PAINT_REC.size + len(payload) <= budget:
            rec = PAINT_REC.pack(REC_PAINT, p.lamport, p.opno, _rgba_u32(p.color), enc,
                                 x0, y0, w, h, len(payload)) + payload
            out.append((rec, p if part is index else Paint(p.author, p.opno, p.lamport,
                                                          p.color, part)))
            continue
        if len(part) == 1:  # cannot happen with sane budgets; refuse rather than loop
            raise ValueError(f"budget {budget} too small for one pixel")
        # Split between rows where possible so both halves keep compact boxes.
        rows = part // width
        cut = int(np.searchsorted(rows, rows[len(part) // 2]))
        if cut == 0 or cut == len(part):
            cut = len(part) // 2
        stack.append(part[cut:])
        stack.append(part[:cut])
    return out


_unfilter = np.add.accumulate


class _Band:
    """Rows of an image being cut into pieces. The Sub filter and the test for opaque
    pixels run once over the whole band, not once per piece (and per retry): a piece
    takes its columns of the filtered band, with its first column unfiltered (each piece
    decodes by itself)."""

    __slots__ = ("rgba", "opaque", "_filtered")

    def __init__(self, rgba: np.ndarray) -> None:
        self.rgba = rgba
        self.opaque = (rgba[..., 3] == 255).all(axis=0)  #: per column
        self._filtered: dict[int, np.ndarray] = {}

    def _filter(self, channels: int) -> np.ndarray:
        f = self._filtered.get(channels)
        if f is None:
            # Filtered as rows of bytes, each byte minus the one 4 before it (its channel
            # in the pixel to the left), then the channels wanted taken: one pass over
            # contiguous memory, where subtracting (rows, cols, 3) views ran an inner loop
            # of 3 bytes per pixel (40 times slower).
            px = self.rgba
            flat = np.ascontiguousarray(px).reshape(px.shape[0], -1)
            f4 = np.empty(flat.shape, np.uint8)
            f4[:, :4] = flat[:, :4]
            np.subtract(flat[:, 4:], flat[:, :-4], out=f4[:, 4:])  # wraps at 256, as PNG's
            f = f4.reshape(px.shape)[..., :channels]
            self._filtered[channels] = f
        return f

    def encode(self, x: int, cols: int) -> tuple[int, bytes]:
        """(encoding, payload) of the piece of columns ``x`` to ``x + cols``."""
        # An opaque piece leaves alpha out: its filtered zeros cost over a tenth of a
        # photo's compressed bytes, and a quarter of the symbols to decode.
        opaque = bool(self.opaque[x:x + cols].all())
        channels = 3 if opaque else 4
        f = self._filter(channels)[:, x:x + cols].copy()
        f[:, 0] = self.rgba[:, x, :channels]
        z = _zstd.c.compress(f)
        if len(z) < f.shape[0] * cols * 4:
            return (IMG_RGB_SUB_ZSTD if opaque else IMG_SUB_ZSTD), z
        return IMG_RAW, self.rgba[:, x:x + cols].tobytes()


def encode_image(img: Image, budget: int = BODY_BUDGET) -> list[tuple[bytes, Image]]:
    """An image fragment as records of at most ``budget`` bytes, each a band of rows or
    a run within a row. The band size adapts to how well the image compresses."""
    return list(iter_image(img, budget))


def iter_image(img: Image, budget: int = BODY_BUDGET) -> Iterator[tuple[bytes, Image]]:
    """:func:`encode_image` one record at a time (a sender encodes a big paste while the
    pacer sends it)."""
    rgba = img.rgba
    h, w = rgba.shape[:2]
    room = budget - IMAGE_REC.size
    if room < 4:
        raise ValueError(f"a budget of {budget} bytes cannot hold an image record")
    bpp = 4.0  # estimated bytes per pixel after compression
    y = 0
    while y < h:
        want = min(MAX_IMAGE_PIECE, max(1, int(room / bpp)))  # pixels that should fit
        if want >= w:  # whole rows fit: one band, one piece
            rows, first = min(h - y, want // w), w
        else:  # a band of rows cut into column strips; a 1-column strip of raw pixels fits
            rows, first = min(h - y, IMAGE_BAND_ROWS, room // 4), 0
        x = 0
        band = _Band(rgba[y:y + rows])
        while x < w:
            cols = first if x == 0 and first else min(w - x, max(1, int(room / bpp) // rows))
            while True:
                enc, payload = band.encode(x, cols)
                if len(payload) <= room:
                    break
                # Too big: fewer rows while the piece is whole rows, then fewer columns.
                if first and cols == w and rows > 1:
                    rows = max(1, rows // 2)
                    band = _Band(rgba[y:y + rows])
                else:
                    cols = max(1, cols * room // len(payload) * 97 // 100)
            piece = rgba[y:y + rows, x:x + cols]
            rec = IMAGE_REC.pack(REC_IMAGE, img.lamport, img.opno, img.x + x, img.y + y,
                                 cols, rows, enc, len(payload)) + payload
            yield rec, Image(img.author, img.opno, img.lamport, img.x + x, img.y + y, piece)
            bpp = 0.5 * bpp + 0.5 * max(0.02, len(payload) / (rows * cols))
            x += cols
        y += rows


def encode_clear(c: Clear) -> bytes:
    return CLEAR_REC.pack(REC_CLEAR, c.lamport, c.opno)


def encode_toggle(t: Toggle) -> bytes:
    return TOGGLE_REC.pack(REC_TOGGLE, t.opno, t.target, 1 if t.visible else 0)


def stroke_area(points: np.ndarray, brush: int, width: int, height: int) -> int:
    """The rasterising work of a polyline: pixel centres tested (see raster.Plan)."""
    return raster.plan(np.asarray(points).reshape(-1, 2), brush, width, height).work


def _stroke_piece(s: StrokePath, pts: np.ndarray, width: int, height: int) -> bytes | None:
    head = (REC_STROKE, s.lamport, s.opno, _rgba_u32(s.color), s.width - 1)
    if len(pts) <= 16:  # mouse-rate pieces: a few points, cheaper as Python ints
        flat = pts.ravel().tolist()
        if min(flat) < -32768 or max(flat) > 32767:
            return None
        steps = [b - a for a, b in zip(flat, flat[2:])]
        if not steps or (min(steps) >= -128 and max(steps) <= 127):
            return (STROKE_REC.pack(*head, STROKE_DELTA, len(pts)) + _XY.pack(*flat[:2])
                    + struct.pack(f"{len(steps)}b", *steps))
        return STROKE_REC.pack(*head, STROKE_ABS, len(pts)) + struct.pack(f">{len(flat)}h",
                                                                          *flat)
    if pts.min() < -32768 or pts.max() > 32767:
        return None
    steps = np.diff(pts, axis=0)
    if len(steps) == 0 or (steps.min() >= -128 and steps.max() <= 127):
        enc = STROKE_DELTA
        body = pts[0].astype(">i2").tobytes() + steps.astype("i1").tobytes()
    else:
        enc = STROKE_ABS
        body = pts.astype(">i2").tobytes()
    return STROKE_REC.pack(REC_STROKE, s.lamport, s.opno, _rgba_u32(s.color), s.width - 1, enc,
                           len(pts)) + body


def encode_stroke(s: StrokePath, width: int, height: int,
                  budget: int = BODY_BUDGET) -> list[tuple[bytes, Paint]]:
    """A stroke as STROKE records (consecutive pieces share their joining point), each with
    the Paint every receiver rasterises from it. Falls back to pixel sets for geometry the
    record cannot carry (coordinates beyond 16 bits, very long segments)."""
    return [(data, paint) for data, paint, _ in encode_stroke_work(s, width, height, budget)]


def encode_stroke_work(s: StrokePath, width: int, height: int,
                       budget: int = BODY_BUDGET) -> list[tuple[bytes, Paint, int]]:
    """:func:`encode_stroke`, with each piece's rasterising work for a receiver (see
    :func:`piece_work`; 0 for pixel-set fallbacks)."""
    pts = np.asarray(s.points, dtype=np.int64).reshape(-1, 2)
    per = min(MAX_STROKE_POINTS, (budget - STROKE_REC.size - 4) // 2 + 1)
    out: list[tuple[bytes, Paint, int]] = []
    i = 0
    while i < len(pts):
        j = min(len(pts), i + per)
        piece = pts[i:j]
        plan = raster.plan(piece, s.width, width, height)
        while len(piece) > 2 and plan.work > MAX_STROKE_AREA:
            piece = piece[:max(2, len(piece) // 2)]
            plan = raster.plan(piece, s.width, width, height)
        j = i + len(piece)
        index = plan.pixels()
        paint = Paint(s.author, s.opno, s.lamport, s.color, index)
        data = None
        if plan.work <= MAX_STROKE_AREA:
            data = _stroke_piece(s, piece, width, height)
        if data is not None and len(data) <= budget:
            if index.size:
                out.append((data, paint, plan.work))
        else:
            out.extend((d, p, 0) for d, p in encode_paint(paint, width, budget))
        if j >= len(pts):
            break
        i = j - 1  # the next piece starts where this one ended
    return out


def _decode_stroke(body: memoryview, pos: int, author: int, width: int, height: int,
                   plan_only: bool = False):
    _, lamport, opno, rgba, w1, enc, n = STROKE_REC.unpack_from(body, pos)
    pos += STROKE_REC.size
    if not 1 <= n <= MAX_STROKE_POINTS:
        raise DecodeError(f"stroke of {n} points is not in 1..{MAX_STROKE_POINTS}")
    if enc == STROKE_DELTA:
        need = 4 + 2 * (n - 1)
        if len(body) - pos < need:
            raise DecodeError(f"stroke needs {need} bytes, {len(body) - pos} left")
        x, y = _XY.unpack_from(body, pos)
        if n <= 16:  # mouse-rate pieces: a few points, cheaper as Python ints
            pts = [(x, y)]
            steps = body[pos + 4:pos + need].cast("b")
            for i in range(0, 2 * (n - 1), 2):
                x += steps[i]
                y += steps[i + 1]
                pts.append((x, y))
        else:
            steps = np.frombuffer(body[pos + 4:pos + need], dtype="i1").astype(np.int64)
            pts = np.concatenate([np.array([[x, y]], dtype=np.int64),
                                  (x, y) + np.cumsum(steps.reshape(-1, 2), axis=0)]).tolist()
    elif enc == STROKE_ABS:
        need = 4 * n
        if len(body) - pos < need:
            raise DecodeError(f"stroke needs {need} bytes, {len(body) - pos} left")
        pts = np.frombuffer(body[pos:pos + need], dtype=">i2").reshape(n, 2).tolist()
    else:
        raise DecodeError(f"unknown stroke encoding {enc}")
    pos += need
    plan = raster.Plan(pts, w1 + 1, width, height)
    if plan.work > MAX_STROKE_AREA:
        raise DecodeError("stroke covers more canvas than one record may")
    if not plan_only:
        index = plan.pixels()
        if index.size == 0:
            raise DecodeError("stroke entirely off the canvas")
        return Paint(author, opno, lamport, _u32_rgba(rgba), index), pos, plan.work
    return None, pos, plan.work


def piece_work(piece: bytes, width: int, height: int) -> int:
    """Rasterising work a receiver spends on one encoded record (0 unless a STROKE)."""
    if not piece or piece[0] != REC_STROKE:
        return 0
    return _decode_stroke(memoryview(piece), 0, 0, width, height, plan_only=True)[2]


def encode_record(rec: Record | StrokePath, width: int, budget: int = BODY_BUDGET,
                  height: int = 0) -> list[tuple[bytes, Record]]:
    """A record as wire pieces, each paired with the record a receiver decodes from it."""
    if isinstance(rec, StrokePath):
        return encode_stroke(rec, width, height, budget)
    if isinstance(rec, Paint):
        return encode_paint(rec, width, budget)
    if isinstance(rec, Image):
        return encode_image(rec, budget)
    if isinstance(rec, Clear):
        return [(encode_clear(rec), rec)]
    if isinstance(rec, Toggle):
        return [(encode_toggle(rec), rec)]
    raise TypeError(f"not a record: {rec!r}")


def decode_records(body: memoryview | bytes, author: int, width: int, height: int) -> list[Record]:
    """Every record of a DATA body. Raises DecodeError if any part is invalid: a datagram
    is applied whole or not at all."""
    body = memoryview(body)
    out: list[Record] = []
    pos = 0
    end = len(body)
    if end == 0:
        raise DecodeError("DATA datagram without records")
    stroke_work = 0
    while pos < end:
        kind = body[pos]
        if kind == REC_PAINT:
            if end - pos < PAINT_REC.size:
                raise DecodeError(f"paint record truncated at {pos}")
            _, lamport, opno, rgba, enc, x0, y0, w, h, n = PAINT_REC.unpack_from(body, pos)
            pos += PAINT_REC.size
            if end - pos < n:
                raise DecodeError(f"paint payload of {n} bytes but {end - pos} left")
            index = _decode_pixel_set(enc, x0, y0, w, h, bytes(body[pos:pos + n]), width, height)
            pos += n
            out.append(Paint(author, opno, lamport, _u32_rgba(rgba), index))
        elif kind == REC_IMAGE:
            if end - pos < IMAGE_REC.size:
                raise DecodeError(f"image record truncated at {pos}")
            _, lamport, opno, x, y, w, h, enc, n = IMAGE_REC.unpack_from(body, pos)
            pos += IMAGE_REC.size
            if end - pos < n:
                raise DecodeError(f"image payload of {n} bytes but {end - pos} left")
            if w == 0 or h == 0 or x + w > width or y + h > height:
                raise DecodeError(f"image {w}x{h}+{x}+{y} is not on the {width}x{height} canvas")
            if w * h > MAX_IMAGE_PIECE:
                raise DecodeError(f"image piece of {w * h} pixels is over {MAX_IMAGE_PIECE}")
            need = w * h * 4
            payload = bytes(body[pos:pos + n])
            pos += n
            if enc == IMG_RAW:
                if len(payload) != need:
                    raise DecodeError(f"raw image of {len(payload)} bytes needs {need}")
                rgba = np.frombuffer(payload, dtype=np.uint8).reshape(h, w, 4)
            elif enc == IMG_SUB_ZSTD or enc == IMG_RGB_SUB_ZSTD:
                channels = 4 if enc == IMG_SUB_ZSTD else 3
                f = np.ndarray((h, w, channels), np.uint8, _unzstd(payload, w * h * channels))
                if channels == 3:
                    # un-filtered when read, or with the strips next to it (ops.Image)
                    out.append(Image(author, opno, lamport, x, y, sub=f))
                    continue
                rgba = _unfilter(f, axis=1, dtype=np.uint8)  # wrapping at 256, as the filter
            else:
                raise DecodeError(f"unknown image encoding {enc}")
            out.append(Image(author, opno, lamport, x, y, rgba))
        elif kind == REC_STROKE:
            if end - pos < STROKE_REC.size:
                raise DecodeError(f"stroke record truncated at {pos}")
            paint, pos, work = _decode_stroke(body[:end], pos, author, width, height)
            stroke_work += work
            if stroke_work > MAX_DATAGRAM_STROKE_WORK:
                raise DecodeError("strokes in one datagram cover more canvas than allowed")
            out.append(paint)
        elif kind == REC_CLEAR:
            if end - pos < CLEAR_REC.size:
                raise DecodeError(f"clear record truncated at {pos}")
            _, lamport, opno = CLEAR_REC.unpack_from(body, pos)
            pos += CLEAR_REC.size
            out.append(Clear(author, opno, lamport))
        elif kind == REC_TOGGLE:
            if end - pos < TOGGLE_REC.size:
                raise DecodeError(f"toggle record truncated at {pos}")
            _, opno, target, visible = TOGGLE_REC.unpack_from(body, pos)
            pos += TOGGLE_REC.size
            if visible > 1:
                raise DecodeError(f"toggle visibility {visible} is not 0 or 1")
            out.append(Toggle(author, opno, target, bool(visible)))
        else:
            raise DecodeError(f"unknown record kind {kind} at {pos}")
    return out


# ---------------------------------------------------------------------------- control


def encode_session(sender: int, seq: int, size: tuple[int, int], s: Session) -> bytes:
    name = s.name.encode("utf-8")[:MAX_NAME_BYTES]
    entries = s.entries[:MAX_SESSION_ENTRIES]
    parts = [encode_header(MsgType.SESSION, sender, seq, size),
             SESSION_HEAD.pack(_rgba_u32(s.color), s.flags, len(entries), s.ts & 0xFFFFFFFF,
                               s.vector, s.digest, s.count & 0xFFFF, min(max(s.loss, 0), 0xFFFF)),
             bytes([len(name)]), name]
    parts += [SESSION_ENTRY.pack(e.source, e.contiguous, e.highest, e.echo & 0xFFFFFFFF,
                                 min(max(e.held, 0), 0xFFFFFFFF)) for e in entries]
    return b"".join(parts)


def decode_session(body: memoryview | bytes) -> Session:
    body = bytes(body)
    if len(body) < SESSION_HEAD.size + 1:
        raise DecodeError(f"session body of {len(body)} bytes is truncated")
    rgba, flags, n, ts, vector, digest, count, loss = SESSION_HEAD.unpack_from(body)
    pos = SESSION_HEAD.size
    nl = body[pos]
    pos += 1
    if nl > MAX_NAME_BYTES or len(body) < pos + nl:
        raise DecodeError(f"name of {nl} bytes does not fit")
    name = body[pos:pos + nl].decode("utf-8", errors="replace")
    name = "".join(ch for ch in name if ch.isprintable())
    pos += nl
    if n > MAX_SESSION_ENTRIES or len(body) != pos + n * SESSION_ENTRY.size:
        raise DecodeError(f"session with {n} entries has {len(body) - pos} bytes for them")
    entries = []
    for i in range(n):
        src, contiguous, highest, echo, held = SESSION_ENTRY.unpack_from(
            body, pos + i * SESSION_ENTRY.size)
        if contiguous > highest:
            raise DecodeError(f"entry for {src:08x}: contiguous {contiguous} > highest {highest}")
        entries.append(SourceEntry(src, contiguous, highest, echo, held))
    return Session(name, _u32_rgba(rgba), flags, tuple(entries), ts, vector, digest, count,
                   loss)


def _encode_ranges(ranges) -> bytes:
    return b"".join(RANGE.pack(first, count) for first, count in ranges)


def _decode_ranges(body: bytes, pos: int, n: int,
                   empty: bool = False) -> tuple[tuple[int, int], ...]:
    if (n == 0 and not empty) or n > MAX_NACK_RANGES or len(body) != pos + n * RANGE.size:
        raise DecodeError(f"{n} ranges in {len(body) - pos} bytes")
    out = []
    for i in range(n):
        first, count = RANGE.unpack_from(body, pos + i * RANGE.size)
        if count == 0 or count > MAX_RANGE_COUNT or first == 0 or first + count - 1 > 0xFFFFFFFF:
            raise DecodeError(f"absurd range: first {first} count {count}")
        out.append((first, count))
    return tuple(out)


def encode_nack(sender: int, seq: int, size, n: Nack) -> bytes:
    ranges = n.ranges[:MAX_NACK_RANGES]
    attempt = min(n.attempt, 0x7F) | (NACK_PARITY if n.parity else 0)
    return (encode_header(MsgType.NACK, sender, seq, size)
            + NACK_HEAD.pack(n.source, attempt, len(ranges)) + _encode_ranges(ranges))


def decode_nack(body) -> Nack:
    body = bytes(body)
    if len(body) < NACK_HEAD.size:
        raise DecodeError("NACK truncated")
    source, attempt, n = NACK_HEAD.unpack_from(body)
    return Nack(source, attempt & 0x7F, _decode_ranges(body, NACK_HEAD.size, n),
                bool(attempt & NACK_PARITY))


def fec_block(seq: int) -> int:
    return (seq - 1) // FEC_K


def fec_seqs(block: int) -> range:
    """The DATA numbers of a parity block."""
    return range(block * FEC_K + 1, (block + 1) * FEC_K + 1)


def encode_parity(sender, seq, size, p: Parity, flags: int = 0) -> bytes:
    """A PARITY datagram; ``flags`` FLAG_REPAIR when it answers a NACK (it then jumps
    receive queues, like a repair; proactive parity stays behind its block's data)."""
    return (encode_header(MsgType.PARITY, sender, seq, size, flags)
            + PARITY.pack(p.block, FEC_K, p.index, len(p.symbol)) + p.symbol)


def decode_parity(body) -> Parity:
    if len(body) < PARITY.size + 3:
        raise DecodeError(f"parity of {len(body)} bytes")
    block, k, index, n = PARITY.unpack_from(body)
    if k != FEC_K or not FEC_K <= index < FEC_N:
        raise DecodeError(f"parity {index} of a block of {k}")
    if n != len(body) - PARITY.size or n > BODY_BUDGET + 2:
        raise DecodeError(f"parity symbol of {len(body) - PARITY.size} bytes says {n}")
    if block >= (0xFFFFFFFF // FEC_K):
        raise DecodeError(f"parity for block {block}")
    return Parity(block, index, bytes(body[PARITY.size:]))


def encode_snap_req(sender, seq, size, r: SnapReq) -> bytes:
    return encode_header(MsgType.SNAP_REQ, sender, seq, size) + SNAP_REQ.pack(r.req_id, r.target)


def decode_snap_req(body) -> SnapReq:
    if len(body) != SNAP_REQ.size:
        raise DecodeError(f"snapshot request of {len(body)} bytes")
    return SnapReq(*SNAP_REQ.unpack_from(body))


def encode_snap_meta(sender, seq, size, m: SnapMeta) -> bytes:
    return encode_header(MsgType.SNAP_META, sender, seq, size) + SNAP_META.pack(
        m.target, m.req_id, m.snap_id, m.total_len, m.chunk_size)


def decode_snap_meta(body) -> SnapMeta:
    if len(body) != SNAP_META.size:
        raise DecodeError(f"snapshot offer of {len(body)} bytes")
    m = SnapMeta(*SNAP_META.unpack_from(body))
    # total_len 0: a claim, the offer of this snapshot follows once it is built
    if not 0 <= m.total_len <= MAX_SNAPSHOT or not MIN_SNAP_CHUNK <= m.chunk_size <= SNAP_CHUNK_SIZE:
        raise DecodeError(f"snapshot of {m.total_len} bytes in chunks of {m.chunk_size}")
    return m


def encode_snap_chunk(sender, seq, size, c: SnapChunk) -> bytes:
    return (encode_header(MsgType.SNAP_CHUNK, sender, seq, size)
            + SNAP_CHUNK.pack(c.target, c.snap_id, c.index) + c.data)


def decode_snap_chunk(body) -> SnapChunk:
    if len(body) < SNAP_CHUNK.size + 1:
        raise DecodeError(f"snapshot chunk of {len(body)} bytes")
    target, snap_id, index = SNAP_CHUNK.unpack_from(body)
    return SnapChunk(target, snap_id, index, bytes(body[SNAP_CHUNK.size:]))


def encode_snap_nack(sender, seq, size, n: SnapNack) -> bytes:
    ranges = n.ranges[:MAX_NACK_RANGES]
    return (encode_header(MsgType.SNAP_NACK, sender, seq, size)
            + SNAP_NACK_HEAD.pack(n.server, n.snap_id, len(ranges)) + _encode_ranges(ranges))


def decode_snap_nack(body) -> SnapNack:
    body = bytes(body)
    if len(body) < SNAP_NACK_HEAD.size:
        raise DecodeError("snapshot NACK truncated")
    server, snap_id, n = SNAP_NACK_HEAD.unpack_from(body)
    # no ranges: the fetcher withdraws (it takes another server's snapshot)
    return SnapNack(server, snap_id, _decode_ranges(body, SNAP_NACK_HEAD.size, n, empty=True))


def encode_cursor(sender, seq, size, c: Cursor) -> bytes:
    return encode_header(MsgType.CURSOR, sender, seq, size) + CURSOR.pack(c.x, c.y, int(c.hidden))


def decode_cursor(body, width: int, height: int) -> Cursor:
    if len(body) != CURSOR.size:
        raise DecodeError(f"cursor of {len(body)} bytes")
    x, y, flags = CURSOR.unpack_from(body)
    if x >= width or y >= height:
        raise DecodeError(f"cursor at {x},{y} is off the canvas")
    return Cursor(x, y, bool(flags & 1))


def encode_empty(mtype: int, sender: int, seq: int, size) -> bytes:
    return encode_header(mtype, sender, seq, size)


def ranges_of(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted sequence numbers as (first, count) runs, counts capped for the wire."""
    out: list[tuple[int, int]] = []
    for s in seqs:
        if out and out[-1][0] + out[-1][1] == s and out[-1][1] < MAX_RANGE_COUNT:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out

