"""The command line: ``p2pboard [options]``. Exit status 2 for a bad flag, 1 for a failure."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from . import __version__, gcpause
from .config import DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_RATE, Config, ConfigError, parse_size
from .events import (JoinComplete, OtherBoard, PeerJoined, PeerLeft, SizeMismatch,
                     Unrecoverable, VersionMismatch)

log = logging.getLogger("p2pboard")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2pboard",
        description="A whiteboard shared by everyone on the local network: no server, no "
                    "account. Peers on the same group and port find each other by multicast.")
    p.add_argument("--group", default=DEFAULT_GROUP, metavar="ADDR",
                   help=f"IPv4 multicast group of the board (default {DEFAULT_GROUP})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                   help=f"UDP port of the board (default {DEFAULT_PORT})")
    p.add_argument("--iface", default=None, metavar="ADDR",
                   help="IPv4 address of the network interface to use (default: the system's "
                        "default interface for multicast)")
    p.add_argument("--ttl", type=int, default=1, metavar="N",
                   help="multicast TTL; 1 (the default) keeps the board on this network")
    p.add_argument("--name", default=None, help="your name as the others see it "
                   "(default user@host)")
    p.add_argument("--size", default="1920x1080", metavar="WxH",
                   help="canvas size; every peer of a board must use the same (default 1920x1080)")
    p.add_argument("--rate", type=int, default=DEFAULT_RATE, metavar="BYTES_PER_S",
                   help=f"most bytes per second to send; pacing starts at 8 MB/s and "
                        f"follows the network up to this (default {DEFAULT_RATE})")
    p.add_argument("--headless", action="store_true",
                   help="run a full peer without a window until interrupted")
    p.add_argument("--save", default=None, metavar="FILE.png",
                   help="write the board to this PNG file when stopping")
    p.add_argument("--no-autosave", action="store_true",
                   help="do not keep the board in a file (by default it is saved every "
                        "second and on exit, and restored at the next start)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="folder for the saved boards (default: the user's data folder, "
                        "e.g. ~/.local/share/p2pboard)")
    p.add_argument("--secret-file", default=None, metavar="FILE",
                   help="passphrase board: read the passphrase from FILE (or set "
                        "P2PBOARD_SECRET); every datagram is then encrypted and "
                        "authenticated, and peers without it can neither read nor draw")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("--version", action="version", version=f"p2pboard {__version__}")
    return p


def parse_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    try:
        size = parse_size(args.size)
        kw = dict(group=args.group, port=args.port, iface=args.iface, ttl=args.ttl,
                  size=size, rate=args.rate)
        if args.name is not None:
            kw["name"] = args.name
        config = Config(**kw)
        from .seal import SecretError, derive_key, load_secret

        try:
            secret = load_secret(args.secret_file, os.environ)
        except SecretError as err:
            parser.error(str(err))
        if secret is not None:
            for warning in secret.warnings:
                print(f"p2pboard: warning: {warning}", file=sys.stderr)
            try:
                key = derive_key(secret.value, config.group, config.port)
            except RuntimeError as err:  # the cryptography package is missing
                print(f"p2pboard: {err}", file=sys.stderr)
                raise SystemExit(1) from None
            config = Config(**{**kw, "key": key})
    except ConfigError as err:
        parser.error(str(err))
    if args.data_dir is not None:
        d = Path(args.data_dir)
        if d.exists() and not d.is_dir():
            parser.error(f"--data-dir {args.data_dir}: not a folder")
        if args.no_autosave:
            parser.error("--data-dir and --no-autosave contradict each other")
    if args.save is not None:
        path = Path(args.save)
        if path.suffix.lower() != ".png":
            parser.error(f"--save {args.save}: the file name must end in .png")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            parser.error(f"--save {args.save}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            parser.error(f"--save {args.save}: folder {parent} is not writable")
    return config


def other_board_text(ev: OtherBoard) -> str:
    """What to tell the user when another board shares our address."""
    if ev.kind == "protected":
        return (f"a passphrase-protected board (key {ev.key_id}) uses this address too; its "
                "datagrams are ignored here (give its passphrase to join it)")
    if ev.kind == "other-key":
        return (f"a peer uses another passphrase (key {ev.key_id}) on this address; its "
                "datagrams are ignored (is the passphrase the same everywhere?)")
    return "an open board (no passphrase) uses this address too; its datagrams are ignored"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = parse_config(args, parser)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO
                        if args.verbose or args.headless else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    autosave = dict(autosave=not args.no_autosave, data_dir=args.data_dir)
    if args.headless:
        try:
            return asyncio.run(run_headless(config, args.save, **autosave))
        except KeyboardInterrupt:
            return 0
    # Kivy's log level comes from its config, read on import (KCFG_ overrides it).
    os.environ.setdefault("KCFG_KIVY_LOG_LEVEL", "debug" if args.verbose >= 2 else "critical")
    try:
        from .ui import app
    except ImportError as err:
        print(f"p2pboard: the window needs Kivy ({err}). Install it with "
              "pip install 'p2pboard[ui]' (scripts/run.sh does), or run a peer without a "
              "window with --headless.", file=sys.stderr)
        return 1
    if args.verbose < 2:  # Kivy set its own level on import
        logging.getLogger("kivy").setLevel(logging.CRITICAL + 1)
    return app.run(config, save=args.save, **autosave)


async def open_with_autosave(config: Config, autosave: bool, data_dir: str | None):
    """start_board, falling back to no autosave (with a message) if the folder is unusable;
    then the collector's full collections move to quiet moments (gcpause.py)."""
    from .api import start_board
    from .autosave import DataDirError, SlotsTaken

    board = None
    if autosave:
        try:
            board = await start_board(config=config, wait_join=False, autosave=True,
                                      data_dir=data_dir)
        except (DataDirError, SlotsTaken) as err:
            print(f"p2pboard: autosave off: {err}", file=sys.stderr)
    if board is None:
        board = await start_board(config=config, wait_join=False)
    gcpause.manage(board)
    return board


