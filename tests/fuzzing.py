"""Fuzzing support shared by tests/test_fuzz.py and scripts/fuzz.py.

* :func:`corpus` runs a few real :class:`~p2pboard.session.Engine` peers on a tiny
  zero-latency network (no sockets, virtual time) and records every datagram they send:
  DATA with every record kind and pixel encoding, repairs, HEARTBEAT, SESSION, NACK,
  GOODBYE, SNAP_REQ, SNAP_META, SNAP_CHUNK, SNAP_NACK, CURSOR and PARITY. These are the seeds that
  fuzzers mutate.
* :func:`base` gives engines to feed: ``member``, a synced peer that saw all of it, and
  ``joiner``, a peer that has just asked for the board (so recorded snapshot offers and
  chunks reach its fetch code).
* :func:`receive` is the one place that calls ``Engine.receive_datagram`` (its signature
  is growing a sender address), :func:`valid` says whether a datagram may change a board,
  and :func:`check_bounds` checks every table keyed by what the network sends.
* The targets (:func:`target_decoder`, :func:`target_engine`, :func:`target_store`) take
  bytes and raise ``AssertionError`` (or anything unexpected) on a bug.
"""

from __future__ import annotations

import copy
import functools
import inspect
import random
import struct
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from p2pboard import store, wire
from p2pboard.config import Config
from p2pboard.session import MAX_REPAIR_QUEUE, PARITY_READS_KEPT, Engine

W, H = 96, 64
SIZE = (W, H)
A, B, C, F = 0xA1A1A1A1, 0xB2B2B2B2, 0xC3C3C3C3, 0xF0F0F0F0
ADDR = {A: ("198.18.0.1", 47777), B: ("198.18.0.2", 47777), C: ("198.18.0.3", 47777),
        F: ("198.18.0.6", 47777)}


#: datagrams read ahead into a receive queue (Engine.note_read) in :func:`feed`
READ_AHEAD = 4


@functools.cache
def _takes_addr() -> bool:
    return "addr" in inspect.signature(Engine.receive_datagram).parameters


def receive(engine: Engine, data: bytes, now: float,
            addr: tuple[str, int] = ("198.18.0.9", 47777), noted: bool = False) -> None:
    """``engine.receive_datagram`` in whichever form the engine has: ``(data, addr, now)``
    once the sender's address is passed in, ``(data, now)`` before."""
    if _takes_addr():
        engine.receive_datagram(data, addr, now, noted)
    else:
        engine.receive_datagram(data, now)


def new_engine(peer_id: int, name: str, seed: int, now: float = 0.0) -> Engine:
    cfg = Config(name=name, size=SIZE, rate=50_000_000)
    return Engine(cfg, peer_id=peer_id, rng=random.Random(seed), now=now)


@dataclass
class MiniNet:
    """Zero-latency delivery to every other engine, with an optional drop filter."""

    now: float = 0.0
    engines: dict[int, Engine] = field(default_factory=dict)
    log: list[bytes] = field(default_factory=list)
    drop: object = None  # fn(sender id, receiver id, datagram) -> bool

    def add(self, peer_id: int, name: str, seed: int) -> Engine:
        e = new_engine(peer_id, name, seed, self.now)
        self.engines[peer_id] = e
        return e

    def pump(self) -> None:
        q: deque[tuple[int, bytes]] = deque()
        while True:
            for pid, e in list(self.engines.items()):
                for d in e.datagrams_to_send(self.now):
                    q.append((pid, d))
            if not q:
                return
            while q:
                pid, d = q.popleft()
                self.log.append(d)
                for rid, r in self.engines.items():
                    if rid == pid or (self.drop is not None and self.drop(pid, rid, d)):
                        continue
                    receive(r, d, self.now, ADDR[pid])

    def run(self, dt: float, step: float = 0.001) -> None:
        end = self.now + dt
        self.pump()
        while self.now < end:
            self.now = round(self.now + step, 6)
            for e in self.engines.values():
                t = e.get_timer()
                if t is not None and t <= self.now:
                    e.handle_timer(self.now)
            self.pump()


