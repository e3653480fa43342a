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


@dataclass(frozen=True, slots=True, eq=False)
class Image:
    """A rectangle of pixels, each with its own colour: a pasted image (or a band of it)."""

    author: int
    opno: int
    lamport: int
    x: int  #: left column on the board
    y: int  #: top row on the board
    rgba: np.ndarray = field(repr=False)  #: uint8 array (h, w, 4), fully on the board

    @property
    def stamp(self) -> int:
        return make_stamp(self.lamport, self.author)


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
