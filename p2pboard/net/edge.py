"""The asyncio edge: owns the one multicast socket and drives the engine.

Each wake-up it moves every datagram waiting in the kernel into its own queue (reading
costs a few microseconds; decoding and applying, tens), then hands the engine a batch of
:data:`PROCESS_BATCH` and yields to the loop, coming back at once while datagrams
remain. Each datagram goes to the engine with ``now`` the loop time it arrived: the
kernel's arrival stamp where the socket has them (``SO_TIMESTAMPNS``), else the time it
was read. The round trips and repair delays the engine measures are then the network's,
not our own backlog's, nor when this loop happened to read. Repairs, NACKs and snapshot
requests and offers jump that queue (:meth:`Engine.urgent`): a peer that is behind on a
big paste still answers and takes repairs within milliseconds, so a repair is not stuck
behind a second of backlog and the others see it in time to suppress their own. The rest
are shown to the engine as they are read (:meth:`Engine.note_read`, a glance at the
header): a gap in an author's numbers is missing from then, and its NACK does not wait
for the backlog ahead of it. The queue is bounded (:data:`QUEUE_MAX`); past it the
kernel's buffer holds the rest, then drops, and the gaps are repaired like any loss.
While datagrams stream in faster than mouse rate (a paste, a snapshot), the edge, once
caught up, stops watching the socket for up to a millisecond so that the next wake-up
reads a batch (:data:`COALESCE_RATE`): a wake-up costs about as much as decoding a
datagram, and the arrival stamps keep the engine's timings true. At mouse rate the other way round: a wake-up finds one datagram,
which goes straight to the engine, with no queue and no second read to learn that the
socket is empty (between two strokes' datagrams the CPU caches go cold, and every line
run then costs microseconds); unless its arrival stamp says it waited in the kernel (we
were away): then what waits behind it is read first. The engine is told how many
datagrams wait and when the oldest arrived (``backlog``, ``queued_since``): it judges
silence and timeouts by that.

On Linux it also decides whether our own datagrams loop back to this host
(``IP_MULTICAST_LOOP``): only while another peer on this host may need them. The socket
starts with the loop on (a peer already here, its own loop off, must hear us arrive: it
turns its loop on, and we hear it); once done joining and no other peer has been heard
from an address of this machine for ``Timers.local_quiet`` (1.5 s; ``peer_timeout``, 6 s,
once one has been), the edge turns it off, and back on at the first datagram of such a
peer, before anything is sent in answer. Alone on its host (a LAN, the usual case) a
peer then no longer reads and drops a copy of every datagram it sends: at mouse rate
each was a wake-up of its own.

It sends what the engine wants sent and keeps exactly one timer armed at the engine's
next deadline. Between bursts it lets :mod:`p2pboard.heap` give freed memory back to the
system. A bad datagram can never stop it: the engine counts and drops, and
anything unexpected is logged (the first few times) and survived.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable

from .. import heap
from ..events import Event, Silence
from ..session import Engine
from .sockets import SO_TIMESTAMPNS, rejoin_group

log = logging.getLogger("p2pboard.net")

RECV_SIZE = 2048  # larger than any valid datagram, so oversized ones are seen and dropped
QUEUE_MAX = 8192  # datagrams read ahead of the engine (about 10 MB at most)
PROCESS_BATCH = 128  # datagrams given to the engine before yielding to the loop
REJECT_REPORT = 10.0  # seconds between summaries of what was refused
#: Receive coalescing. While datagrams stream in at COALESCE_RATE a second or more (a paste,
#: a snapshot), the edge, once caught up, stops watching the socket for
#: ``min(COALESCE_MAX, COALESCE_BATCH / rate)`` seconds and lets the kernel gather a batch:
#: a wake-up (epoll, the loop, a context switch) costs as much as decoding a datagram.
#: Strokes at mouse rate stay below the rate and are read the moment they arrive.
COALESCE_RATE = 3000.0
COALESCE_BATCH = 16
COALESCE_MAX = 0.001
RATE_WINDOW = 0.01  # seconds over which the arrival rate is counted
#: a wake-up sooner than this after the last one was done finds a burst: read a batch
BURST_GAP = 0.0005
#: a datagram that waited in the kernel longer than this means we were away: read a batch
STALE_READ = 0.05
TRIM_EVERY = 2.0  # seconds between looks at whether freed memory should go back (heap.py)
TRIM_QUIET = 0.5  # ... and never sooner than this after a stream (a paste, a snapshot)
TIMESPEC = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds
STAMP_SPACE = socket.CMSG_SPACE(TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0
#: an arrival stamp older than this before the read is taken for a clock step, not believed
STAMP_MAX_AGE = 5.0
LOCAL_CHECK = 0.5  # seconds between looks, while the loop is on, at whether it must be
LOCAL_CACHE = 4096  # sender addresses remembered as this machine's or not


class Edge:
    def __init__(self, engine: Engine, sock: socket.socket, dest: tuple[str, int],
                 loop: asyncio.AbstractEventLoop | None = None,
                 iface: str | None = None) -> None:
        self.engine = engine
        self.sock = sock
        self.dest = dest
        self.iface = iface  #: interface address the group was joined on (None: default)
        self.rejoined_at: float | None = None  #: loop time of the last re-join
        self.rejoin_error: str | None = None
        #: (loop time, message) of the latest failed send, e.g. the network went away
        self.last_send_error: tuple[float, str] | None = None
        self.loop = loop or asyncio.get_running_loop()
        #: the kernel stamps arrivals (sockets.arrival_stamps was granted on this socket)
        self.stamped = False
        if isinstance(sock, socket.socket) and STAMP_SPACE:
            try:
                self.stamped = sock.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS) == 1
            except OSError:
                pass
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._backlog: list[bytes] = []
        self._writer = False
        self._listeners: list[Callable[[Event], None]] = []
        self._faults = 0
        self.send_errors = 0
        self.closed = False
        self._rejected_seen: dict[str, int] = {}
        self._reports = 0
        self._report_timer: asyncio.TimerHandle | None = None
        # (datagram, sender address, loop time it arrived (see _drain), whether
        # Engine.note_read saw it as it was read)
        self._urgent: deque[tuple[bytes, tuple, float, bool]] = deque()  # repairs, NACKs
        self._queue: deque[tuple[bytes, tuple, float, bool]] = deque()  # the rest, in order
        self._resume: asyncio.Handle | None = None
        #: most datagrams ever waiting in the edge's queue
        self.queue_peak = 0
        # arrival rate, counted over RATE_WINDOW; and the pause that coalesces reads
        self._window_at = 0.0
        self._window_count = 0
        self._done_at = float("-inf")  # loop time the last one-datagram wake-up was done
        self.rate = 0.0  #: datagrams a second arriving, as last counted
        self._paused: asyncio.TimerHandle | None = None
        self._watching = False  # the loop watches the socket (start() was called)
        self.pauses = 0  #: times reading was paused to let a batch gather
        self.heap = heap.Trimmer()  #: gives freed memory back to the OS (see heap.py)
        self._streamed_at = float("-inf")  # when the arrival rate was last a stream's
        self._trim_timer: asyncio.TimerHandle | None = None
        # Our datagrams loop back to this host only while another peer here may need them
        # (Linux, where the option acts on the sending side; a socket opened with the loop
        # on). See the module's docstring.
        #: the edge decides whether our datagrams loop back to this host
        self.loop_controlled = False
        if isinstance(sock, socket.socket) and sys.platform.startswith("linux"):
            try:
                self.loop_controlled = sock.getsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1
            except OSError:
                pass
        #: our datagrams loop back to this host (if controlled)
        self.looping = self.loop_controlled
        self.loop_switches = 0  #: times the loop was turned on or off
        self._local: dict[str, bool] = {}  # sender address -> is it this machine's
        self._local_heard = 0.0  # loop time another peer on this host was last heard
        self._local_seen = False  # ... ever
        self._loop_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._watching = True
        self._report_timer = self.loop.call_later(1.0, self._report_rejections)
        if self.heap.available:
            self._trim_timer = self.loop.call_later(TRIM_EVERY, self._trim)
        if self.loop_controlled:
            self._local_heard = self.loop.time()  # on for local_quiet after the start
            self._loop_timer = self.loop.call_later(LOCAL_CHECK, self._check_loop)
        self.pump()

    # -------------------------------------------------------------- loop back to this host

    def _check_loop(self) -> None:
        """Turn the loop off once no other peer on this host has been heard for
        ``local_quiet`` (and we are done joining); look again later while it is on."""
        self._loop_timer = None
        if self.closed or not self.looping:
            return
        t = self.engine.timers
        # Once a peer here was heard, wait until it would be taken for gone (it may just be
        # busy): a loop turned off too soon would cost it our datagrams until it speaks.
        quiet = t.peer_timeout if self._local_seen else t.local_quiet
        if not self.engine.joining and self.loop.time() - self._local_heard >= quiet:
            self._set_loop(False)
        else:
            self._loop_timer = self.loop.call_later(LOCAL_CHECK, self._check_loop)

    def _from_host(self, data: bytes, now: float) -> None:
        """A datagram from an address of this machine: another peer here (unless it is
        our own, looped back) needs the loop on, at once."""
        if self.engine.is_own(data):
            return
        self._local_heard = now
        self._local_seen = True
        if not self.looping:
            self._set_loop(True)
            if self._loop_timer is None and not self.closed:
                self._loop_timer = self.loop.call_later(LOCAL_CHECK, self._check_loop)

    def _is_local(self, host: str) -> bool:
        """Is ``host`` an address of this machine? Binding a throwaway socket to it
        succeeds only for one (nothing is sent); any other error counts as local, which
        only keeps the loop on. Remembered per address."""
        local = self._local.get(host)
        if local is None:
            if len(self._local) >= LOCAL_CACHE:
                self._local.clear()  # a flood of forged addresses costs a bind each, no more
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    probe.bind((host, 0))
                local = True
            except OSError as err:
                local = err.errno != errno.EADDRNOTAVAIL
            except (TypeError, ValueError):
                local = False  # not an IPv4 address
            self._local[host] = local
        return local

    def _set_loop(self, on: bool) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(on))
        except OSError as err:
            self._fault("could not turn the multicast loop %s: %s", "on" if on else "off", err)
            return
        self.looping = on
        self.loop_switches += 1
        log.info("%s", "a peer on this host: our datagrams loop back to it" if on else
                 "no other peer on this host: our datagrams no longer loop back to us")

    def _trim(self) -> None:
        """Between bursts (nothing queued, no stream for TRIM_QUIET), give freed memory
        back if it has piled up: a trim takes up to tens of ms on a big heap."""
        if self.closed:
            return
        if (not (self._queue or self._urgent)
                and self.loop.time() - self._streamed_at >= TRIM_QUIET):
            try:
                self.heap.poll()
            except Exception:  # noqa: BLE001 - memory housekeeping must not stop the peer
                self._fault("trimming the heap failed", exc_info=True)
        self._trim_timer = self.loop.call_later(TRIM_EVERY, self._trim)

    def _report_rejections(self) -> None:
        """Log what was refused since the last report: at once for the first few, then a
        summary every REJECT_REPORT seconds (a hostile sender cannot flood the log)."""
        stats = self.engine.stats.as_dict()
        new = {k: v - self._rejected_seen.get(k, 0) for k, v in stats.items()
               if (k.startswith("rejected_") or k == "repairs_refused")
               and v > self._rejected_seen.get(k, 0)}
        if new:
            self._rejected_seen.update({k: stats[k] for k in new})
            self._reports += 1
            what = ", ".join(f"{k.replace('rejected_', '')} {n}" for k, n in sorted(new.items()))
            log.warning("refused %d datagrams%s: %s", sum(new.values()),
                        "" if self._reports == 1 else " since the last report", what)
        if not self.closed:
            self._report_timer = self.loop.call_later(
                1.0 if self._reports < 3 else REJECT_REPORT, self._report_rejections)

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)

    # -------------------------------------------------------------- receive

    def _readable(self) -> None:
        now = self.loop.time()
        if (self._queue or self._urgent or self.rate >= COALESCE_RATE
                or now - self._done_at < BURST_GAP):
            self._drain(now)
            self._process()
        else:
            self._one(now)

    def _one(self, now: float) -> None:
        """Mouse-rate traffic with nothing queued: read one datagram and hand it to the
        engine at once. If more are waiting, the loop calls again straight away (it
        watches the socket level-triggered), and that quick second call reads a batch."""
        got = self._recv(now, time.time() - now if self.stamped else 0.0)
        if got is None:
            return
        data, addr, at = got
        self._count(1, now)
        if self.closed:
            return
        if now - at > STALE_READ:
            # It waited in the kernel: we were away (a long task, no CPU), and more are
            # likely waiting behind it. Read them all first, so that the engine knows its
            # backlog before any timer judges silence or timeouts (Engine.queued_since).
            if self.engine.urgent(data):
                self._urgent.append((data, addr, at, False))
            else:
                self._queue.append((data, addr, at, self.engine.note_read(data, addr, at, now)))
            self._drain(now)
            self._process()
            return
        engine = self.engine
        engine.backlog = 0
        engine.queued_since = None
        try:
            engine.receive_datagram(data, addr, at)
        except Exception:  # noqa: BLE001 - a bug must not take the peer down
            self._fault("engine failed on a datagram", exc_info=True)
        self.pump()
        self._done_at = self.loop.time()

    def _recv(self, now: float, offset: float) -> tuple[bytes, tuple, float] | None:
        """One datagram from the socket: (data, sender, arrival in loop time; ``offset``:
        wall clock minus loop clock), or None when there is none (or reading failed)."""
        try:
            if self.stamped:
                data, anc, _flags, addr = self.sock.recvmsg(RECV_SIZE, STAMP_SPACE)
                at = self._arrival(anc, now, offset) if anc else now
            else:
                data, addr = self.sock.recvfrom(RECV_SIZE)
                at = now
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as err:  # e.g. ICMP errors reported on the socket
            self._fault("receive failed: %s", err)
            return None
        if self.loop_controlled:
            local = self._local.get(addr[0])
            if local or (local is None and self._is_local(addr[0])):
                self._from_host(data, now)
        return data, addr, at

    @staticmethod
    def _arrival(anc: list, now: float, offset: float) -> float:
        """The loop time a datagram arrived, from its kernel stamp (wall-clock time, which
        ``offset`` turns into loop time); ``now`` if it has none. A stamp in the future
        or older than STAMP_MAX_AGE is a clock step: clamped."""
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= TIMESPEC.size:
                sec, ns = TIMESPEC.unpack_from(raw)
                return min(now, max(now - STAMP_MAX_AGE, sec + ns * 1e-9 - offset))
        return now

    def _count(self, n: int, now: float) -> None:
        """``n`` datagrams read: the arrival rate, counted over RATE_WINDOW."""
        self._window_count += n
        if now - self._window_at >= RATE_WINDOW:
            self.rate = self._window_count / (now - self._window_at)
            self._window_at, self._window_count = now, 0
        if self.rate >= COALESCE_RATE:
            self._streamed_at = now

    def _drain(self, now: float | None = None) -> None:
        """Move what the kernel holds into the queues (up to QUEUE_MAX)."""
        urgent, queue, is_urgent = self._urgent, self._queue, self.engine.urgent
        note = self.engine.note_read
        room = QUEUE_MAX - len(queue) - len(urgent)
        if now is None:
            now = self.loop.time()
        # kernel stamps are wall-clock time; the loop's clock is monotonic
        offset = time.time() - now if self.stamped else 0.0
        recv = self._recv
        for _ in range(room):
            got = recv(now, offset)
            if got is None:
                break
            data, addr, at = got
            if is_urgent(data):
                urgent.append((data, addr, at, False))
            else:
                # Every datagram queued is shown to the engine as it is read: the gaps it
                # reveals are missing now, not when its turn comes (Engine.note_read).
                queue.append((data, addr, at, note(data, addr, at, now)))
        n = len(queue) + len(urgent)
        if n > self.queue_peak:
            self.queue_peak = n
        self._count(n - (QUEUE_MAX - room), now)  # datagrams read by this call

    def _process(self) -> None:
        """Urgent datagrams, then a batch of the rest; come back soon if some remain."""
        if self.closed:
            return
        engine = self.engine
        urgent, queue = self._urgent, self._queue
        for _ in range(PROCESS_BATCH):
            if urgent:
                data, addr, at, noted = urgent.popleft()
            elif queue:
                data, addr, at, noted = queue.popleft()
            else:
                break
            engine.backlog = len(urgent) + len(queue)
            # when the oldest still waiting arrived: silence and timeouts are judged then
            engine.queued_since = queue[0][2] if queue else None
            try:
                # ``at``: when it arrived (see _drain), not now: round trips and repair
                # delays measured by the engine are the network's, not our backlog's.
                engine.receive_datagram(data, addr, at, noted)
            except Exception:  # noqa: BLE001 - a bug must not take the peer down
                self._fault("engine failed on a datagram", exc_info=True)
        engine.backlog = len(urgent) + len(queue)
        engine.queued_since = queue[0][2] if queue else None
        if urgent or queue:
            if self._resume is None:
                self._resume = self.loop.call_soon(self._continue)
        elif self.rate >= COALESCE_RATE and self._watching:
            # caught up on a stream: let the next batch gather in the kernel
            self.loop.remove_reader(self.sock.fileno())
            self._watching = False
            self._paused = self.loop.call_later(min(COALESCE_MAX, COALESCE_BATCH / self.rate),
                                                self._unpause)
            self.pauses += 1
        self.pump()

    def _unpause(self) -> None:
        self._paused = None
        if self.closed:
            return
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._watching = True
        self._readable()

    def _continue(self) -> None:
        self._resume = None
        self._drain()  # repairs that came in meanwhile go first
        self._process()

    # -------------------------------------------------------------- send and timers

    def pump(self) -> None:
        """Send what is due, deliver events, re-arm the timer."""
        if self.closed:
            return
        now = self.loop.time()
        try:
            out = self.engine.datagrams_to_send(now)
        except Exception:  # noqa: BLE001
            self._fault("engine failed preparing datagrams", exc_info=True)
            out = []
        if out:
            self._send(out)
        self._deliver_events()
        self._arm()

    def _send(self, datagrams: list[bytes]) -> None:
        if self._backlog:
            self._backlog.extend(datagrams)
            return
        for i, d in enumerate(datagrams):
            try:
                self.sock.sendto(d, self.dest)
            except (BlockingIOError, InterruptedError):
                # The send buffer is full: the link is slower than the pacer. Hold the rest
                # and let the engine release only control messages and repairs until the
                # socket takes more (the buffer is kept small, see sockets.py, so this
                # happens before a queue beyond it drops datagrams silently).
                self._backlog = list(datagrams[i:])
                self.engine.blocked = True
                if not self._writer:
                    self.loop.add_writer(self.sock.fileno(), self._writable)
                    self._writer = True
                return
            except OSError as err:
                self.send_errors += 1
                self.last_send_error = (self.loop.time(), err.strerror or str(err))
                if err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENODEV,
                                 errno.EADDRNOTAVAIL):
                    if self.send_errors in (1, 100, 10_000):
                        log.warning("cannot send to %s:%d: %s (no network or no route for "
                                    "multicast?)", *self.dest, err.strerror)
                else:
                    self._fault("send failed: %s", err)

    def _writable(self) -> None:
        backlog, self._backlog = self._backlog, []
        self.loop.remove_writer(self.sock.fileno())
        self._writer = False
        self._send(backlog)
        if not self._backlog:
            self.engine.blocked = False
            self.pump()

    def _arm(self) -> None:
        at = self.engine.get_timer()
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self.loop.call_at(max(at, self.loop.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.engine.handle_timer(self.loop.time())
        except Exception:  # noqa: BLE001
            self._fault("engine failed in a timer", exc_info=True)
        self.pump()

    def _deliver_events(self) -> None:
        while (ev := self.engine.next_event()) is not None:
            if isinstance(ev, Silence):
                self._rejoin(ev)
            for fn in list(self._listeners):
                try:
                    fn(ev)
                except Exception:  # noqa: BLE001 - a listener's bug is its own
                    log.exception("event listener failed on %r", ev)

    def _rejoin(self, ev: Silence) -> None:
        group, _ = self.dest
        try:
            rejoin_group(self.sock, group, self.iface)
        except OSError as err:
            self.rejoin_error = str(err)
            log.warning("heard nobody for %.0f s; re-joining %s failed: %s", ev.seconds, group,
                        err.strerror or err)
            return
        self.rejoin_error = None
        self.rejoined_at = self.loop.time()
        if ev.had_peers:
            log.warning("heard nobody for %.0f s: re-joined the multicast group %s (a switch "
                        "may have stopped forwarding it)", ev.seconds, group)
        else:
            log.info("nobody here for %.0f s: re-joined the multicast group %s", ev.seconds,
                     group)

    def _fault(self, msg: str, *args, exc_info: bool = False) -> None:
        self._faults += 1
        if self._faults <= 5 or self._faults % 1000 == 0:
            log.error(msg + " (fault %d)", *args, self._faults, exc_info=exc_info)

    # -------------------------------------------------------------- close

    def flush_blocking(self, timeout: float = 0.5) -> None:
        """Push out everything queued, ignoring the pacer's wait (used when closing)."""
        backlog, self._backlog = self._backlog, []
        self.sock.setblocking(True)
        self.sock.settimeout(timeout)
        try:
            for d in backlog:
                self.sock.sendto(d, self.dest)
            now = self.loop.time()
            for _ in range(10_000):
                out = self.engine.datagrams_to_send(now)
                if not out:
                    now += 0.001
                    if not self.engine.has_pending():
                        break
                    continue
                for d in out:
                    self.sock.sendto(d, self.dest)
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._resume is not None:
            self._resume.cancel()
        if self._paused is not None:
            self._paused.cancel()
        self._urgent.clear()
        self._queue.clear()
        if self._report_timer is not None:
            self._report_timer.cancel()
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        if self._loop_timer is not None:
            self._loop_timer.cancel()
        try:
            self.loop.remove_reader(self.sock.fileno())
            if self._writer:
                self.loop.remove_writer(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()
