"""Autosave: the board file (slots, atomic writes, bad files set aside) and the Autosaver
(when to save, off the loop, one write at a time). Everything stays under tmp_path."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from p2pboard import autosave, store
from p2pboard.autosave import (Autosaver, BoardFile, DataDirError, board_file_name,
                               default_data_dir, freeze_board)
from p2pboard.board import Board
from p2pboard.ops import Clear, Image, Paint, Toggle

W, H = 64, 48
NAME = board_file_name("239.255.80.80", 47777, (W, H))
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes and flock")


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """Never touch the real data folder, whatever a test does."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def drawn_board() -> tuple[Board, dict[int, tuple[int, int]]]:
    """A board with paint, an image, a clear and an undo, from two authors."""
    b = Board(W, H)
    rgba = np.random.default_rng(7).integers(0, 256, (10, 12, 4), dtype=np.uint8)
    b.apply(Paint(1, 1, 1, (255, 0, 0, 255), np.arange(100, 180, dtype=np.int64)), 1, 1, 0)
    b.apply(Image(2, 1, 2, 5, 6, rgba), 2, 1, 0)
    b.apply(Paint(1, 2, 3, (0, 0, 255, 255), np.arange(0, W * H, 7, dtype=np.int64)), 1, 2, 0)
    b.apply(Clear(2, 2, 4), 2, 2, 0)
    b.apply(Toggle(2, 3, 2, False), 2, 3, 0)  # author 2 undoes its clear
    return b, {1: (2, 2), 2: (3, 3)}


def parse(blob: bytes):
    return store.load(blob, W, H)


# ---------------------------------------------------------------------------- names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG layout")
def test_data_dir_follows_xdg_and_ignores_a_relative_one(tmp_path, monkeypatch):
    assert default_data_dir() == tmp_path / "xdg" / "p2pboard"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "p2pboard"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "p2pboard"


def test_data_dir_on_other_platforms(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert default_data_dir() == tmp_path / "home" / "Library" / "Application Support" / "p2pboard"
    monkeypatch.setattr(sys, "platform", "win32")
    local = tmp_path / "Local"
    monkeypatch.setenv("LOCALAPPDATA", str(local))
    assert default_data_dir() == local / "p2pboard"


def test_file_names_per_address_size_and_key():
    assert NAME == "239.255.80.80-47777-64x48.pbstate"
    keyed = board_file_name("239.255.80.80", 47777, (W, H), key_id="a1b2c3")
    assert keyed == "239.255.80.80-47777-64x48-ka1b2c3.pbstate"
    assert autosave.slot_name(NAME, 1) == NAME
    assert autosave.slot_name(NAME, 2) == "239.255.80.80-47777-64x48-2.pbstate"
    for bad in [dict(key_id="../x"), dict(key_id=""), dict(group="../../etc")]:
        kw = dict(group="239.255.80.80", port=47777, size=(W, H)) | bad
        with pytest.raises(ValueError):
            board_file_name(**kw)


# ---------------------------------------------------------------------------- the file


def test_round_trip_of_a_real_board(tmp_path):
    board, sources = drawn_board()
    with BoardFile.open(tmp_path, NAME) as f:
        assert f.load(parse).value is None  # nothing saved yet: a fresh start
        assert f.save(store.dump(board, sources)) is None
    with BoardFile.open(tmp_path, NAME) as f:
        got = f.load(parse)
    assert got.problem is None
    loaded, loaded_sources = got.value
    assert loaded_sources == sources
    assert loaded.digest() == board.digest()
    assert np.array_equal(loaded.stamps, board.stamps)
    assert loaded.visible(2, 2) is False  # the undo survived
    assert loaded.live_ops == board.live_ops  # and what further undos need


@posix_only
def test_files_are_private(tmp_path):
    folder = tmp_path / "new" / "data"
    with BoardFile.open(folder, NAME) as f:
        f.save(b"state")
        # an old temp file with loose bits must not loosen the next save
        f._tmp.write_bytes(b"")
        os.chmod(f._tmp, 0o644)
        f.save(b"state 2")
        assert stat.S_IMODE(f.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / (NAME + ".lock")).stat().st_mode) == 0o600


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    with BoardFile.open(tmp_path, NAME) as f:
        f.save(b"old state")

        def broken(src, dst):
            raise OSError(errno.EIO, "Input/output error")
        monkeypatch.setattr(os, "replace", broken)
        err = f.save(b"new state")
        assert err and "Input/output error" in err and str(f.path) in err
        assert f.failures == 1 and f.last_error == err
        assert f.path.read_bytes() == b"old state"
        assert not f._tmp.exists()  # no half-written leftovers
        monkeypatch.undo()
        assert f.save(b"new state") is None
        assert f.path.read_bytes() == b"new state"