async def run_headless(config: Config, save: str | None, autosave: bool = True,
                       data_dir: str | None = None) -> int:
    from .net.sockets import MulticastSetupError

    try:
        board = await open_with_autosave(config, autosave, data_dir)
    except (MulticastSetupError, OSError) as err:
        print(f"p2pboard: cannot join {config.group}:{config.port}: {err}", file=sys.stderr)
        return 1
    if board.autosave_path is not None:
        log.info("autosave: %s%s", board.autosave_path,
                 " (restored)" if board.restored_from else "")

    def on_event(ev) -> None:
        if isinstance(ev, PeerJoined):
            log.info("peer %s (%08x) joined", ev.name, ev.peer)
        elif isinstance(ev, PeerLeft):
            log.info("peer %08x left (%s)", ev.peer, ev.reason)
        elif isinstance(ev, JoinComplete):
            if ev.source:
                log.info("got the board from %08x: %d bytes in %.2f s", ev.source, ev.nbytes,
                         ev.seconds)
            else:
                log.info("nobody else is here yet: starting a new board")
        elif isinstance(ev, SizeMismatch):
            log.error("peer %s (%08x) uses a %dx%d canvas, we use %dx%d: its drawing is "
                      "ignored; start both with the same --size", ev.name or "?", ev.peer,
                      *ev.size, *config.size)
        elif isinstance(ev, VersionMismatch):
            log.error("peer %08x speaks protocol version %d: its datagrams are ignored",
                      ev.peer, ev.version)
        elif isinstance(ev, OtherBoard):
            log.warning("%s", other_board_text(ev))
        elif isinstance(ev, Unrecoverable):
            log.warning("%d datagrams of %08x could not be repaired: asking for a snapshot",
                        ev.count, ev.source)

    board.on_event(on_event)
    log.info("headless peer %s (%08x) on %s:%d, canvas %dx%d, %s; stop with Ctrl+C",
             config.name, board.id, config.group, config.port, *config.size,
             f"passphrase board (key {board.key_id})" if board.key_id else "open board")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    await stop.wait()
    await board.aclose()
    if save:
        board.save_png(save)
        log.info("saved the board to %s", save)
    s = board.stats
    log.info("sent %d datagrams, received %d; gaps %d, NACKs %d, repairs %d, rejected %d",
             s["datagrams_sent"], s["datagrams_received"], s["gaps"], s["nacks_sent"],
             s["repairs_sent"], sum(v for k, v in s.items() if k.startswith("rejected_")))
    return 0
