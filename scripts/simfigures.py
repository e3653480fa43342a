#!/usr/bin/env python3
"""Protocol figures from the deterministic simulator (virtual time, no sockets).

    .venv/bin/python scripts/simfigures.py [--seed N]

Reports, for one sender and 20 receivers at 10% loss (independent per receiver, and at the
sender so that every receiver misses the same datagrams): NACKs and repairs per loss event,
and repair latency (gap detected -> datagram held); the same for a paste to 16 receivers
(whole blocks: parity repairs); and the time a late joiner takes to get
a full 1920x1080 photo-like board by snapshot at the default send rate. Virtual time counts
the protocol's timers, latency and pacing, not CPU: the wall-clock time of the same steps
is printed next to it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pboard import raster, wire  # noqa: E402
from p2pboard.config import DEFAULT_RATE  # noqa: E402
from tests.sim import Faults, SimNet  # noqa: E402


def loss_run(seed: int, faults: Faults, receivers: int = 20, datagrams: int = 300) -> dict:
    net = SimNet(seed, faults, size=(640, 480))
    peers = [net.add_peer() for _ in range(receivers + 1)]
    net.run_for(1.0)
    rng = random.Random(seed)
    sender = peers[0]
    for _ in range(datagrams):
        pts = [(rng.randrange(640), rng.randrange(480)) for _ in range(2)]
        pix = raster.stroke_pixels(pts, rng.randrange(2, 12), 640, 480)
        net.act(sender, lambda e, now, pix=pix: e.paint(pix, (1, 2, 3, 255), now))
        net.run_for(1 / 120)
    net.settle()
    t = net.tally
    lat = np.array([x for p in peers for x in p.engine.repair_latencies]) * 1000
    return dict(loss_events=t.loss_events, lost_copies=t.lost_copies,
                nacks_per_loss=t.nacks / t.loss_events, repairs_per_loss=t.repairs / t.loss_events,
                p50_ms=float(np.percentile(lat, 50)), p95_ms=float(np.percentile(lat, 95)),
                max_ms=float(lat.max()),
                digests=len({p.engine.board.digest() for p in peers}))


def paste_run(seed: int, loss: float, receivers: int = 16, idle: float = 1.0,
              cost: float = 0.0) -> dict:
    """A 960x540 noise paste (about 1,600 datagrams) to ``receivers`` at independent
    ``loss``: whole blocks of 16, so parity repairs (asked for and proactive) apply. The
    board is idle for ``idle`` seconds first (the peers measure their loss on each
    other's SESSIONs); ``cost``: each receiver's work per datagram (a busy host)."""
    w, h = 960, 540
    net = SimNet(seed, Faults(loss=loss), size=(w, h))
    peers = [net.add_peer() for _ in range(receivers + 1)]
    net.run_for(idle)
    for p in peers[1:]:
        p.cost = cost
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    img[..., 3] = 255
    a = peers[0]
    net.act(a, lambda e, now: e.paste(img, 0, 0, now))
    net.settle(limit=60)
    t = net.tally
    lat = np.array([x for p in peers for x in p.engine.repair_latencies]) * 1000
    st = a.engine.stats
    rx = [p.engine.stats for p in peers[1:]]
    return dict(after_nack=sum(s.recovered_after_nack for s in rx) / max(1, sum(
                    s.recovered for s in rx)), data=t.data_sent, loss_events=t.loss_events, lost_copies=t.lost_copies,
                nacks_per_loss=t.nacks / t.loss_events, repairs_per_loss=t.repairs / t.loss_events,
                parity=st.parity_sent, proactive=st.parity_proactive, plain=st.repairs_sent,
                p50_ms=float(np.percentile(lat, 50)), p95_ms=float(np.percentile(lat, 95)),
                digests=len({p.engine.board.digest() for p in peers}))


def late_join(seed: int) -> dict:
    w, h = 1920, 1080
    net = SimNet(seed, Faults(), size=(w, h))
    a = net.add_peer(rate=DEFAULT_RATE)
    net.run_for(1.0)
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx ^ yy) & 255)], -1)
    noise = np.random.default_rng(seed).integers(0, 24, (h, w, 3))
    img = np.concatenate([np.clip(rgb + noise, 0, 255), np.full((h, w, 1), 255)], -1)
    img = img.astype(np.uint8)
    net.act(a, lambda e, now: e.paste(img, 0, 0, now))
    net.settle(limit=60)
    t0, w0 = net.now, time.perf_counter()
    b = net.add_peer(rate=DEFAULT_RATE)
    while b.engine.joining:
        net.run_for(0.01)
    virtual = net.now - t0
    wall = time.perf_counter() - w0
    assert b.engine.board.digest() == a.engine.board.digest()
    return dict(virtual_s=virtual, wall_s=wall, snapshot_bytes=a.engine.stats.snapshot_chunks_sent
                * wire.SNAP_CHUNK_SIZE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    for name, f in (("independent 10% loss", Faults(loss=0.10)),
                    ("10% loss at the sender", Faults(sender_loss=0.10))):
        r = loss_run(a.seed, f)
        print(f"{name}, 20 receivers: {r['loss_events']} loss events ({r['lost_copies']} lost "
              f"copies); NACKs/loss {r['nacks_per_loss']:.2f}; repairs/loss "
              f"{r['repairs_per_loss']:.2f}; repair latency p50 {r['p50_ms']:.1f} ms, p95 "
              f"{r['p95_ms']:.1f} ms, max {r['max_ms']:.1f} ms; boards identical: "
              f"{r['digests'] == 1}")
    for loss in (0.01, 0.10):
        r = paste_run(a.seed, loss)
        print(f"a 960x540 paste ({r['data']} datagrams) to 16 receivers at {loss:.0%} "
              f"independent loss: {r['loss_events']} loss events ({r['lost_copies']} lost "
              f"copies); NACKs/loss {r['nacks_per_loss']:.2f}; repairs/loss "
              f"{r['repairs_per_loss']:.2f} ({r['parity']} parity, {r['proactive']} of them "
              f"proactive, {r['plain']} retransmissions); repair latency p50 "
              f"{r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms; boards identical: "
              f"{r['digests'] == 1}")
    for idle in (1.0, 10.0):
        r = paste_run(a.seed, 0.10, idle=idle, cost=0.0003)
        print(f"the same paste at 10% loss to 16 busy receivers (300 us a datagram), after "
              f"{idle:g} s of idle board: NACKs/loss {r['nacks_per_loss']:.2f}; repairs/loss "
              f"{r['repairs_per_loss']:.2f} ({r['proactive']} proactive parity); losses "
              f"filled after a NACK {r['after_nack']:.0%}; repair latency p50 "
              f"{r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms; boards identical: "
              f"{r['digests'] == 1}")
    j = late_join(a.seed)
    print(f"late joiner, full 1920x1080 photo-like board at {DEFAULT_RATE / 1e6:.0f} MB/s: "
          f"{j['virtual_s']:.2f} s protocol time, {j['wall_s']:.2f} s wall clock "
          f"(simulating both peers), ~{j['snapshot_bytes'] / 1e6:.1f} MB snapshot")


if __name__ == "__main__":
    main()
