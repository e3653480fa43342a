"""A seeded discrete-event network of engines with virtual time and named faults.

Every peer is a real :class:`p2pboard.session.Engine`; the "network" delivers each datagram
to every other peer after a latency, with loss, duplication, reordering (extra random
delay), partitions, crashes and restarts decided by one seeded ``random.Random``. Nothing
sleeps: a minute of protocol time runs in well under a second.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from dataclasses import dataclass, field

from p2pboard.config import Config
from p2pboard.session import Engine, Timers
from p2pboard import wire


@dataclass
class Faults:
    loss: float = 0.0  # independent loss per receiver
    sender_loss: float = 0.0  # lost for every receiver (at the sender's side)
    duplicate: float = 0.0
    reorder: float = 0.0  # share of datagrams given an extra delay of up to reorder_delay
    reorder_delay: float = 0.005
    latency: float = 0.0002
    jitter: float = 0.0001


@dataclass
class SimPeer:
    index: int
    engine: Engine
    alive: bool = True
    side: int = 0  # partition side
    timer_version: int = 0
    lossy: float | None = None  # this receiver's own loss rate, overriding Faults.loss
    #: a busy host: seconds of work per datagram received. Datagrams wait their turn, as
    #: in the edge's read-ahead queue; the ones Engine.urgent picks (repairs, NACKs) skip it.
    cost: float = 0.0
    busy_until: float = 0.0
    #: arrival times of the datagrams waiting their turn (sorted): Engine.backlog
    waiting: list = field(default_factory=list)

    @property
    def addr(self) -> tuple[str, int]:
        """The simulated host's address (one host per peer), as recvfrom would give it."""
        return (f"198.18.{self.index // 250}.{self.index % 250 + 1}", 47777)


@dataclass
class Tally:
    """What the network saw, to compute NACKs and repairs per loss event."""

    data_sent: int = 0
    loss_events: int = 0  # DATA datagrams (originals) lost at one receiver or more
    lost_copies: int = 0
    nacks: int = 0
    repairs: int = 0
    by_type: dict[int, int] = field(default_factory=dict)


