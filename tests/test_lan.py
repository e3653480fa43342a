"""A simulated LAN: hosts on a bridge, each its own network stack, with real kernel loss
(nftables) on every host."""

from __future__ import annotations

import pytest

from .netns import Lan, require_lan
from .test_loopback import Peer, port_for


@pytest.fixture
def lan():
    require_lan()
    with Lan(4) as lan:
        yield lan


def test_fifteen_percent_kernel_loss_on_every_host(lan):
    port = port_for("lan-loss")
    for i in range(4):
        lan.loss(i, 15)
    peers = []
    try:
        for i in range(3):
            peers.append(Peer(f"h{i}", port, iface=lan.addr(i), prefix=lan.prefix(i)))
        for i, p in enumerate(peers):
            p.send(f"draw {10 + i} 10")
        for p in peers:
            p.expect("drawn", 120)
        late = Peer("late", port, iface=lan.addr(3), prefix=lan.prefix(3))
        peers.append(late)
        results = [p.sync(60) for p in peers]
        assert all(r["synced"] for r in results), results
        assert len({r["digest"] for r in results}) == 1, results
        stats = [p.stats() for p in peers]
        assert sum(s["gaps"] for s in stats) > 0, "the loss rule did not drop anything"
        assert sum(s["recovered"] for s in stats) > 0
        assert all(s["unrecoverable"] == 0 for s in stats)
    finally:
        for p in peers:
            p.quit()


def test_partition_then_heal_keeps_both_sides(lan):
    port = port_for("lan-partition")
    peers = []
    try:
        for i in range(4):
            peers.append(Peer(f"h{i}", port, iface=lan.addr(i), prefix=lan.prefix(i)))
        lan.partition([0, 1])
        for i, p in enumerate(peers):
            p.send(f"draw {20 + i} 4")
        for p in peers:
            p.expect("drawn", 120)
        lan.heal()
        results = [p.sync(60) for p in peers]
        assert all(r["synced"] for r in results), results
        assert len({r["digest"] for r in results}) == 1, results
    finally:
        for p in peers:
            p.quit()
