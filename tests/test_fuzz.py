"""Hostile bytes into the decoder, the engine and the snapshot store.

Random and mutated datagrams (mutated from real ones a real Engine sent: every message type
and record kind, see tests/fuzzing.py) must never make the engine raise, never change the
board unless the datagram is a valid DATA datagram, and never grow a table beyond its cap.
The decoders may raise only ``wire.DecodeError`` and ``store.load`` only ``StoreError``.
Longer coverage-guided runs: ``scripts/fuzz.py`` (atheris).

Under CI Hypothesis uses its derandomised ``ci`` profile by itself.
"""

from __future__ import annotations

import importlib.util
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pboard import wire

from . import fuzzing as fz

ROOT = Path(__file__).resolve().parent.parent


def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CORPUS = fz.corpus()


def _rewrite_header(d: bytes, field: int, value: int) -> bytes:
    """The same datagram with one header field replaced: reaches every handler with bodies
    meant for another (type), repair flags, foreign senders, far sequence numbers."""
    b = bytearray(d.ljust(wire.HEADER.size, b"\0"))
    if field == 0:
        b[3] = value & 0xFF  # type
    elif field == 1:
        b[4] = value & 0xFF  # flags
    elif field == 2:
        struct.pack_into("!I", b, 5, value & 0xFFFFFFFF)  # sender
    elif field == 3:
        struct.pack_into("!I", b, 9, value & 0xFFFFFFFF)  # seq
    else:
        b[2] = value & 0xFF  # version
    return bytes(b)


seeds = st.sampled_from(CORPUS)
mutated = st.builds(lambda d, s: fz.mutate(d, random.Random(s), CORPUS), seeds,
                    st.integers(0, 2**32))
rewritten = st.builds(_rewrite_header, seeds, st.integers(0, 4),
                      st.one_of(st.integers(0, 12), st.integers(0, 2**32 - 1),
                                st.sampled_from([fz.A, fz.B, fz.C, fz.F, 0])))
datagrams = st.one_of(seeds, mutated, rewritten, st.binary(max_size=1300))


def test_the_seed_corpus_has_every_message_type():
    types = {d[3] for d in CORPUS}
    assert types == {int(t) for t in wire.MsgType}, types
    assert any(d[3] == wire.MsgType.DATA and d[4] & wire.FLAG_REPAIR for d in CORPUS)
    kinds = {r for d in CORPUS if d[3] == wire.MsgType.DATA
             for r in (type(x).__name__ for x in wire.decode_records(d[17:], 1, fz.W, fz.H))}
    assert kinds == {"Paint", "Image", "Clear", "Toggle"}


# ---------------------------------------------------------------------------- decoders


@fast(300)
@given(st.one_of(st.binary(max_size=1300), mutated, rewritten))
def test_decoders_raise_only_decode_error(data):
    fz.target_decoder(data)


@fast(60)
@given(st.sampled_from(fz.seeds("store")), st.integers(0, 2**32))
def test_store_load_raises_only_store_error(blob, seed):
    data = fz.mutate(blob, random.Random(seed), [])
    note(f"data={data!r}")
    fz.target_store(data)


@fast(100)
@given(st.binary(max_size=2000))
def test_store_load_on_random_bytes(data):
    fz.target_store(data)


# ---------------------------------------------------------------------------- engine


@fast(400)
@given(st.sampled_from(["member", "joiner"]), st.lists(datagrams, min_size=1, max_size=8))
def test_engine_survives_hostile_datagrams(base, batch):
    note(f"base={base} batch={batch!r}")
    engine, now = fz.base(base)
    fz.feed(engine, now, batch)


@fast(20)
@given(st.sampled_from(["member", "joiner"]), st.integers(0, 2**32))
def test_engine_replays_the_corpus_with_mutations_mixed_in(base, seed):
    """The whole conversation in order, every third datagram mutated: the joiner gets its
    snapshot offer and chunks, so mutated chunks reach store.load through the engine."""
    rng = random.Random(seed)
    batch = [fz.mutate(d, rng, CORPUS) if rng.random() < 0.3 else d for d in CORPUS]
    engine, now = fz.base(base)
    fz.feed(engine, now, batch, step=0.0005)


def test_the_joiner_base_really_fetches_the_recorded_snapshot():
    engine, now = fz.base("joiner")
    fz.feed(engine, now, CORPUS, step=0.0005)
    assert engine.stats.snapshots_received == 1 and not engine.joining
    member, _ = fz.base("member")
    assert engine.board.digest() == member.board.digest()


class EngineUnderAttack(RuleBasedStateMachine):
    """A synced peer receives real, mutated and random datagrams and draws itself, with
    time passing; after every step its tables are bounded. At the end, the real
    conversation replayed once more still gives the right board."""

    def __init__(self) -> None:
        super().__init__()
        self.engine, self.now = fz.base("member")
        self.fed = 0
        self.reference = self.engine.board.digest()

    def _feed(self, data: bytes) -> None:
        self.fed += 1
        before = self.engine.board.digest()
        fz.receive(self.engine, data, self.now)
        if not fz.valid(self.engine, data):
            assert self.engine.board.digest() == before
        self.engine.datagrams_to_send(self.now)

    @rule(data=seeds)
    def real(self, data):
        self._feed(data)

    @rule(data=st.one_of(mutated, rewritten))
    def hostile(self, data):
        self._feed(data)

    @rule(data=st.binary(max_size=1300))
    def noise(self, data):
        self._feed(data)

    @rule(dt=st.sampled_from([0.0005, 0.003, 0.05, 0.6, 7.0]))
    def time_passes(self, dt):
        self.now = round(self.now + dt, 6)
        self.engine.handle_timer(self.now)
        self.engine.datagrams_to_send(self.now)
        while self.engine.next_event() is not None:
            pass

    @rule(x=st.integers(-50, 150), y=st.integers(-50, 100), w=st.integers(1, 30))
    def draw(self, x, y, w):
        self.engine.stroke([(x, y), (x + 7, y + 3)], w, (1, 2, 3, 255), self.now)
        self.engine.datagrams_to_send(self.now)

    @invariant()
    def bounded(self):
        fz.check_bounds(self.engine, self.fed)


