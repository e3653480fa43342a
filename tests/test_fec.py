"""Parity repairs (fec.py): any FEC_K of a block's symbols rebuild the rest, exactly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pboard import fec, wire

K = wire.FEC_K


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), lost=st.integers(1, K), start=st.integers(K, 250))
def test_any_k_symbols_rebuild_the_block(seed, lost, start):
    rng = random.Random(seed)
    bodies = [rng.randbytes(rng.randrange(1, wire.BODY_BUDGET + 1)) for _ in range(K)]
    gone = set(rng.sample(range(K), lost))
    # parity indices wrap inside FEC_K .. FEC_N - 1, as the engine hands them out
    idx = [K + (start - K + i) % (wire.FEC_N - K) for i in range(lost)]
    pars = dict(zip(idx, fec.parity(bodies, idx)))
    held = {i: b for i, b in enumerate(bodies) if i not in gone}
    assert fec.rebuild(held, pars) == {i: bodies[i] for i in gone}


def test_a_parity_symbol_is_as_long_as_the_longest_body_plus_its_length():
    bodies = [bytes([i]) * (10 + i) for i in range(K)]
    (p,) = fec.parity(bodies, [K])
    assert len(p) == 2 + 10 + K - 1


def test_too_few_symbols_or_symbols_that_cannot_belong_together_are_refused():
    rng = random.Random(3)
    bodies = [rng.randbytes(50) for _ in range(K)]
    p1, p2 = fec.parity(bodies, [K, K + 1])
    held = {i: bodies[i] for i in range(2, K)}
    with pytest.raises(ValueError):
        fec.rebuild({i: bodies[i] for i in range(3, K)}, {K: p1, K + 1: p2})
    with pytest.raises(wire.DecodeError):
        fec.rebuild(held, {K: p1, K + 1: p2[:-1]})  # lengths differ
    with pytest.raises(wire.DecodeError):
        fec.rebuild({**held, 2: bytes(60)}, {K: p1, K + 1: p2})  # a body longer than them
    with pytest.raises(ValueError):
        fec.parity(bodies[:-1], [K])
    with pytest.raises(ValueError):
        fec.parity(bodies, [3])


def test_garbage_parity_rebuilds_garbage_or_raises_decodeerror_never_anything_else():
    rng = random.Random(4)
    bodies = [rng.randbytes(rng.randrange(1, 300)) for _ in range(K)]
    n = fec.symbol_length(bodies)
    held = {i: bodies[i] for i in range(1, K)}
    for _ in range(200):
        try:
            out = fec.rebuild(held, {K + rng.randrange(200): rng.randbytes(n)})
        except wire.DecodeError:
            continue
        assert 0 < len(out[0]) <= n - 2


def test_a_symbol_that_says_a_body_longer_than_itself_raises():
    with pytest.raises(wire.DecodeError):
        fec.body_of(b"\x00\x09abc")
    with pytest.raises(wire.DecodeError):
        fec.body_of(b"\x00\x00abc")
    assert fec.body_of(fec.symbol(b"abc", 10)) == b"abc"
