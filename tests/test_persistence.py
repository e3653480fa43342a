"""Restart and merge: a peer's saved board comes back and merges with the group, in the
simulator (engine.export_state / import_state, as autosave uses them) and for real (a
headless peer killed with SIGKILL and started again on its data folder)."""

from __future__ import annotations

import random

import numpy as np

from p2pboard import store

from .sim import Faults, SimNet
from .test_sim import H, W, scribble, start


def save(peer, net) -> bytes:
    board, sources = peer.engine.export_state(net.now)
    return store.dump(board, sources)


def restore(net: SimNet, blob: bytes, name: str):
    p = net.add_peer(name)
    board, sources = store.load(blob, W, H)
    p.engine.import_state(board, sources, net.now)
    return p


def authors(peer) -> set[int]:
    s = peer.engine.board.stamps
    return set(np.unique(s[s != 0] & 0xFFFFFFFF).tolist())


def test_what_a_peer_drew_alone_and_what_others_drew_meanwhile_end_up_everywhere():
    net = SimNet(51, Faults(loss=0.05))
    (a,) = start(net, 1)
    rng = random.Random(1)
    for _ in range(15):  # a draws alone, its file is saved, then it crashes
        scribble(net, a, rng)
        net.run_for(0.01)
    blob = save(a, net)
    alone_id = a.engine.id
    net.crash(a)
    b, c = net.add_peer("b"), net.add_peer("c")  # others draw meanwhile, never saw a's work
    net.run_for(1.0)
    for _ in range(15):
        scribble(net, rng.choice([b, c]), rng)
        net.run_for(0.01)
    net.settle()
    assert alone_id not in authors(b)
    a2 = restore(net, blob, "a-again")  # a starts again from its file
    scribble(net, a2, rng)
    net.settle(limit=60)
    digests = {p.engine.board.digest() for p in net.live()}
    assert len(digests) == 1
    for p in net.live():
        assert {alone_id, b.engine.id, c.engine.id, a2.engine.id} <= authors(p)


def test_everyone_left_and_one_comes_back_with_the_board():
    net = SimNet(52)
    a, b = start(net, 2)
    rng = random.Random(2)
    for _ in range(10):
        scribble(net, a, rng)
        scribble(net, b, rng)
    net.settle()
    blob, digest = save(b, net), b.engine.board.digest()
    net.leave(a)
    net.leave(b)
    b2 = restore(net, blob, "b-again")
    net.run_for(2.0)
    assert not b2.engine.joining and b2.engine.board.digest() == digest
    # and a newcomer gets it from b2
    late = net.add_peer("late")
    net.settle()
    assert late.engine.board.digest() == digest


def test_a_restored_peer_draws_on_top_of_what_it_restored():
    net = SimNet(53)
    (a,) = start(net, 1)
    net.act(a, lambda e, now: e.paint(np.arange(W * H, dtype=np.int64), (1, 2, 3, 255), now))
    net.run_for(0.1)
    blob = save(a, net)
    net.crash(a)
    a2 = restore(net, blob, "a2")
    net.run_for(1.0)
    net.act(a2, lambda e, now: e.paint(np.arange(10, dtype=np.int64), (9, 9, 9, 255), now))
    assert tuple(a2.engine.board.pixels[0, 0]) == (9, 9, 9, 255)
