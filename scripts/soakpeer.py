#!/usr/bin/env python3
"""One peer of scripts/soak.py: a board opened with the public API, driven over stdin,
with the app's garbage-collector policy (p2pboard/gcpause.py).

It answers one JSON object per line on stdout. Commands, one per line:

    scribble SEED   draw continuously in the background, like a person: strokes at mouse
                    rate (a point every 8 ms) with random widths and colours, pauses between
                    them, now and then undo, redo, a small pasted image or (rarely) a clear
    stop            end the scribbling (the stroke being drawn is finished) -> stopped
    sync TIMEOUT    wait_synced -> sync (synced, digest, peers)
    npy PATH        save the raw pixels (uint8 height x width x 4) with numpy.save -> npy
    stats [TAG]     -> stats (the board's counters, plus what the scribbler did; TAG, if
                    given, comes back in the answer: soak.py samples with "sample")
    mem             -> mem: where the memory goes (repair cache, snapshots kept for
                    serving, undo log, tables), from the engine's internals
    quit            leave the board (goodbye) and exit -> bye

``--data-dir DIR`` is passed on to ``open_board(data_dir=...)`` when the API has it
(autosave: a restarted peer loads its file and merges with the group); otherwise it is
ignored and the ready message says ``autosave: false``.

Only ever run inside a network namespace (scripts/soak.py starts it with ``ip netns exec``).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import p2pboard  # noqa: E402
from p2pboard import gcpause  # noqa: E402


def out(**kw) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


class Scribbler:
    def __init__(self, board, seed: int) -> None:
        self.board = board
        self.rng = random.Random(seed)
        self.running = True
        self.counts = {"strokes": 0, "points": 0, "undos": 0, "redos": 0, "pastes": 0,
                       "clears": 0}

    async def run(self) -> None:
        b, rng, c = self.board, self.rng, self.counts
        w, h = b.size
        while self.running:
            r = rng.random()
            if r < 0.06:
                c["undos"] += b.undo()
            elif r < 0.09:
                c["redos"] += b.redo()
            elif r < 0.11:
                iw, ih = rng.randrange(4, 33), rng.randrange(4, 33)
                img = np.random.default_rng(rng.randrange(1 << 30)).integers(
                    0, 256, (ih, iw, 4), dtype=np.uint8)
                img[..., 3] = 255
                if rng.random() < 0.5:  # a smooth one too (compressible bands)
                    img[...] = (rng.randrange(256), rng.randrange(256), rng.randrange(256), 255)
                    img[:, :, 0] = np.arange(iw, dtype=np.uint8) * 7
                b.paste(img, at=(rng.randrange(-8, w), rng.randrange(-8, h)))
                c["pastes"] += 1
            elif r < 0.1125:
                b.clear()
                c["clears"] += 1
            else:
                await self._stroke(w, h)
            await asyncio.sleep(rng.uniform(0.05, 0.6))

    async def _stroke(self, w: int, h: int) -> None:
        rng = self.rng
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256),
                 255 if rng.random() < 0.9 else rng.randrange(40, 255))
        s = self.board.begin_stroke(color=color, width=rng.randrange(1, 25))
        out(event="pen", down=True)  # the soak kills peers while the pen is down
        x, y = rng.randrange(w), rng.randrange(h)
        dx, dy = rng.uniform(-6, 6), rng.uniform(-6, 6)
        for _ in range(rng.randrange(3, 60)):
            dx = max(-12.0, min(12.0, dx + rng.uniform(-2, 2)))
            dy = max(-12.0, min(12.0, dy + rng.uniform(-2, 2)))
            x, y = min(max(x + dx, -10), w + 10), min(max(y + dy, -10), h + 10)
            s.add((x, y))
            self.counts["points"] += 1
            await asyncio.sleep(0.008)
            if not self.running:
                break
        s.end()
        out(event="pen", down=False)
        self.counts["strokes"] += 1


def memory_breakdown(e, edge=None) -> dict:
    """Sizes of what an engine holds (private attributes: a diagnostic, may drift), and
    what the edge's heap trimmer gave back (heap.py)."""
    b = e.board
    trimmed = {}
    if edge is not None:
        h = edge.heap
        trimmed = {"heap_trims": h.trims, "heap_released_mb": round(h.released / 2**20, 1),
                   "heap_trim_ms": round(h.seconds * 1e3, 1)}
    return {
        "repair_cache_mb": round(e._cache_bytes / 2**20, 1),
        "repair_cache_datagrams": len(e._cache),
        "snapshots_kept": len(e._serve),
        "snapshots_kept_mb": round(sum(len(s.blob) for s in e._serve.values()) / 2**20, 1),
        "undo_log_entries": len(b._log),
        "undo_log_pixels": b.live_pixels,
        "undo_log_mb": round(sum((x.index.nbytes if x.index is not None else 0)
                                 + (x.rec.rgba.nbytes if hasattr(x.rec, "rgba") else 0)
                                 for x in b._log.values()) / 2**20, 1),
        "sources": len(e._sources),
        "missing": sum(len(s.missing) for s in e._sources.values()),
        "held_out_of_order": sum(len(s.held) for s in e._sources.values()),
        "holddowns": len(e._holddown),
        "peers": len(e._peers),
        "queued": len(e._repairs) + len(e._data) + len(e._bulk),
        **trimmed,
    }


