"""The session engine: one peer of a board, as a sans-IO state machine.

Bytes and the current time go in (:meth:`Engine.receive_datagram`, :meth:`Engine.handle_timer`,
the drawing calls); datagrams to send, the next timer deadline and events come out
(:meth:`Engine.datagrams_to_send`, :meth:`Engine.get_timer`, :meth:`Engine.next_event`).
It opens no socket and reads no clock, so every loss scenario runs in a simulator.

Theory of operation
-------------------
*Sources.* Every peer numbers its DATA datagrams 1, 2, 3 ... For each source we track the
highest number that exists (from its datagrams, its heartbeats and everybody's session
messages) and the set we hold; ``contiguous`` is the number up to which we hold all.

*Sending.* Local operations are encoded into records at once and applied to our own board
at once (no round trip). Records are packed into the open datagram; it is sent when full,
or at once if nothing was sent in the last ``flush_delay`` (so a single dot goes out
immediately), or else when that deadline passes. A token bucket paces data, repairs and
snapshot chunks; control messages are small and go first.

*Tail loss.* After sending data a peer sends heartbeats (its highest number) after 8, 32,
128 and 512 ms of silence, and a session message about once a second at all times. Session
messages also carry, for up to 64 sources, what the sender holds: third parties reveal a
lost tail even when the author is gone, and they acknowledge our data (``wait_synced``).

*Repair.* A receiver that sees a gap waits a random 0..``nack_max`` (a few ms, drawn from a
truncated exponential so that few receivers pick short delays), then
multicasts a NACK for all its missing numbers of that source, unless it heard another
peer's NACK for them first (suppression); it then waits ``retry_base`` * 2^attempt for the
repair and asks again. The author answers a NACK at once; a hold-down makes it ignore
NACKs for a datagram it repaired in the last ``holddown`` seconds. Other holders answer only
when the author is gone or the request is a retry, after a random delay, and stay quiet if
someone else's repair goes out first. Repairs are the original bytes, so any copy is as
good as the author's. Anything that cannot be repaired (evicted everywhere, too far
behind) is healed with a snapshot.

*Parity.* Datagrams form blocks of 8 by number (``wire.FEC_K``). For a block its author has
sent in full, a receiver names in its NACK only as many missing datagrams as it lacks
symbols, with the PARITY flag; the author answers with that many new Reed-Solomon parity
datagrams (``fec.py``), and every receiver rebuilds its own losses from them, so one parity
datagram repairs a different loss at each receiver. Under loss the author also sends parity
right behind each block before anyone asks (``_adapt_parity``), as much as its lossiest
receiver needs: at least what the loss the receivers report in their session messages calls
for (``loss.py``), more when NACKs show it is short. A receiver with datagrams waiting in
its receive queue does not NACK a gap whose block's parity may be among them.

*Late join.* A new peer asks for a snapshot (SNAP_REQ). A synced peer answers after a short
random delay unless another answered first: SNAP_META, then the state (store.dump) in
chunks, which the joiner NACKs by chunk until complete (a snapshot still on its way is
offered again rather than queued twice). The snapshot says up to which datagram it covers
each source; the joiner continues from there. The board is a CRDT, so merging a snapshot
with whatever arrived meanwhile is always safe.

*Bounds.* Every table keyed by something a peer sends is capped: sources, peers, missing
numbers per source (the receive window), the repair cache (bytes), hold-downs, snapshot size.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import struct
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import xxhash

from . import fec, loss, seal, store, wire
from .board import Board
from .config import DEFAULT_RATE, Config
from .events import (CursorMoved, Divergence, Event, JoinComplete, OtherBoard, PeerJoined,
                     PeerLeft, PeerUpdated, Silence, SizeMismatch, Unrecoverable,
                     VersionMismatch)
from .loss import LossMeter
from .ops import UNDO_WINDOW, Clear, Color, Image, Paint, Record, StrokePath, Toggle
from .pacing import TokenBucket

UDP_IP_OVERHEAD = 28  # bytes of IPv4 + UDP header per datagram, counted by the pacer


@dataclass(frozen=True)
class Timers:
    """Every timer and limit of the protocol (docs/PROTOCOL.md explains each)."""

    flush_delay: float = 0.002
    heartbeats: tuple[float, ...] = (0.008, 0.032, 0.128, 0.512)
    session_interval: float = 1.2  # mean; jittered +-20%
    peer_timeout: float = 6.0
    nack_max: float = 0.003  # random NACK delay in [0, nack_max]
    retry_min: float = 0.003  # wait for a repair before asking again: about 2 repair times,
    retry_initial: float = 0.005  # (measured: smoothed time from NACK to repair), doubling
    retry_max: float = 0.5  # with every attempt, never below retry_min nor above retry_max
    max_attempts: int = 8  # then the gap is unrecoverable by NACK: ask for a snapshot
    holddown: float = 0.003
    holder_repair_max: float = 0.004  # random delay of a non-author repair
    probe_answer_max: float = 0.010
    join_retry: float = 0.25
    join_attempts: int = 3  # with nobody answering: we are the first peer
    snap_answer_max: float = 0.008
    snap_reuse: float = 0.5  # a snapshot this young is offered again instead of rebuilt
    snap_keep: float = 30.0
    snap_idle: float = 0.02  # no chunk for this long: NACK the missing chunks
    snap_give_up: float = 3.0
    receive_window: int = 16384  # datagrams beyond ``contiguous`` we track per source
    snapshot_gap: int = 2048  # missing more than this from one source: snapshot, not NACK
    max_sources: int = 1024
    max_peers: int = 512
    repair_cache_bytes: int = 96 << 20
    burst: int = 96 * 1024
    silence_rejoin: float = 4.0  # nothing heard from anyone this long: re-join the group,
    silence_rejoin_max: float = 60.0  # then again after twice as long, up to this
    anti_entropy_interval: float = 5.0  # fetch a diverging peer's state at most this often
    # no other peer heard on this host this long (after joining): our own datagrams stop
    # looping back to this host (the edge turns IP_MULTICAST_LOOP off; on again at the
    # first datagram of one). A peer here whose loop was off hears our start and answers.
    local_quiet: float = 1.5
    # datagrams/s accepted from one (address, sender); None: 1.5 times what a peer sending
    # at the larger of our --rate and the default can send (full datagrams) plus 1000 for
    # small ones (about 40,000)
    flood_rate: float | None = None
    flood_quarantine: float = 30.0  # a sender over it is refused this long, its gaps skipped
    repairs_per_datagram: int = 4  # repairs of one datagram per second, at most
    # Adaptive pacing (see _adapt_rate): starts at start_rate (at most --rate), changes at
    # most every rate_step: times rate_up while data waits for the pacer, times rate_down
    # when one receiver NACKed more than rate_loss of what we sent; never below min_rate.
    start_rate: float = 8_000_000
    rate_step: float = 0.05
    rate_up: float = 1.25
    rate_down: float = 0.5
    rate_loss: float = 0.25
    min_rate: float = 250_000
    rate_restart: float = 2.0  # idle this long: start again from start_rate
    repair_budget_rate: float = 2048.0  # datagrams/s one requester's NACKs may get repaired
    repair_budget_burst: float = 8192.0


@dataclass
class Stats:
    """Counters. Everything received that was not used is counted in one ``rejected_*``
    or ``ignored_*`` field."""

    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_received: int = 0
    bytes_received: int = 0
    data_sent: int = 0
    data_received: int = 0
    duplicates: int = 0
    gaps: int = 0  # datagrams found missing
    recovered: int = 0  # missing datagrams that arrived later
    recovered_after_nack: int = 0  # ... of which we had NACKed first (a round trip)
    gaps_queued: int = 0  # ... of which had arrived before we counted them missing
    gaps_read: int = 0  # gaps found as datagrams were read into the receive queue
    nacks_sent: int = 0
    nacks_received: int = 0
    nacks_suppressed: int = 0
    repairs_sent: int = 0
    repairs_received: int = 0
    repairs_held_down: int = 0
    holder_repairs_cancelled: int = 0
    heartbeats_sent: int = 0
    sessions_sent: int = 0
    snapshots_sent: int = 0
    snapshot_chunks_sent: int = 0
    snapshot_chunks_resent: int = 0  # ... of which queued again for a SNAP_NACK
    snapshots_built: int = 0  # snapshots made afresh (the others offered were made before)
    snap_requests_sent: int = 0  # SNAP_REQ: joining, a gap given up on, anti-entropy
    gap_fetches: int = 0  # snapshot fetches begun for gaps that NACKs did not fill
    snap_offers_to_anyone: int = 0  # offers answering a request not aimed at one peer
    snap_offers_repeated: int = 0  # offers for a request this peer had offered before
    snap_offers_crossed: int = 0  # another peer's offer seen for a request we offered
    snap_offers_declined: int = 0  # offers to us we did not take (another came first)
    snapshot_chunks_withdrawn: int = 0  # queued chunks dropped: their fetchers withdrew
    snapshot_builds_skipped: int = 0  # snapshots claimed, not built: every joiner withdrew
    snapshots_received: int = 0
    unrecoverable: int = 0
    ignored_own: int = 0
    rejected_malformed: int = 0
    rejected_version: int = 0
    rejected_size: int = 0
    rejected_window: int = 0
    rejected_nack: int = 0
    rejected_snapshot: int = 0
    rejected_cap: int = 0
    rejected_records: int = 0  # invalid toggles and the like inside valid datagrams
    rejected_sealed: int = 0  # a passphrase board's datagrams, heard by an open board
    rejected_unsealed: int = 0  # plain datagrams, heard by a passphrase board
    rejected_auth: int = 0  # sealed with another key, or forged or corrupted
    rejected_replay: int = 0  # sealed datagrams received before (replays, duplicates)
    rejected_stale: int = 0  # sealed datagrams too old (unused unless max_age is set)
    rejected_flood: int = 0  # over one sender's flood_rate
    rejected_spoofed: int = 0  # a peer id heard from another address than its own
    rejected_repair: int = 0  # a "repair" of a datagram nobody said exists
    repairs_refused: int = 0  # NACKs over the per-datagram or per-requester repair budget
    nacks_uncached: int = 0  # NACKs for datagrams of ours no longer (or never) in the cache
    repairs_queue_full: int = 0  # repairs not queued: the repair queue was full
    snap_nacks_unknown: int = 0  # SNAP_NACKs for a snapshot we no longer serve
    parity_sent: int = 0  # PARITY datagrams (erasure-coded repairs, see fec.py)
    parity_proactive: int = 0  # of those, sent with a block before anyone asked
    parity_received: int = 0
    parity_rebuilt: int = 0  # DATA datagrams rebuilt from parity
    ignored_parity: int = 0  # parity for blocks we already hold, or cannot use
    rejected_parity: int = 0  # parity that is malformed or does not fit its block
    rejoins: int = 0  # multicast group re-joined after a silence
    rate_cuts: int = 0  # pacing rate halved: a receiver missed too much (see _adapt_rate)
    divergences: int = 0  # same datagrams as a peer, another board: its state was merged
    departed_folds: int = 0  # authors whose operations became final after their goodbye
    pixels_painted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Miss:
    due: float  # when to (re)send a NACK
    attempt: int  # NACKs sent or heard so far
    detected: float
    asked: float = 0.0  # when the last NACK for it was sent or heard
    #: known only from a third party's report while datagrams waited in our receive
    #: queue: it may be among them, so it is not NACKed until the queue is empty
    soft: bool = False


@dataclass
class Source:
    id: int
    contiguous: int = 0
    highest: int = 0
    held: set[int] = field(default_factory=set)  # numbers > contiguous that we hold
    maxop: dict[int, int] = field(default_factory=dict)  # number -> largest opno in it
    settled: int = 0  # largest opno through ``contiguous``
    missing: dict[int, Miss] = field(default_factory=dict)
    anchored: bool = True  # False while joining: numbers below the first seen are unknown
    first_seen: int = 0
    given_up: bool = False
    give_ups: int = 0  # snapshots asked for because of this source, without progress
    stuck_at: int = 0  # ``contiguous`` at the latest give-up (give_ups counts from there)
    finished: int = 0  # the seq of its goodbye: once held up to it, nothing more can come
    heard: float = -1e9  # when its author last sent us something itself (not a repair)
    parity_block: int = -1  # the latest block it sent proactive parity for
    #: The highest DATA number of it read so far, into the edge's receive queue or handed
    #: over (Engine.note_read), and the highest handed over. (``highest``, the highest
    #: known to exist, may be above both: a third party's SESSION tells it.)
    read: int = 0
    handed: int = 0
    parity_read: int = -1  # the latest block whose proactive parity was read
    #: block -> proactive parity symbols of it read (recent blocks only)
    parity_reads: dict[int, int] = field(default_factory=dict)


@dataclass
class _BlockParity:
    """Parity state of one of our blocks: how many parity symbols went out proactively
    (indices from FEC_K up) and as answers (indices from FEC_N - 1 down, so answers never
    repeat a proactive symbol, even after this state was dropped), when answers went out
    (the last second), and the requests of the current hold-down (time, requester, n)."""

    proactive: int = 0
    answered: int = 0
    sent: list[float] = field(default_factory=list)
    asks: list[tuple[float, int, int]] = field(default_factory=list)


@dataclass
class Peer:
    id: int
    name: str
    color: Color
    last_heard: float
    joining: bool = False
    holds: dict[int, int] = field(default_factory=dict)  # source -> contiguous it reported
    highest: int = 0
    datagrams: int = 0  # DATA received from it
    lost: int = 0  # of its datagrams found missing here
    alive: bool = True
    rtt: float | None = None  # smoothed round trip time, from the echoes in SESSION
    #: the latest round-trip samples (about one a second); their minimum is the distance
    #: without the queueing of a busy moment
    rtt_samples: deque = field(default_factory=lambda: deque(maxlen=RTT_SAMPLES))
    last_ts: int = 0  # ``ts`` of its last SESSION, echoed back in ours
    ts_heard: float = 0.0  # when we heard that SESSION
    session_count: int | None = None  # ``count`` of its last SESSION
    loss: int = 0  # the loss it reports (a lower bound, in 1/65535)

    @property
    def loss_rate(self) -> float:
        total = self.datagrams + self.lost
        return self.lost / total if total else 0.0


@dataclass
class _SnapServe:
    snap_id: int
    blob: bytes
    built: float
    last_used: float
    queued: int = 0  # its chunks waiting in the pacer's bulk queue
    #: the fetchers it was offered to (or that NACKed its chunks) and did not withdraw
    fetchers: set[int] = field(default_factory=set)


@dataclass
class _PendingBuild:
    """A snapshot offered (SNAP_META without length: a claim) and built at the next
    timer, once the claim is out: building takes 0.05-0.5 s, and a claim sent only after
    it let every other server's turn come and go."""

    snap_id: int
    due: float
    #: (joiner, request) it was offered for, in order, until they withdraw
    requests: dict[tuple[int, int], None] = field(default_factory=dict)


class _Buckets:
    """Token buckets keyed by something a peer sends, at most ``cap`` of them."""

    def __init__(self, rate: float, burst: float, cap: int) -> None:
        self.rate, self.burst, self.cap = rate, burst, cap
        self._b: dict[object, TokenBucket] = {}

    def take(self, key: object, n: float, now: float) -> bool:
        b = self._b.get(key)
        if b is None:
            if len(self._b) >= self.cap:
                self.prune(now)
                if len(self._b) >= self.cap:
                    return True  # no room to track it: let it through (counted elsewhere)
            b = self._b[key] = TokenBucket(self.rate, self.burst)
        return b.try_consume(n, now)

    def prune(self, now: float) -> None:
        """Forget buckets that have been idle long enough to be full again."""
        idle = self.burst / self.rate
        for k in [k for k, b in self._b.items() if b._at is not None and now - b._at > idle]:
            del self._b[k]


