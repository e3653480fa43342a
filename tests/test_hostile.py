"""Hostile and broken peers, in the simulator: each attack is aimed at a real engine, which
must keep serving everyone else with bounded memory and work, and count what it refused."""

from __future__ import annotations

import random

import numpy as np

from p2pboard import raster, session, wire
from p2pboard.ops import Paint

from .sim import SimNet
from .test_sim import H, W, scribble, scribbles, start

ATTACKER = ("198.18.99.99", 47777)


def _inbox(net: SimNet, peer) -> list[bytes]:
    """Capture what ``peer`` sends from now on (in addition to delivering it)."""
    sent: list[bytes] = []
    old = net.filter

    def spy(s, d, dgram):
        if s == peer.index:
            sent.append(dgram)
        return old(s, d, dgram) if old else True

    net.filter = spy
    return sent


def test_a_spoofed_sender_id_from_another_address_is_refused():
    net = SimNet(21)
    a, b, c = start(net, 3)
    rng = random.Random(1)
    for _ in range(5):
        scribble(net, a, rng)
    net.settle()
    good = c.engine.board.digest()
    e = c.engine
    size = (W, H)
    # A goodbye, a heartbeat announcing 1000 datagrams and a paint record, all in a's name.
    fake_paint = wire.encode_paint(
        Paint(a.engine.id, 99, 1 << 20, (255, 0, 0, 255), np.arange(50, dtype=np.int64)), W)
    forged = [wire.encode_empty(wire.MsgType.GOODBYE, a.engine.id, 0, size),
              wire.encode_empty(wire.MsgType.HEARTBEAT, a.engine.id, 1000, size),
              wire.encode_header(wire.MsgType.DATA, a.engine.id, a.engine.seq + 1, size)
              + fake_paint[0][0]]
    for d in forged:
        e.receive_datagram(d, ATTACKER, net.now)
    assert e.stats.rejected_spoofed == 3
    assert a.engine.id in e.peers  # the forged goodbye did not remove it
    assert e.missing_count() == 0  # nor did the forged heartbeat invent a gap
    assert e.board.digest() == good
    # a's real next stroke (with the very seq the attacker tried to take) still arrives
    scribble(net, a, rng)
    net.settle()
    assert c.engine.board.digest() == a.engine.board.digest()