TestEngineUnderAttack = pytest.mark.filterwarnings("ignore:Generating overly large repr")(
    EngineUnderAttack.TestCase)
TestEngineUnderAttack.settings = settings(max_examples=60, stateful_step_count=30,
                                          deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- findings


# Found by atheris: a SNAP_META with 1-byte chunks once made the joiner list 268 million
# chunk indices every 20 ms. Offers must now use chunks of at least MIN_SNAP_CHUNK bytes,
# and missing chunks are found with a bounded scan.
def test_a_hostile_snapshot_offer_cannot_make_the_joiner_list_millions_of_chunks(monkeypatch):
    engine, now = fz.base("joiner")
    meta = wire.encode_snap_meta(fz.A, 0, fz.SIZE, wire.SnapMeta(
        fz.C, engine._fetch.req_id, 77, 1 << 19, 1))
    fz.receive(engine, meta, now)
    longest = []
    real = wire.ranges_of
    monkeypatch.setattr(wire, "ranges_of", lambda seqs: (longest.append(len(seqs)), real(seqs))[1])
    engine.handle_timer(now + 0.05)
    # A real snapshot has at most MAX_SNAPSHOT / SNAP_CHUNK_SIZE chunks (about 230 000).
    assert max(longest, default=0) <= wire.MAX_SNAPSHOT // wire.SNAP_CHUNK_SIZE + 1, longest


# Found by atheris: a STROKE record far off the canvas once cost tens of seconds, as every
# 32-pixel strip of its segments was walked; now only strips near the canvas are.
def test_a_far_off_stroke_costs_no_more_than_the_canvas(monkeypatch):
    from p2pboard import raster

    turns = []
    real = raster._strip_range

    def counting(*args):
        walked = real(*args)
        turns.append(len(walked))
        return walked

    monkeypatch.setattr(raster, "_strip_range", counting)
    pts = [(-32768, 32767) if i % 2 else (32767, -32768) for i in range(8)]
    rec = wire.STROKE_REC.pack(wire.REC_STROKE, 1, 1, 0xFF0000FF, 0, wire.STROKE_ABS,
                               len(pts)) + b"".join(struct.pack("!hh", *p) for p in pts)
    with pytest.raises(wire.DecodeError):
        wire.decode_records(rec, fz.A, fz.W, fz.H)
    # Clipped to the canvas first, a segment needs at most this many strips.
    per_segment = (max(fz.W, fz.H) + 2 * raster.MAX_WIDTH) // raster.STRIP + 2
    assert sum(turns) <= 2 * (len(pts) - 1) * per_segment, sum(turns)


# ---------------------------------------------------------------------------- scripts/fuzz.py


@pytest.mark.parametrize("target", sorted(fz.TARGETS))
def test_fuzz_targets_accept_their_seed_corpus(target):
    for s in fz.seeds(target):
        fz.TARGETS[target](s)


@pytest.mark.parametrize("target", sorted(fz.TARGETS))
def test_fuzz_script_runs(target, tmp_path):
    """scripts/fuzz.py for two seconds per target (atheris if installed, else its own
    random mutation loop)."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz.py"), "--target", target,
                        "--seconds", "2", "--corpus", str(tmp_path / "corpus")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert any((tmp_path / "corpus").iterdir())


def _fuzz_script():
    spec = importlib.util.spec_from_file_location("fuzz_script", ROOT / "scripts" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("codes, parts, status", [((0, 0, 0), 3, 0), ((0, 3), 2, 3)])
def test_a_long_coverage_guided_run_is_a_chain_of_processes(monkeypatch, codes, parts, status):
    """Past --chunk-seconds, fuzz.py runs one process after another over the same corpus,
    each given what is left up to the chunk, and stops at the first that fails, with its
    status (atheris' instrumentation grows a process without end: see the script)."""
    fuzz = _fuzz_script()
    clock = [0.0]
    calls = []

    def call(args):
        calls.append(args)
        clock[0] += float(args[args.index("--seconds") + 1]) + 0.5  # and a start-up
        return codes[len(calls) - 1]

    monkeypatch.setattr(fuzz, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(fuzz, "subprocess", SimpleNamespace(call=call))
    assert fuzz.run_chunks("engine", 700, 300, Path("corp"), ["-dict=x"]) == status
    assert len(calls) == parts
    seconds = [float(c[c.index("--seconds") + 1]) for c in calls]
    assert seconds == [300, 300, 99][:parts]
    for c in calls:
        # each one a single process: its chunk is all of its run
        assert c[c.index("--chunk-seconds") + 1] == c[c.index("--seconds") + 1]
        assert c[c.index("--corpus") + 1] == "corp" and c[-1] == "-dict=x"