@dataclass
class _SnapFetch:
    req_id: int
    started: float
    asked_at: float
    target: int = 0  # the peer asked first (one that holds what we miss); 0: anyone
    attempts: int = 0
    server: int = 0
    snap_id: int = 0
    total: int = 0
    chunk_size: int = 0
    chunks: dict[int, bytes] = field(default_factory=dict)
    have: bytearray = field(default_factory=bytearray)  # have[i]: chunk i arrived
    last_chunk: float = 0.0
    nacks: int = 0
    recheck: float = 0.0  # claimed: the fetch timer looks again no sooner than this


class Engine:
    """One peer. ``rng`` and ``now`` make it deterministic under test."""

    def __init__(self, config: Config | None = None, *, peer_id: int | None = None,
                 rng: random.Random | None = None, timers: Timers | None = None,
                 now: float = 0.0, wall: float = 0.0) -> None:
        """``now``: the caller's monotonic clock; ``wall``: wall-clock seconds at ``now``
        (only a passphrase board uses it: nonce epochs start from it)."""
        self.config = config or Config()
        self.timers = timers or Timers()
        self.rng = rng or random.Random()
        self.id = peer_id if peer_id is not None else self.rng.randrange(1, 1 << 32)
        if not 0 < self.id < 1 << 32:
            raise ValueError(f"peer id {self.id} is not a non-zero u32")
        self.size = self.config.size
        self.board = Board(*self.size)
        key = self.config.key
        # A passphrase board seals every datagram last and opens every one first; inside,
        # the protocol is the same, with datagrams smaller by the envelope.
        self._sealer = seal.Sealer(key, self.id, int(wall) & 0xFFFFFFFF) if key else None
        self._opener = seal.Opener(key) if key else None
        envelope = seal.OVERHEAD if key else 0
        self._budget = wire.BODY_BUDGET - envelope
        self._chunk_size = wire.SNAP_CHUNK_SIZE - envelope
        self._overhead = UDP_IP_OVERHEAD + envelope
        self.stats = Stats()
        self.started = now
        self.lamport = 0
        self.opno = 0
        self.seq = 0  # last data datagram number flushed (into the pacer's queue)
        self._sent_seq = 0  # last one handed to the network: what control messages announce
        self._run_left = 0  # data datagrams the pacer has released as one run (_pace_run)
        self._events: deque[Event] = deque()
        self._sources: dict[int, Source] = {}
        self._peers: dict[int, Peer] = {}
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_bytes = 0
        self._holddown: dict[tuple[int, int], float] = {}
        self._holder_repairs: dict[tuple[int, int], float] = {}
        self._op_lamport: dict[int, int] = {}
        self._repair_rtt = self.timers.retry_initial / 2
        #: seconds from finding a datagram missing to holding it (the latest 10000), by
        #: arrival stamps; not for one that was in our receive queue all along
        self.repair_latencies: deque[float] = deque(maxlen=10_000)
        #: the latest gaps skipped as unrecoverable, for diagnosis: (time, source, first,
        #: last, datagrams never held, the most any live peer said it held of that source)
        self.skips: deque[tuple[float, int, int, int, int, int]] = deque(maxlen=256)
        #: datagrams read but not yet handed to us (the edge keeps it up to date)
        self.backlog = 0
        #: when the oldest of those arrived (None: nothing waiting; the edge keeps it up to
        #: date). Who is silent is judged at that time, not now: a peer seconds behind on
        #: its queue has not heard, yet, what the others sent since (see _heard_until).
        self.queued_since: float | None = None
        self._noted = False  # the datagram being handled was seen by note_read
        # Parity: per block of ours, the next parity index and when parity went out;
        # per (source, block) of others', the parity symbols held until it can be rebuilt.
        self._parity_out: dict[int, _BlockParity] = {}
        self._parity_in: dict[tuple[int, int], dict[int, bytes]] = {}
        self._parity_answers: dict[tuple[int, int], int] = {}  # of which answered NACKs
        self._parity_in_at: dict[tuple[int, int], float] = {}
        self._parity_count = 0
        self._now = now
        self._control: deque[bytes] = deque()
        self._repairs: deque[bytes] = deque()
        self._data: deque[bytes] = deque()
        self._bulk: deque[bytes] = deque()
        self.pace = min(float(self.config.rate), self.timers.start_rate)  #: bytes/s now
        self._bucket = TokenBucket(self.pace, self.timers.burst)
        self._rate_window_at = now
        self._rate_sent = 0  # our fresh DATA sent in this window
        self._rate_nacked: dict[int, int] = {}  # requester -> our numbers it NACKed first
        # Proactive parity (see _adapt_parity): symbols sent with each of our blocks as it
        # completes; this sample's blocks completed, and what each requester NACKed.
        self.proactive = 0
        self._par_blocks = 0
        #: requester -> (symbols named, the blocks named: up to PAR_NACKED_BLOCKS of them)
        self._par_nacked: dict[int, tuple[int, set[int]]] = {}
        #: what we miss of what is sent to us (reported in our SESSION, see loss.py)
        self.loss_meter = LossMeter()
        self._session_count = 0
        self._par_from = 0  # first block sent with the current amount of proactive parity
        self._block_at = now  # when the first datagram of the current block went out
        self._par_quiet = 0
        self._backlog_at = -1e9  # last time data waited for the pacer
        #: set by the edge while the socket's send buffer is full: only control messages and
        #: repairs are released (the link, not the pacer, sets the pace then)
        self.blocked = False
        self._encoding = None  # the rest of a big paste, encoded as it is sent
        self._provisional = None  # its board entry until then (Board.apply_provisional)
        # the datagram being filled
        self._open: list[bytes] = []
        self._open_len = 0
        self._open_work = 0
        self._open_maxop = 0
        self._open_deadline: float | None = None
        self._last_flush = -1.0
        self._flush_gap = 0.0
        # undo
        self._undo: list[int] = []
        self._redo: list[int] = []
        # timers
        self._hb_index = len(self.timers.heartbeats)
        self._hb_at: float | None = None
        self._compact_at: float | None = None  # when the board joins complete strokes
        self._session_at = now
        self._probe_answer_at: float | None = None
        self._last_probe_answer = -1.0
        self._next_expiry = now + 1.0
        # snapshots
        self.joining = True
        self._fetch: _SnapFetch | None = _SnapFetch(req_id=self.rng.randrange(1, 1 << 32),
                                                    started=now, asked_at=now)
        self._heard_synced_peer = False
        self._serve: dict[int, _SnapServe] = {}
        self._snap_answers: dict[tuple[int, int], float] = {}  # (joiner, req) -> due
        #: (joiner, req) -> when we saw another peer offer it a snapshot (SNAP_META)
        self._snap_offered: dict[tuple[int, int], float] = {}
        #: (joiner, req) -> (when, snap_id) of our offers, for SNAP_OFFERED_KEEP
        self._my_offers: dict[tuple[int, int], tuple[float, int]] = {}
        self._anyone: set[tuple[int, int]] = set()  # answers due to requests to anyone
        self._pending: _PendingBuild | None = None  # a snapshot claimed, to build next
        # defences against hostile or broken peers
        t = self.timers
        self._bound: dict[int, list] = {}  # peer id -> [address, last heard from it]
        # What others may send is not bounded by our own --rate (a peer that chose to send
        # slowly still receives default peers pacing up to DEFAULT_RATE).
        flood = (t.flood_rate
                 or 1.5 * max(self.config.rate, DEFAULT_RATE) / (wire.MAX_DATAGRAM
                                                                + UDP_IP_OVERHEAD) + 1000)
        self._flood = _Buckets(flood, flood, 4096)
        self._requesters = _Buckets(t.repair_budget_rate, t.repair_budget_burst, 1024)
        self._repaired: dict[tuple[int, int], list] = {}  # key -> [window start, repairs]
        self._quarantine: dict[int, float] = {}  # flooding sender -> refused until
        self._early: dict[int, dict[int, tuple[float, bytes]]] = {}  # repairs held back
        self._early_count = 0
        self._d = 0.0  # the group's round trip (median of the peers' RTTs), see _nack_delay
        self._d_smooth = 0.0  # the same from smoothed RTTs, see _holddown_time
        # silence and anti-entropy
        self._last_heard_other = now
        self._silence_wait = t.silence_rejoin
        self._silence_at = now + t.silence_rejoin
        self._session_version = -1  # board version when our last SESSION went out
        self._ae_asked: dict[int, float] = {}
        self._send_snap_req(now)
        self._send_session(now)
        self._my_source = self._sources.setdefault(self.id, Source(self.id))

    # ------------------------------------------------------------------ outputs

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything that may go out now, within the rate limit."""
        self._now = max(self._now, now)
        if not (self._open or self._control or self._repairs or self._data or self._bulk
                or self._encoding is not None):
            # nothing waits (the edge asks after every datagram it reads)
            self._adapt_rate(now, False)
            return []
        self._maybe_flush(now)
        if self._encoding is not None and not self.blocked:
            self._encode_ahead(now)
        out = list(self._control)
        self._control.clear()
        for q in (self._repairs,) if self.blocked else (self._repairs, self._data, self._bulk):
            while q:
                if q is self._data:
                    # Whole blocks at once (see _pace_run): the tokens for the rest of the
                    # block and its parity first, then each datagram takes its share.
                    if self._run_left == 0:
                        count, need = self._pace_run()
                        if self._bucket.ready_at(need, now) > now:
                            break
                        self._run_left = count
                    self._run_left -= 1
                    self._bucket.take(len(q[0]) + self._overhead, now)
                elif not self._bucket.try_consume(len(q[0]) + self._overhead, now):
                    break
                d = q.popleft()
                out.append(d)
                if q is self._data and d[3] == wire.MsgType.DATA:
                    self._sent_seq = int.from_bytes(d[9:13], "big")
                    self._rate_sent += 1
                    if self._sent_seq % wire.FEC_K == 1:
                        self._block_at = now
                    elif self._sent_seq % wire.FEC_K == 0:
                        self._par_blocks += 1
                        self._adapt_parity()
                        if self._fast_block(now):
                            self._send_proactive(wire.fec_block(self._sent_seq))
                elif q is self._bulk:
                    self._rate_sent += 1  # snapshot chunks: their loss counts too
                    self.stats.snapshot_chunks_sent += 1
                    sv = self._serve.get(int.from_bytes(
                        d[wire.HEADER.size + 4:wire.HEADER.size + 8], "big"))
                    if sv is not None:
                        sv.queued -= 1
                    if not q:
                        # The last queued datagram is out: heartbeats count from now (not
                        # from when it was queued), so a lost tail is found soon after.
                        self._hb_index = 0
                        self._hb_at = now + max(self.timers.heartbeats[0],
                                                min(1.5 * self._flush_gap, 0.03))
            if q:
                break
        if self._encoding is not None and not self.blocked and not self._data:
            self._encode_ahead(now)  # so the pacer has the next datagram to wait for
        self._adapt_rate(now, bool(self._data or self._bulk))
        if self._sealer is not None:
            out = [self._sealer.seal(d) for d in out]
        for d in out:
            self.stats.datagrams_sent += 1
            self.stats.bytes_sent += len(d)
        return out

    def _adapt_rate(self, now: float, backlogged: bool) -> None:
        """Pacing that follows the network, between min_rate and --rate. While data waits
        for the pacer the rate grows by rate_up every rate_step; when one receiver NACKed
        (first requests) more than rate_loss of the datagrams we sent in that time, it
        halves. The threshold is per receiver and high on purpose: on a multicast group
        of many, some receiver misses nearly every datagram at a few percent of random
        loss (Wi-Fi, a busy host), which is the repair layer's job; a receiver missing a
        quarter of them is being sent more than it or its link can take. After
        rate_restart of idling it starts again from start_rate."""
        t = self.timers
        if self.blocked:
            backlogged = False  # the link is the limit: growing the rate would not help
        if backlogged:
            if now - self._backlog_at > t.rate_restart and self.pace > t.start_rate:
                self._set_pace(t.start_rate)
            self._backlog_at = now
        if now - self._rate_window_at < t.rate_step:
            return
        worst = max(self._rate_nacked.values(), default=0)
        sent = self._rate_sent
        self._rate_window_at = now
        self._rate_sent = 0
        self._rate_nacked.clear()
        if sent >= 8 and worst > t.rate_loss * sent:
            self._set_pace(self.pace * t.rate_down)
            self.stats.rate_cuts += 1
        elif backlogged:
            self._set_pace(self.pace * t.rate_up)

    def _adapt_parity(self) -> None:
        """Proactive parity, NORM's "auto parity" made adaptive, called as each block of
        ours completes. As soon as some receiver had to NACK two or more blocks sent with
        the current amount, the blocks go out with more parity symbols: the fewest that
        leave at most PROACTIVE_MISS of a receiver's losses, at its loss rate, in blocks it
        cannot rebuild without asking (binomial; the rate counted from what it named plus
        the proactive symbols it used), and at least one more. After PROACTIVE_DECAY
        samples of PROACTIVE_SAMPLE blocks without, one fewer. With loss, most receivers
        rebuild a block as soon as it has arrived, without a round trip; without loss
        nothing extra goes out (a stray request for a datagram still on its way is one
        block, not a rate).

        The loss the receivers report in SESSION (loss.py) sets a floor: a paste that
        meets loss they already measured has parity from its first block. NACKs alone
        come too late for that when the receivers are behind: a busy receiver NACKs a
        block when it reaches it in its queue, which on a big paste to many peers on
        few cores can be after the author has sent the last block."""
        floor = self._parity_floor()
        if self.proactive < floor:
            self.proactive = floor
        blocks = self._par_blocks
        nacked = [(named, len(bs)) for named, bs in self._par_nacked.values() if len(bs) > 1]
        # Too little parity shows before a whole sample has gone out: raise it then (a
        # paste that meets loss starts sending parity within a few blocks). Only NACKs
        # for blocks sent with the current amount count (_on_nack), so requests still on
        # their way from before a raise do not raise it again.
        if blocks < PROACTIVE_SAMPLE and not nacked:
            return
        p = self.proactive
        self._par_blocks = 0
        self._par_nacked.clear()
        self._par_from = wire.fec_block(self._sent_seq)  # its parity follows, at the new amount
        if nacked:
            rate = max((named + p * nb) / (blocks * wire.FEC_K) for named, nb in nacked)
            self.proactive = min(PROACTIVE_MAX, max(p + 1, _parity_for(rate)))
            self._par_quiet = 0
        else:
            self._par_quiet += 1
            if self._par_quiet >= PROACTIVE_DECAY:
                self.proactive = max(floor, self.proactive - 1)
                self._par_quiet = 0

    def _parity_floor(self) -> int:
        """Proactive parity for the lossiest loss a live receiver reports (at least
        PROACTIVE_FLOOR_MIN), and at least one symbol when the losses they report add
        up to PROACTIVE_FLOOR_MIN: one symbol rebuilds a block for every receiver that
        lost one of its datagrams, so what matters for sending it is how often anyone
        loses one. (Sixteen receivers each reporting 0.2%, their lower bound at a real
        1%, lose something in about 7 blocks of 10 between them; their gaps waited for a
        NACK round trip through receivers far behind on the paste, 50-650 ms at the 95th
        percentile in a quarter of the benchmark's rounds.)"""
        reports = [p.loss for p in self._peers.values() if p.alive and not p.joining]
        if not reports:
            return 0
        floor = _parity_for_report(max(reports))
        if floor == 0 and sum(reports) / loss.SCALE >= PROACTIVE_FLOOR_MIN:
            floor = 1
        return floor

    def _block_bodies(self, b: int) -> list[bytes] | None:
        """The DATA bodies of our block ``b``, or None if one is no longer cached."""
        bodies = []
        for s in wire.fec_seqs(b):
            d = self._cache.get((self.id, s))
            if d is None:
                return None
            bodies.append(d[wire.HEADER.size:])
        return bodies

    def _send_proactive(self, b: int) -> None:
        bodies = self._block_bodies(b)
        if bodies is None:
            return
        bp = self._parity_out.get(b)
        if bp is None:
            if len(self._parity_out) >= MAX_PARITY_BLOCKS:
                return
            bp = self._parity_out[b] = _BlockParity()
        k, span = wire.FEC_K, wire.FEC_N - wire.FEC_K
        idx = [k + (bp.proactive + i) % span for i in range(self.proactive)]
        bp.proactive += self.proactive
        # Right behind the block, ahead of the next data: a receiver that lost one of its
        # datagrams rebuilds it before its NACK is due.
        self._data.extendleft(reversed([
            wire.encode_parity(self.id, self._sent_seq, self.size, wire.Parity(b, i, sym))
            for i, sym in zip(idx, fec.parity(bodies, idx))]))
        self.stats.parity_sent += self.proactive
        self.stats.parity_proactive += self.proactive

    def _pace_run(self) -> tuple[int, int]:
        """The datagrams at the head of the data queue that go out together, and the bytes
        they need from the pacer: parity already queued, or DATA up to the end of its
        block (counting the proactive parity the block's last datagram brings along).

        The pacer keeps its average rate but releases a block in one go, so the block
        reaches the receivers within a fraction of a millisecond on a fast link. A
        receiver that lost one of its datagrams then rebuilds it from the parity right
        away, instead of waiting for the rest of the block to trickle in; the sender wakes
        once per block, and receivers handle a block per wake-up, not a datagram. Only
        what is queued is counted: a stroke datagram never waits for its block to fill."""
        q, over = self._data, self._overhead
        data = q[0][3] == wire.MsgType.DATA
        count = need = 0
        block, whole = None, False
        for d in q:
            if (d[3] == wire.MsgType.DATA) != data:
                break
            if data:
                seq = int.from_bytes(d[9:13], "big")
                if block is None:
                    block = wire.fec_block(seq)
                elif wire.fec_block(seq) != block:
                    break
            count += 1
            need += len(d) + over
            if data and seq % wire.FEC_K == 1:
                whole = True  # the whole block goes in this run
            elif data and seq % wire.FEC_K == 0:
                if whole or self._fast_block(self._now):
                    need += self.proactive * (wire.MAX_WIRE + over)
                break
        return count, min(need, self._bucket.burst)

    def _fast_block(self, now: float) -> bool:
        """Does the block now completing get proactive parity? Only one sent faster than a
        NACK comes back: strokes fill a block in a fifteenth of a second, and their receivers
        have asked for (and got) what they lost long before it ends."""
        return self.proactive > 0 and now - self._block_at <= max(self._d, PROACTIVE_SPAN)

    def _set_pace(self, rate: float) -> None:
        self.pace = min(float(self.config.rate), max(self.timers.min_rate, rate))
        self._bucket.rate = self.pace

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` must be called (None: never, until input)."""
        cands = [self._session_at, self._next_expiry, self._silence_at]
        if self._open_deadline is not None:
            cands.append(self._open_deadline)
        if self._hb_at is not None:
            cands.append(self._hb_at)
        if self._compact_at is not None:
            cands.append(self._compact_at)
        if self._probe_answer_at is not None:
            cands.append(self._probe_answer_at)
        for s in self._sources.values():
            if s.missing:
                memo: dict[int, int] = {}
                due = min((d for seq, m in s.missing.items()
                           if (d := self._nack_due(s, seq, m, memo)) is not None), default=None)
                if due is not None:
                    cands.append(due)
        if self._holder_repairs:
            cands.append(min(self._holder_repairs.values()))
        if self._snap_answers:
            cands.append(min(self._snap_answers.values()))
        if self._pending is not None:
            cands.append(self._pending.due)
        f = self._fetch
        if f is not None:
            if f.snap_id == 0:
                cands.append(f.asked_at + self.timers.join_retry)
            elif f.total == 0:  # claimed: the offer follows once its server has built it
                cands.append(max(min(f.last_chunk + self.timers.snap_give_up,
                                     f.asked_at + self.timers.join_retry), f.recheck))
            else:
                cands.append(max(f.last_chunk, f.asked_at) + self.timers.snap_idle)
        q = self._repairs if self.blocked else (self._repairs or self._data or self._bulk)
        if q:
            need = (self._pace_run()[1] if q is self._data and self._run_left == 0
                    else len(q[0]) + self._overhead)
            cands.append(self._bucket.ready_at(need, self._now))
        return min(cands)

    # ------------------------------------------------------------------ public state

    @property
    def peers(self) -> dict[int, Peer]:
        return {pid: p for pid, p in self._peers.items() if p.alive}

    def source_state(self, source: int) -> Source | None:
        return self._sources.get(source)

    def missing_count(self) -> int:
        return sum(len(s.missing) for s in self._sources.values())

    def synced(self) -> bool:
        """We hold everything every live peer has sent, and they hold everything we sent."""
        if self.joining or self._open or self._data or self._repairs or self._encoding:
            return False
        for s in self._sources.values():
            if s.contiguous < s.highest:
                return False
        for p in self.peers.values():
            if p.joining:
                return False
            if self.seq and p.holds.get(self.id, 0) < self.seq:
                return False
            src = self._sources.get(p.id)
            if p.highest and (src is None or src.contiguous < p.highest):
                return False
        return True

    @property
    def encoding(self) -> bool:
        """A big paste of ours is still being encoded (as the pacer sends it)."""
        return self._encoding is not None

    def has_pending(self) -> bool:
        """Datagrams are waiting for the pacer (or the open datagram for its deadline)."""
        return bool(self._open or self._control or self._repairs or self._data or self._bulk
                    or self._encoding is not None)

    def probe(self, now: float) -> None:
        """Ask every peer for a fresh session message (used while waiting to be synced)."""
        self._send_session(now, probe=True)

    # ------------------------------------------------------------------ persistence

    @property
    def state_version(self) -> tuple:
        """Changes whenever the state worth saving changes (board, coverage, our data)."""
        return (self.board.version, self.seq, self.stats.data_received,
                self.stats.snapshots_received)

    def export_state(self, now: float) -> tuple[Board, dict[int, tuple[int, int]]]:
        """A frozen copy of the board and, per source, (contiguous seq, settled opno) that
        it covers: what autosave writes (``store.dump`` of it, in another thread)."""
        self._flush(now)  # records in the open datagram are on the board already
        sources = {sid: (s.contiguous, s.settled) for sid, s in self._sources.items()
                   if s.anchored and sid != self.id}
        sources[self.id] = (self.seq, self._my_source.settled)
        return self.board.frozen(), sources

    def import_state(self, board: Board, sources: dict[int, tuple[int, int]],
                     now: float) -> None:
        """Start from a board saved by an earlier run (merged like a snapshot). Its sources
        count as held as far as the file covers them, so the group NACKs what it lacks of
        them and, as nobody can repair those, fetches our state: both sides end with the
        union. Our own id is new in every run: earlier runs are just other sources."""
        if (board.width, board.height) != self.size:
            raise ValueError(f"a {board.width}x{board.height} board for a "
                             f"{self.size[0]}x{self.size[1]} canvas")
        self.board.merge(board)
        for sid, (contig, settled) in sources.items():
            if sid == self.id:
                continue
            src = self._source(sid, now)
            if src is None:
                continue
            src.anchored = True
            src.contiguous = max(src.contiguous, contig)
            src.highest = max(src.highest, src.contiguous)
            src.settled = max(src.settled, settled)
        # New operations must stamp above everything loaded, or they would hide under it.
        top = int(board._base_stamp.max()) >> 32 if board._base_stamp.size else 0
        for e in board._log.values():
            top = max(top, e.rec.lamport)
        self.lamport = max(self.lamport, min(top, 0xFFFFFFFE))

    # ------------------------------------------------------------------ drawing

    def _next_op(self) -> tuple[int, int]:
        self.opno += 1
        self.lamport = min(self.lamport + 1, 0xFFFFFFFF)
        return self.opno, self.lamport

    def _push_undo(self, opno: int) -> None:
        self._undo.append(opno)
        self._redo.clear()
        self._trim_undo()

    def _trim_undo(self) -> None:
        floor = self.opno + 1 - UNDO_WINDOW + 8
        self._undo = [o for o in self._undo[-UNDO_DEPTH:] if o > floor]
        self._redo = [o for o in self._redo if o > floor]

    def paint(self, index: np.ndarray, color: Color, now: float) -> int:
        """A new operation setting the given flat pixel indices to one colour."""
        opno, lamport = self._next_op()
        self._push_undo(opno)
        self._emit(Paint(self.id, opno, lamport, tuple(color), index), now)
        return opno

    def stroke(self, points, width: int, color: Color, now: float) -> int:
        """A new operation: a polyline with a round brush, sent as geometry."""
        opno, lamport = self._next_op()
        self._push_undo(opno)
        self._emit(StrokePath(self.id, opno, lamport, tuple(color), int(width),
                              np.asarray(points, dtype=np.int64).reshape(-1, 2)), now)
        return opno

    def extend_stroke(self, opno: int, points, width: int, color: Color, now: float) -> None:
        """More of a stroke already begun: the segment(s) through ``points``."""
        lamport = self._op_lamport.get(opno)
        if lamport is None:
            raise ValueError(f"operation {opno} was not begun here or has ended")
        self._emit(StrokePath(self.id, opno, lamport, tuple(color), int(width),
                              np.asarray(points, dtype=np.int64).reshape(-1, 2)), now)

    def begin(self, now: float) -> int:
        """Start an operation whose segments come later through :meth:`extend_stroke`."""
        opno, lamport = self._next_op()
        self._push_undo(opno)
        self._op_lamport = {opno: lamport}  # only the latest begun operation can grow
        return opno

    def paste(self, rgba: np.ndarray, x: int, y: int, now: float) -> int:
        opno, lamport = self._next_op()
        self._push_undo(opno)
        self._emit(Image(self.id, opno, lamport, x, y, rgba), now)
        return opno

    def clear(self, now: float) -> int:
        opno, lamport = self._next_op()
        self._push_undo(opno)
        self._emit(Clear(self.id, opno, lamport), now)
        return opno

    def undo(self, now: float) -> bool:
        self._trim_undo()
        if not self._undo:
            return False
        target = self._undo.pop()
        self._redo.append(target)
        opno, _ = self._next_op()
        self._emit(Toggle(self.id, opno, target, False), now)
        return True

    def redo(self, now: float) -> bool:
        self._trim_undo()
        if not self._redo:
            return False
        target = self._redo.pop()
        self._undo.append(target)
        opno, _ = self._next_op()
        self._emit(Toggle(self.id, opno, target, True), now)
        return True

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def cursor(self, x: int, y: int, hidden: bool, now: float) -> None:
        self._control.append(wire.encode_cursor(self.id, self._sent_seq, self.size,
                                                wire.Cursor(x, y, hidden)))

    def goodbye(self, now: float) -> None:
        """Flush what is pending and say goodbye (the caller sends what comes out): the
        goodbye goes after our last data, and names it."""
        self._finish_encoding(now)
        self._flush(now)
        self._data.append(wire.encode_empty(wire.MsgType.GOODBYE, self.id, self.seq, self.size))

    def _emit(self, rec: Record | StrokePath, now: float) -> None:
        w, h = self.size
        self._finish_encoding(now)  # operations go out in the order they were made
        if isinstance(rec, StrokePath):
            pieces = wire.encode_stroke_work(rec, w, h, self._budget)
        elif isinstance(rec, Image) and rec.rgba.shape[0] * rec.rgba.shape[1] > LAZY_IMAGE:
            # A big paste is encoded as the pacer sends it (_encode_ahead): its first
            # datagrams leave at once instead of after the whole image is compressed.
            self._encoding = wire.iter_image(rec, self._budget)
            # Shown here at once all the same; the bands replace it as they are made.
            self._provisional = self.board.apply_provisional(rec)
            self.stats.pixels_painted += int(rec.rgba.shape[0] * rec.rgba.shape[1])
            self._encode_ahead(now)
            return
        else:
            pieces = [(piece, frag, 0) for piece, frag in
                      wire.encode_record(rec, w, self._budget, height=h)]
        for piece, frag, work in pieces:
            self._place(piece, frag, work, now)
        self._maybe_flush(now)

    def _encode_ahead(self, now: float, upto: int = 0) -> None:
        """Encode more of a big paste, until ``upto`` datagrams wait for the pacer (0:
        ENCODE_AHEAD), or all of it (``upto`` < 0)."""
        it = self._encoding
        if it is None:
            return
        upto = upto or ENCODE_AHEAD
        while upto < 0 or len(self._data) < upto:
            item = next(it, None)
            if item is None:
                self._encoding = None
                self.board.drop_provisional(self._provisional)
                self._provisional = None
                self._flush(now)
                return
            self._place(item[0], item[1], 0, now, count=False)

    def _finish_encoding(self, now: float) -> None:
        self._encode_ahead(now, -1)

    def _place(self, piece: bytes, frag, work: int, now: float, count: bool = True) -> None:
        """Put one record into the open datagram (flushing it first if full) and apply it
        here, under the key every receiver will apply it with."""
        if (self._open_len + len(piece) > self._budget
                or self._open_work + work > wire.MAX_DATAGRAM_STROKE_WORK):
            self._flush(now)
        self._open_work += work
        if not self._open:
            self._open_deadline = now + self.timers.flush_delay
        idx = len(self._open)
        self._open.append(piece)
        self._open_len += len(piece)
        self._open_maxop = max(self._open_maxop, frag.opno)
        if self.board.apply(frag, self.id, self.seq + 1, idx) and count:
            if isinstance(frag, Paint):
                self.stats.pixels_painted += int(frag.index.size)
            elif isinstance(frag, Image):
                self.stats.pixels_painted += int(frag.rgba.shape[0] * frag.rgba.shape[1])

    def _maybe_flush(self, now: float) -> None:
        if not self._open:
            return
        if now - self._last_flush >= self.timers.flush_delay or (
                self._open_deadline is not None and now >= self._open_deadline):
            self._flush(now)

    def _flush(self, now: float) -> None:
        if not self._open:
            return
        self.seq += 1
        datagram = wire.encode_header(wire.MsgType.DATA, self.id, self.seq, self.size) + b"".join(
            self._open)
        self._open.clear()
        self._open_len = 0
        self._open_work = 0
        self._open_deadline = None
        gap = now - self._last_flush
        if gap < 0.1:  # drawing: learn the pace, so heartbeats do not fall between segments
            self._flush_gap += (gap - self._flush_gap) / 4
        self._last_flush = now
        self._data.append(datagram)
        self.stats.data_sent += 1
        self._cache_put((self.id, self.seq), datagram)
        me = self._my_source
        me.contiguous = me.highest = self.seq
        # (the latest operation may go on: a stroke still being drawn)
        self.board.settle(self.id, self._open_maxop - 1)
        if self._compact_at is None and self.board.compact_pending:
            self._compact_at = now + COMPACT_DELAY
        self._hb_index = 0
        # The first heartbeat waits a little longer than the gap between our datagrams
        # while drawing (about 8 ms at mouse rate), since the next datagram reveals a loss.
        self._hb_at = now + min(max(self.timers.heartbeats[0], 1.5 * self._flush_gap), 0.03)

    # ------------------------------------------------------------------ input

    def urgent(self, data: bytes) -> bool:
        """Should this datagram be handled before others already waiting? Repairs, NACKs
        and snapshot requests and offers (a busy peer that read an offer only after its own
        answer was due offered a second snapshot, every chunk of it multicast): a glance at
        the header, nothing checked (a wrong answer only changes the order; on a passphrase
        board the header is sealed and everything keeps its order)."""
        return (self._opener is None and len(data) > 4 and data[:2] == wire.MAGIC
                and (data[3] in _URGENT
                     or (data[3] in (wire.MsgType.DATA, wire.MsgType.PARITY)
                         and bool(data[4] & wire.FLAG_REPAIR))))

    def is_own(self, data: bytes) -> bool:
        """Is ``data`` one of our own datagrams, looped back to us? (A glance at the
        sender field, authenticated or not; never raises.)"""
        if self._opener is not None:
            return seal.peek_transmitter(data) == self.id
        return (len(data) >= wire.HEADER.size and data[:2] == wire.MAGIC
                and int.from_bytes(data[5:9], "big") == self.id)

    def note_read(self, data: bytes, addr: tuple | None, at: float, now: float) -> bool:
        """``data`` (arrived at ``at``) was just read at ``now`` into the edge's receive
        queue, behind others not yet handed over: if it is an author's own DATA or
        proactive parity, what it shows missing is missing now, not when the queue
        reaches it. (A receiver behind on a paste found a loss only after its backlog,
        and its NACK left 25 ms after the datagram that showed the gap.) A glance at the
        header, checked as :meth:`receive_datagram` would (version, size, the host the
        sender id is bound to, the receive window, flood quarantine); the datagram is
        handled in full when its turn comes. True if it was noted (the edge hands that
        over with it). Never raises."""
        if (self._opener is not None or addr is None or len(data) < _HEAD_SIZE
                or data[:2] != wire.MAGIC):
            return False
        _, version, mtype, flags, sender, seq, width, height = wire.HEADER.unpack_from(data)
        if mtype == wire.MsgType.PARITY:
            limit = wire.MAX_WIRE
        elif mtype == wire.MsgType.DATA:
            limit = wire.MAX_DATAGRAM
        else:
            return False
        if (flags & wire.FLAG_REPAIR or version != wire.VERSION or sender == self.id
                or len(data) > limit or (width, height) != self.size):
            return False
        src = self._sources.get(sender)
        bound = self._bound.get(sender)
        if (src is None or not src.anchored or src.given_up or seq == 0
                or bound is None or bound[0] != addr[0]
                or (self._quarantine and self._quarantined(sender, now))):
            return False
        if mtype == wire.MsgType.PARITY:
            if len(data) < _HEAD_SIZE + 4:
                return False
            top = (int.from_bytes(data[_HEAD_SIZE:_HEAD_SIZE + 4], "big") + 1) * wire.FEC_K
            if top > seq or top <= src.contiguous:
                return False  # parity it says it has not sent, or of what we hold: dropped
        else:
            top = seq - 1
        if top > src.contiguous + self.timers.receive_window:
            return False
        if mtype == wire.MsgType.PARITY:
            self._count_parity_read(src, wire.fec_block(top))
        lo = max(src.read, src.contiguous) + 1
        if mtype == wire.MsgType.DATA and seq > src.read:
            src.read = seq
            # The loss meter counts as datagrams are read (what is received and what is
            # missed alike: counting one when read and the other when handled made a
            # receiver seconds behind report several times its loss).
            self.loss_meter.received()
        if top < lo or len(src.missing) + top - lo + 1 > self.timers.snapshot_gap:
            return True  # nothing skipped, or so much that its turn will ask for a snapshot
        missing = src.missing
        for s in range(lo, top + 1):
            m = missing.get(s)
            if m is not None:
                # Known from a third party's report, so far maybe in our queue: it is not.
                m.soft = False
            elif s not in src.held:
                self._lost(src, s, now, at)
                self.stats.gaps_read += 1
        return True

    def _count_parity_read(self, src: Source, b: int) -> None:
        """One proactive parity symbol of block ``b`` of ``src`` read."""
        reads = src.parity_reads
        reads[b] = reads.get(b, 0) + 1
        if b > src.parity_read:
            src.parity_read = b
        if len(reads) > PARITY_READS_KEPT:
            floor = max(wire.fec_block(src.contiguous + 1),
                        src.parity_read - PARITY_READS_KEPT // 2)
            for k in [k for k in reads if k < floor]:
                del reads[k]

    def receive_datagram(self, data: bytes, addr: tuple | None, now: float,
                         noted: bool = False) -> None:
        """One datagram from the network, sent from ``addr`` ((host, port), or None when
        unknown); ``noted``: :meth:`note_read` saw it (and said so) when it was read.
        Never raises on bad input: counts and drops."""
        self._now = max(self._now, now)
        self._noted = noted
        st = self.stats
        st.datagrams_received += 1
        st.bytes_received += len(data)
        if self._opener is not None:
            if self.is_own(data):
                st.ignored_own += 1
                return
            try:
                data = self._opener.open(data).inner
            except seal.SealError as err:
                setattr(st, err.counter, getattr(st, err.counter) + 1)
                if isinstance(err, seal.WrongKeyError) and not self._warned(("key", err.key_id)):
                    self._events.append(OtherBoard("other-key", err.key_id))
                elif isinstance(err, seal.NotSealedError) and not self._warned(("open",)):
                    self._events.append(OtherBoard("open", None))
                return
        elif seal.is_sealed(data):
            st.rejected_sealed += 1
            key_id = seal.sealed_key_id(data)
            if not self._warned(("sealed", key_id)):
                self._events.append(OtherBoard("protected", key_id))
            return
        try:
            h = wire.decode_header(data)
        except wire.DecodeError:
            st.rejected_malformed += 1
            return
        if h.sender == self.id:
            st.ignored_own += 1
            return
        host = addr[0] if addr else None
        if not self._flood.take((host, h.sender), 1, now):
            st.rejected_flood += 1
            if h.type == wire.MsgType.DATA:
                self._quarantine_source(h.sender, h.seq, now)
            return
        if h.version != wire.VERSION:
            st.rejected_version += 1
            peer = self._peers.get(h.sender)
            if (peer is None or peer.alive) and not self._warned(("version", h.sender)):
                self._events.append(VersionMismatch(h.sender, h.version))
            return
        if h.sender == 0 or h.type not in _TYPES:
            st.rejected_malformed += 1
            return
        if (h.width, h.height) != self.size:
            st.rejected_size += 1
            # Reported from a session message, which names the peer (every peer sends one
            # as it starts and about once a second).
            if h.type == wire.MsgType.SESSION:
                try:
                    name = wire.decode_session(memoryview(data)[wire.HEADER.size:]).name
                except wire.DecodeError:
                    name = None
                if name is not None and not self._warned(("size", h.sender)):
                    self._events.append(SizeMismatch(h.sender, name, (h.width, h.height)))
            return
        if host is not None and not (h.type == wire.MsgType.DATA and h.flags & wire.FLAG_REPAIR):
            # A repair carries its author's id but comes from any holder; everything else
            # must come from the address the sender id was first heard from.
            if not self._bind(h.sender, host, now):
                st.rejected_spoofed += 1
                return
        body = memoryview(data)[wire.HEADER.size:]
        try:
            handler = self._handlers[h.type]
            handler(self, h, body, data, now)
            if self._compact_at is None and self.board.compact_pending:
                self._compact_at = now + COMPACT_DELAY
            if self._early_count:
                for sid in list(self._early):
                    src = self._sources.get(sid)
                    if src is not None:
                        self._release_early_repairs(src, now)
        except wire.DecodeError:
            st.rejected_malformed += 1
        except store.StoreError:
            st.rejected_snapshot += 1
        finally:
            # A peer's datagram, from its address: the group is not silent. (Noted after
            # the handler, which does not look: a stroke datagram reaches the board first.)
            self._last_heard_other = now
            if self._silence_wait != self.timers.silence_rejoin:
                self._silence_wait = self.timers.silence_rejoin
            self._silence_at = now + self._silence_wait

    def _quarantined(self, sid: int, now: float) -> bool:
        until = self._quarantine.get(sid)
        return until is not None and until > now

    def _quarantine_source(self, sid: int, seq: int, now: float) -> None:
        """A sender over the flood limit: for ``flood_quarantine`` its DATA is refused and
        what we miss of it is skipped, not NACKed (we refused it ourselves, and it would not
        repair). Honest peers keep their sync with each other."""
        if sid not in self._quarantine and len(self._quarantine) >= 1024:
            for k in [k for k, until in self._quarantine.items() if until <= now]:
                del self._quarantine[k]
            if len(self._quarantine) >= 1024:
                return
        self._quarantine[sid] = now + self.timers.flood_quarantine
        src = self._sources.get(sid)
        if src is not None and src.anchored and sid != self.id:
            self._skip(src, seq, refused=True)

    def _skip(self, src: Source, top: int, refused: bool = False) -> None:
        """Stop waiting for ``src``'s datagrams up to ``top``: count those never held as
        unrecoverable (or, for a flood we refused, as rejected_flood) and move on."""
        top = max(top, src.contiguous)
        if src.held:
            held_below = [s for s in src.held if s <= top]
            for s in held_below:
                src.held.discard(s)
                src.settled = max(src.settled, src.maxop.pop(s, 0))
        else:
            held_below = ()
        lost = top - src.contiguous - len(held_below)
        if refused:
            self.stats.rejected_flood += lost
        else:
            self.stats.unrecoverable += lost
            if lost:
                said = max((p.holds.get(src.id, 0) for p in self._peers.values() if p.alive),
                           default=0)
                self.skips.append((self._now, src.id, src.contiguous + 1, top, lost, said))
        src.contiguous = top
        src.highest = max(src.highest, top)
        for s in [s for s in src.missing if s <= top]:
            del src.missing[s]
        self._advance(src)

    def _bind(self, peer: int, host: str, now: float) -> bool:
        """Is ``host`` the address of ``peer``? The first address heard binds an id; a
        new one takes over only once the old one has been silent for ``peer_timeout``."""
        b = self._bound.get(peer)
        if b is None:
            if len(self._bound) >= 2 * self.timers.max_sources:
                limit = now - self.timers.peer_timeout
                for k in [k for k, v in self._bound.items() if v[1] < limit]:
                    del self._bound[k]
                if len(self._bound) >= 2 * self.timers.max_sources:
                    return True  # nothing to spare: accept unbound rather than refuse peers
            self._bound[peer] = [host, now]
            return True
        if b[0] == host:
            b[1] = now
            return True
        if now - b[1] > self.timers.peer_timeout:
            b[0], b[1] = host, now
            return True
        return False

    _warned_keys: set

    def _warned(self, key) -> bool:
        ws = self.__dict__.setdefault("_warned_keys", set())
        if key in ws:
            return True
        if len(ws) < 1024:
            ws.add(key)
        return False

    def _touch(self, h: wire.Header, now: float) -> Peer | None:
        p = self._peers.get(h.sender)
        if p is not None:
            p.last_heard = now
            p.highest = max(p.highest, h.seq) if h.type != wire.MsgType.DATA else p.highest
            if not p.alive:
                p.alive = True
                self._events.append(PeerJoined(p.id, p.name, p.color))
        return p

    def _source(self, sid: int, now: float) -> Source | None:
        s = self._sources.get(sid)
        if s is None:
            if len(self._sources) >= self.timers.max_sources:
                self.stats.rejected_cap += 1
                return None
            s = Source(sid, anchored=not self.joining)
            self._sources[sid] = s
        return s

    def _announce(self, src: Source, highest: int, now: float, soft: bool = False) -> None:
        """``highest`` of ``src`` exists: note what we miss. ``soft``: a third party says
        so (what it holds may still be in our receive queue)."""
        if highest <= src.highest:
            return
        if self._quarantine and self._quarantined(src.id, now):
            self._skip(src, highest, refused=True)
            return
        if not src.anchored:
            # While joining we only learn where the source stands; the snapshot anchors it.
            src.highest = highest
            return
        lo = max(src.highest + 1, src.contiguous + 1)
        if soft:
            # What we have read into our queue, or found missing as we read, is not news.
            lo = max(lo, src.read + 1)
        if len(src.missing) + highest - lo + 1 > self.timers.snapshot_gap:
            # Too many datagrams missing to ask for one by one: a snapshot. (Counted, not
            # measured from contiguous: during a paste with loss, the span above the first
            # gap grows fast while little of it is missing, and snapshots for all would be
            # a storm of their own.)
            src.highest = highest
            self._give_up(src, highest - lo + 1, now)
            return
        soft = soft and self.backlog > 0
        # The wait starts when we notice the gap, not when the datagram that shows it was
        # read (``now``): a receiver behind on its queue would otherwise NACK at once,
        # before the parity or repair queued behind that datagram is reached.
        noticed = max(now, self._now)
        for s in range(lo, highest + 1):
            if s not in src.held and s not in src.missing:
                self._lost(src, s, noticed, now, soft)
        src.highest = highest

    def _lost(self, src: Source, seq: int, noticed: float, detected: float,
              soft: bool = False) -> None:
        """``seq`` of ``src`` is missing, noticed at ``noticed`` (its NACK waits from then)
        and shown by a datagram that arrived at ``detected`` (repair delays count from
        then): count it, for the loss meter and the author's tally too."""
        src.missing[seq] = Miss(noticed + self._nack_delay(), 0, detected, soft=soft)
        self.stats.gaps += 1
        self.loss_meter.missed()
        p = self._peers.get(src.id)
        if p is not None:
            p.lost += 1

    def _give_up(self, src: Source, count: int, now: float) -> None:
        """NACKs cannot fill this source's gaps: ask for a snapshot. After several
        snapshots that did not fill them either, nobody holds them: skip them."""
        if src.given_up:
            return
        src.given_up = True
        if src.contiguous != src.stuck_at:
            # It moved since the last give-up (that snapshot, or NACKs, filled what it
            # could): a new gap, counted from 1. (Counted over a source's whole life, a
            # long-lived author's 13th gap was skipped at once, while it was alive and
            # others held it: the seed-7 soak's skips of live authors.)
            src.give_ups = 0
            src.stuck_at = src.contiguous
        src.give_ups += 1
        self._events.append(Unrecoverable(src.id, count))
        if src.give_ups > GIVE_UPS and src.give_ups <= MAX_GIVE_UPS and self._can_fill(src, now):
            # Its author is here, or a peer says it holds more of it than we do (from the
            # datagrams, or from a snapshot): the gap can still be filled, by NACKs once
            # a partition heals or a loaded author catches up, or by that peer's snapshot.
            # (The 10-minute soak skipped such gaps and ended with divergent boards.)
            pass
        elif src.give_ups > GIVE_UPS:
            # Nobody holds them: skip the whole gap (not only the numbers we enumerated:
            # a gap beyond snapshot_gap never was), counting what was never held.
            src.given_up = False
            src.give_ups = 0
            self._skip(src, src.highest)
            return
        src.missing.clear()
        if self._fetch is None:
            self.stats.gap_fetches += 1
        self._start_fetch(now, target=self._holder_of(src))

    def _can_fill(self, src: Source, now: float) -> bool:
        return self._author_alive(src.id, now) or any(
            p.alive and not p.joining and p.holds.get(src.id, 0) > src.contiguous
            for p in self._peers.values())

    def _on_data(self, h: wire.Header, body, data: bytes, now: float) -> None:
        self._take_data(h, body, data, now)
        # Any copy of this datagram on the wire makes repairs of it redundant for a while.
        # (Noted after it is taken, as is all that does not decide whether and how it is
        # applied: an idle receiver wakes with cold caches, and every step before the
        # apply is on the path from the author's board to this one.)
        key = (h.sender, h.seq)
        self._holddown[key] = now + self._holddown_time()
        if self._holder_repairs.pop(key, None) is not None:
            self.stats.holder_repairs_cancelled += 1

    def _take_data(self, h: wire.Header, body, data: bytes, now: float) -> None:
        """Check, decode and apply an author's datagram, then note what it tells."""
        repair = bool(h.flags & wire.FLAG_REPAIR)
        # (Heard from: the author is alive, before anything below judges a gap by that.)
        p = self._peers.get(h.sender) if repair else self._touch(h, now)
        src = self._source(h.sender, now)
        if src is None:
            return
        seq = h.seq
        if seq == 0:
            self.stats.rejected_malformed += 1
            return
        if self._quarantine and self._quarantined(h.sender, now):
            self.stats.rejected_flood += 1
            if src.anchored and seq > src.contiguous:
                self._skip(src, seq, refused=True)
            return
        if not repair:
            src.heard = now
            if seq > src.handed:
                src.handed = seq
                if seq > src.read:
                    src.read = seq
        if seq <= src.contiguous or seq in src.held:
            self.stats.duplicates += 1
            return
        if repair and src.anchored and seq > src.highest and seq not in src.missing:
            # Nobody has told us this datagram exists yet: someone else's NACK was answered
            # before the news reached us, or it is a forgery meant to pre-empt the author's
            # own datagram. Hold it until we learn the datagram exists; the author's own
            # copy, if it comes first, wins. (One we know is missing, from what we read
            # into our receive queue, is taken at once.)
            self._hold_early_repair(src, seq, data, now)
            return
        if src.anchored and seq > src.contiguous + self.timers.receive_window:
            self.stats.rejected_window += 1
            self._announce(src, seq, now)
            return
        try:
            records = wire.decode_records(body, h.sender, *self.size)
        except wire.DecodeError:
            self.stats.rejected_malformed += 1
            self._refused_after_read(src, seq, repair, now)
            return
        if len(src.held) >= self.timers.receive_window:
            self.stats.rejected_window += 1
            self._refused_after_read(src, seq, repair, now)
            return
        for idx, rec in enumerate(records):
            if not isinstance(rec, Toggle):
                if rec.lamport >= self.lamport:
                    self.lamport = min(rec.lamport, 0xFFFFFFFE)
            elif not rec.valid:
                self.stats.rejected_records += 1
            self.board.apply(rec, h.sender, seq, idx)
        self.stats.data_received += 1
        if repair:
            self.stats.repairs_received += 1
        if p is not None:
            p.datagrams += 1
        if not src.anchored and src.first_seen == 0:
            src.first_seen = seq
            src.contiguous = seq - 1  # provisional until the snapshot anchors it
        if not repair:
            # (A repair jumped our queue: what is below it may be there. One above what
            # we know exists was held until we knew, see above.)
            self._announce(src, seq - 1, now)
        miss = src.missing.pop(seq, None)
        if not repair:
            if miss is not None:
                self.loss_meter.late()
            elif not self._noted:
                self.loss_meter.received()  # else counted when read (note_read)
        if miss is not None:
            self.stats.recovered += 1
            if now >= miss.detected:
                self.repair_latencies.append(now - miss.detected)
            else:
                # It reached us before we counted it missing (a third party's report was
                # read first, it waited in our receive queue): never lost, nothing repaired.
                self.stats.gaps_queued += 1
            if miss.attempt:
                self.stats.recovered_after_nack += 1
                self._repair_rtt += (now - miss.asked - self._repair_rtt) / 8
        src.highest = max(src.highest, seq)
        src.held.add(seq)
        src.maxop[seq] = records[0].opno if len(records) == 1 else max(r.opno for r in records)
        self._cache_put((h.sender, seq), wire.with_flags(data, 0) if repair else data)
        self._advance(src)
        if self._parity_in:
            # this block, or the one before, whose last datagrams we now know are missing
            b = wire.fec_block(seq)
            for blk in (b - 1, b):
                if (h.sender, blk) in self._parity_in:
                    self._rebuild(src, blk, now)

    def _refused_after_read(self, src: Source, seq: int, repair: bool, now: float) -> None:
        """An author's datagram that :meth:`note_read` saw as it was read, refused now: it
        is missing. (Nothing else would say so: what came after it was read already, and a
        repair or a third party may have raised ``highest`` past it.)"""
        if (self._noted and not repair and src.anchored and seq > src.contiguous
                and seq not in src.held and seq not in src.missing):
            src.missing[seq] = Miss(max(now, self._now) + self._nack_delay(), 0, now)
            self.stats.gaps += 1

    def _hold_early_repair(self, src: Source, seq: int, data: bytes, now: float) -> None:
        held = self._early.setdefault(src.id, {})
        if seq in held:
            return
        if self._early_count >= MAX_EARLY_REPAIRS or seq > src.highest + EARLY_REPAIR_AHEAD:
            self.stats.rejected_repair += 1
            return
        held[seq] = (now, data)
        self._early_count += 1

    def _release_early_repairs(self, src: Source, now: float) -> None:
        """Repairs held for datagrams we now know exist (or that arrived meanwhile)."""
        held = self._early.get(src.id)
        if not held:
            return
        for seq in sorted(s for s in held if s <= src.highest or s <= src.contiguous
                          or s in src.held):
            came, data = held.pop(seq)
            self._early_count -= 1
            if seq > src.contiguous and seq not in src.held:
                # held since it came: its repair delay counts to then, not to when the
                # datagram that released it arrived (it may have waited in our queue)
                self._on_data(wire.decode_header(data), memoryview(data)[wire.HEADER.size:],
                              data, max(now, came))
        if not held:
            self._early.pop(src.id, None)

    def _expire_early_repairs(self, now: float) -> None:
        for sid in list(self._early):
            held = self._early[sid]
            for seq in [s for s, (t, _) in held.items() if now - t > 1.0]:
                del held[seq]
                self._early_count -= 1
                self.stats.rejected_repair += 1
            if not held:
                del self._early[sid]

    def _advance(self, src: Source) -> None:
        moved = False
        while src.contiguous + 1 in src.held:
            src.contiguous += 1
            src.held.discard(src.contiguous)
            op = src.maxop.pop(src.contiguous, 0)
            if op > src.settled:
                src.settled = op
            moved = True
        if moved and src.anchored:
            # Records of opno < the largest seen are complete; that opno may continue.
            self.board.settle(src.id, src.settled - 1)
        if src.finished and src.anchored and src.contiguous >= src.finished:
            # It said goodbye and we hold all it sent: none of its operations can change
            # any more (ids are per run), so they are final and fold into the base layer.
            src.finished = 0
            self.board.settle(src.id, src.settled + UNDO_WINDOW)
            self.stats.departed_folds += 1

    def _on_heartbeat(self, h, body, data, now) -> None:
        self._touch(h, now)
        src = self._source(h.sender, now)
        if src is not None:
            self._announce(src, h.seq, now)

    def _on_goodbye(self, h, body, data, now) -> None:
        self._on_heartbeat(h, body, data, now)
        src = self._sources.get(h.sender)
        if src is not None and src.id != self.id:
            src.finished = max(h.seq, 1)
            self._advance(src)
        p = self._peers.get(h.sender)
        if p is not None and p.alive:
            p.alive = False
            self._events.append(PeerLeft(p.id, "goodbye"))

    def _on_session(self, h, body, data, now) -> None:
        s = wire.decode_session(body)
        p = self._peers.get(h.sender)
        new = p is None
        if p is None:
            if len(self._peers) >= self.timers.max_peers:
                self.stats.rejected_cap += 1
                return
            p = Peer(h.sender, s.name, s.color, now)
            self._peers[h.sender] = p
            self._events.append(PeerJoined(p.id, p.name, p.color))
        elif (p.name, p.color) != (s.name, s.color):
            p.name, p.color = s.name, s.color
            self._events.append(PeerUpdated(p.id, p.name, p.color))
        self._touch(h, now)
        p.joining = bool(s.flags & wire.SESSION_JOINING)
        if not p.joining:
            self._heard_synced_peer = True
        p.holds = {e.source: e.contiguous for e in s.entries}
        p.last_ts, p.ts_heard = s.ts, now
        p.loss = s.loss
        self._count_session(p, s.count)
        for e in s.entries:
            if e.source == self.id and e.echo:
                # RTCP's round trip: our clock now, less our stamp it echoes, less the
                # time it held it before answering.
                rtt = ((self._ts(now) - e.echo - e.held) & 0xFFFFFFFF) * wire.TS_UNIT
                if rtt < 10.0:
                    p.rtt = rtt if p.rtt is None else p.rtt + (rtt - p.rtt) / 4
                    p.rtt_samples.append(rtt)
                break
        if (s.digest and s.vector and not p.joining and not self.joining
                and self._fetch is None and self.board.version == self._session_version
                and now - self._ae_asked.get(p.id, -1e9) >= self.timers.anti_entropy_interval
                and s.vector == self._vector() and s.digest != self._digest64()):
            # Anti-entropy: it holds exactly the datagrams we hold, yet its board differs
            # (a restarted peer's file, datagrams nobody could repair). Fetch its state
            # and merge it; it does the same with ours, and both end with the union.
            self._ae_asked[p.id] = now
            self.stats.divergences += 1
            self._events.append(Divergence(p.id))
            self._start_fetch(now, target=p.id)
        src = self._source(h.sender, now)
        if src is not None:
            self._announce(src, h.seq, now)
        if not p.joining:
            for e in s.entries:
                if e.source == self.id:
                    continue
                other = self._sources.get(e.source)
                if other is None and e.highest > 0:
                    other = self._source(e.source, now)
                if other is not None:
                    self._announce(other, e.highest, now, soft=True)
        # A probe, or a newcomer that does not know us yet: tell it about us soon.
        if (new or s.flags & wire.SESSION_PROBE) and self._probe_answer_at is None:
            if now - self._last_probe_answer > 0.05:
                self._probe_answer_at = now + self.rng.uniform(0, self.timers.probe_answer_max)

    def _count_session(self, p: Peer, count: int) -> None:
        """The loss meter counts the SESSIONs of ``p`` we missed, by their numbers."""
        if p.session_count is not None:
            step = (count - p.session_count) & 0xFFFF
            if step > 0xFFFF - SESSION_COUNT_JUMP or step == 0:
                return  # an old one arriving late, or a copy
            if step <= SESSION_COUNT_JUMP:
                self.loss_meter.received()
                if step > 1:
                    self.loss_meter.missed(step - 1)
        p.session_count = count

    def _on_nack(self, h, body, data, now) -> None:
        n = wire.decode_nack(body)
        self._touch(h, now)
        self.stats.nacks_received += 1
        src = self._sources.get(n.source)
        author_alive = n.source == self.id or self._author_alive(n.source, now)
        if sum(c for _, c in n.ranges) > MAX_NACK_SEQS:
            self.stats.rejected_nack += 1
            return
        requester = h.sender
        if n.source == self.id and n.parity and n.attempt == 1 and len(self._par_nacked) < 4096:
            since = self._par_from
            asked = [(f, c) for f, c in n.ranges if wire.fec_block(f) >= since]
            if asked:
                # Blocks counted once each: a receiver names a block's gaps as each one's
                # wait ends, in several NACKs (counted per NACK, one block NACKed in three
                # raised the parity as two blocks would).
                named, bs = self._par_nacked.get(requester, (0, set()))
                for f, c in asked:
                    for b in range(wire.fec_block(f), wire.fec_block(f + c - 1) + 1):
                        if len(bs) >= PAR_NACKED_BLOCKS:
                            break
                        bs.add(b)
                self._par_nacked[requester] = (named + sum(c for _, c in asked), bs)
        if n.source == self.id and n.attempt == 1 and len(self._rate_nacked) < 4096:
            self._rate_nacked[requester] = self._rate_nacked.get(requester, 0) + sum(
                max(0, min(first + count - 1, self._sent_seq) - first + 1)
                for first, count in n.ranges)
        answered: set[int] = set()
        if n.parity:
            # "Any ``count`` symbols of each of these blocks": the author answers with new
            # parity; a receiver missing no more of a block than that waits for it.
            blocks: dict[int, int] = {}
            for first, count in n.ranges:
                for seq in range(first, first + count):
                    b = wire.fec_block(seq)
                    blocks[b] = blocks.get(b, 0) + 1
            for b, need in blocks.items():
                if n.source == self.id:
                    if self._answer_parity(b, need, requester, now):
                        answered.add(b)
                elif src is not None and author_alive:
                    self._hear_parity_nack(src, b, need, n.attempt, now)
                    answered.add(b)
        for first, count in n.ranges:
            for seq in range(first, first + count):
                key = (n.source, seq)
                if answered and wire.fec_block(seq) in answered:
                    if n.source == self.id or (src is not None and seq in src.missing):
                        continue
                # Someone asked: we need not ask for the same datagram right now.
                if src is not None and seq in src.missing:
                    self._heard_asked(src.missing[seq], n.attempt, now)
                    continue
                if n.source == self.id and seq > self._sent_seq:
                    continue  # still in the pacer's queue: it is on its way
                cached = self._cache.get(key)
                if cached is None:
                    if n.source == self.id:
                        self.stats.nacks_uncached += 1  # never sent, or evicted long ago
                    continue
                if self._holddown.get(key, -1.0) > now:
                    self.stats.repairs_held_down += 1
                    continue
                mine = n.source == self.id
                if not mine and (author_alive and n.attempt < 3 or key in self._holder_repairs):
                    continue
                if not self._repair_allowed(key, requester, now):
                    self.stats.repairs_refused += 1
                    continue
                if mine:
                    self._send_repair(key, cached, now)
                else:
                    self._holder_repairs[key] = now + self.rng.uniform(
                        0, max(self.timers.holder_repair_max, 2 * self._d))

    def _author_alive(self, sid: int, now: float) -> bool:
        """Is ``sid`` here to answer for its datagrams? A peer alive, or one we have not
        had a SESSION from yet (it was lost) but heard itself lately."""
        p = self._peers.get(sid)
        if p is not None:
            return p.alive
        src = self._sources.get(sid)
        return src is not None and self._heard_until(now) - src.heard < self.timers.peer_timeout

    def _heard_until(self, now: float) -> float:
        """The time up to which we have heard everything that reached us: ``now``, or when
        the oldest datagram still waiting in our receive queue arrived. Silence and
        timeouts are judged at it. (The 10-minute soak: peers seconds behind judged by
        the clock heard "nobody" every few seconds, re-joining the group each time, and
        took live authors for gone, skipping their gaps after 3 snapshot fetches.)"""
        q = self.queued_since
        return now if q is None or q > now else q

    def _hear_parity_nack(self, src: Source, b: int, need: int, attempt: int,
                          now: float) -> None:
        """Another receiver asked the author for ``need`` symbols of block ``b``: if we need
        no more than that, the parity it gets will do for us too."""
        mine = [s for s in wire.fec_seqs(b)
                if s in src.missing]
        if not mine or self._parity_need(src, b) > need:
            return
        for s in mine:
            self._heard_asked(src.missing[s], attempt, now)

    def _heard_asked(self, m: Miss, attempt: int, now: float) -> None:
        """Someone else asked for it: we need not ask right now (suppression)."""
        m.attempt = max(m.attempt, attempt)
        m.asked = now
        m.due = max(m.due, now + self._retry_wait(m.attempt))
        self.stats.nacks_suppressed += 1

    def _parity_need(self, src: Source, b: int) -> int:
        """How many more symbols of block ``b`` we need to rebuild it: FEC_K less the
        datagrams we hold (and still have the bytes of) and the parity we hold. For a
        block read but not yet handed over in full (its datagrams wait in our receive
        queue): the datagrams we lack less the proactive parity read for it and the
        parity held that answered NACKs."""
        if src.handed <= (b + 1) * wire.FEC_K and self._read_past(src, b):
            lacking = sum(1 for s in wire.fec_seqs(b)
                          if (m := src.missing.get(s)) is not None and not m.soft)
            return (lacking - src.parity_reads.get(b, 0)
                    - self._parity_answers.get((src.id, b), 0))
        usable = len(self._parity_in.get((src.id, b), ()))
        for s in wire.fec_seqs(b):
            if (s <= src.contiguous or s in src.held) and (src.id, s) in self._cache:
                usable += 1
        return wire.FEC_K - usable

    def _answer_parity(self, b: int, need: int, requester: int, now: float) -> bool:
        """Answer a request for ``need`` symbols of our block ``b`` with as many new parity
        datagrams (less those sent within the hold-down, which are on their way). False
        if the block cannot be coded (not all sent yet, or no longer cached): the caller
        then repairs the named datagrams themselves."""
        k = wire.FEC_K
        if (b + 1) * k > self._sent_seq:
            return False
        bodies = self._block_bodies(b)
        if bodies is None:
            return False
        bp = self._parity_out.get(b)
        if bp is None:
            if len(self._parity_out) >= MAX_PARITY_BLOCKS:
                self._prune_parity_out(now)
                if len(self._parity_out) >= MAX_PARITY_BLOCKS:
                    return False
            bp = self._parity_out[b] = _BlockParity()
        # Requests within a hold-down are answered together: each receiver's requests in
        # it add up (each names other datagrams), and the parity sent in it serves them
        # all, so it must cover the neediest receiver.
        hold = self._holddown_time()
        bp.asks = [a for a in bp.asks if now - a[0] < hold]
        bp.asks.append((now, requester, need))
        asked: dict[int, int] = {}
        for _, r, c in bp.asks:
            asked[r] = asked.get(r, 0) + c
        bp.sent = [t for t in bp.sent if now - t < 1.0]
        extra = min(max(asked.values()), k) - sum(1 for t in bp.sent if now - t < hold)
        if extra <= 0:
            self.stats.repairs_held_down += 1
            return True
        extra = min(extra, self.timers.repairs_per_datagram * k - len(bp.sent),
                    MAX_REPAIR_QUEUE - len(self._repairs))
        if extra <= 0 or not self._requesters.take(requester, extra, now):
            self.stats.repairs_refused += 1
            return True
        span = wire.FEC_N - k
        idx = [wire.FEC_N - 1 - (bp.answered + i) % span for i in range(extra)]
        bp.answered += extra
        for i, sym in zip(idx, fec.parity(bodies, idx)):
            self._repairs.append(wire.encode_parity(self.id, self._sent_seq, self.size,
                                                    wire.Parity(b, i, sym), wire.FLAG_REPAIR))
        self.stats.parity_sent += extra
        bp.sent.extend([now] * extra)
        return True

    def _prune_parity_out(self, now: float) -> None:
        for b in [b for b, bp in self._parity_out.items()
                  if not bp.sent or now - bp.sent[-1] > 2.0]:
            del self._parity_out[b]

    def _on_parity(self, h, body, data, now) -> None:
        p = wire.decode_parity(body)
        self._touch(h, now)
        self.stats.parity_received += 1
        src = self._sources.get(h.sender)
        last = p.seqs[-1]
        if last > h.seq:
            self.stats.rejected_parity += 1  # parity of datagrams it says it has not sent
            return
        if src is not None and not h.flags & wire.FLAG_REPAIR and p.block > src.parity_block:
            src.parity_block = p.block
        if (src is None or not src.anchored or last <= src.contiguous
                or last > src.contiguous + self.timers.receive_window
                or (self._quarantine and self._quarantined(h.sender, now))):
            self.stats.ignored_parity += 1
            return
        if not h.flags & wire.FLAG_REPAIR:
            if not self._noted:
                self._count_parity_read(src, p.block)
            # Proactive parity comes right behind its block, in order (it does not jump
            # receive queues): whatever of the block we lack now is lost, even its last
            # datagram, which nothing else would show missing until the next block came
            # (at a slowed pacer's rate, tens of milliseconds).
            self._announce(src, last, now)
        # Parity answering a NACK announces nothing: it jumps receive queues, and would
        # make us NACK datagrams still queued here. It waits until the block's datagrams
        # have come or are known missing.
        if all(s <= src.contiguous or s in src.held for s in p.seqs):
            self.stats.ignored_parity += 1
            return
        key = (h.sender, p.block)
        held = self._parity_in.get(key)
        if held is None:
            if self._parity_count >= MAX_PARITY_HELD:
                self._expire_parity(now, force=True)
                if self._parity_count >= MAX_PARITY_HELD:
                    self.stats.ignored_parity += 1
                    return
            held = self._parity_in[key] = {}
        elif len(next(iter(held.values()))) != len(p.symbol):
            self.stats.rejected_parity += 1
            return
        if p.index in held or len(held) >= wire.FEC_K:
            self.stats.ignored_parity += 1
            return
        held[p.index] = p.symbol
        self._parity_count += 1
        self._parity_in_at[key] = now
        if h.flags & wire.FLAG_REPAIR:
            self._parity_answers[key] = self._parity_answers.get(key, 0) + 1
        self._rebuild(src, p.block, now)

    def _rebuild(self, src: Source, b: int, now: float) -> None:
        """Rebuild block ``b`` of ``src`` if we hold enough of its symbols."""
        key = (src.id, b)
        pars = self._parity_in.get(key)
        if not pars or (b + 1) * wire.FEC_K > src.highest:
            return
        first = b * wire.FEC_K + 1
        held: dict[int, bytes] = {}
        missing = []
        for pos in range(wire.FEC_K):
            s = first + pos
            if s <= src.contiguous or s in src.held:
                d = self._cache.get((src.id, s))
                if d is not None:
                    held[pos] = d[wire.HEADER.size:]
            else:
                missing.append(pos)
        if not missing:
            self._drop_parity(key)
            return
        if len(held) + len(pars) < wire.FEC_K:
            return
        # Held since the last of its symbols came (parity that jumped our queue waited for
        # the block's datagrams queued behind it, and they for it): repair delays count
        # from then, not from when a queued datagram arrived.
        now = max(now, self._parity_in_at.get(key, now))
        self._drop_parity(key)
        try:
            bodies = fec.rebuild(held, pars)
        except wire.DecodeError:
            self.stats.rejected_parity += 1
            return
        for pos in missing:
            seq = first + pos
            if seq <= src.contiguous or seq in src.held:
                continue
            data = wire.encode_header(wire.MsgType.DATA, src.id, seq, self.size,
                                      wire.FLAG_REPAIR) + bodies[pos]
            self.stats.parity_rebuilt += 1
            self._on_data(wire.decode_header(data), memoryview(data)[wire.HEADER.size:], data,
                          now)

    def _drop_parity(self, key: tuple[int, int]) -> None:
        held = self._parity_in.pop(key, None)
        self._parity_in_at.pop(key, None)
        self._parity_answers.pop(key, None)
        if held:
            self._parity_count -= len(held)

    def _expire_parity(self, now: float, force: bool = False) -> None:
        """Parity kept past PARITY_KEEP (or, when ``force``, the older half) is dropped."""
        if not self._parity_in_at:
            return
        limit = now - PARITY_KEEP
        if force:
            ages = sorted(self._parity_in_at.values())
            limit = max(limit, ages[len(ages) // 2])
        for key in [k for k, t in self._parity_in_at.items() if t <= limit]:
            self._drop_parity(key)

    def _repair_allowed(self, key: tuple[int, int], requester: int, now: float) -> bool:
        """NACK amplification: each datagram is repaired at most ``repairs_per_datagram``
        times a second, and each requester gets at most its budget of repairs."""
        r = self._repaired.get(key)
        if r is not None and now - r[0] < 1.0 and r[1] >= self.timers.repairs_per_datagram:
            return False
        if not self._requesters.take(requester, 1, now):
            return False
        if r is None or now - r[0] >= 1.0:
            if len(self._repaired) >= MAX_REPAIR_QUEUE * 8:
                self._prune_repaired(now)
            self._repaired[key] = [now, 1]
        else:
            r[1] += 1
        return True

    def _prune_repaired(self, now: float) -> None:
        for k in [k for k, r in self._repaired.items() if now - r[0] >= 1.0]:
            del self._repaired[k]

    def _send_repair(self, key, cached: bytes, now: float) -> None:
        if len(self._repairs) >= MAX_REPAIR_QUEUE:
            self.stats.repairs_queue_full += 1
            return
        self._repairs.append(wire.with_flags(cached, wire.FLAG_REPAIR))
        self._holddown[key] = now + self._holddown_time()
        self.stats.repairs_sent += 1

    def _on_cursor(self, h, body, data, now) -> None:
        c = wire.decode_cursor(body, *self.size)
        if self._touch(h, now) is not None:
            self._events.append(CursorMoved(h.sender, c.x, c.y, c.hidden))

    # ------------------------------------------------------------------ snapshots

    def _send_snap_req(self, now: float) -> None:
        f = self._fetch
        f.asked_at = now
        f.attempts += 1
        self.stats.snap_requests_sent += 1
        # Ask the chosen holder first; if it does not answer, anyone.
        target = f.target if f.attempts <= 2 else 0
        self._control.append(wire.encode_snap_req(self.id, self._sent_seq, self.size,
                                                   wire.SnapReq(f.req_id, target)))

    def _start_fetch(self, now: float, target: int = 0) -> None:
        if self._fetch is None:
            self._fetch = _SnapFetch(req_id=self.rng.randrange(1, 1 << 32), started=now,
                                     asked_at=now, target=target)
            self._send_snap_req(now)

    def _holder_of(self, src: Source) -> int:
        """The live peer that holds most of ``src`` (its author first), or 0."""
        author = self._peers.get(src.id)
        if author is not None and author.alive and not author.joining:
            return src.id
        best, best_id = src.contiguous, 0
        for p in self._peers.values():
            if p.alive and not p.joining and p.holds.get(src.id, 0) > best:
                best, best_id = p.holds[src.id], p.id
        return best_id

    def _on_snap_req(self, h, body, data, now) -> None:
        r = wire.decode_snap_req(body)
        self._touch(h, now)
        if self.joining or self._fetch is not None or r.target not in (0, self.id):
            return  # a peer still fetching state itself must not hand out a partial board
        if (h.sender, r.req_id) in self._snap_offered:
            return  # another peer offered it a snapshot already (a retry crossed it)
        if len(self._snap_answers) < 64:
            # Peers holding everything they know of, and not behind on their receive
            # queue, answer first; the others only if none of those does (their offer
            # would then be cancelled by the first one seen).
            late = (0.0 if self.missing_count() == 0 and not self.backlog
                    else 0.05 + 4 * self._d)
            window = max(self.timers.snap_answer_max, 2 * self._d)
            if r.target == 0:
                # A request to anyone: the synced peers answer in an order every one of
                # them derives alike from the request, a slot apart, so the first offer
                # is seen before the next peer's turn even on loaded hosts (with random
                # delays within 8 ms, several answered each such request of the soak).
                self._anyone.add((h.sender, r.req_id))
                slot = max(window, SNAP_ANSWER_SLOT)
                delay = (self._answer_rank(h.sender, r.req_id) * slot
                         + self.rng.uniform(0, window / 4))
            else:
                delay = self.rng.uniform(0, window)
            self._snap_answers[(h.sender, r.req_id)] = now + late + delay

    def _answer_rank(self, joiner: int, req_id: int) -> int:
        """Our turn among the synced peers we know to answer ``joiner``'s request to
        anyone (0: first): by a hash of each peer's id and the request."""
        def turn(pid: int) -> int:
            return xxhash.xxh64_intdigest(_RANK.pack(pid, req_id))

        mine = turn(self.id)
        return sum(1 for p in self._peers.values()
                   if p.alive and not p.joining and p.id != joiner and turn(p.id) < mine)

    def _on_snap_meta(self, h, body, data, now) -> None:
        m = wire.decode_snap_meta(body)
        self._touch(h, now)
        self._snap_answers.pop((m.target, m.req_id), None)  # someone else answers it
        mine = self._my_offers.get((m.target, m.req_id))
        if mine is not None and h.sender != self.id:
            # Our claim or offer crossed another server's. The joiner takes the first it
            # reads, which on a LAN is the one sent first: if that was the other's (it
            # arrived here, by its kernel stamp, less than a one-way delay after ours
            # left), the snapshot is not built for this request, or its chunks still
            # queued are dropped, now, without waiting for the joiner to withdraw. If we
            # guessed wrong, the joiner NACKs the chunks it misses.
            self.stats.snap_offers_crossed += 1
            sent, snap_id = mine
            if (now - self._d / 2, h.sender) < (sent, self.id):
                p = self._pending
                if p is not None and p.snap_id == snap_id:
                    p.requests.pop((m.target, m.req_id), None)  # not built for it
                elif (sv := self._serve.get(snap_id)) is not None:
                    self._withdraw(sv, m.target)
        if len(self._snap_offered) < 1024:
            self._snap_offered[(m.target, m.req_id)] = now
        f = self._fetch
        if m.target != self.id:
            return
        if (f is not None and f.snap_id and f.total == 0 and h.sender == f.server
                and m.req_id == f.req_id):
            # The offer claimed earlier, now built (or the claimer's answer to our asking
            # again: a claim or an offer of another snapshot, if ours was built and sent
            # while its offer was lost).
            self._take_offer(f, h.sender, m, now)
            return
        if f is None or m.req_id != f.req_id or f.snap_id:
            if f is None or (h.sender, m.snap_id) != (f.server, f.snap_id):
                # An offer we will not take: another server's came first, or the fetch
                # it answers is over. Withdraw, so that its server drops the chunks it
                # queued (in the soak, 93% of offers answered requests to anyone and
                # several servers answered each: three snapshots multicast per fetch).
                self.stats.snap_offers_declined += 1
                self._control.append(wire.encode_snap_nack(
                    self.id, self._sent_seq, self.size, wire.SnapNack(h.sender, m.snap_id, ())))
            return
        self._take_offer(f, h.sender, m, now)

    @staticmethod
    def _take_offer(f: _SnapFetch, server: int, m: wire.SnapMeta, now: float) -> None:
        """Fetch ``m`` from ``server`` (a claim, total 0: the offer follows; see
        _fetch_timer)."""
        f.server, f.snap_id, f.total, f.chunk_size = server, m.snap_id, m.total_len, m.chunk_size
        f.have = bytearray(m.chunks)  # one byte per chunk: at most 512 KiB (wire limits)
        f.last_chunk = now

    def _on_snap_chunk(self, h, body, data, now) -> None:
        c = wire.decode_snap_chunk(body)
        f = self._fetch
        if f is None or h.sender != f.server or c.snap_id != f.snap_id or f.snap_id == 0:
            return
        nchunks = -(-f.total // f.chunk_size)
        if c.index >= nchunks or c.index in f.chunks:
            return
        expect = f.chunk_size if c.index < nchunks - 1 else f.total - f.chunk_size * (nchunks - 1)
        if len(c.data) != expect:
            self.stats.rejected_snapshot += 1
            return
        f.chunks[c.index] = c.data
        f.have[c.index] = 1
        f.last_chunk = now
        if len(f.chunks) == nchunks:
            self._finish_fetch(now)

    def _finish_fetch(self, now: float) -> None:
        f = self._fetch
        blob = b"".join(f.chunks[i] for i in range(len(f.chunks)))
        try:
            other, sources = store.load(blob, *self.size)
        except store.StoreError:
            self.stats.rejected_snapshot += 1
            self._fetch = None
            self._start_fetch(now)
            return
        if len(sources) > self.timers.max_sources:
            self.stats.rejected_snapshot += 1
            self._fetch = None
            self._start_fetch(now)
            return
        covered = {}
        for sid, (contig, settled) in sources.items():
            if sid == self.id:
                continue
            src = self._sources.get(sid)
            if src is None:
                src = self._source(sid, now)
                if src is None:
                    continue
            if contig > src.contiguous:
                covered[sid] = contig
        self.board.drop_covered(covered)
        self.board.merge(other)
        for sid, (contig, settled) in sources.items():
            src = self._sources.get(sid)
            if src is None or sid == self.id:
                continue
            if not src.anchored:
                # Seen live while joining, counted from a provisional start: the snapshot
                # says what is held below. (Left unanchored, _become_synced would take it
                # for a source in no snapshot and ask for its whole history again.)
                self._anchor(src, contig)
            elif contig > src.contiguous:
                src.contiguous = contig
                src.held = {s for s in src.held if s > contig}
                src.maxop = {s: o for s, o in src.maxop.items() if s > contig}
                for s in [s for s in src.missing if s <= contig]:
                    del src.missing[s]
            src.settled = max(src.settled, settled)
            src.given_up = False
        self.stats.snapshots_received += 1
        was_joining = self.joining
        self._fetch = None
        self._become_synced(now)
        self._ask_again(now)
        if was_joining:
            self._events.append(JoinComplete(f.server, len(blob), now - f.started))

    def _ask_again(self, now: float) -> None:
        """A fetch ended: NACK again whatever it did not cover (after GIVE_UPS fetches that
        did not, the gap is skipped, see _give_up)."""
        for src in self._sources.values():
            self._advance(src)
            if src.given_up or src.highest > src.contiguous:
                src.given_up = False
                high, src.highest = src.highest, src.contiguous
                src.missing.clear()
                self._announce(src, high, now)

    def _anchor(self, src: Source, contig: int) -> None:
        live = set(src.held)
        if src.first_seen:
            live.update(range(src.first_seen, src.contiguous + 1))
        src.anchored = True
        src.contiguous = contig
        src.held = {s for s in live if s > contig}
        src.maxop = {s: o for s, o in src.maxop.items() if s > contig}
        src.highest = max(src.highest, contig)
        for s in [s for s in src.missing if s <= contig]:
            del src.missing[s]

    def _become_synced(self, now: float) -> None:
        if not self.joining:
            return
        self.joining = False
        for src in self._sources.values():
            if not src.anchored:
                # In no snapshot: we need it from its first datagram on.
                src.anchored = True
                if src.first_seen > 1:
                    src.held.update(range(src.first_seen, src.contiguous + 1))
                    src.contiguous = 0
                high, src.highest = src.highest, src.contiguous
                self._announce(src, high, now)
                self._advance(src)
        self._send_session(now)

    def _fetch_timer(self, now: float) -> None:
        f = self._fetch
        t = self.timers
        if f.snap_id == 0:
            if now < f.asked_at + t.join_retry:
                return
            if self.joining and f.attempts >= t.join_attempts and not self._heard_synced_peer:
                # Nobody answered and nobody synced is here: we are the first.
                self._fetch = None
                self._become_synced(now)
                self._events.append(JoinComplete(0, 0, now - f.started))
                return
            if f.attempts >= 4 * t.join_attempts:
                if self.joining and any(p.alive and not p.joining for p in self._peers.values()):
                    # Synced peers are here but slow to answer: keep asking (a peer that
                    # gave up now would start from a partial board and serve it to others).
                    f.target = self._best_server()
                    f.attempts = 1
                    self._send_snap_req(now)
                    return
                self._fetch = None
                self._become_synced(now)
                # Nobody answered: the gaps that made us ask are NACKed again rather than
                # left given up (which stalled this peer's sync for good, found by the
                # Churn state machine: seed 15935).
                self._ask_again(now)
                return
            self._send_snap_req(now)
            return
        if f.total == 0:
            # Claimed, not offered yet: its server is building the snapshot. One that
            # never offers it (gone, or its offer lost) is given up after snap_give_up.
            server = self._peers.get(f.server)
            heard = self._heard_until(now)
            if ((server is not None and not server.alive)
                    or heard - f.last_chunk >= t.snap_give_up):
                self._fetch = None
                self._start_fetch(now)
                self._fetch.started = f.started
                return
            if now - f.asked_at >= t.join_retry:
                # Its offer may have been lost (5-20% loss in the soak): ask the claimer
                # again, as a joiner asks until an offer comes; it offers the snapshot
                # again once built, or claims it again while building.
                f.asked_at = now
                f.attempts += 1
                self.stats.snap_requests_sent += 1
                self._control.append(wire.encode_snap_req(
                    self.id, self._sent_seq, self.size, wire.SnapReq(f.req_id, f.server)))
            f.recheck = now + t.snap_idle  # (give-up time passed, but not by what we heard)
            return
        if now < max(f.last_chunk, f.asked_at) + t.snap_idle:
            return
        heard = self._heard_until(now)
        if heard < max(f.last_chunk, f.asked_at) + t.snap_idle:
            # The chunks that came in meanwhile may be waiting in our receive queue:
            # asking for them again would only have them sent twice. Look again later.
            f.asked_at = now
            return
        server = self._peers.get(f.server)
        if (server is not None and not server.alive) or heard - f.last_chunk > t.snap_give_up:
            # The server went away: ask again from anyone.
            self._fetch = None
            self._start_fetch(now)
            self._fetch.started = f.started
            return
        # The first missing chunks (1-based on the wire), found without listing them all.
        missing = (np.flatnonzero(np.frombuffer(f.have, np.uint8) == 0)[:4096] + 1).tolist()
        ranges = wire.ranges_of(missing)[:wire.MAX_NACK_RANGES]
        self._control.append(wire.encode_snap_nack(
            self.id, self._sent_seq, self.size,
            wire.SnapNack(f.server, f.snap_id, tuple(ranges))))
        f.asked_at = now
        f.nacks += 1

    def _on_snap_nack(self, h, body, data, now) -> None:
        n = wire.decode_snap_nack(body)
        self._touch(h, now)
        if n.server != self.id:
            return
        p = self._pending
        if p is not None and n.snap_id == p.snap_id:
            if not n.ranges:  # withdrawn before it was built
                for k in [k for k in p.requests if k[0] == h.sender]:
                    del p.requests[k]
            return
        sv = self._serve.get(n.snap_id)
        if sv is None:
            self.stats.snap_nacks_unknown += 1  # served long ago, or never
            return
        if not n.ranges:
            self._withdraw(sv, h.sender)
            return
        sv.fetchers.add(h.sender)
        sv.last_used = now
        size = self._chunk_size
        nchunks = -(-len(sv.blob) // size)
        queued = {bytes(d[wire.HEADER.size + 8:wire.HEADER.size + 12]) for d in self._bulk}
        resent = 0
        for first, count in n.ranges:
            for i in range(first - 1, min(first - 1 + count, nchunks)):
                if i.to_bytes(4, "big") in queued:
                    continue
                self._queue_chunk(sv, i, h.sender)
                resent += 1
        self.stats.snapshot_chunks_resent += resent
        if resent and len(self._rate_nacked) < 4096:
            # A joiner that lost chunks tells the pacer the same as a NACK would: a
            # snapshot paced faster than a busy joiner can take failed again and again
            # in the 10-minute soak, and with it the joiner's repairs.
            self._rate_nacked[h.sender] = self._rate_nacked.get(h.sender, 0) + resent

    def _withdraw(self, sv: _SnapServe, fetcher: int) -> None:
        """``fetcher`` takes another snapshot: drop the chunks queued for it alone, and
        all of this snapshot's once no fetcher is left. (Once per fetcher: a stream of
        withdrawals costs a set lookup each, not a pass over the queue.)"""
        if fetcher not in sv.fetchers:
            return
        sv.fetchers.discard(fetcher)
        if not sv.queued:
            return
        h = wire.HEADER.size
        snap = sv.snap_id.to_bytes(4, "big")
        mine = fetcher.to_bytes(4, "big")
        everyone = not sv.fetchers
        keep = deque(d for d in self._bulk
                     if d[h + 4:h + 8] != snap or not (everyone or d[h:h + 4] == mine))
        dropped = len(self._bulk) - len(keep)
        self._bulk = keep
        sv.queued -= dropped
        self.stats.snapshot_chunks_withdrawn += dropped

    def _queue_chunk(self, sv: _SnapServe, i: int, target: int) -> None:
        size = self._chunk_size
        self._bulk.append(wire.encode_snap_chunk(
            self.id, self._sent_seq, self.size,
            wire.SnapChunk(target, sv.snap_id, i, sv.blob[i * size:(i + 1) * size])))
        sv.queued += 1

    def _answer_snap(self, joiner: int, req_id: int, now: float) -> None:
        """Offer a snapshot: the newest one again while it is young or its chunks are still
        queued, else claim the request for a fresh one, built at the next timer
        (:meth:`_build`). So the bulk queue never holds more than one snapshot's chunks
        (and the NACKed resends): in the 10-minute soak, fetchers that timed out behind a
        long queue asked again, each request queued a fresh snapshot, and three servers
        ended with 56,000-58,000 chunks queued and 25 snapshots kept."""
        if (joiner, req_id) in self._my_offers:
            self.stats.snap_offers_repeated += 1
        self.stats.snapshots_sent += 1
        sv = max(self._serve.values(), key=lambda s: s.built, default=None)
        if sv is not None and (now - sv.built <= self.timers.snap_reuse or sv.queued > 0):
            # A reused snapshot is in flight or done: the joiner takes the chunks still to
            # come and NACKs the ones it lacks.
            self._offer(sv, joiner, req_id, now)
            return
        # A fresh one: claimed now (an offer without length), built at the next timer.
        p = self._pending
        if p is None:
            p = self._pending = _PendingBuild(self.rng.randrange(1, 1 << 32), now)
        p.requests[(joiner, req_id)] = None
        self._send_meta(joiner, req_id, p.snap_id, 0, now)

    def _offer(self, sv: _SnapServe, joiner: int, req_id: int, now: float) -> None:
        sv.last_used = now
        sv.fetchers.add(joiner)
        self._send_meta(joiner, req_id, sv.snap_id, len(sv.blob), now)

    def _send_meta(self, joiner: int, req_id: int, snap_id: int, length: int,
                   now: float) -> None:
        """SNAP_META: an offer of ``length`` bytes, or a claim (0); remembered, so that a
        crossing offer of another server can be told earlier or later than ours. The
        offer that follows a claim keeps the claim's time: that is when ours went out."""
        prev = self._my_offers.get((joiner, req_id))
        if (prev[1] != snap_id) if prev is not None else (len(self._my_offers) < 1024):
            self._my_offers[(joiner, req_id)] = (now, snap_id)
        self._control.append(wire.encode_snap_meta(
            self.id, self._sent_seq, self.size,
            wire.SnapMeta(joiner, req_id, snap_id, length, self._chunk_size)))

    def _build(self, now: float) -> None:
        """Build the snapshot claimed at an earlier timer, offer it to every joiner that
        did not withdraw meanwhile, and queue its chunks; nothing if none is left."""
        p, self._pending = self._pending, None
        if not p.requests:
            self.stats.snapshot_builds_skipped += 1
            return
        sources = {sid: (s.contiguous, s.settled) for sid, s in self._sources.items()
                   if s.anchored}
        self._flush(now)
        sources[self.id] = (self.seq, self._my_source.settled)
        blob = store.dump(self.board, sources)
        while len(self._serve) >= MAX_SNAPSHOTS_KEPT:
            del self._serve[min(self._serve.values(), key=lambda s: s.last_used).snap_id]
        sv = _SnapServe(p.snap_id, blob, now, now)
        self._serve[sv.snap_id] = sv
        self.stats.snapshots_built += 1
        for joiner, req_id in p.requests:
            self._offer(sv, joiner, req_id, now)
        for i in range(-(-len(blob) // self._chunk_size)):
            self._queue_chunk(sv, i, 0)

    # ------------------------------------------------------------------ timers

    def handle_timer(self, now: float) -> None:
        t = self.timers
        self._now = max(self._now, now)
        self._maybe_flush(now)
        if self._hb_at is not None and now >= self._hb_at:
            self._control.append(wire.encode_empty(wire.MsgType.HEARTBEAT, self.id, self._sent_seq,
                                                   self.size))
            self.stats.heartbeats_sent += 1
            self._hb_index += 1
            if self._hb_index < len(t.heartbeats):
                self._hb_at = now + t.heartbeats[self._hb_index] - t.heartbeats[self._hb_index - 1]
            else:
                self._hb_at = None
        if now >= self._session_at or (self._probe_answer_at is not None
                                       and now >= self._probe_answer_at):
            if self._probe_answer_at is not None and now >= self._probe_answer_at:
                self._last_probe_answer = now
            self._send_session(now)
        if now >= self._next_expiry:
            self._expire(now)
        if self._compact_at is not None and now >= self._compact_at:
            more = self.board.compact(COMPACT_BATCH)
            self._compact_at = now + COMPACT_DELAY if more else None
        if now >= self._silence_at:
            if self._heard_until(now) < self._silence_at:
                # What came in before the deadline still waits in our queue: not silence.
                # Looked at again shortly (each datagram from a peer moves the deadline).
                self._silence_at = now + min(self._silence_wait, SILENCE_RECHECK)
            else:
                self._events.append(Silence(now - self._last_heard_other, bool(self._peers)))
                self.stats.rejoins += 1
                self._silence_wait = min(2 * self._silence_wait, t.silence_rejoin_max)
                self._silence_at = now + self._silence_wait
        for src in list(self._sources.values()):
            if src.missing:
                self._nack_timer(src, now)
        for key, due in list(self._holder_repairs.items()):
            if now >= due:
                del self._holder_repairs[key]
                cached = self._cache.get(key)
                if cached is not None and self._holddown.get(key, -1.0) <= now:
                    self._send_repair(key, cached, now)
        build = self._pending  # claimed at an earlier timer: the claim is out
        for (joiner, req_id), due in list(self._snap_answers.items()):
            if now >= due:
                del self._snap_answers[(joiner, req_id)]
                if (joiner, req_id) in self._anyone:
                    self._anyone.discard((joiner, req_id))
                    self.stats.snap_offers_to_anyone += 1
                self._answer_snap(joiner, req_id, now)
        if build is not None and build is self._pending:
            self._build(now)
        if self._fetch is not None:
            self._fetch_timer(now)

    def _nack_delay(self) -> float:
        """First NACK delay: truncated exponential on [0, nack_max] (Nonnenmacher and
        Biersack, as in NORM). Few receivers draw short delays, so the first NACK usually
        goes out alone and suppresses the rest, even with many receivers. The window is at
        least the group's round trip (SRM scales its timers with distance the same way):
        on a loaded machine or a slow network, suppression still has time to work."""
        lam = math.log(max(2, len(self._peers) + 1)) + 1.0
        u = self.rng.random()
        window = max(self.timers.nack_max, 3 * self._d)
        return window / lam * math.log1p(u * math.expm1(lam))

    def _holddown_time(self) -> float:
        """NACKs for a datagram just sent or seen are ignored this long: at least a round
        trip, so requests already on their way when the repair left are not answered twice.
        The smoothed round trip here, not the least recent one: on a busy moment peers run
        late, their NACKs for one loss spread out, and each answered one counts against
        ``repairs_per_datagram`` (the 10-minute soak lost datagrams for good when the
        hold-down followed the shorter distance)."""
        return max(self.timers.holddown, self._d_smooth)

    def _update_distance(self) -> None:
        """The group's round trip ``_d``: the median over the peers of the least of their
        latest RTT samples, at most 0.25 s. Samples include how late event loops run;
        the least of the last few keeps a steady lateness (a slow machine, a loaded
        one) and drops the queueing of one busy moment, such as a big paste arriving,
        which would otherwise stretch every NACK delay to its 0.75 s cap just when
        repairs are wanted. (NACKs and repairs skip a busy peer's receive queue, see
        net/edge.py, so they cross faster than the SESSION echoes measured here.)"""
        rtts = sorted(min(p.rtt_samples) for p in self._peers.values()
                      if p.alive and p.rtt_samples)
        self._d = min(rtts[len(rtts) // 2], 0.25) if rtts else 0.0
        smooth = sorted(p.rtt for p in self._peers.values() if p.alive and p.rtt is not None)
        self._d_smooth = min(smooth[len(smooth) // 2], 0.25) if smooth else 0.0

    def _best_server(self) -> int:
        """The synced peer that holds the most of what we know exists, for a snapshot."""
        best, best_id = -1, 0
        for p in self._peers.values():
            if p.alive and not p.joining:
                held = sum(p.holds.values()) + p.highest
                if held > best:
                    best, best_id = held, p.id
        return best_id

    def _retry_wait(self, attempt: int) -> float:
        t = self.timers
        base = max(t.retry_min, 2 * self._repair_rtt + 0.001)
        # After the wait, the same randomised suppression as the first NACK: a lost repair
        # must not make every receiver ask again at once.
        return min(t.retry_max, base * (2 ** max(0, attempt - 1))) + self._nack_delay()

    def _queued_maybe(self, src: Source, seq: int, m: Miss, memo: dict[int, int]) -> bool:
        """With datagrams waiting in our receive queue: may what fills this gap be among
        them? A gap known only from a third party's report (it may be queued itself), and
        one in a block of a source that sends proactive parity while nothing after that
        block has been read (its parity comes right behind it), and one in a block whose
        parity, read or held, will rebuild it when its turn comes. Such gaps are not
        NACKed until the queue is empty or that is settled. (A receiver far behind on a
        big paste NACKed what the parity in its queue would have rebuilt; one that waited
        for its queue to reach the next block NACKed 25 ms after the gap showed.) ``memo``:
        block -> symbols lacking, for the gaps of one source looked at together."""
        if m.soft:
            return True
        b = wire.fec_block(seq)
        if src.handed > (b + 1) * wire.FEC_K:
            return False  # its turn has come, its parity with it
        if not self._read_past(src, b):
            return m.attempt == 0 and max(src.parity_block, src.parity_read) >= b - 1
        # Read: the parity for it read or held (answers to an earlier NACK included)
        # will rebuild it when its turn comes.
        need = memo.get(b)
        if need is None:
            need = memo[b] = self._parity_need(src, b)
        return need <= 0

    @staticmethod
    def _read_past(src: Source, b: int) -> bool:
        """Has everything of block ``b`` of ``src`` been read (handed over or queued),
        its proactive parity included? (Something after it has been.)"""
        return src.read > (b + 1) * wire.FEC_K or src.parity_read > b

    def _nack_due(self, src: Source, seq: int, m: Miss, memo: dict[int, int]) -> float | None:
        """When to NACK this gap; None while what fills it may be in our receive queue
        (_queued_maybe). With the queue empty, a gap in a block of a source that sends
        proactive parity (it did for the block before), while neither the end of the
        block nor its parity has come, waits TAIL_WAIT longer: the author releases
        a block and its parity in one go, and what is missing of it is most likely still
        on its way, the author having lost the processor in the middle of sending it
        (measured on the benchmark's shared cores: 76% of first NACKs at 10% loss were
        for such blocks, and the parity that came after them filled most)."""
        if self.backlog:
            return None if self._queued_maybe(src, seq, m, memo) else m.due
        b = wire.fec_block(seq)
        if (m.attempt == 0 and b > 0 and src.parity_block == b - 1
                and src.highest <= (b + 1) * wire.FEC_K):
            return m.due + TAIL_WAIT
        return m.due

    def _nack_timer(self, src: Source, now: float) -> None:
        memo: dict[int, int] = {}
        due = sorted(s for s, m in src.missing.items()
                     if (d := self._nack_due(src, s, m, memo)) is not None and d <= now)
        if not due:
            return
        t = self.timers
        k = wire.FEC_K
        # A whole block the author has sent can be repaired with parity: ask for as many
        # symbols as we lack, naming that many of its missing datagrams (the author, alive,
        # answers with new parity; anyone else would repair the named ones).
        coded = self._author_alive(src.id, now)
        mode: dict[int, bool] = {}
        plain: list[int] = []
        parity: list[int] = []
        attempt = 1
        named: dict[int, int] = {}
        for s in due:
            b = wire.fec_block(s)
            if b not in mode:
                mode[b] = False
                if coded and (b + 1) * k <= max(src.highest, src.read):
                    need = self._parity_need(src, b)
                    missing = sum(1 for x in wire.fec_seqs(b)
                                  if x in src.missing)
                    if 0 < need <= missing:
                        mode[b] = True
                        named[b] = need
            if mode[b]:
                # Only due ones are named (others may still be on their way, when a third
                # party's report ran ahead of them); the author adds up our requests. Due
                # ones beyond the need are covered by the parity we hold.
                if named[b] > 0:
                    named[b] -= 1
                    parity.append(s)
            else:
                plain.append(s)
            m = src.missing[s]
            m.attempt += 1
            m.asked = now
            attempt = max(attempt, m.attempt)
            m.due = now + self._retry_wait(m.attempt)
        if attempt > t.max_attempts:
            self._give_up(src, len(src.missing), now)
            return
        for seqs, coded_nack in ((plain, False), (sorted(parity), True)):
            ranges = wire.ranges_of(seqs)
            for i in range(0, len(ranges), wire.MAX_NACK_RANGES):
                nack = wire.Nack(src.id, attempt, tuple(ranges[i:i + wire.MAX_NACK_RANGES]),
                                 coded_nack)
                self._control.append(wire.encode_nack(self.id, self._sent_seq, self.size, nack))
                self.stats.nacks_sent += 1

    def _send_session(self, now: float, probe: bool = False) -> None:
        flags = (wire.SESSION_JOINING if self.joining else 0) | (wire.SESSION_PROBE if probe else 0)
        others = [s for sid, s in self._sources.items() if sid != self.id and s.anchored]
        if len(others) > wire.MAX_SESSION_ENTRIES:
            start = getattr(self, "_rotate", 0) % len(others)
            self._rotate = start + wire.MAX_SESSION_ENTRIES
            others = (others[start:] + others[:start])[:wire.MAX_SESSION_ENTRIES]
        entries = []
        for s in others:
            p = self._peers.get(s.id)
            echo = p.last_ts if p is not None and p.alive else 0
            # (0 if its datagram's arrival stamp is later than this timer's now: stamps
            # and the loop's clock are read apart)
            held = max(0, int((now - p.ts_heard) / wire.TS_UNIT)) if echo else 0
            entries.append(wire.SourceEntry(s.id, s.contiguous, max(s.highest, s.contiguous),
                                            echo, held))
        vector = digest = 0
        version = self.board.version
        if (version == self._session_version and not self.joining and not self._open
                and not self._data):
            # Quiet since our last SESSION: say what we hold and what it looks like, so a
            # peer holding the same datagrams can tell whether our boards really agree.
            vector, digest = self._vector(), self._digest64()
        self._session_version = version
        self._session_count = (self._session_count + 1) & 0xFFFF
        self._control.append(wire.encode_session(
            self.id, self._sent_seq, self.size,
            wire.Session(self.config.name, self.config.color, flags, tuple(entries),
                         self._ts(now), vector, digest, self._session_count,
                         self.loss_meter.report())))
        self.stats.sessions_sent += 1
        self._probe_answer_at = None
        self._session_at = now + self.timers.session_interval * self.rng.uniform(0.8, 1.2)

    @staticmethod
    def _ts(now: float) -> int:
        """Our clock for SESSION timestamps: TS_UNITs mod 2^32, never 0 (0 means none)."""
        return (int(now / wire.TS_UNIT) & 0xFFFFFFFF) or 1

    def _vector(self) -> int:
        """A hash of how far we hold every source: equal on peers holding the same data."""
        held = sorted((sid, s.contiguous) for sid, s in self._sources.items()
                      if s.anchored and s.contiguous)
        flat = [v for pair in held for v in pair]
        h = hashlib.blake2b(struct.pack(f"!{len(flat)}I", *flat), digest_size=8).digest()
        return int.from_bytes(h, "big") or 1

    def _digest64(self) -> int:
        return int(self.board.digest()[:16], 16) or 1

    def _expire(self, now: float) -> None:
        self._next_expiry = now + 0.5
        self._update_distance()
        heard = self._heard_until(now)
        for p in self._peers.values():
            if p.alive and heard - p.last_heard > self.timers.peer_timeout:
                p.alive = False
                self._events.append(PeerLeft(p.id, "timeout"))
        if len(self._peers) > self.timers.max_peers // 2:
            for pid in [pid for pid, p in self._peers.items()
                        if not p.alive and now - p.last_heard > 10 * self.timers.peer_timeout]:
                del self._peers[pid]
        for k in [k for k, until in self._holddown.items() if until <= now]:
            del self._holddown[k]
        self._prune_repaired(now)
        self._expire_early_repairs(now)
        self._expire_parity(now)
        self._prune_parity_out(now)
        self._flood.prune(now)
        self._requesters.prune(now)
        for pid in [pid for pid, t in self._ae_asked.items()
                    if now - t > self.timers.anti_entropy_interval]:
            del self._ae_asked[pid]
        for k in [k for k, t in self._snap_offered.items() if now - t > SNAP_OFFERED_KEEP]:
            del self._snap_offered[k]
        for k in [k for k, (t, _) in self._my_offers.items() if now - t > SNAP_OFFERED_KEEP]:
            del self._my_offers[k]
        self._anyone &= set(self._snap_answers)
        for sid in [sid for sid, sv in self._serve.items()
                    if now - sv.last_used > self.timers.snap_keep]:
            del self._serve[sid]

    def _cache_put(self, key: tuple[int, int], data: bytes) -> None:
        if key in self._cache:
            return
        self._cache[key] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > self.timers.repair_cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    _handlers = {
        wire.MsgType.DATA: _on_data,
        wire.MsgType.HEARTBEAT: _on_heartbeat,
        wire.MsgType.SESSION: _on_session,
        wire.MsgType.NACK: _on_nack,
        wire.MsgType.GOODBYE: _on_goodbye,
        wire.MsgType.SNAP_REQ: _on_snap_req,
        wire.MsgType.SNAP_META: _on_snap_meta,
        wire.MsgType.SNAP_CHUNK: _on_snap_chunk,
        wire.MsgType.SNAP_NACK: _on_snap_nack,
        wire.MsgType.CURSOR: _on_cursor,
        wire.MsgType.PARITY: _on_parity,
    }


#: Depth of the local undo stack (the issue asks for at least 100).
UNDO_DEPTH = 200
#: A NACK may ask for at most this many datagrams; more is an amplification attempt.
MAX_NACK_SEQS = 2048
MAX_REPAIR_QUEUE = 8192
#: Snapshots asked for one source's gap, in a row without progress, before it is declared
#: lost; up to MAX_GIVE_UPS while its author is alive or a peer says it holds it.
GIVE_UPS = 3
MAX_GIVE_UPS = 12
#: How much longer a gap waits for the rest of its block and the block's parity (see
#: Engine._nack_due)
TAIL_WAIT = 0.025
#: A complete stroke's pieces are joined into one log entry (Board.compact) this long after
#: the datagram that completed it, COMPACT_BATCH operations at a time: 0.03-0.14 ms each
#: (warm), on every peer at once, so not on the path of a datagram (the peers sharing a
#: core with this one have taken it in by then) nor in the way of the next (at mouse
#: rate, 8 ms later).
COMPACT_DELAY = 0.004
COMPACT_BATCH = 8
#: seconds between looks at a silence deadline put off by our own receive backlog
SILENCE_RECHECK = 0.5
#: seconds a snapshot request answered by another peer is left to it (its retries too)
SNAP_OFFERED_KEEP = 1.0
#: seconds between the turns of peers answering a snapshot request to anyone (at least)
SNAP_ANSWER_SLOT = 0.025
_RANK = struct.Struct("!II")
_HEAD_SIZE = wire.HEADER.size
#: Blocks of ours one receiver's NACKs are counted in, per sample (Engine._adapt_parity)
PAR_NACKED_BLOCKS = 64
#: Blocks per source whose proactive parity read is counted (Source.parity_reads; pruned
#: to the latest half): a receive window's worth, more than a receive queue holds
#: (QUEUE_MAX datagrams in net/edge.py).
PARITY_READS_KEPT = 2048
#: message types handled before the receive queue (Engine.urgent), besides repairs
_URGENT = frozenset((wire.MsgType.NACK, wire.MsgType.SNAP_REQ, wire.MsgType.SNAP_META))
#: A SESSION count further on than this from the last one heard is a restart of the
#: count, not that many missed (and one this far behind is an old one, late).
SESSION_COUNT_JUMP = 256
#: Snapshots a server keeps for the NACKs of their joiners (least recently used dropped).
MAX_SNAPSHOTS_KEPT = 4
#: Repairs held until we learn their datagram exists: at most this many, this far ahead.
MAX_EARLY_REPAIRS = 2048
EARLY_REPAIR_AHEAD = 2048
#: Parity symbols held for blocks not yet rebuilt (about 1.2 KB each), and for how long;
#: blocks of ours with parity state.
MAX_PARITY_HELD = 4096
PARITY_KEEP = 5.0
MAX_PARITY_BLOCKS = 4096
#: Proactive parity (Engine._adapt_parity): at most this many symbols per block, chosen
#: so that at most PROACTIVE_MISS of the lossiest receiver's losses wait for a round trip;
#: one fewer after PROACTIVE_DECAY quiet samples of PROACTIVE_SAMPLE blocks. (1%, not
#: 2%: on 2 shared cores a loss that waits for a NACK waits for the receiver's backlog
#: first, 15-25 ms at the median, so the repair p95 is set by how many do. At 10% loss
#: that is 5 symbols a block instead of 4; in three alternations of image-16-loss10 the
#: p95 went from 8.1-14.0 ms to 7.1-8.1 for 13% more repairs. BENCHMARK-HISTORY.md.)
PROACTIVE_MAX = 8
PROACTIVE_MISS = 0.01
PROACTIVE_SAMPLE = 16
PROACTIVE_DECAY = 1
#: Blocks sent over a longer span than this (or than the group's round trip, if longer)
#: get no proactive parity.
PROACTIVE_SPAN = 0.005
#: A receiver's reported loss below this sets no floor under proactive parity (NACKs are
#: cheaper than a parity symbol per block for the odd loss), nor do the receivers'
#: reports added up below it (one symbol serves them all).
PROACTIVE_FLOOR_MIN = 0.005


@functools.lru_cache(maxsize=1024)
def _parity_for_report(report: int) -> int:
    """_parity_for a loss as SESSION reports it (in 1/65535), or 0 below
    PROACTIVE_FLOOR_MIN."""
    rate = report / loss.SCALE
    return _parity_for(rate) if rate >= PROACTIVE_FLOOR_MIN else 0


def _parity_for(rate: float) -> int:
    """The fewest parity symbols per block for which at most PROACTIVE_MISS of the losses
    of a receiver losing ``rate`` of the datagrams fall in blocks it cannot rebuild
    without asking (binomial: more losses than parity symbols). Counted per loss, not
    per block: losses crowd into the unlucky blocks, and each of them waits a round
    trip."""
    if rate <= 0:
        return 0
    rate = min(rate, 0.5)
    for q in range(PROACTIVE_MAX + 1):
        n = wire.FEC_K + q
        slow = sum(i * math.comb(n, i) * rate ** i * (1 - rate) ** (n - i)
                   for i in range(q + 1, n + 1))
        if slow <= PROACTIVE_MISS * n * rate:
            return q
    return PROACTIVE_MAX


_TYPES = frozenset(int(t) for t in wire.MsgType)
#: Pastes of more pixels than this are encoded as they are sent; ENCODE_AHEAD datagrams
#: are kept ready for the pacer.
LAZY_IMAGE = 1 << 16
ENCODE_AHEAD = 128
#: Round-trip samples kept per peer; the group distance uses their minimum.
RTT_SAMPLES = 8
