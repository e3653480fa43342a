"""A hostile peer for the real-socket tests: ``python -m tests.attacker GROUP PORT IFACE
VICTIM_ID SIZE SECONDS``. Run only inside a test's own network namespace.

For SECONDS it joins the group, records what the honest peers send, and sends, over and
over: random bytes, truncated and oversized datagrams, another protocol version, datagrams
in the victim's name (from its own address: spoofed), replays of what it recorded, NACKs
for the victim's whole history again and again (amplification), and a flood of valid DATA
under its own id. Prints one JSON line of what it sent.
"""

from __future__ import annotations

import json
import random
import select
import sys
import time

import numpy as np

from p2pboard import wire
from p2pboard.net.sockets import open_multicast_socket
from p2pboard.ops import Paint


def main(argv: list[str]) -> None:
    group, port, iface, victim, size, seconds = argv
    port, victim, seconds = int(port), int(victim), float(seconds)
    w, h = (int(v) for v in size.split("x"))
    sock, _ = open_multicast_socket(group, port, iface)
    rng = random.Random(7)
    me = rng.randrange(1, 1 << 32)  # the flood's id
    asker = rng.randrange(1, 1 << 32)  # another id for the NACKs, so the flood limit of
    # the first does not silence the second
    recorded: list[bytes] = []
    sent: dict[str, int] = {}
    dest = (group, port)

    def send(kind: str, d: bytes) -> None:
        try:
            sock.sendto(d, dest)
        except BlockingIOError:
            select.select([], [sock], [], 0.01)
            return
        sent[kind] = sent.get(kind, 0) + 1

    pix = np.arange(0, w * 3, 3, dtype=np.int64) % (w * h)
    rec = wire.encode_paint(Paint(me, 1, 1, (0, 0, 0, 255), np.unique(pix)), w)[0][0]
    seq = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while select.select([sock], [], [], 0)[0]:  # keep what the honest peers send
            data = sock.recv(2048)
            if len(recorded) < 2000 and data[3:4] == bytes([wire.MsgType.DATA]):
                recorded.append(data)
        for _ in range(20):
            send("random", rng.randbytes(rng.randrange(1, 1300)))
        hdr = wire.encode_header(wire.MsgType.SESSION, me, 0, (w, h))
        send("truncated", hdr[:rng.randrange(1, len(hdr))])
        send("oversized", hdr + bytes(1400))
        send("version", wire.HEADER.pack(wire.MAGIC, 99, 1, 0, me, 1, w, h) + rec)
        send("spoofed", wire.encode_empty(wire.MsgType.GOODBYE, victim, 0, (w, h)))
        send("spoofed", wire.encode_empty(wire.MsgType.HEARTBEAT, victim, 1 << 30, (w, h)))
        send("spoofed", wire.encode_header(wire.MsgType.DATA, victim, 1 << 29, (w, h)) + rec)
        for d in recorded[-20:]:
            send("replayed", d)
            send("replayed", wire.with_flags(d, wire.FLAG_REPAIR))
        send("nack", wire.encode_nack(asker, 0, (w, h), wire.Nack(victim, 1, ((1, 2048),))))
        burst_end = time.monotonic() + 0.05
        while time.monotonic() < burst_end:  # the flood, under our own id, flat out
            for _ in range(500):
                seq += 1
                send("flood", wire.encode_header(wire.MsgType.DATA, me, seq, (w, h)) + rec)
        time.sleep(0.01)
    print(json.dumps(sent), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