def test_crash_between_write_and_rename_keeps_the_old_file(tmp_path, monkeypatch):
    with BoardFile.open(tmp_path, NAME) as f:
        f.save(b"old state")

        class Killed(BaseException):
            pass

        def killed(src, dst):
            raise Killed
        monkeypatch.setattr(os, "replace", killed)
        with pytest.raises(Killed):
            f.save(b"new state")
    monkeypatch.undo()
    with BoardFile.open(tmp_path, NAME) as f:  # the restarted peer
        assert f.load().value == b"old state"
        assert f.save(b"newer state") is None  # the stale temp file is simply reused
        assert f.path.read_bytes() == b"newer state"


@pytest.mark.parametrize("damage", ["truncated", "flipped", "garbage", "empty"])
def test_bad_file_is_set_aside_with_a_message(tmp_path, damage):
    board, sources = drawn_board()
    blob = store.dump(board, sources)
    bad = {"truncated": blob[:len(blob) // 2], "garbage": os.urandom(500), "empty": b"",
           "flipped": blob[:40] + bytes([blob[40] ^ 0xFF]) + blob[41:]}[damage]
    (tmp_path / NAME).write_bytes(bad)
    with BoardFile.open(tmp_path, NAME) as f:
        got = f.load(parse)
        assert got.value is None
        assert got.problem and str(f.path) in got.problem and "starts empty" in got.problem
        assert got.aside is not None and got.aside.name.startswith(NAME + ".corrupt-")
        assert got.aside.read_bytes() == bad  # kept, never deleted
        assert not f.path.exists()
        assert f.save(blob) is None  # the fresh start saves normally
        assert f.load(parse).value[0].digest() == board.digest()
        # a second bad file in the same second does not overwrite the first
        f.path.write_bytes(b"junk")
        second = f.load(parse)
        assert second.aside != got.aside and second.aside.read_bytes() == b"junk"
        assert got.aside.read_bytes() == bad


def test_bad_file_that_cannot_be_moved_is_never_overwritten(tmp_path, monkeypatch):
    (tmp_path / NAME).write_bytes(b"junk")
    with BoardFile.open(tmp_path, NAME) as f:
        def broken(src, dst):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(os, "replace", broken)
        got = f.load(parse)
        assert got.value is None and "could not be moved aside" in got.problem
        monkeypatch.undo()
        assert f.save(b"state") is not None
        assert f.path.read_bytes() == b"junk"


def test_two_instances_get_different_slots_and_a_freed_slot_is_reused(tmp_path):
    a = BoardFile.open(tmp_path, NAME)
    b = BoardFile.open(tmp_path, NAME)
    c = BoardFile.open(tmp_path, NAME)
    assert (a.slot, b.slot, c.slot) == (1, 2, 3)
    assert len({a.path, b.path, c.path}) == 3
    a.save(b"a")
    b.save(b"b")
    b.close()
    d = BoardFile.open(tmp_path, NAME)  # the lowest free slot: b's old one
    assert d.slot == 2 and d.load().value == b"b"
    a.close()
    e = BoardFile.open(tmp_path, NAME)
    assert e.slot == 1 and e.load().value == b"a"
    for f in (c, d, e):
        f.close()
    # another board (other size) has its own slots
    other = BoardFile.open(tmp_path, board_file_name("239.255.80.80", 47777, (W, H + 1)))
    assert other.slot == 1
    other.close()


def test_a_slot_held_by_another_process_is_skipped_and_freed_when_it_dies(tmp_path):
    code = ("import sys; from p2pboard.autosave import BoardFile; "
            f"f = BoardFile.open({str(tmp_path)!r}, {NAME!r}); print(f.slot, flush=True); "
            "sys.stdin.read()")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert p.stdout.readline().strip() == "1"
        with BoardFile.open(tmp_path, NAME) as f:
            assert f.slot == 2
        p.kill()  # like kill -9: the system drops the lock
        p.wait(timeout=10)
        with BoardFile.open(tmp_path, NAME) as f:
            assert f.slot == 1
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def test_all_slots_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(autosave, "MAX_SLOTS", 2)
    a, b = BoardFile.open(tmp_path, NAME), BoardFile.open(tmp_path, NAME)
    with pytest.raises(autosave.SlotsTaken, match="2 running instances"):
        BoardFile.open(tmp_path, NAME)
    a.close()
    b.close()


def test_unusable_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(DataDirError, match="cannot create the board folder"):
        BoardFile.open(tmp_path / "file" / "sub", NAME)


def test_unwritable_folder_or_full_disk_reports_and_goes_on(tmp_path, monkeypatch):
    with BoardFile.open(tmp_path, NAME) as f:
        f.save(b"old")
        real_open = os.open

        def read_only(path, flags, *a):
            if str(path) == str(f._tmp):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *a)
        monkeypatch.setattr(os, "open", read_only)
        err = f.save(b"new")
        assert err and "Permission denied" in err
        monkeypatch.undo()

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "write", full)
        err = f.save(b"new")
        assert err and "No space left" in err
        monkeypatch.undo()
        assert f.failures == 2 and f.path.read_bytes() == b"old" and not f._tmp.exists()
        assert f.save(b"new") is None and f.last_error is None