def test_what_a_receive_queue_reads_is_judged_as_what_it_hands_over():
    """Engine.note_read (a glance at each datagram as the edge queues it) marks gaps only
    for an author's own DATA and proactive parity, from the address its id is bound to,
    within the receive window: nothing forged, mangled or far-fetched invents a gap."""
    net = SimNet(23)
    a, b = start(net, 2)
    rng = random.Random(3)
    for _ in range(3):
        scribble(net, a, rng)
    net.settle()
    e, aid, size, t = b.engine, a.engine.id, (W, H), net.now
    nxt = a.engine.seq + 1

    def data(seq, flags=0, sender=aid, dsize=size):
        return wire.encode_header(wire.MsgType.DATA, sender, seq, dsize, flags) + b"x" * 40

    parity = wire.encode_parity(aid, nxt, size, wire.Parity(nxt // wire.FEC_K + 1, 8, b"p" * 40))
    refused = [
        (data(nxt + 5), ATTACKER),  # a's id from another address
        (data(nxt + 5, flags=wire.FLAG_REPAIR), a.addr),  # a repair: from anyone, jumps queues
        (data(nxt + e.timers.receive_window + 2), a.addr),  # beyond the receive window
        (data(nxt + 5, dsize=(W + 1, H)), a.addr),  # another board
        (data(nxt + 5, sender=e.id), a.addr),  # our own
        (data(nxt + 5)[:10], a.addr),  # cut short
        (data(nxt + 5) + b"x" * wire.MAX_DATAGRAM, a.addr),  # over the size limit
        (b"\x00" * 64, a.addr),
        (b"", a.addr),
        (parity, a.addr),  # parity of a block it says it has not sent
        (data(nxt + 5), None),  # no address
    ]
    for d, addr in refused:
        assert e.note_read(d, addr, t, t) is False, (d[:16], addr)
    assert e.missing_count() == 0 and e.stats.gaps_read == 0
    # The real thing: a's datagram nxt + 2, read while nxt + 1 is nowhere: nxt + 1 is
    # missing from now; nothing changed on the board until the queue hands them over.
    before = e.board.digest()
    assert e.note_read(data(nxt + 2), a.addr, t, t) is True
    src = e.source_state(aid)
    assert list(src.missing) == [nxt, nxt + 1] and src.highest == nxt - 1
    assert e.stats.gaps_read == 2 and e.board.digest() == before
    # Its turn comes and it is refused (its body is not records): missing now, since
    # nothing read after it would say so.
    e.receive_datagram(data(nxt + 2), a.addr, t, True)
    assert e.stats.rejected_malformed == 1 and list(src.missing) == [nxt, nxt + 1, nxt + 2]
    # A flooding sender's datagrams are not looked at while it is quarantined.
    e._quarantine[aid] = t + 10
    assert e.note_read(data(nxt + 9), a.addr, t, t) is False
    assert len(src.missing) == 3


def test_a_repair_of_a_datagram_nobody_announced_is_refused():
    net = SimNet(22)
    a, b = start(net, 2)
    e = b.engine
    size = (W, H)
    rec = wire.encode_clear(__import__("p2pboard.ops").ops.Clear(a.engine.id, 50, 50))
    before = e.board.digest()
    # Far beyond anything announced: refused at once.
    far = session.EARLY_REPAIR_AHEAD + 10
    d = wire.encode_header(wire.MsgType.DATA, a.engine.id, far, size, flags=wire.FLAG_REPAIR)
    e.receive_datagram(d + rec, ATTACKER, net.now)
    assert e.stats.rejected_repair == 1
    # Nearer (a peer far behind on a paste gets repairs before the news): held, never
    # applied, and dropped (counted) once nothing announced it for a second.
    d = wire.encode_header(wire.MsgType.DATA, a.engine.id, 500, size, flags=wire.FLAG_REPAIR)
    e.receive_datagram(d + rec, ATTACKER, net.now)
    assert e.board.digest() == before
    net.run_for(1.6)
    assert e.stats.rejected_repair == 2
    assert e.board.digest() == before


def test_the_same_nack_a_thousand_times_gets_a_few_repairs_per_second():
    net = SimNet(23)
    a, b = start(net, 2)
    rng = random.Random(2)
    scribbles(net, a, rng, 20, 0.003)
    net.settle()
    assert a.engine.seq >= 10
    sent = _inbox(net, a)
    nack = wire.encode_nack(b.engine.id, 0, (W, H),
                            wire.Nack(a.engine.id, 1, ((1, a.engine.seq),)))
    t0 = net.now
    for i in range(1000):  # one every millisecond for a second
        a.engine.receive_datagram(nack, b.addr, net.now)
        net.act(a, lambda e, now: None)
        net.run_for(0.001)
    repairs = [d for d in sent if d[3] == wire.MsgType.DATA and d[4] & wire.FLAG_REPAIR]
    per_datagram = len(repairs) / a.engine.seq
    elapsed = net.now - t0
    assert per_datagram <= a.engine.timers.repairs_per_datagram * (elapsed + 1), per_datagram
    assert a.engine.stats.repairs_refused > 900
    net.settle()


def test_huge_nack_ranges_are_refused_outright():
    net = SimNet(24)
    a, b = start(net, 2)
    scribble(net, a, random.Random(3))
    net.settle()
    ranges = tuple((1 + i * 4096, 4096) for i in range(15))
    a.engine.receive_datagram(wire.encode_nack(b.engine.id, 0, (W, H),
                                               wire.Nack(a.engine.id, 1, ranges)),
                              b.addr, net.now)
    assert a.engine.stats.rejected_nack == 1
    assert not a.engine._repairs


def test_nacks_refused_for_a_reason_of_ours_are_counted_apart_from_hostile_ones(monkeypatch):
    """Each way an author cannot answer has its own counter (a soak that fails must tell a
    repair cache that lost a datagram from a full repair queue or a forgotten snapshot);
    rejected_nack is kept for NACKs that are refused as hostile."""
    net = SimNet(26)
    a, b = start(net, 2)
    rng = random.Random(4)
    scribbles(net, a, rng, 6, 0.05)
    net.settle()
    e, sent = a.engine, a.engine.seq
    assert sent >= 6

    def nack(ranges):
        e.receive_datagram(wire.encode_nack(b.engine.id, 0, (W, H),
                                            wire.Nack(e.id, 1, ranges)), b.addr, net.now)

    # one of ours that fell out of the repair cache
    e._cache_bytes -= len(e._cache.pop((e.id, 1)))
    nack(((1, 1),))
    assert (e.stats.nacks_uncached, e.stats.rejected_nack, len(e._repairs)) == (1, 0, 0)

    # a full repair queue: the rest of the request is dropped, and counted
    monkeypatch.setattr(session, "MAX_REPAIR_QUEUE", 2)
    nack(((2, sent - 1),))
    assert len(e._repairs) == 2
    assert e.stats.repairs_queue_full == sent - 3
    assert e.stats.rejected_nack == 0

    # a snapshot we never served (or stopped serving)
    e.receive_datagram(wire.encode_snap_nack(b.engine.id, 0, (W, H),
                                             wire.SnapNack(e.id, 12345, ((1, 3),))),
                       b.addr, net.now)
    assert e.stats.snap_nacks_unknown == 1
    assert e.stats.rejected_nack == 0


def test_a_flood_from_one_sender_is_cut_and_the_others_still_get_through():
    from p2pboard.session import Timers

    net = SimNet(25, timers=Timers(flood_rate=14_000))  # what 8 MB/s peers derive
    a, b, c = start(net, 3)
    e = c.engine
    size = (W, H)
    flood_id = 0xF100D
    rng = random.Random(4)
    pix = raster.stroke_pixels([(1, 1), (60, 40)], 5, W, H)
    n = 0
    for burst in range(20):  # 20 x 5000 datagrams within 0.2 s: 500,000 a second
        for i in range(5000):
            n += 1
            rec = wire.encode_paint(Paint(flood_id, n, n, (0, 0, 0, 255), pix), W)[0][0]
            e.receive_datagram(wire.encode_header(wire.MsgType.DATA, flood_id, n, size) + rec,
                               ATTACKER, net.now)
        scribble(net, a, rng)  # meanwhile a real peer keeps drawing
        net.run_for(0.01)
    assert e.stats.rejected_flood > 50_000
    src = e.source_state(flood_id)
    assert src is None or len(src.held) + len(src.missing) <= e.timers.receive_window
    net.settle()
    # the flood drew too (on an open board anyone may), but a's strokes are all there
    a_stamps = (a.engine.board.stamps & 0xFFFFFFFF) == a.engine.id
    c_stamps = (c.engine.board.stamps & 0xFFFFFFFF) == a.engine.id
    assert a_stamps.sum() > 0
    assert b.engine.board.digest() == a.engine.board.digest()
    assert (c.engine.board.pixels[a_stamps & c_stamps] == a.engine.board.pixels[
        a_stamps & c_stamps]).all()


def test_replayed_datagrams_change_nothing():
    net = SimNet(26)
    a, b = start(net, 2)
    sent = _inbox(net, a)
    rng = random.Random(5)
    for _ in range(10):
        scribble(net, a, rng)
        net.act(a, lambda e, now: e.undo(now) if rng.random() < 0.3 else None)
        net.run_for(0.005)
    net.settle()
    good = b.engine.board.digest()
    dup_before = b.engine.stats.duplicates
    for d in sent * 3:
        b.engine.receive_datagram(d, a.addr, net.now)
    net.settle()
    assert b.engine.board.digest() == good == a.engine.board.digest()
    assert b.engine.stats.duplicates > dup_before


def test_a_forged_repair_of_the_next_datagram_cannot_preempt_the_authors_own():
    net = SimNet(27)
    a, b, c = start(net, 3)
    rng = random.Random(6)
    scribble(net, a, rng)
    net.settle()
    e = c.engine
    nxt = a.engine.seq + 1
    forged = wire.encode_header(wire.MsgType.DATA, a.engine.id, nxt, (W, H),
                                flags=wire.FLAG_REPAIR) + wire.encode_paint(
        Paint(a.engine.id, 77, 1 << 24, (255, 0, 255, 255), np.arange(200, dtype=np.int64)),
        W)[0][0]
    e.receive_datagram(forged, ATTACKER, net.now)  # held: nobody said seq nxt exists
    assert e.board.digest() == a.engine.board.digest()
    scribble(net, a, rng)  # a's real datagram nxt
    net.settle()
    assert e.board.digest() == a.engine.board.digest() == b.engine.board.digest()
    assert not ((e.board.stamps >> 32) == (1 << 24)).any()  # the forgery never applied


def test_forged_and_inconsistent_parity_is_refused_and_changes_nothing():
    net = SimNet(41)
    a, b = start(net, 2)
    rng = random.Random(2)
    for _ in range(40):  # more than a block of a's datagrams
        scribble(net, a, rng)
        net.run_for(0.003)
    net.settle()
    good = b.engine.board.digest()
    e, aid, size = b.engine, a.engine.id, (W, H)
    sym = bytes(100)
    top = a.engine.seq

    def parity(block, index=wire.FEC_K, seq=top, symbol=sym):
        return wire.encode_parity(aid, seq, size, wire.Parity(block, index, symbol))

    # from another address than a's: refused like any other spoofed message
    e.receive_datagram(parity(0), ATTACKER, net.now)
    assert e.stats.rejected_spoofed == 1
    # from a's address, for datagrams a has not sent (its header says so): refused
    e.receive_datagram(parity(top // wire.FEC_K + 5, seq=top), a.addr, net.now)
    assert e.stats.rejected_parity == 1
    # for a block b holds already: ignored
    e.receive_datagram(parity(0), a.addr, net.now)
    assert e.stats.ignored_parity == 1
    assert e.missing_count() == 0 and e.board.digest() == good
    # two symbols of one block that cannot belong together: the second is refused
    nxt = top // wire.FEC_K + 1
    late = nxt * wire.FEC_K + wire.FEC_K
    e.receive_datagram(parity(nxt, seq=late), a.addr, net.now)
    e.receive_datagram(parity(nxt, index=wire.FEC_K + 1, seq=late, symbol=bytes(50)), a.addr,
                       net.now)
    assert e.stats.rejected_parity == 2
    assert e.board.digest() == good


def test_a_flood_of_snapshot_requests_queues_one_snapshot_at_a_time():
    """Each request for a board's state could cost the server a whole snapshot in its send
    queue. A stream of them (hostile, or joiners that time out behind a long queue and ask
    again, as in the 10-minute soak) is answered with the snapshot already on its way: the
    queue holds one snapshot's chunks, a few snapshots are kept, and a real joiner still
    gets the board."""
    net = SimNet(28, size=(320, 240))
    a = net.add_peer(rate=300_000)
    b = net.add_peer()
    net.run_for(1.0)
    img = np.random.default_rng(3).integers(0, 256, (240, 320, 4), dtype=np.uint8)
    net.act(a, lambda e, now: e.paste(img, 0, 0, now))
    net.settle(limit=60)
    e = a.engine
    size = (320, 240)
    chunks = -(-len(__import__("p2pboard.store").store.dump(e.board, {})) // e._chunk_size)
    most_queued = most_kept = 0
    for i in range(20):  # a new request every 0.6 s, each with its own id
        e.receive_datagram(wire.encode_snap_req(0xBAD5, i, size, wire.SnapReq(1000 + i, 0)),
                           ATTACKER, net.now)
        net.act(a, lambda e, now: None)
        for _ in range(60):
            net.run_for(0.01)
            most_queued = max(most_queued, len(e._bulk))
            most_kept = max(most_kept, len(e._serve))
    assert e.stats.snapshots_sent == 20
    assert chunks > 100 and most_queued <= chunks + 8, (chunks, most_queued)
    assert most_kept <= session.MAX_SNAPSHOTS_KEPT
    late = net.add_peer()
    t0 = net.now
    while late.engine.joining:
        net.run_for(0.05)
        assert net.now - t0 < 30, "the join did not finish"
    net.settle(limit=60)
    assert late.engine.board.digest() == b.engine.board.digest() == e.board.digest()


def test_a_peer_claiming_total_loss_costs_pastes_at_most_the_parity_cap():
    """Any receiver may really be losing most of what it gets, so its report is believed:
    a hostile one that claims 100% loss (or skips SESSION numbers to make others count
    losses) raises every author's proactive parity, but never past PROACTIVE_MAX per
    block, and nothing else changes."""
    net = SimNet(29, size=(320, 240))
    a, b = start(net, 2)[:2]
    liar = 0x11AB
    size = (320, 240)
    for n in range(12):  # a SESSION a second, each count 200 ahead of the one before
        s = wire.Session("liar", (1, 2, 3, 255), 0, (), count=n * 200, loss=0xFFFF)
        for e in (a.engine, b.engine):
            e.receive_datagram(wire.encode_session(liar, 0, size, s), ATTACKER, net.now)
        net.run_for(1.0)
    assert b.engine.loss_meter.rate > 0.9  # it counted 199 missed per SESSION
    net.act(a, lambda e, now: e.paste(np.random.default_rng(29).integers(
        0, 256, (240, 320, 4), dtype=np.uint8), 0, 0, now))
    net.settle(limit=60)
    st = a.engine.stats
    blocks = -(-a.engine.seq // wire.FEC_K)
    assert a.engine.proactive == session.PROACTIVE_MAX
    assert st.parity_proactive <= session.PROACTIVE_MAX * blocks
    assert b.engine.board.digest() == a.engine.board.digest()


def test_an_insiders_two_operations_with_one_stamp_end_the_same_on_every_board():
    """An insider sends two operations with one Lamport time, in different colours over
    the same pixels, and they reach two peers in opposite orders. Both show the same
    picture (the higher colour wins the tie), so anti-entropy finds nothing to fetch: no
    divergence, no state sent back and forth."""
    net = SimNet(27)
    a, b = start(net, 2)
    insider, addr, size = 0x51DE, ("198.18.99.98", 47777), (W, H)
    pix = np.arange(3 * W, 5 * W, dtype=np.int64)
    red = wire.encode_paint(Paint(insider, 1, 900, (255, 0, 0, 255), pix), W)[0][0]
    blue = wire.encode_paint(Paint(insider, 2, 900, (0, 0, 255, 255), pix[W // 2:]), W)[0][0]
    d1 = wire.encode_header(wire.MsgType.DATA, insider, 1, size) + red
    d2 = wire.encode_header(wire.MsgType.DATA, insider, 2, size) + blue
    for peer, order in ((a, (d1, d2)), (b, (d2, d1))):
        for d in order:
            peer.engine.receive_datagram(d, addr, net.now)
    net.run_for(30.0)  # SESSIONs (digests) go back and forth; anti-entropy would act
    assert a.engine.board.digest() == b.engine.board.digest()
    px = a.engine.board.pixels.reshape(-1, 4)
    assert tuple(px[3 * W]) == (255, 0, 0, 255) and tuple(px[4 * W]) == (0, 0, 255, 255)
    for p in (a, b):
        assert p.engine.stats.divergences == 0 and p.engine.stats.snapshots_sent == 0


SNAP_BOARD = (320, 240)


def _alone_with_a_photo(seed: int, photo_seed: int, **config):
    """One peer alone on a 320x240 board (its join over) that pasted a noise photo."""
    net = SimNet(seed, size=SNAP_BOARD)
    a = net.add_peer(**config)
    net.run_for(1.0)
    img = np.random.default_rng(photo_seed).integers(0, 256, (240, 320, 4), dtype=np.uint8)
    net.act(a, lambda e, now: e.paste(img, 0, 0, now))
    net.settle(limit=60)
    return net, a


def _snap_req(joiner: int, req_id: int) -> bytes:
    """A snapshot request to anyone from ``joiner``."""
    return wire.encode_snap_req(joiner, 0, SNAP_BOARD, wire.SnapReq(req_id, 0))


def _withdrawal(joiner: int, server: int, snap_id: int) -> bytes:
    """``joiner`` withdraws from ``server``'s snapshot: a SNAP_NACK without ranges."""
    return wire.encode_snap_nack(joiner, 0, SNAP_BOARD, wire.SnapNack(server, snap_id, ()))


def test_a_withdrawal_drops_only_chunks_nobody_else_waits_for():
    """A SNAP_NACK without ranges withdraws its sender from a snapshot offered to it. The
    server drops the chunks queued for that fetcher alone, and the rest only once no
    fetcher is left: a forged withdrawal in one joiner's name cannot starve another.
    One for a snapshot the server does not have is counted and ignored."""
    net, a = _alone_with_a_photo(29, 4, rate=300_000)  # slow pacing: chunks wait queued
    e = a.engine
    for joiner in (0x1001, 0x1002):
        e.receive_datagram(_snap_req(joiner, joiner), None, net.now)
    net.act(a, lambda e, now: None)
    net.run_for(0.05)  # both answered: one snapshot, offered twice
    assert e.stats.snapshots_sent == 2 and e.stats.snapshots_built == 1
    (sv,) = e._serve.values()
    queued = len(e._bulk)
    assert queued > 50 and sv.queued == queued

    def withdraw(joiner, snap_id):
        e.receive_datagram(_withdrawal(joiner, e.id, snap_id), None, net.now)

    withdraw(0x1001, sv.snap_id)
    assert len(e._bulk) == queued and e.stats.snapshot_chunks_withdrawn == 0
    withdraw(0x1002, 0xDEAD)
    assert e.stats.snap_nacks_unknown == 1 and len(e._bulk) == queued
    withdraw(0x1002, sv.snap_id)
    assert len(e._bulk) == 0 and sv.queued == 0
    assert e.stats.snapshot_chunks_withdrawn == queued
    # the snapshot is kept: a fetcher that changes its mind NACKs what it lacks
    e.receive_datagram(wire.encode_snap_nack(0x1002, 0, SNAP_BOARD,
                                             wire.SnapNack(e.id, sv.snap_id, ((1, 3),))),
                       None, net.now)
    assert len(e._bulk) == 3


def test_a_server_whose_offer_went_out_second_drops_its_chunks():
    """Two servers offered one request: the one that reads an offer sent before its own
    (by the arrival stamp, less half the round trip) drops its queued chunks without
    waiting for the joiner's withdrawal; the one that reads a later offer keeps them."""
    for earlier, dropped in ((True, True), (False, False)):
        net, a = _alone_with_a_photo(30, 5, rate=300_000)  # slow pacing: chunks wait queued
        e = a.engine
        e.receive_datagram(_snap_req(0x1001, 77), None, net.now)
        net.act(a, lambda e, now: None)
        net.run_for(0.05)
        sent, _ = e._my_offers[(0x1001, 77)]
        queued = len(e._bulk)
        assert queued > 50
        other = wire.SnapMeta(0x1001, 77, 0xABC, 1000, wire.SNAP_CHUNK_SIZE)
        at = sent - 0.001 if earlier else sent + 0.001
        e.receive_datagram(wire.encode_snap_meta(0x2002, 0, SNAP_BOARD, other), None, at)
        assert e.stats.snap_offers_crossed == 1
        assert len(e._bulk) == (0 if dropped else queued)
        assert e.stats.snapshot_chunks_withdrawn == (queued if dropped else 0)


def test_a_claim_withdrawn_before_the_build_builds_nothing():
    """A server claims a request (SNAP_META without length) and builds at its next timer;
    a joiner that withdraws in between (it took another server's claim) costs it no build
    and no chunk."""
    net, a = _alone_with_a_photo(31, 6)
    e = a.engine
    e.datagrams_to_send(net.now)
    t = net.now
    e.receive_datagram(_snap_req(0x1001, 78), None, t)
    e.handle_timer(t + 0.05)  # its turn: the claim
    claims = [wire.decode_snap_meta(d[wire.HEADER.size:]) for d in e.datagrams_to_send(t + 0.05)
              if wire.decode_header(d).type == wire.MsgType.SNAP_META]
    assert [c.total_len for c in claims] == [0] and e._pending is not None
    e.receive_datagram(_withdrawal(0x1001, e.id, claims[0].snap_id), None, t + 0.051)
    e.handle_timer(t + 0.052)
    assert e._pending is None and e.stats.snapshot_builds_skipped == 1
    assert e.stats.snapshots_built == 0 and not e._bulk
