"""The systems that scripts/bench.py compares with p2pboard, and what they share.

Every system carries the very records p2pboard puts in its DATA datagrams: a message is a
p2pboard DATA datagram (``wire.encode_header`` + records from ``wire.encode_record``, at
most ``wire.MAX_DATAGRAM`` bytes), and a receiver decodes it with ``wire.decode_records``
and applies it into a ``p2pboard.board.Board``. So encoding, decoding and applying cost
the same everywhere, and what differs is only how the bytes travel:

``relay``
    The classic answer: a threaded TCP server on the standard library's ``socketserver``.
    Clients send length-prefixed messages (u32 length, then the message) with TCP_NODELAY;
    the server forwards each to every other client. Each client has its own send queue and
    writer thread, which coalesces what is queued into one ``sendall``, so a slow client
    never holds up the others. The server keeps every message (up to 512 MB) and replays
    them to a client that connects later: that is its late join.
``zmq``
    ZeroMQ PUB/SUB (pyzmq): every peer binds a PUB socket and its SUB socket connects to
    every other peer's (the benchmark hands out the addresses). High-water marks are off
    (0), since the default of 1000 messages silently drops most of a pasted image. No late
    join (PUB/SUB has none without an extra snapshot service).
``mcast``
    Plain UDP multicast without any repair, as naive implementations do: the same
    datagrams, a blocking socket (the kernel's send buffer paces it at the link rate), an
    8 MiB receive buffer like p2pboard's. What is lost stays lost.
``socket``
    The ceiling: the image's datagrams encoded before the clock starts and sent with
    ``sendto`` in a tight loop; receivers only count them (no decoding, no board).

Limits: the peers here are as simple as the benchmark allows. Nothing is authenticated.
"""

from __future__ import annotations

import collections
import queue
import socket
import socketserver
import struct
import threading
import time

import numpy as np

from p2pboard import wire
from p2pboard.board import Board
from p2pboard.ops import Image, StrokePath

FRAME = struct.Struct("!I")  # relay framing: length of the message that follows
RELAY_HISTORY_BYTES = 512 << 20
RCVBUF = 8 << 20  # the same receive buffer p2pboard asks for


# ---------------------------------------------------------------------------- workloads