class SimNet:
    def __init__(self, seed: int, faults: Faults | None = None, size=(64, 48),
                 timers: Timers | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or Faults()
        self.size = size
        self.timers = timers or Timers()
        self.now = 0.0
        self.peers: list[SimPeer] = []
        self._q: list = []
        self._link_last: dict[tuple[int, int], float] = {}  # (from, to) -> last delivery
        self._tie = itertools.count()
        self.tally = Tally()
        self.filter = None  # optional fn(src_index, dst_index, datagram) -> bool (deliver?)

    # ---------------------------------------------------------------- peers

    def add_peer(self, name: str | None = None, **config) -> SimPeer:
        i = len(self.peers)
        cfg = Config(name=name or f"p{i}", size=self.size, rate=config.pop("rate", 50_000_000),
                     **config)
        eng = Engine(cfg, rng=random.Random(self.rng.random()), timers=self.timers, now=self.now)
        p = SimPeer(i, eng)
        self.peers.append(p)
        self._after(p)
        return p

    def crash(self, p: SimPeer) -> None:
        """The process dies: nothing more is sent or received, no goodbye."""
        p.alive = False
        p.timer_version += 1

    def leave(self, p: SimPeer) -> None:
        p.engine.goodbye(self.now)
        self._after(p)
        p.alive = False
        p.timer_version += 1

    def restart(self, p: SimPeer) -> SimPeer:
        """The same person starts the app again: a new engine (new id), an empty board."""
        self.crash(p)
        q = self.add_peer(p.engine.config.name + "'")
        return q

    def partition(self, sides: dict[int, int]) -> None:
        for p in self.peers:
            p.side = sides.get(p.index, 0)

    def heal(self) -> None:
        for p in self.peers:
            p.side = 0

    # ---------------------------------------------------------------- running

    def act(self, p: SimPeer, fn) -> object:
        """Run a local action on a peer at the current time (drawing, undo ...)."""
        r = fn(p.engine, self.now)
        self._after(p)
        return r

    def _after(self, p: SimPeer) -> None:
        if not p.alive:
            return
        for d in p.engine.datagrams_to_send(self.now):
            self._transmit(p, d)
        p.timer_version += 1
        at = p.engine.get_timer()
        if at is not None:
            heapq.heappush(self._q, (max(at, self.now), next(self._tie), "timer", p,
                                     p.timer_version))

    def _transmit(self, src: SimPeer, d: bytes) -> None:
        f = self.faults
        rng = self.rng
        mtype = d[3]
        t = self.tally
        t.by_type[mtype] = t.by_type.get(mtype, 0) + 1
        is_data = mtype == wire.MsgType.DATA
        repair = is_data and bool(d[4] & wire.FLAG_REPAIR)
        if is_data and not repair:
            t.data_sent += 1
        if mtype == wire.MsgType.NACK:
            t.nacks += 1
        if repair or mtype == wire.MsgType.PARITY:
            t.repairs += 1
        lost_here = 0
        if rng.random() < f.sender_loss:
            receivers = []
            lost_here = sum(1 for q in self.peers if q is not src and q.alive)
        else:
            receivers = [q for q in self.peers if q is not src and q.alive]
        for q in receivers:
            if q.side != src.side:
                continue
            if self.filter is not None and not self.filter(src.index, q.index, d):
                continue
            loss = f.loss if q.lossy is None else q.lossy
            if rng.random() < loss:
                lost_here += 1
                continue
            # A link is first in, first out: jitter delays, but never overtakes the
            # datagram sent before (a burst arrives in order); only ``reorder`` does.
            link = (src.index, q.index)
            delay = max(f.latency + rng.random() * f.jitter,
                        self._link_last.get(link, 0.0) - self.now)
            self._link_last[link] = self.now + delay
            if rng.random() < f.reorder:
                delay += rng.random() * f.reorder_delay
            arrival = None
            # [datagram, sender, arrival if it waits its turn, noted when read]
            payload = [d, src.addr, None, False]
            if q.cost and not q.engine.urgent(d):
                arrival = payload[2] = self.now + delay
                start = max(arrival, q.busy_until)
                q.busy_until = start + q.cost
                delay = start - self.now
                bisect.insort(q.waiting, arrival)
                # read into the queue as it arrives (the edge's Engine.note_read)
                heapq.heappush(self._q, (arrival, next(self._tie), "read", q, payload))
            heapq.heappush(self._q, (self.now + delay, next(self._tie), "recv", q, payload))
            if rng.random() < f.duplicate:
                heapq.heappush(self._q, (self.now + delay + rng.random() * 0.002,
                                         next(self._tie), "recv", q, [d, src.addr, None, False]))
        if is_data and not repair and lost_here:
            t.loss_events += 1
            t.lost_copies += lost_here

    def run_until(self, t_end: float) -> None:
        while self._q and self._q[0][0] <= t_end:
            when, _, kind, p, payload = heapq.heappop(self._q)
            self.now = max(self.now, when)
            if not p.alive:
                continue
            if kind == "timer":
                if payload != p.timer_version:
                    continue
                if p.cost:
                    self._queue_state(p)
                p.engine.handle_timer(self.now)
            elif kind == "read":
                self._queue_state(p)
                payload[3] = p.engine.note_read(payload[0], payload[1], payload[2], self.now)
            else:
                if payload[2] is not None:
                    del p.waiting[bisect.bisect_left(p.waiting, payload[2])]
                if p.cost:
                    self._queue_state(p)
                # As the edge does: a datagram that waited its turn is given the time it
                # arrived, not the time it is processed.
                p.engine.receive_datagram(payload[0], payload[1],
                                          self.now if payload[2] is None else payload[2],
                                          payload[3])
            self._after(p)
        self.now = max(self.now, t_end)

    def _queue_state(self, p: SimPeer) -> None:
        """What the edge tells a busy peer's engine of its receive queue: how many
        datagrams wait (arrived, not yet handed over) and when the oldest arrived."""
        n = bisect.bisect_right(p.waiting, self.now)
        p.engine.backlog = n
        p.engine.queued_since = p.waiting[0] if n else None

    def run_for(self, dt: float) -> None:
        self.run_until(self.now + dt)

    def live(self) -> list[SimPeer]:
        return [p for p in self.peers if p.alive]

    def converged(self) -> bool:
        live = self.live()
        if any(p.engine.joining for p in live):
            return False
        return len({p.engine.board.digest() for p in live}) == 1 and all(
            p.engine.synced() for p in live)

    def settle(self, limit: float = 30.0, step: float = 0.05) -> float:
        """Run until every live peer holds the same board and is synced; return the time
        it took. Fails with the seed in the message."""
        start = self.now
        while self.now - start < limit:
            self.run_for(step)
            if self.converged():
                return self.now - start
        digests = {p.index: p.engine.board.digest()[:8] for p in self.live()}
        raise AssertionError(f"seed {self.seed}: no convergence after {limit} s of virtual "
                             f"time: digests {digests}, missing "
                             f"{[p.engine.missing_count() for p in self.live()]}, joining "
                             f"{[p.engine.joining for p in self.live()]}")
