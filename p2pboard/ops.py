"""Drawing operations: the values that travel between peers and make up a board.

Every change to a board is an *operation* from one author. A large operation (a long
stroke, a pasted photo) travels as several *fragments*, one or more per datagram; each
fragment is complete on its own, so fragments apply in any order and independently.

Ordering: every painting operation carries a stamp, ``lamport << 32 | author``, unique
and totally ordered across the group. A pixel shows the visible fragment with the highest
stamp that covers it, so the board is a last-writer-wins register per pixel and peers
that hold the same fragments hold the same pixels, whatever the order of arrival.

Undo and redo are :class:`Toggle` records: they switch an earlier operation of the same
author off or on. For one target the toggle with the highest ``opno`` wins.

Colours are RGBA tuples of four ints in 0..255. Pixel positions are flat indices
``y * width + x`` into the board.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

Color = tuple[int, int, int, int]

#: The board's background; erasing paints it and clearing shows it.
BACKGROUND: Color = (255, 255, 255, 255)

#: Undo and redo may only target one of the author's last UNDO_WINDOW operations
#: (counted in ``opno``). Older operations are final and can be folded into the base
#: layer of the board. The local undo stack is kept well inside this window.
UNDO_WINDOW = 1024


def make_stamp(lamport: int, author: int) -> int:
    """The total order of operations: Lamport time first, author id as tie-break."""
    return (lamport << 32) | author


@dataclass(frozen=True, slots=True, eq=False)
class Paint:
    """A set of pixels all set to one colour: a stroke, single pixels, an eraser pass."""

    author: int  #: peer id of the author (u32)
    opno: int  #: the author's operation number; fragments of one operation share it
    lamport: int  #: Lamport time of the operation (u32)
    color: Color  #: RGBA
    index: np.ndarray = field(repr=False)  #: flat pixel indices, int64, sorted, unique

    @property
    def stamp(self) -> int:
        return make_stamp(self.lamport, self.author)


class Image:
    """A rectangle of pixels, each with its own colour: a pasted image (or a band of it).

    ``rgba`` is a uint8 array (h, w, 4), fully on the board. A piece decoded from a
    datagram may keep its pixels as the wire carries them until something reads
    ``rgba``: ``sub``, opaque RGB with the PNG Sub filter along each row (each pixel the
    difference from its left neighbour, modulo 256; the first column as it is), uint8
    (h, w, 3). Reading ``rgba`` un-filters them then, once. Why: on a receiver woken
    with cold caches every NumPy call on a strip of a few hundred pixels costs several
    microseconds, and :func:`side_by_side` un-filters a whole run of a band's strips
    in one pass when the board paints them together (board.py).

    Treat it as immutable: the pixels are shared, not copied."""

    __slots__ = ("author", "opno", "lamport", "x", "y", "_rgba", "sub")

    def __init__(self, author: int, opno: int, lamport: int, x: int, y: int,
                 rgba: np.ndarray | None = None, *, sub: np.ndarray | None = None) -> None:
        if (rgba is None) == (sub is None):
            raise TypeError("an Image takes its pixels as rgba or as sub, one of the two")
        self.author = author  #: peer id of the author (u32)
        self.opno = opno
        self.lamport = lamport
        self.x = x  #: left column on the board
        self.y = y  #: top row on the board
        self._rgba = rgba
        self.sub = sub  #: the Sub-filtered RGB still to un-filter, or None

    @property
    def rgba(self) -> np.ndarray:
        rgba = self._rgba
        if rgba is None:
            sub = self.sub
            if sub is None:  # another thread un-filtered it just now
                return self._rgba
            rgba = self._rgba = _opaque_unfiltered(sub)
            self.sub = None
        return rgba

    @property
    def shape(self) -> tuple[int, ...]:
        """(h, w, channels) of the pixels as held (channels: 4, or 3 while filtered)."""
        rgba = self._rgba
        return (self.sub if rgba is None else rgba).shape

    @property
    def stamp(self) -> int:
        return make_stamp(self.lamport, self.author)

    def __repr__(self) -> str:
        h, w = self.shape[:2]
        return (f"Image(author={self.author}, opno={self.opno}, lamport={self.lamport}, "
                f"x={self.x}, y={self.y}, {w}x{h})")


def side_by_side(images: list[Image]) -> np.ndarray:
    """The rgba of pictures of equal height placed left to right, as one array. Pieces
    still Sub-filtered are un-filtered together, in one pass over all of them: the sum
    along each row runs across the joins, and each piece then takes off what the pieces
    left of it added (the running sum at its first column's left neighbour), which
    modulo 256 leaves exactly its own sum."""
    if len(images) == 1 or any(im.sub is None for im in images):
        return np.concatenate([im.rgba for im in images], axis=1)
    f = np.concatenate([im.sub for im in images], axis=1)
    starts = [0, *itertools.accumulate(im.sub.shape[1] for im in images[:-1])]
    # each piece's first column made relative to the last of the piece before it
    f[:, starts[1:]] -= np.add.reduceat(f, starts, axis=1, dtype=np.uint8)[:, :-1]
    return _opaque_unfiltered(f)


def _opaque_unfiltered(sub: np.ndarray) -> np.ndarray:
    """The rgba of opaque RGB Sub-filtered along its rows: summed along each row (modulo
    256, as the filter subtracted), alpha 255."""
    rgba = np.empty(sub.shape[:2] + (4,), np.uint8)
    np.add.accumulate(sub, axis=1, dtype=np.uint8, out=rgba[..., :3])
    rgba[..., 3] = 255
    return rgba


@dataclass(frozen=True, slots=True)
class Clear:
    """Clear the board: every pixel painted with the background at this stamp."""

    author: int
    opno: int
    lamport: int

    @property
    def stamp(self) -> int:
        return make_stamp(self.lamport, self.author)


@dataclass(frozen=True, slots=True)
class Toggle:
    """Undo (``visible=False``) or redo (``visible=True``) of the author's own operation."""

    author: int
    opno: int  #: this record's own operation number (orders toggles of one target)
    target: int  #: opno of the operation switched; must be within UNDO_WINDOW of ``opno``
    visible: bool

    @property
    def valid(self) -> bool:
        return 0 < self.opno - self.target <= UNDO_WINDOW


@dataclass(frozen=True, slots=True, eq=False)
class StrokePath:
    """A brush stroke to send as geometry: a polyline and a round brush ``width``.

    Only the author creates these; on the wire they become STROKE records and every peer
    (the author included) turns each record into a :class:`Paint` with the one shared
    rasteriser, :func:`p2pboard.raster.stroke_pixels`.
    """

    author: int
    opno: int
    lamport: int
    color: Color
    width: int
    points: np.ndarray = field(repr=False)  #: int64 (n, 2) of (x, y)


Fragment = Paint | Image | Clear
Record = Paint | Image | Clear | Toggle
