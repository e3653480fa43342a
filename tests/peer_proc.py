"""A scripted peer process for the real-socket tests: ``python -m tests.peer_proc [options]``.

It opens a board with the public API and obeys one command per line on stdin, answering
one JSON object per line on stdout:

    draw SEED N     draw N seeded random strokes at mouse rate (points every 8 ms)
    stroke X0 Y0 X1 Y1 R G B W   one straight stroke
    cursor X Y      show our pointer there
    png PATH        save the board as PNG
    sync TIMEOUT    wait_synced; answers synced, digest, peers
    digest          answers digest
    stats           answers the stats counters
    quit            leave the board (goodbye) and exit

Run only inside a private network namespace (the tests check that first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys

import p2pboard


def out(**kw) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


async def draw(board, seed: int, n: int) -> None:
    rng = random.Random(seed)
    w, h = board.size
    for _ in range(n):
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256), 255)
        stroke = board.begin_stroke(color=color, width=rng.randrange(2, 21))
        x, y = rng.randrange(w), rng.randrange(h)
        for _ in range(rng.randrange(5, 30)):
            x = min(max(x + rng.randrange(-15, 16), 0), w - 1)
            y = min(max(y + rng.randrange(-15, 16), 0), h - 1)
            stroke.add((x, y))
            await asyncio.sleep(0.008)
        stroke.end()


async def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--group", default="239.255.80.80")
    p.add_argument("--port", type=int, default=47777)
    p.add_argument("--iface", default="127.0.0.1")
    p.add_argument("--name", default="peer")
    p.add_argument("--size", default="320x240")
    p.add_argument("--secret", default=None, help="passphrase (tests only: visible in ps)")
    p.add_argument("--data-dir", default=None, help="autosave into this folder")
    p.add_argument("--flood-rate", type=float, default=None,
                   help="datagrams/s from one sender before it counts as a flood")
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.split("x"))
    from p2pboard.session import Timers

    timers = Timers(flood_rate=a.flood_rate) if a.flood_rate else None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with p2pboard.open_board(group=a.group, port=a.port, iface=a.iface, name=a.name,
                                   size=(w, h), secret=a.secret,
                                   autosave=a.data_dir is not None,
                                   data_dir=a.data_dir, timers=timers) as board:
        out(event="ready", id=board.id, restored=board.restored_from is not None)
        while True:
            line = (await reader.readline()).decode().split()
            if not line or line[0] == "quit":
                break
            cmd, args = line[0], line[1:]
            if cmd == "draw":
                await draw(board, int(args[0]), int(args[1]))
                out(event="drawn")
            elif cmd == "sync":
                try:
                    await board.wait_synced(timeout=float(args[0]))
                    ok = True
                except TimeoutError as err:
                    ok = False
                    out(event="log", text=str(err))
                out(event="sync", synced=ok, digest=board.digest(), peers=len(board.peers))
            elif cmd == "stroke":
                x0, y0, x1, y1, r, g, b, width = (int(v) for v in args)
                board.stroke([(x0, y0), (x1, y1)], color=(r, g, b, 255), width=width)
                out(event="stroked")
            elif cmd == "cursor":
                board.cursor(float(args[0]), float(args[1]))
                out(event="cursor")
            elif cmd == "png":
                board.save_png(args[0])
                out(event="png", digest=board.digest())
            elif cmd == "digest":
                out(event="digest", digest=board.digest())
            elif cmd == "stats":
                out(event="stats", stats=board.stats)
    out(event="bye")


if __name__ == "__main__":
    asyncio.run(main())
