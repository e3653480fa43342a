"""Autosave: every peer keeps its board in a file, so a board survives everyone leaving.

Where
-----
One file per board address and canvas size (:func:`board_file_name`) in the user's data
folder (:func:`default_data_dir`): ``$XDG_DATA_HOME/p2pboard`` on Linux and BSD,
``~/Library/Application Support/p2pboard`` on macOS, ``%LOCALAPPDATA%\\p2pboard`` on
Windows. The folder is created private (0700) and every file in it is 0600: a passphrase
board's pixels are as private as the passphrase.

Slots
-----
Several instances on one host may join the same board (tests do, people might), and two
writers of one file would undo each other's saves. So each file name has *slots*: slot 1
is the plain name (``239.255.80.80-47777-1920x1080.pbstate``), slot 2 adds ``-2``
(``...-1920x1080-2.pbstate``) and so on up to :data:`MAX_SLOTS`. An instance owns a slot
while it holds an exclusive advisory lock on the slot's lock file (``NAME.lock``; flock on
POSIX, msvcrt.locking on Windows), which it keeps for its whole life; the operating system
drops the lock when the process ends, however it ends (kill -9 included). An instance
takes the lowest slot nobody holds, so a lone instance that restarts always gets slot 1
back, and with several running a restarted one gets the lowest slot free, normally its
own. Lock files are never deleted (deleting a lock file races with someone locking it).
Every slot holds a full copy of the board, so whichever slot an instance gets, the group
merges the rest back in once it joins.

Writing
-------
:meth:`BoardFile.save` writes ``NAME.tmp``, flushes, fsyncs it, renames it over ``NAME``
(atomic on POSIX and on NTFS) and fsyncs the folder, so after a crash at any point ``NAME``
is either the old state or the new one, never a mix. A failed save (disk full, read-only
folder) is reported and counted, never raised: the board goes on. A file that cannot be
read as a board (truncated, corrupt, another size) is renamed to
``NAME.corrupt-YYYYmmdd-HHMMSS``, never deleted, and the board starts fresh with a message
saying so.

When
----
:class:`Autosaver` decides when to save: at most once per ``interval`` (1 s) while the
board changes, never while nothing changed, and once more on close. The snapshot is taken
on the event loop (copying the arrays: milliseconds), and the expensive part (store.dump's
compression, the write and the fsyncs) runs in one worker thread, one save at a time.
A peer killed with -9 loses at most what changed in the last interval plus one save time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from . import store
from .board import Board

log = logging.getLogger("p2pboard.autosave")

APP_DIR = "p2pboard"
SUFFIX = ".pbstate"
#: Most instances on one host that can autosave the same board at once.
MAX_SLOTS = 64
#: Largest file :meth:`BoardFile.load` reads (a full 8192x8192 photo board is ~300 MB).
MAX_FILE_BYTES = 2 << 30
_KEY_ID = re.compile(r"[0-9A-Za-z]{1,64}")

T = TypeVar("T")
Sources = dict[int, tuple[int, int]]


class DataDirError(OSError):
    """No usable data folder (no home folder, or the folder cannot be created)."""


class SlotsTaken(OSError):
    """Every slot of a board file is held by another running instance."""


# ---------------------------------------------------------------------------- where


def default_data_dir() -> Path:
    """The folder where p2pboard keeps its board files on this platform.

    Raises :class:`DataDirError` if there is no home folder to put it in (give a folder
    explicitly then: ``--data-dir``)."""
    try:
        if sys.platform == "win32":
            for var in ("LOCALAPPDATA", "APPDATA"):
                base = os.environ.get(var)
                if base and Path(base).is_absolute():
                    return Path(base) / APP_DIR
            return Path.home() / "AppData" / "Local" / APP_DIR
        if sys.platform == "darwin":
            return Path.home() / "Library" / "Application Support" / APP_DIR
        # XDG Base Directory spec: a relative XDG_DATA_HOME is invalid and ignored.
        base = os.environ.get("XDG_DATA_HOME")
        if base and Path(base).is_absolute():
            return Path(base) / APP_DIR
        return Path.home() / ".local" / "share" / APP_DIR
    except RuntimeError as err:  # Path.home(): no HOME and no user database entry
        raise DataDirError(f"no home folder to keep the board in ({err}); "
                           "give a folder with --data-dir") from None


def board_file_name(group: str, port: int, size: tuple[int, int],
                    key_id: str | None = None) -> str:
    """The file name of a board: ``GROUP-PORT-WxH[-kKEYID].pbstate``.

    ``key_id`` (letters and digits, e.g. the hex id of a passphrase's key) keeps an open
    board and a protected one on the same address in different files."""
    try:
        addr = ipaddress.IPv4Address(group)
    except ValueError:
        raise ValueError(f"group {group!r} is not an IPv4 address") from None
    w, h = (int(v) for v in size)
    if not 1 <= int(port) <= 65535 or w < 1 or h < 1:
        raise ValueError(f"bad port {port!r} or size {size!r}")
    name = f"{addr}-{int(port)}-{w}x{h}"
    if key_id is not None:
        if not _KEY_ID.fullmatch(key_id):
            raise ValueError(f"key id {key_id!r} is not 1 to 64 letters and digits")
        name += f"-k{key_id}"
    return name + SUFFIX


def slot_name(name: str, slot: int) -> str:
    """The file name of ``slot`` (1-based) of board file ``name``."""
    if slot == 1:
        return name
    stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    return f"{stem}-{slot}{SUFFIX}"


# ---------------------------------------------------------------------------- locks


def _try_lock(fd: int) -> bool:
    """An exclusive, non-blocking lock on ``fd``; False if someone else holds it."""
    if sys.platform == "win32":  # pragma: no cover - not run on Windows yet
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        with contextlib.suppress(OSError):
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX; Windows has no directory handles)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to fsync a directory: nothing more to do
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What :meth:`BoardFile.load` found."""

    value: T | None  #: the parsed board (what ``parse`` returned); None: start fresh
    problem: str | None = None  #: a message for the user when the file could not be used
    aside: Path | None = None  #: where an unusable file was moved


class BoardFile:
    """One slot of a board's file, locked for the life of this object.

    ``BoardFile.open(folder, name)`` creates the folder if needed and takes the lowest free
    slot (:class:`SlotsTaken` if none, :class:`DataDirError` if the folder is unusable).
    """

    def __init__(self, folder: Path, name: str, slot: int, lock_fd: int) -> None:
        self.folder = folder
        self.name = name  #: the board's file name (slot 1)
        self.slot = slot
        self.path = folder / slot_name(name, slot)  #: this slot's file
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._lock_fd: int | None = lock_fd
        self._blocked: str | None = None  # an unusable file that could not be moved aside
        self.saves = 0  #: successful saves
        self.failures = 0  #: failed saves
        self.last_error: str | None = None  #: message of the latest failed save

    @classmethod
    def open(cls, folder: str | os.PathLike, name: str) -> BoardFile:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"bad board file name {name!r}")
        folder = Path(folder)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise DataDirError(f"cannot create the board folder {folder}: "
                               f"{err.strerror or err}") from None
        for slot in range(1, MAX_SLOTS + 1):
            lock_path = folder / (slot_name(name, slot) + ".lock")
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as err:
                raise DataDirError(f"cannot use the board folder {folder}: "
                                   f"{err.strerror or err}") from None
            try:
                if _try_lock(fd):
                    return cls(folder, name, slot, fd)
            except OSError as err:  # e.g. no locking on this file system
                os.close(fd)
                raise DataDirError(f"cannot lock {lock_path}: {err.strerror or err}") from None
            os.close(fd)
        raise SlotsTaken(f"{MAX_SLOTS} running instances already keep {name} in {folder}")

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    def close(self) -> None:
        """Release the slot (the file stays)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            _unlock(fd)
            os.close(fd)

    def __enter__(self) -> BoardFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close must not keep the slot
        with contextlib.suppress(Exception):
            self.close()

    # -- reading

    def load(self, parse: Callable[[bytes], T] = bytes) -> Loaded[T]:
        """Read this slot's file. ``parse`` turns its bytes into a board and raises
        ValueError (StoreError is one) if they are not one, e.g.
        ``lambda blob: store.load(blob, w, h)``. Never raises for a bad or unreadable
        file: a missing file gives ``Loaded(None)``; a bad one is moved aside and gives
        ``Loaded(None, problem=message, aside=path)``."""
        self._check_open()
        try:
            with open(self.path, "rb") as f:
                blob = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return Loaded(None)
        except OSError as err:
            return self._set_aside(f"cannot be read ({err.strerror or err})")
        if len(blob) > MAX_FILE_BYTES:
            return self._set_aside(f"is larger than {MAX_FILE_BYTES >> 20} MB")
        try:
            value = parse(blob)
        except (ValueError, MemoryError) as err:
            return self._set_aside(f"is not a usable board ({err})")
        return Loaded(value)

    def _set_aside(self, why: str) -> Loaded:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            os.replace(self.path, aside)
            _fsync_dir(self.folder)
        except OSError as err:
            self._blocked = (f"the saved board {self.path} {why} and could not be moved "
                             f"aside ({err.strerror or err}): not saving over it")
            log.error("%s", self._blocked)
            return Loaded(None, problem=f"The saved board {self.path} {why}. It could not be "
                          f"moved aside ({err.strerror or err}), so it is left as it is and "
                          "this board will not be saved; the board starts empty.")
        msg = (f"The saved board {self.path} {why}. It was kept as {aside.name} and the board "
               "starts empty (the other peers send theirs).")
        log.warning("%s", msg)
        return Loaded(None, problem=msg, aside=aside)

    # -- writing

    def save(self, blob: bytes) -> str | None:
        """Replace the file with ``blob``, atomically and durably. Returns None, or a
        message saying why it failed (the old file is then intact); never raises OSError.
        Thread-safe as long as one thread saves at a time (:class:`Autosaver` ensures it)."""
        self._check_open()
        if self._blocked is not None:
            return self._failed(self._blocked)
        fd = None
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                         | getattr(os, "O_BINARY", 0), 0o600)
            if hasattr(os, "fchmod"):
                os.fchmod(fd, 0o600)  # a temp file left by an older run may have other bits
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.close(fd)
            fd = None
            os.replace(self._tmp, self.path)
            _fsync_dir(self.folder)
        except OSError as err:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)  # give back the space of a half-written file
            return self._failed(f"cannot save the board to {self.path}: "
                                f"{err.strerror or err}")
        self.saves += 1
        self.last_error = None
        return None

    def _failed(self, msg: str) -> str:
        self.failures += 1
        self.last_error = msg
        return msg

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise ValueError("board file is closed")


# ---------------------------------------------------------------------------- when


def freeze_board(board: Board) -> Board:
    """A copy of ``board`` that :func:`store.dump` can read from another thread while the
    original goes on changing (see :meth:`Board.frozen`)."""
    return board.frozen()


class Autosaver:
    """Saves a board into a :class:`BoardFile` from an asyncio loop.

    ``snapshot()`` is called on the loop and returns ``(board, sources)`` that stay
    unchanged afterwards (e.g. :func:`freeze_board` of the engine's board with the engine's
    source table); ``encode(board, sources)`` (default :func:`store.dump`) then runs in the
    worker thread with the write. ``version()`` returns anything that changes whenever
    the state to save changes; a save happens only when it differs from the last one
    saved (the value at construction counts as saved, so a freshly loaded board is not
    written back). ``on_error(message)`` is called on the loop when a save fails.

    Drive it with :meth:`run` (a task) or call :meth:`poll` with the loop's time; end it
    with :meth:`aclose`, which makes and waits for the final save.
    """

    def __init__(self, file: BoardFile, snapshot: Callable[[], tuple[Any, Sources]],
                 version: Callable[[], Hashable], *, interval: float = 1.0,
                 encode: Callable[[Any, Sources], bytes] = store.dump,
                 on_error: Callable[[str], None] | None = None) -> None:
        if not interval > 0:
            raise ValueError(f"interval {interval!r} is not positive")
        self.file = file
        self.interval = float(interval)
        self._snapshot = snapshot
        self._version = version
        self._encode = encode
        self._on_error = on_error
        self._saved = version()
        self._next = float("-inf")  # earliest (loop) time of the next save
        self._last_poll = float("-inf")  # when poll last started one
        self._fails_in_row = 0
        self._pending: asyncio.Future | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="p2pboard-autosave")
        self._closed = False
        self._task: asyncio.Task | None = None
        self.saves = 0  #: successful saves
        self.failures = 0  #: failed saves
        self.last_error: str | None = None
        self.snapshot_seconds = 0.0  #: time on the loop of the latest save
        self.write_seconds = 0.0  #: time in the worker of the latest save

    @property
    def busy(self) -> bool:
        """A save is being written."""
        return self._pending is not None

    @property
    def dirty(self) -> bool:
        """The state changed since the last successful save."""
        return self._version() != self._saved

    def poll(self, now: float) -> bool:
        """Start a save if one is due at ``now``: changes, no save running, and at least
        ``interval`` since the last one started (longer after failures). Call on the
        loop. Returns whether a save started."""
        if self._closed or self._pending is not None or now < self._next:
            return False
        if not self.dirty:
            return False
        self._last_poll = now
        self._next = now + self._backoff()
        return self._start()

    def _backoff(self) -> float:
        """Time between save starts: ``interval``, or four times what the last save took if
        that is longer (a board full of photos takes a while to compress: saving it must
        not keep a core busy), doubling with each failure in a row up to 32 times (a full
        disk is not retried, at full dump cost, every second)."""
        base = max(self.interval, 4 * (self.snapshot_seconds + self.write_seconds))
        return base * 2 ** min(self._fails_in_row, 5)

    def next_poll(self, now: float) -> float:
        """Seconds until :meth:`poll` may next have something to do."""
        return max(self._next - now, 0.0) if self.dirty else self.interval

    def _start(self) -> bool:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        version = self._version()
        try:
            board, sources = self._snapshot()
        except Exception as err:  # noqa: BLE001 - a bug here must not stop the peer
            log.exception("could not take a snapshot of the board for saving")
            self._failed(f"cannot take a snapshot of the board for saving: {err!r}")
            return False
        self.snapshot_seconds = time.perf_counter() - t0
        fut = loop.run_in_executor(self._pool, self._write, board, sources)
        self._pending = fut
        fut.add_done_callback(lambda f: self._done(f, version))
        return True

    def _write(self, board, sources) -> str | None:
        """In the worker thread: encode and write."""
        t0 = time.perf_counter()
        try:
            blob = self._encode(board, sources)
        except Exception as err:  # noqa: BLE001 - a bug in encoding must not stop the peer
            log.exception("could not encode the board for saving")
            return f"cannot encode the board for saving: {err!r}"
        err = self.file.save(blob)
        self.write_seconds = time.perf_counter() - t0
        return err

    def _done(self, fut: asyncio.Future, version: Hashable) -> None:
        self._pending = None
        if fut.cancelled():
            return
        err = fut.exception() or fut.result()
        if err is None:
            self._saved = version
            self.saves += 1
            self._fails_in_row = 0
        else:
            self._failed(str(err))

    def _failed(self, msg: str) -> None:
        self.failures += 1
        self._fails_in_row += 1
        self._next = self._last_poll + self._backoff()
        if self.last_error != msg:
            log.error("%s", msg)
        self.last_error = msg
        if self._on_error is not None:
            self._on_error(msg)

    async def wait(self) -> None:
        """Wait for the save being written, if any."""
        while self._pending is not None:
            await asyncio.wait({self._pending})

    async def save_now(self) -> bool:
        """Save at once if anything changed (waiting for a running save first) and wait
        for it. True if the state is saved."""
        await self.wait()
        if self.dirty and not self._closed:
            self._start()
            await self.wait()
        return not self.dirty

    def start(self) -> asyncio.Task:
        """Run :meth:`run` as a task of the running loop (:meth:`aclose` ends it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(),
                                                                name="p2pboard-autosave")
        return self._task

    async def run(self) -> None:
        """Save as changes come, until cancelled or closed."""
        loop = asyncio.get_running_loop()
        while not self._closed:
            if self._pending is None:
                now = loop.time()
                if not self.poll(now):
                    await asyncio.sleep(self.next_poll(now))
                    continue
            await self.wait()

    async def aclose(self, close_file: bool = True) -> bool:
        """Stop, make the final save and wait for it; then close the file too unless
        told not to. True if everything is saved. Safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ok = True
        if not self._closed:
            ok = await self.save_now()
            self._closed = True
            self._pool.shutdown(wait=True)
        if close_file:
            self.file.close()
        return ok