def _drawing(net: MiniNet, e: Engine, rng: random.Random) -> None:
    now = lambda: net.now  # noqa: E731
    e.stroke([(5, 5), (40, 30), (90, 10)], 4, (200, 10, 10, 255), now())
    net.run(0.004)
    op = e.begin(now())
    last = (10, 50)
    for _ in range(12):  # a live stroke, one segment per pointer move (delta encoding)
        nxt = (min(W - 1, last[0] + rng.randrange(0, 8)), max(0, last[1] - rng.randrange(0, 5)))
        e.extend_stroke(op, [last, nxt], 6, (10, 10, 200, 255), now())
        last = nxt
        net.run(0.003)
    e.stroke([(-300, -300), (500, 400)], 3, (0, 0, 0, 255), now())  # absolute encoding
    e.paint(np.array([3, 500, 4000, W * H - 1]), (1, 2, 3, 255), now())  # sparse points
    e.paint(np.arange(0, W * 30, 2), (9, 9, 9, 128), now())  # a bitmap
    e.paint(np.arange(W * 30, W * 60), (30, 200, 30, 255), now())  # compressible bitmap
    net.run(0.004)
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (40, 40, 4),
                                                                    dtype=np.uint8)
    e.paste(noise, 50, 20, now())  # raw image bands, several datagrams
    grad = np.zeros((16, 32, 4), np.uint8)
    grad[..., 0] = np.arange(32) * 8
    grad[..., 3] = 255
    e.paste(grad, 2, 2, now())  # opaque: RGB, Sub filter + zlib
    grad[..., 3] = 128
    e.paste(grad, 40, 2, now())  # translucent: RGBA, Sub filter + zlib
    net.run(0.01)
    e.clear(now())
    e.undo(now())
    e.redo(now())
    e.undo(now())
    e.cursor(10, 20, False, now())
    e.cursor(11, 21, True, now())
    net.run(0.05)


@functools.cache
def _scenario():
    rng = random.Random(1234)
    net = MiniNet()
    a = net.add(A, "alice", 1)
    net.add(B, "bob", 2)
    net.add(F, "fuzz", 6)
    net.run(1.2)  # nobody answers the snapshot requests: all three are first peers
    _drawing(net, a, rng)
    # Losses: B misses a few of A's datagrams and NACKs them; A repairs.
    lost = {"n": 0}

    def drop_some(s, r, d):
        if s == A and r == B and d[3] == wire.MsgType.DATA and lost["n"] < 3:
            lost["n"] += 1
            return True
        return False

    net.drop = drop_some
    a.stroke([(0, 0), (95, 63)], 8, (5, 5, 5, 255), net.now)
    net.run(0.002)
    a.stroke([(0, 63), (95, 0)], 8, (6, 6, 6, 255), net.now)
    net.run(0.002)
    a.stroke([(50, 0), (50, 63)], 8, (7, 7, 7, 255), net.now)
    net.run(0.2)
    # Parity: B misses two datagrams of a whole block of A's; A answers with PARITY.
    count = {"n": 0}

    def drop_two(s, r, d):
        if s == A and r == B and d[3] == wire.MsgType.DATA and not d[4] & wire.FLAG_REPAIR:
            count["n"] += 1
            return count["n"] in (20, 22)
        return False

    net.drop = drop_two
    for seed in (5, 6):
        noise = np.random.default_rng(seed).integers(0, 256, (H, W, 4), dtype=np.uint8)
        a.paste(noise, 0, 0, net.now)
        net.run(0.05)
    net.run(0.2)
    # A late joiner; its first snapshot chunk is lost, so it sends a SNAP_NACK.
    net.drop = None
    c = new_engine(C, "carol", 3, net.now)
    joiner = copy.deepcopy(c)  # as it is before it hears anything
    joiner_at = net.now
    net.engines[C] = c
    first_chunk = {"n": 0}

    def drop_chunk(s, r, d):
        if r == C and d[3] == wire.MsgType.SNAP_CHUNK and first_chunk["n"] < 1:
            first_chunk["n"] += 1
            return True
        return False

    net.drop = drop_chunk
    net.run(1.0)
    net.drop = None
    engines = dict(net.engines)
    engines[B].goodbye(net.now)
    net.run(0.05)
    member = copy.deepcopy(engines[F])
    return tuple(net.log), member, net.now, joiner, joiner_at


def corpus() -> list[bytes]:
    """Every datagram of the recorded scenario, duplicates removed, in order."""
    seen, out = set(), []
    for d in _scenario()[0]:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def snapshot_blobs() -> list[bytes]:
    """Valid store.dump outputs: a blank board and the scenario's board."""
    _, member, _, _, _ = _scenario()
    blank = new_engine(0x1234, "blank", 9)
    return [store.dump(blank.board, {}),
            store.dump(member.board, {A: (member._sources[A].contiguous, 0)})]