async def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--group", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--iface", required=True)
    p.add_argument("--name", default="soak")
    p.add_argument("--size", default="640x480")
    p.add_argument("--data-dir", default=None)
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.split("x"))
    kw = {}
    autosave = False
    if a.data_dir and "data_dir" in inspect.signature(p2pboard.open_board).parameters:
        # A restarted peer loads its file (autosave) and merges it with the group's board.
        kw["data_dir"] = a.data_dir
        kw["autosave"] = True
        autosave = True
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    scribbler: Scribbler | None = None
    task: asyncio.Task | None = None
    async with p2pboard.open_board(group=a.group, port=a.port, iface=a.iface, name=a.name,
                                   size=(w, h), **kw) as board:
        gcpause.manage(board)  # as the app does once its board is open
        out(event="ready", id=board.id, pid=os.getpid(), autosave=autosave,
            digest=board.digest(), autosave_problem=getattr(board, "autosave_problem", None))
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                break
            cmd, args = line[0], line[1:]
            if cmd == "scribble":
                scribbler = Scribbler(board, int(args[0]))
                task = asyncio.create_task(scribbler.run())
                out(event="scribbling")
            elif cmd == "stop":
                if scribbler is not None:
                    scribbler.running = False
                    await task
                out(event="stopped")
            elif cmd == "sync":
                try:
                    await board.wait_synced(timeout=float(args[0]))
                    ok, why = True, ""
                except TimeoutError as err:
                    ok, why = False, str(err)
                out(event="sync", synced=ok, why=why, digest=board.digest(),
                    peers=len(board.peers))
            elif cmd == "npy":
                np.save(args[0], np.array(board.pixels))
                out(event="npy", digest=board.digest())
            elif cmd == "mem":
                out(event="mem", mem=memory_breakdown(board.engine, board.edge))
            elif cmd == "stats":
                e = board.engine
                # Datagrams known to exist but not held (NACK-pending or awaiting a snapshot).
                behind = sum(max(0, src.highest - src.contiguous - len(src.held))
                             for src in e._sources.values())
                out(event="stats", tag=args[0] if args else None,
                    stats={**board.stats, "behind": behind},
                    drawn=scribbler.counts if scribbler else {},
                    skips=[list(k) for k in e.skips])
        if scribbler is not None:
            scribbler.running = False
            await task
    out(event="bye")


if __name__ == "__main__":
    asyncio.run(main())