@posix_only
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    with BoardFile.open(tmp_path, NAME) as f:
        os.chmod(tmp_path, 0o500)
        try:
            assert "Permission denied" in f.save(b"state")
        finally:
            os.chmod(tmp_path, 0o700)


def test_closed_file_refuses_use(tmp_path):
    f = BoardFile.open(tmp_path, NAME)
    f.close()
    f.close()
    assert f.closed
    with pytest.raises(ValueError):
        f.save(b"x")


# ---------------------------------------------------------------------------- the saver


class Recorder:
    """An encoder that records what it saved, and can be made to block."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.running = 0
        self.most_running = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def __call__(self, board, sources) -> bytes:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.gate.wait(10)
        with self.lock:
            self.running -= 1
        blob = repr(board).encode()
        self.blobs.append(blob)
        return blob


def saver(tmp_path, state, **kw):
    rec = Recorder()
    f = BoardFile.open(tmp_path, NAME)
    a = Autosaver(f, lambda: (state["v"], {}), lambda: state["v"], encode=rec, **kw)
    return a, rec


def test_saves_at_most_once_per_interval_while_changes_keep_coming(tmp_path):
    async def main():
        state = {"v": 0}
        a, rec = saver(tmp_path, state, interval=1.0)
        started = []
        for step in range(31):  # a change every 0.1 s for 3 s (virtual time)
            now = step * 0.1
            state["v"] += 1
            if a.poll(now):
                started.append(round(now, 1))
            await a.wait()
        assert started == [0.0, 1.0, 2.0, 3.0]
        assert rec.blobs == [b"1", b"11", b"21", b"31"]
        assert not a.dirty
        await a.aclose()
        assert a.saves == 4  # nothing changed since: no save on close
    asyncio.run(main())


def test_saves_on_close_and_not_when_nothing_changed(tmp_path):
    async def main():
        state = {"v": 0}
        a, rec = saver(tmp_path, state)
        for now in range(5):
            assert not a.poll(float(now))
        state["v"] = 1
        assert a.poll(10.0)
        await a.wait()
        state["v"] = 2  # changed just before quitting, inside the interval
        assert not a.poll(10.5)
        assert await a.aclose()
        assert rec.blobs == [b"1", b"2"]
        assert a.file.closed
        with BoardFile.open(tmp_path, NAME) as f:
            assert f.load().value == b"2"
    asyncio.run(main())


def test_nothing_written_when_nothing_changed(tmp_path):
    async def main():
        state = {"v": "loaded"}
        a, rec = saver(tmp_path, state, interval=0.01)
        a.start()
        await asyncio.sleep(0.1)
        await a.aclose()
        assert rec.blobs == [] and a.saves == 0
        assert not (tmp_path / NAME).exists()
    asyncio.run(main())


def test_never_two_writes_at_once(tmp_path):
    async def main():
        state = {"v": 0}
        a, rec = saver(tmp_path, state, interval=0.5)
        rec.gate.clear()  # the first write hangs
        state["v"] = 1
        assert a.poll(0.0) and a.busy
        for now in (1.0, 2.0, 3.0):
            state["v"] += 1
            assert not a.poll(now)
        closing = asyncio.ensure_future(a.aclose())
        await asyncio.sleep(0.05)
        assert not closing.done()  # the final save waits for the running one
        rec.gate.set()
        assert await closing
        assert rec.most_running == 1
        assert rec.blobs == [b"1", b"4"]
    asyncio.run(main())


def test_run_saves_changes_in_the_background(tmp_path):
    async def main():
        state = {"v": 0}
        a, rec = saver(tmp_path, state, interval=0.05)
        a.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + 0.5
        while loop.time() < end:
            state["v"] += 1
            await asyncio.sleep(0.005)
        n = len(rec.blobs)
        assert 3 <= n <= 0.5 / 0.05 + 2
        await a.aclose()
        assert rec.blobs[-1] == str(state["v"]).encode()
    asyncio.run(main())


def test_failed_saves_are_reported_and_retried(tmp_path, monkeypatch):
    async def main():
        state = {"v": 1}
        errors = []
        a, rec = saver(tmp_path, state, interval=1.0, on_error=errors.append)
        state["v"] = 2
        real_open = os.open

        def read_only(path, flags, *args):
            if str(path).endswith(".tmp"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args)
        monkeypatch.setattr(os, "open", read_only)
        assert a.poll(0.0)
        await a.wait()
        assert a.failures == 1 and a.dirty and errors and "Permission denied" in errors[0]
        assert not a.poll(1.5)  # backing off: 2 intervals after one failure
        monkeypatch.undo()
        assert a.poll(2.0)
        await a.wait()
        assert a.saves == 1 and not a.dirty
        await a.aclose()
    asyncio.run(main())


def test_encoder_bug_does_not_stop_the_peer(tmp_path):
    async def main():
        f = BoardFile.open(tmp_path, NAME)

        def bad(board, sources):
            raise RuntimeError("boom")
        a = Autosaver(f, lambda: (None, {}), lambda: 1, encode=bad)
        a._saved = 0
        assert a.poll(0.0)
        await a.wait()
        assert a.failures == 1 and "boom" in a.last_error
        assert not await a.aclose()
    asyncio.run(main())


def test_frozen_board_saves_the_state_at_the_snapshot(tmp_path):
    board, sources = drawn_board()
    before = board.digest()
    frozen = freeze_board(board)
    # the live board goes on changing (a new paint, a fold, an undo) while the copy is dumped
    board.apply(Paint(3, 1, 9, (0, 255, 0, 255), np.arange(W * H, dtype=np.int64)), 3, 1, 0)
    board.settle(1, 5000)
    board.apply(Toggle(1, 3, 2, False), 1, 3, 0)
    loaded, _ = store.load(store.dump(frozen, sources), W, H)
    assert loaded.digest() == before != board.digest()


def test_full_round_trip_with_a_real_board(tmp_path):
    """What a peer does: load (nothing), draw, autosave, quit; restart and load it back."""
    async def main():
        board, sources = drawn_board()
        f = BoardFile.open(tmp_path, NAME)
        assert f.load(parse).value is None
        a = Autosaver(f, lambda: (freeze_board(board), dict(sources)),
                      lambda: board._version, interval=0.02)
        a.start()
        board.apply(Paint(1, 3, 10, (9, 9, 9, 255), np.arange(5, 50, dtype=np.int64)), 1, 3, 0)
        t0 = time.monotonic()
        while a.saves == 0 and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        assert a.saves >= 1
        board.apply(Clear(1, 4, 11), 1, 4, 0)
        await a.aclose()
        with BoardFile.open(tmp_path, NAME) as g:
            loaded, _ = g.load(parse).value
        assert loaded.digest() == board.digest()
    asyncio.run(main())
