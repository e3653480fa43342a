"""The Python API: open a board, draw on it, read it. Used by scripts, bots, tests and the UI.

    async with p2pboard.open_board(name="bot") as board:
        board.stroke([(10, 10), (200, 120)], color=(255, 0, 0, 255), width=4)
        await board.wait_synced(timeout=10)

Every drawing call applies locally at once and returns; the network work happens on the
running asyncio loop. Calls must come from that loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import loss, raster
from .config import Config
from .events import Event
from .net.edge import Edge
from .net.sockets import SocketInfo, open_multicast_socket
from .ops import BACKGROUND, Color
from .session import Engine, Peer, Timers

log = logging.getLogger("p2pboard")

Point = tuple[float, float]


@dataclass(frozen=True)
class PeerInfo:
    """A peer on the board, as the API shows it."""

    id: int
    name: str
    color: Color
    loss_rate: float  #: share of its datagrams that we found missing (then repaired)
    joining: bool
    rtt: float | None = None  #: round trip time in seconds (None until measured)
    #: share of what is sent to it that it says it misses (a lower bound, from its
    #: session messages: it shows a bad link even for a peer that does not draw)
    reported_loss: float = 0.0

    @property
    def lag(self) -> float | None:
        """One-way delay to it, estimated as half the round trip (seconds)."""
        return None if self.rtt is None else self.rtt / 2

    @classmethod
    def of(cls, p: Peer) -> PeerInfo:
        return cls(p.id, p.name, p.color, p.loss_rate, p.joining, p.rtt, p.loss / loss.SCALE)


def _color(color: Sequence[int]) -> Color:
    c = tuple(int(v) for v in color)
    if len(c) == 3:
        c = (*c, 255)
    if len(c) != 4 or not all(0 <= v <= 255 for v in c):
        raise ValueError(f"colour {color!r} is not RGB or RGBA with values in 0..255")
    return c  # type: ignore[return-value]


def _points(points: Iterable[Sequence[float]]) -> np.ndarray:
    arr = np.asarray([(p[0], p[1]) for p in points], dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no points given")
    if not np.all(np.isfinite(arr)):
        raise ValueError("points must be finite numbers")
    return np.clip(np.rint(arr), -raster.LIMIT, raster.LIMIT).astype(np.int64)


def _point(point: Sequence[float]) -> tuple[int, int]:
    """One point as :func:`_points` makes it (rounded half to even, clipped), in plain
    Python: a stroke adds one at mouse rate, and five NumPy calls on a single point
    cost a drawing peer woken with cold caches about 30 us of its 150 a point."""
    try:
        x, y = float(point[0]), float(point[1])
    except (TypeError, ValueError, IndexError) as err:
        raise ValueError(f"point {point!r} is not two numbers") from err
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError("points must be finite numbers")
    lim = raster.LIMIT
    return min(max(round(x), -lim), lim), min(max(round(y), -lim), lim)


class Stroke:
    """A stroke being drawn: one operation (one undo step) that grows point by point."""

    def __init__(self, board: Board, color: Color, width: int) -> None:
        self._board = board
        self.color = color
        self.width = width
        self.opno = board.engine.begin(board._now())
        self._last: tuple[int, int] | None = None

    def add(self, point: Sequence[float]) -> None:
        """Extend the stroke to ``point``: the new segment goes out (as geometry) at once."""
        p = _point(point)
        b = self._board
        pts = [p] if self._last is None else [self._last, p]
        self._last = p
        b.engine.extend_stroke(self.opno, pts, self.width, self.color, b._now())
        b._pump()

    def end(self) -> None:
        """Nothing to send: every point went out as it was added."""
        self._last = None


class Board:
    """A handle on a joined board. Create it with :func:`open_board`."""

    def __init__(self, engine: Engine, edge: Edge | None, info: SocketInfo | None) -> None:
        self.engine = engine
        self.edge = edge
        self.info = info
        self.autosaver = None  # an autosave.Autosaver when the board is saved to a file
        #: what went wrong with the saved board at start (set aside, fresh start), if anything
        self.autosave_problem: str | None = None
        #: the saved board this one started from (None: it started empty)
        self.restored_from: Path | None = None
        self._listeners: list[Callable[[Event], None]] = []
        self._queue: asyncio.Queue[Event] | None = None
        if edge is not None:
            edge.add_listener(self._on_event)

    # -- identity and state

    @property
    def id(self) -> int:
        return self.engine.id

    @property
    def name(self) -> str:
        return self.engine.config.name

    @property
    def config(self) -> Config:
        return self.engine.config

    @property
    def size(self) -> tuple[int, int]:
        return self.engine.size

    @property
    def key_id(self) -> str | None:
        """The public id of a passphrase board's key (8 hex digits); None on an open board."""
        key = self.engine.config.key
        return None if key is None else key.key_id

    @property
    def pixels(self) -> np.ndarray:
        """The board, uint8 (height, width, 4), read-only (changes as peers draw)."""
        return self.engine.board.pixels

    def digest(self) -> str:
        return self.engine.board.digest()

    @property
    def peers(self) -> dict[int, PeerInfo]:
        return {pid: PeerInfo.of(p) for pid, p in self.engine.peers.items()}

    @property
    def stats(self) -> dict[str, int]:
        d = self.engine.stats.as_dict()
        if self.edge is not None:
            d["send_errors"] = self.edge.send_errors
        d["missing"] = self.engine.missing_count()
        b = self.engine.board
        d["board_rejected"] = b.rejected
        d["board_stale"] = b.stale
        d["board_forced_folds"] = b.forced_folds
        if self.autosaver is not None:
            d["autosave_saves"] = self.autosaver.saves
            d["autosave_failures"] = self.autosaver.failures
            # 1 while the file lags behind the board (changes not written yet)
            d["autosave_pending"] = int(self.autosaver.dirty or self.autosaver.busy)
        if self.edge is not None:
            from .net.sockets import socket_drops

            drops = socket_drops(self.edge.sock) if not self.edge.closed else None
            if drops is not None:
                d["kernel_drops"] = drops
        return d

    @property
    def autosave_path(self) -> Path | None:
        """The file this board is saved to (None: autosave is off)."""
        return None if self.autosaver is None else self.autosaver.file.path

    @property
    def silent_for(self) -> float:
        """Seconds since we last heard any other peer."""
        return max(0.0, self._now() - self.engine._last_heard_other)

    @property
    def rejoined_at(self) -> float | None:
        """Loop time of the last re-join of the group after a silence (None: never)."""
        return self.edge.rejoined_at if self.edge is not None else None

    @property
    def closed(self) -> bool:
        """Closed (:meth:`aclose`), or never had a socket."""
        return self.edge is None or self.edge.closed

    @property
    def joining(self) -> bool:
        return self.engine.joining

    @property
    def can_undo(self) -> bool:
        return self.engine.can_undo

    @property
    def can_redo(self) -> bool:
        return self.engine.can_redo

    def synced(self) -> bool:
        return self.engine.synced()

    # -- drawing

    def stroke(self, points: Iterable[Sequence[float]], color: Sequence[int] = (0, 0, 0, 255),
               width: int = 3) -> int:
        """A brush stroke through the points, a round brush ``width`` pixels wide."""
        pts = _points(points)
        if not 1 <= int(width) <= raster.MAX_WIDTH:
            raise ValueError(f"width {width} is not in 1..{raster.MAX_WIDTH}")
        if np.abs(pts).max() > raster.LIMIT:
            raise ValueError(f"coordinates beyond +-{raster.LIMIT}")
        opno = self.engine.stroke(pts, int(width), _color(color), self._now())
        self._pump()
        return opno

    def begin_stroke(self, color: Sequence[int] = (0, 0, 0, 255), width: int = 3) -> Stroke:
        """A stroke drawn live: ``s.add(point)`` as the pointer moves, ``s.end()`` at the end."""
        if not 1 <= int(width) <= raster.MAX_WIDTH:
            raise ValueError(f"width {width} is not in 1..{raster.MAX_WIDTH}")
        return Stroke(self, _color(color), int(width))

    def erase(self, points: Iterable[Sequence[float]], width: int = 20) -> int:
        """An eraser pass: the pixels under it go back to the background."""
        return self.stroke(points, BACKGROUND, width)

    def paint(self, points: Iterable[Sequence[float]], color: Sequence[int]) -> int:
        """Single pixels set to a colour (off-board points are ignored)."""
        pts = _points(points)
        w, h = self.size
        return self._paint(raster.points_pixels([tuple(p) for p in pts.tolist()], w, h),
                           _color(color))

    def _paint(self, pix: np.ndarray, color: Color) -> int:
        if pix.size == 0:
            return 0
        opno = self.engine.paint(pix, color, self._now())
        self._pump()
        return opno

    def paste(self, image, at: Sequence[int] = (0, 0)) -> int:
        """An image (uint8 array (h, w, 4) or (h, w, 3), or a PIL image) at ``at`` (its top
        left corner); every pixel gets its own colour. Parts off the board are cut."""
        arr = _as_rgba(image)
        x, y = int(at[0]), int(at[1])
        w, h = self.size
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(w, x + arr.shape[1]), min(h, y + arr.shape[0])
        if x1 <= x0 or y1 <= y0:
            return 0
        part = np.ascontiguousarray(arr[y0 - y:y1 - y, x0 - x:x1 - x])
        opno = self.engine.paste(part, x0, y0, self._now())
        self._pump()
        return opno

    def clear(self) -> int:
        opno = self.engine.clear(self._now())
        self._pump()
        return opno

    def undo(self) -> bool:
        done = self.engine.undo(self._now())
        self._pump()
        return done

    def redo(self) -> bool:
        done = self.engine.redo(self._now())
        self._pump()
        return done

    def cursor(self, x: float, y: float, hidden: bool = False) -> None:
        """Show our pointer to the others (ephemeral, not stored or repaired)."""
        w, h = self.size
        self.engine.cursor(min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1), hidden,
                           self._now())
        self._pump()

    # -- waiting and events

    async def wait_synced(self, timeout: float = 10.0) -> None:
        """Wait until we hold everything every known peer has sent and they hold ours.
        Raises TimeoutError saying what is still missing."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        next_probe = 0.0
        while not self.engine.synced():
            now = loop.time()
            if now >= end:
                raise TimeoutError(f"not synced after {timeout} s: {self._sync_report()}")
            if now >= next_probe and not self.engine.joining:
                self.engine.probe(now)
                self._pump()
                next_probe = now + 0.1
            await asyncio.sleep(0.005)

    def _sync_report(self) -> str:
        e = self.engine
        parts = []
        if e.joining:
            parts.append("still joining")
        for sid in list(e._sources):
            s = e.source_state(sid)
            if s and s.contiguous < s.highest:
                parts.append(f"missing {s.highest - s.contiguous} from {sid:08x}")
        for p in e.peers.values():
            if e.seq and p.holds.get(e.id, 0) < e.seq:
                parts.append(f"{p.name} ({p.id:08x}) holds {p.holds.get(e.id, 0)} of our {e.seq}")
        return "; ".join(parts) or "waiting for the send queue"

    async def wait_for_peers(self, n: int, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.engine.peers) < n:
            if loop.time() >= end:
                raise TimeoutError(f"{len(self.engine.peers)} peers after {timeout} s, "
                                   f"wanted {n}")
            await asyncio.sleep(0.01)

    def on_event(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn(event)`` for every event from now on (on the loop's thread)."""
        self._listeners.append(fn)

    async def events(self) -> AsyncIterator[Event]:
        """Every event from now on."""
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=10_000)
        while True:
            yield await self._queue.get()

    def _on_event(self, ev: Event) -> None:
        for fn in self._listeners:
            fn(ev)
        if self._queue is not None and not self._queue.full():
            self._queue.put_nowait(ev)

    # -- files

    def save_png(self, path: str | Path) -> Path:
        """Write the board as a PNG (opaque, with its real background)."""
        from PIL import Image as PILImage

        path = Path(path)
        px = np.array(self.pixels)
        if (px[..., 3] < 255).any():  # translucent paint: composite onto the background
            a = px[..., 3:4].astype(np.uint16)
            bg = np.array(BACKGROUND[:3], np.uint16)
            px[..., :3] = ((px[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)
            px[..., 3] = 255
        PILImage.fromarray(px, "RGBA").save(path, format="PNG")
        return path

    # -- plumbing

    def _now(self) -> float:
        if self.edge is not None:
            return self.edge.loop.time()
        return 0.0

    def _pump(self) -> None:
        if self.edge is not None:
            self.edge.pump()

    async def aclose(self) -> None:
        """Save the board (autosave), say goodbye (after sending what is queued) and close
        the socket."""
        if self.closed:
            return
        if self.autosaver is not None:
            await self.autosaver.aclose()
        self.engine.goodbye(self._now())
        self.edge.flush_blocking()
        self.edge.close()


def _as_rgba(image) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image as PILImage
        except ImportError:  # pragma: no cover
            raise TypeError("image must be a NumPy array") from None
        if isinstance(image, PILImage.Image):
            image = np.asarray(image.convert("RGBA"))
        else:
            raise TypeError(f"image must be a NumPy array or a PIL image, not {type(image)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be uint8 (h, w, 4) or (h, w, 3), not {image.dtype} "
                         f"{image.shape}")
    if image.shape[2] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return image


@contextlib.asynccontextmanager
async def open_board(group: str | None = None, port: int | None = None, iface: str | None = None,
                     ttl: int | None = None, name: str | None = None,
                     size: tuple[int, int] | None = None, rate: int | None = None,
                     color: Sequence[int] | None = None, *, secret: str | bytes | None = None,
                     autosave: bool = False, data_dir: str | Path | None = None,
                     timers: Timers | None = None,
                     wait_join: bool = True) -> AsyncIterator[Board]:
    """Join a board (every argument optional, with the command line's defaults) and leave it
    on exit. With ``wait_join`` (the default) it returns once the board has been fetched
    from the peers already there, or once it is clear that nobody is. ``secret``: the
    passphrase of a protected board (every datagram encrypted and authenticated).
    ``autosave``: keep the board in a file (under ``data_dir``, by default the user's data
    folder), restored at the next start and merged with the group."""
    board = await start_board(group, port, iface, ttl, name, size, rate, color, secret=secret,
                              autosave=autosave, data_dir=data_dir, timers=timers,
                              wait_join=wait_join)
    try:
        yield board
    finally:
        await board.aclose()


async def start_board(group=None, port=None, iface=None, ttl=None, name=None, size=None,
                      rate=None, color=None, *, secret: str | bytes | None = None,
                      autosave: bool = False, data_dir: str | Path | None = None,
                      timers: Timers | None = None,
                      wait_join: bool = True, config: Config | None = None) -> Board:
    """:func:`open_board` without the context manager: call ``await board.aclose()``."""
    if config is None:
        kw = {k: v for k, v in dict(group=group, port=port, iface=iface, ttl=ttl, name=name,
                                    size=None if size is None else tuple(size), rate=rate,
                                    color=None if color is None else _color(color)).items()
              if v is not None}
        config = Config(**kw)
        if secret is not None:
            from .seal import derive_key

            key = await asyncio.to_thread(derive_key, secret, config.group, config.port)
            config = Config(**{**kw, "key": key})
    loop = asyncio.get_running_loop()
    bfile = loaded = None
    if autosave:
        from . import store
        from .autosave import BoardFile, board_file_name, default_data_dir

        folder = Path(data_dir) if data_dir is not None else default_data_dir()
        name = board_file_name(config.group, config.port, config.size,
                               config.key.key_id if config.key else None)
        bfile = await asyncio.to_thread(BoardFile.open, folder, name)
        try:
            loaded = await asyncio.to_thread(bfile.load,
                                             lambda blob: store.load(blob, *config.size))
        except BaseException:
            bfile.close()
            raise
    try:
        sock, info = open_multicast_socket(config.group, config.port, config.iface,
                                           ttl=config.ttl)
    except BaseException:
        if bfile is not None:
            bfile.close()
        raise
    log.info("joined %s:%d on %s; receive buffer %d bytes", config.group, config.port,
             info.iface or "the default interface", info.rcvbuf_granted)
    try:
        engine = Engine(config, timers=timers, now=loop.time(), wall=time.time())
        if loaded is not None and loaded.value is not None:
            engine.import_state(*loaded.value, now=loop.time())
        edge = Edge(engine, sock, (config.group, config.port), loop, iface=config.iface)
        board = Board(engine, edge, info)
        if bfile is not None:
            from .autosave import Autosaver

            board.autosave_problem = loaded.problem
            if loaded.value is not None:
                board.restored_from = bfile.path
                log.info("restored the board from %s", bfile.path)
            if loaded.problem:
                log.warning("%s", loaded.problem)

            def snapshot():
                state = engine.export_state(loop.time())
                edge.pump()  # export flushed the open datagram: send it
                return state

            board.autosaver = Autosaver(bfile, snapshot, lambda: engine.state_version)
            board.autosaver.start()
        edge.start()
    except BaseException:
        sock.close()
        if bfile is not None:
            bfile.close()
        raise
    if wait_join:
        t = engine.timers
        limit = t.join_retry * (4 * t.join_attempts + 2) + 30.0
        end = loop.time() + limit
        while engine.joining and loop.time() < end:
            await asyncio.sleep(0.01)
    return board