BASES = ("member", "joiner")


def base(name: str) -> tuple[Engine, float]:
    """A fresh copy of one of the engines fuzzers feed (see the module docstring), with
    the virtual time it is at."""
    _, member, member_at, joiner, joiner_at = _scenario()
    if name == "member":
        return copy.deepcopy(member), member_at
    if name == "joiner":
        return copy.deepcopy(joiner), joiner_at
    raise ValueError(f"unknown base {name!r}")


# ---------------------------------------------------------------------------- checks


def valid(engine: Engine, data: bytes) -> bool:
    """Whether ``data`` is a DATA datagram this engine may apply (decodes completely)."""
    try:
        h = wire.decode_header(data)
        if (h.version != wire.VERSION or h.type != wire.MsgType.DATA or h.sender in (0, engine.id)
                or (h.width, h.height) != engine.size or h.seq == 0):
            return False
        wire.decode_records(memoryview(data)[wire.HEADER.size:], h.sender, *engine.size)
        return True
    except wire.DecodeError:
        return False


def check_bounds(e: Engine, fed: int) -> None:
    """Every table keyed by what the network sends stays within its cap. ``fed`` is how
    many datagrams went in (tables bounded by time may hold one entry per datagram)."""
    t = e.timers
    assert len(e._sources) <= t.max_sources, len(e._sources)
    assert len(e._peers) <= t.max_peers, len(e._peers)
    for s in e._sources.values():
        assert len(s.missing) <= t.receive_window, (s.id, len(s.missing))
        assert len(s.held) <= t.receive_window, (s.id, len(s.held))
        assert len(s.maxop) <= len(s.held) + 1, (s.id, len(s.maxop), len(s.held))
        assert s.contiguous <= max(s.highest, s.contiguous)
        assert len(s.parity_reads) <= PARITY_READS_KEPT, (s.id, len(s.parity_reads))
    assert e._parity_answers.keys() <= e._parity_in.keys()
    assert len(e._repairs) <= MAX_REPAIR_QUEUE
    assert e._cache_bytes <= t.repair_cache_bytes
    assert e._cache_bytes == sum(len(d) for d in e._cache.values())
    assert len(e._snap_answers) <= 64
    assert len(e._holder_repairs) <= len(e._cache)
    assert len(e._holddown) <= len(e._cache) + fed + 64, len(e._holddown)
    assert len(e.__dict__.get("_warned_keys", ())) <= 1024
    assert len(e._events) <= 16 * (fed + 64), len(e._events)
    f = e._fetch
    if f is not None and f.snap_id:
        assert len(f.chunks) <= -(-f.total // f.chunk_size)
        assert sum(len(c) for c in f.chunks.values()) <= f.total


def feed(engine: Engine, now: float, datagrams: list[bytes], step: float = 0.002) -> float:
    """Feed datagrams one by one (timers run in between); check after each that the board
    changed only for a valid DATA datagram (or a snapshot transfer in progress), and that
    every table stays bounded. As the edge does with a receive queue, each group of
    READ_AHEAD datagrams is shown to ``Engine.note_read`` first, which must not change the
    board either. Returns the virtual time at the end."""
    noted: list[bool] = []
    for i, d in enumerate(datagrams):
        if i % READ_AHEAD == 0:
            before = engine.board.digest()
            group = datagrams[i:i + READ_AHEAD]
            engine.backlog = len(group)
            noted = [engine.note_read(g, ("198.18.0.9", 47777), now, now) for g in group]
            assert engine.board.digest() == before, "note_read changed the board"
        engine.backlog = READ_AHEAD - 1 - i % READ_AHEAD
        before = engine.board.digest()
        fetching = engine._fetch is not None and engine._fetch.snap_id != 0
        receive(engine, d, now, noted=noted[i % READ_AHEAD])
        if not valid(engine, d) and not (fetching and d[3:4] == bytes([wire.MsgType.SNAP_CHUNK])):
            assert engine.board.digest() == before, f"datagram {i} changed the board: {d!r}"
        now = round(now + step, 6)
        if (engine.get_timer() or now) <= now:
            before = engine.board.digest()
            engine.handle_timer(now)
            if not fetching and engine._fetch is None:
                assert engine.board.digest() == before, "a timer changed the board"
        engine.datagrams_to_send(now)
        while engine.next_event() is not None:
            pass
        check_bounds(engine, i + 1)
    # Let every timer run out: a NACK retry, expiry, snapshot give-up.
    engine.backlog = 0
    for _ in range(8):
        now = round(now + 0.6, 6)
        engine.handle_timer(now)
        engine.datagrams_to_send(now)
    while engine.next_event() is not None:
        pass
    check_bounds(engine, len(datagrams))
    stale = [k for k, until in engine._holddown.items() if until <= now - 1.0]
    assert not stale, f"{len(stale)} hold-downs never expired"
    return now


# ---------------------------------------------------------------------------- targets

_DECODERS = (
    lambda b: wire.decode_session(b),
    lambda b: wire.decode_nack(b),
    lambda b: wire.decode_snap_req(b),
    lambda b: wire.decode_snap_meta(b),
    lambda b: wire.decode_snap_chunk(b),
    lambda b: wire.decode_snap_nack(b),
    lambda b: wire.decode_cursor(b, W, H),
    lambda b: wire.decode_records(b, A, W, H),
)


def target_decoder(data: bytes) -> None:
    """Header, then every body decoder on the body: only DecodeError may come out."""
    try:
        wire.decode_header(data)
    except wire.DecodeError:
        pass
    body = data[wire.HEADER.size:] if len(data) > wire.HEADER.size else data
    for dec in _DECODERS:
        try:
            dec(body)
        except wire.DecodeError:
            pass


def split_datagrams(data: bytes, limit: int = 24) -> list[bytes]:
    """Bytes as several datagrams: u16 length prefixes (short inputs are one datagram)."""
    out = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < limit:
        n = struct.unpack_from("!H", data, pos)[0] % (wire.MAX_DATAGRAM + 64)
        pos += 2
        out.append(data[pos:pos + n])
        pos += n
    if not out:
        out.append(data)
    return out


def join_datagrams(datagrams: list[bytes]) -> bytes:
    return b"".join(struct.pack("!H", len(d)) + d for d in datagrams)


def target_engine(data: bytes) -> None:
    """First byte picks the base engine; the rest are length-prefixed datagrams."""
    if not data:
        return
    engine, now = base(BASES[data[0] & 1])
    feed(engine, now, split_datagrams(data[1:]))


def target_store(data: bytes) -> None:
    """store.load on bytes: StoreError or a board that dumps and loads back the same."""
    for blob in (data, _envelope(data)):
        try:
            board, sources = store.load(blob, W, H)
        except store.StoreError:
            continue
        again, sources2 = store.load(store.dump(board, sources), W, H)
        assert again.digest() == board.digest() and sources2 == sources


def _envelope(raw: bytes) -> bytes:
    """Raw state bytes in the outer envelope, so fuzzing reaches the inner parser."""
    return struct.pack("!4sQ", store.MAGIC, len(raw)) + zlib.compress(raw, 1)


TARGETS = {"decoder": target_decoder, "engine": target_engine, "store": target_store}


def seeds(target: str) -> list[bytes]:
    """A seed corpus for a target."""
    dgrams = corpus()
    if target == "decoder":
        return dgrams
    if target == "engine":
        out = []
        for base in (0, 1):
            for i in range(0, len(dgrams), 6):
                out.append(bytes([base]) + join_datagrams(dgrams[i:i + 6]))
        return out
    if target == "store":
        out = []
        for blob in snapshot_blobs():
            out.append(blob)
            out.append(zlib.decompress(blob[12:]))  # the raw state, for _envelope
        return out
    raise ValueError(f"unknown target {target!r}")


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """One random mutation of the kinds fuzzers use: bit flips, interesting values,
    truncation, insertion, deletion, splicing with another seed."""
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(8)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2 and len(b) >= 4:
            i = rng.randrange(len(b) - 3)
            b[i:i + 4] = struct.pack("!I", rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF,
                                                       rng.randrange(1 << 32)]))
        elif op == 3 and len(b) >= 2:
            i = rng.randrange(len(b) - 1)
            b[i:i + 2] = struct.pack("!H", rng.choice([0, 1, 0x7FFF, 0xFFFF,
                                                       rng.randrange(1 << 16)]))
        elif op == 4 and b:
            del b[rng.randrange(len(b)):]
        elif op == 5:
            i = rng.randrange(len(b) + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 6 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randrange(1, 16)]
        elif op == 7 and pool:
            other = rng.choice(pool)
            i = rng.randrange(len(b) + 1)
            j = rng.randrange(len(other) + 1)
            b = b[:i] + other[j:]
    return bytes(b)