def photo(width: int, height: int, seed: int = 1) -> np.ndarray:
    """A deterministic photo-like RGBA image: smooth gradients plus sensor-like noise, so
    that PNG-style compression gets it to about half its raw size, not to nothing."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width, 3), 128.0, np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy = rng.uniform(0.001, 0.02, 2)
            img[..., c] += np.sin(x * fx + y * fy + rng.uniform(0, 6.3)) * rng.uniform(15, 40)
    img += rng.normal(0.0, 5.0, img.shape).astype(np.float32)
    out = np.empty((height, width, 4), np.uint8)
    out[..., :3] = np.clip(img, 0, 255).astype(np.uint8)
    out[..., 3] = 255
    return out


def strokes(seed: int, width: int, height: int, points: int):
    """Mouse-like strokes, ``points`` points in all: yields (color, brush width, points)."""
    import random

    rng = random.Random(seed)
    left = points
    while left > 0:
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256), 255)
        brush = rng.randrange(2, 21)
        n = min(left, rng.randrange(5, 30))
        x, y = rng.randrange(width), rng.randrange(height)
        pts = []
        for _ in range(n):
            x = min(max(x + rng.randrange(-15, 16), 0), width - 1)
            y = min(max(y + rng.randrange(-15, 16), 0), height - 1)
            pts.append((x, y))
        left -= n
        yield color, brush, pts


# ---------------------------------------------------------------------------- the board side


class RecordBoard:
    """A board fed with p2pboard records, remembering when each record was first applied,
    keyed (author, message number, record index), as p2pboard's own board is."""

    def __init__(self, me: int, size: tuple[int, int]) -> None:
        self.me = me
        self.size = size
        self.board = Board(*size)
        self.times: dict[tuple[int, int, int], float] = {}
        self.lock = threading.Lock()
        self.lamport = 0
        self.opno = 0
        self.seq = 0
        self.pixels_painted = 0
        self.malformed = 0
        self.remote = 0  # remote records applied
        self.own_count = 0  # records we authored

    def receive(self, msg: bytes) -> None:
        """One message from another peer: decode, apply, timestamp."""
        try:
            h = wire.decode_header(msg)
            if h.type != wire.MsgType.DATA or h.sender == self.me:
                return
            records = wire.decode_records(memoryview(msg)[wire.HEADER.size:], h.sender,
                                          *self.size)
        except wire.DecodeError:
            self.malformed += 1
            return
        with self.lock:
            for idx, rec in enumerate(records):
                if getattr(rec, "lamport", 0) > self.lamport:
                    self.lamport = rec.lamport
                self.board.apply(rec, h.sender, h.seq, idx)
                key = (h.sender, h.seq, idx)
                if key not in self.times:
                    self.times[key] = time.monotonic()
                    self.remote += 1

    def _messages(self, pieces) -> list[bytes]:
        """Pack (bytes, fragment) pieces into DATA messages of at most wire.MAX_DATAGRAM
        bytes, applying each fragment locally as it is placed (as p2pboard does)."""
        out: list[bytes] = []
        open_: list[bytes] = []
        size = 0

        def flush() -> None:
            nonlocal size
            if open_:
                out.append(wire.encode_header(wire.MsgType.DATA, self.me, self.seq, self.size)
                           + b"".join(open_))
                open_.clear()
                size = 0

        with self.lock:
            for piece, frag in pieces:
                if size + len(piece) > wire.BODY_BUDGET:
                    flush()
                if not open_:
                    self.seq += 1
                idx = len(open_)
                open_.append(piece)
                size += len(piece)
                if self.board.apply(frag, self.me, self.seq, idx):
                    if isinstance(frag, Image):
                        self.pixels_painted += frag.rgba.shape[0] * frag.rgba.shape[1]
                    else:
                        self.pixels_painted += int(frag.index.size)
                self.times[(self.me, self.seq, idx)] = time.monotonic()
                self.own_count += 1
            flush()
        return out

    def begin(self) -> tuple[int, int]:
        self.opno += 1
        self.lamport += 1
        return self.opno, self.lamport

    def stroke_segment(self, op: tuple[int, int], color, brush: int, pts) -> list[bytes]:
        rec = StrokePath(self.me, op[0], op[1], tuple(color), brush,
                         np.asarray(pts, np.int64).reshape(-1, 2))
        return self._messages(wire.encode_record(rec, self.size[0], height=self.size[1]))

    def paste(self, rgba: np.ndarray, x: int = 0, y: int = 0) -> list[bytes]:
        opno, lamport = self.begin()
        rec = Image(self.me, opno, lamport, x, y, rgba)
        return self._messages(wire.encode_record(rec, self.size[0], height=self.size[1]))

    def own(self) -> int:
        return self.own_count


# ---------------------------------------------------------------------------- plain multicast


def multicast_socket(group: str, port: int, iface: str, loop: bool = False) -> socket.socket:
    """A blocking UDP socket joined to ``group`` on ``iface``, sending through ``iface``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    s.bind((group, port))
    s.setsockopt(socket.IPPROTO_IP, 49, 0)  # IP_MULTICAST_ALL off
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(iface)))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(loop))
    return s


class McastLink:
    """Plain multicast: send each message once, apply whatever arrives."""

    def __init__(self, rb: RecordBoard, group: str, port: int, iface: str,
                 track_seen: bool = True) -> None:
        self.rb = rb
        self.dest = (group, port)
        self.sock = multicast_socket(group, port, iface)
        #: numbers seen per sender (the benchmark's loss events), if ``track_seen``
        self.seen: collections.defaultdict[int, set[int]] = collections.defaultdict(set)
        self.track_seen = track_seen
        threading.Thread(target=self._receive, daemon=True).start()

    def send(self, msgs: list[bytes]) -> None:
        for m in msgs:
            self.sock.sendto(m, self.dest)

    def _receive(self) -> None:
        while True:
            try:
                m = self.sock.recv(2048)
            except OSError:
                return
            if self.track_seen and len(m) >= wire.HEADER.size:
                h = wire.decode_header(m)
                self.seen[h.sender].add(h.seq)
            self.rb.receive(m)

    def ready(self, peers: int) -> bool:
        return True


# ---------------------------------------------------------------------------- socket ceiling


class SocketBlaster:
    """The ceiling: pre-encoded datagrams through the bare socket, counted, not decoded."""

    def __init__(self, group: str, port: int, iface: str) -> None:
        self.dest = (group, port)
        self.sock = multicast_socket(group, port, iface)
        self.count = 0
        self.bytes = 0
        self.first = self.last = 0.0
        threading.Thread(target=self._receive, daemon=True).start()

    def blast(self, msgs: list[bytes]) -> None:
        send, dest = self.sock.sendto, self.dest
        for m in msgs:
            send(m, dest)

    def _receive(self) -> None:
        buf = bytearray(2048)
        recv = self.sock.recv_into
        while True:
            try:
                n = recv(buf)
            except OSError:
                return
            now = time.monotonic()
            if not self.count:
                self.first = now
            self.count += 1
            self.bytes += n
            self.last = now


# ---------------------------------------------------------------------------- TCP relay


def read_frames(sock: socket.socket):
    """The relay's length-prefixed messages from a TCP connection, until it closes."""
    f = sock.makefile("rb", buffering=1 << 16)
    while True:
        head = f.read(FRAME.size)
        if len(head) < FRAME.size:
            return
        (n,) = FRAME.unpack(head)
        body = f.read(n)
        if len(body) < n:
            return
        yield body


