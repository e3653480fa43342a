"""gcpause.py: start-up objects are exempted from the cycle collector; what comes after is
still collected."""

from __future__ import annotations

import gc
import weakref

from p2pboard import gcpause


class _Node:
    pass


def test_freeze_exempts_what_is_alive_and_later_cycles_are_still_collected():
    try:
        alive = _Node()
        frozen = gcpause.freeze_startup()
        assert frozen == gc.get_freeze_count() > 1000  # this process's modules, functions, ...
        assert gc.is_tracked(alive) and len(gc.get_objects(2)) < frozen / 10
        a, b = _Node(), _Node()
        a.other, b.other = b, a  # a cycle made after the freeze
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
    finally:
        gc.unfreeze()


def test_the_app_freezes_once_its_board_is_open(monkeypatch):
    """cli.open_with_autosave (the window's and the headless peer's way in) freezes after
    start_board returned, with autosave or without."""
    import asyncio

    from p2pboard import api, cli
    from p2pboard.autosave import DataDirError
    from p2pboard.config import Config

    calls = []

    async def start_board(**kw):
        calls.append("start")
        if kw.get("autosave"):
            raise DataDirError("no folder here")
        return "board"

    monkeypatch.setattr(api, "start_board", start_board)
    monkeypatch.setattr(gcpause, "freeze_startup", lambda: calls.append("freeze"))
    board = asyncio.run(cli.open_with_autosave(Config(), autosave=True, data_dir=None))
    assert board == "board" and calls == ["start", "start", "freeze"]