class _Client:
    """One connected client as the relay sees it: a send queue and a writer thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(target=self._write, daemon=True).start()

    def _write(self) -> None:
        while True:
            first = self.q.get()
            if first is None:
                return
            batch = [first]
            size = len(first)
            while size < (1 << 20):
                try:
                    nxt = self.q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                batch.append(nxt)
                size += len(nxt)
            try:
                self.sock.sendall(b"".join(batch))
            except OSError:
                return


class RelayServer(socketserver.ThreadingTCPServer):
    """The relay: forwards every length-prefixed message to every other client."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr: tuple[str, int]) -> None:
        self.clients: dict[int, _Client] = {}
        self.lock = threading.Lock()
        self.history: list[bytes] = []
        self.history_bytes = 0
        self.messages = 0
        super().__init__(addr, _RelayHandler)


class _RelayHandler(socketserver.BaseRequestHandler):
    server: RelayServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        me = _Client(sock)
        srv = self.server
        with srv.lock:  # replay the history, then go live, with nothing in between
            for frame in srv.history:
                me.q.put(frame)
            srv.clients[id(me)] = me
        try:
            for body in read_frames(sock):
                frame = FRAME.pack(len(body)) + body
                with srv.lock:
                    srv.messages += 1
                    if srv.history_bytes + len(frame) <= RELAY_HISTORY_BYTES:
                        srv.history.append(frame)
                        srv.history_bytes += len(frame)
                    for cid, c in srv.clients.items():
                        if cid != id(me):
                            c.q.put(frame)
        finally:
            with srv.lock:
                srv.clients.pop(id(me), None)
            me.q.put(None)


class RelayLink:
    """A relay client: length-prefixed messages over one TCP connection."""

    def __init__(self, rb: RecordBoard, server: tuple[str, int]) -> None:
        self.rb = rb
        self.sock = socket.create_connection(server, timeout=10)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.lock = threading.Lock()
        threading.Thread(target=self._receive, daemon=True).start()

    def send(self, msgs: list[bytes]) -> None:
        data = b"".join(FRAME.pack(len(m)) + m for m in msgs)
        with self.lock:
            self.sock.sendall(data)

    def _receive(self) -> None:
        for body in read_frames(self.sock):
            self.rb.receive(body)

    def ready(self, peers: int) -> bool:
        return True


# ---------------------------------------------------------------------------- ZeroMQ


HELLO = b"hello"


class ZmqLink:
    """ZeroMQ PUB/SUB: our PUB is bound, our SUB is connected to every other PUB."""

    def __init__(self, rb: RecordBoard, bind: str, others: list[str]) -> None:
        import zmq

        self.rb = rb
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.bind(bind)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        for addr in others:
            self.sub.connect(addr)
        self.heard: set[bytes] = set()
        self.name = bind.encode()
        threading.Thread(target=self._receive, daemon=True).start()

    def send(self, msgs: list[bytes]) -> None:
        for m in msgs:
            self.pub.send(m)

    def ready(self, peers: int) -> bool:
        """Slow joiners: say hello until every other peer's hello was heard (the caller
        keeps calling until all peers are ready, so ours keep flowing meanwhile)."""
        self.pub.send(HELLO + self.name)
        return len(self.heard) >= peers - 1

    def _receive(self) -> None:
        while True:
            try:
                m = self.sub.recv()
            except Exception:  # noqa: BLE001 - context closed
                return
            if m.startswith(HELLO):
                self.heard.add(m[len(HELLO):])
                continue
            self.rb.receive(m)
