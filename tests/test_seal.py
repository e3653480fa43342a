"""The sealing layer of passphrase boards: keys, envelopes, replay windows, secrets.

Everything here is pure computation (no socket, no clock). The real scrypt cost is paid
once per module; variations use a cheap ``n``.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pboard import seal, wire

GROUP, PORT = "239.255.80.80", 47777
T1, T2 = 0x0A0B0C0D, 0x11223344
EPOCH = 1_700_000_000
CHEAP = 2**4


@pytest.fixture(scope="module")
def key() -> seal.BoardKey:
    return seal.derive_key("correct horse battery staple", GROUP, PORT)


def cheap(passphrase="correct horse battery staple", group=GROUP, port=PORT) -> seal.BoardKey:
    return seal.derive_key(passphrase, group, port, n=CHEAP)


def plain(seq: int = 1, body: bytes = b"\x03" + bytes(8), sender: int = T1) -> bytes:
    return wire.encode_header(wire.MsgType.DATA, sender, seq, (640, 480)) + body


def header_of(sealed: bytes):
    return seal.OUTER.unpack_from(sealed)


# ---------------------------------------------------------------------------- keys


def test_key_is_deterministic_and_bound_to_passphrase_and_address(key):
    again = seal.derive_key("correct horse battery staple", GROUP, PORT)
    assert again == key and again.key_id == key.key_id
    variants = [cheap(), cheap("correct horse battery stapler"), cheap(group="239.255.80.81"),
                cheap(port=PORT + 1), cheap(b"correct horse battery staple", group="239.1.2.3")]
    assert len({k.aead_key for k in variants}) == len(variants)
    assert len({k.key_id for k in variants}) == len(variants)
    assert key.aead_key != variants[0].aead_key  # n is part of the derivation


def test_key_id_is_public_and_repr_hides_key(key):
    assert len(key.key_id) == 8 and int(key.key_id, 16) >= 0
    assert key.key_id_bytes not in key.aead_key
    text = repr(key) + str(key)
    assert key.key_id in text and GROUP in text
    assert key.aead_key.hex() not in text and repr(key.aead_key) not in text
    assert len(key.aead_key) == 32


def test_passphrase_text_is_normalised_and_bytes_used_exactly():
    composed, decomposed = "caf\u00e9 au lait!", "cafe\u0301 au lait!"
    assert cheap(composed) == cheap(decomposed)
    assert cheap(composed) == cheap(composed.encode("utf-8"))
    assert cheap(b"\xff\xfe raw bytes") != cheap("\xff\xfe raw bytes")


def test_derive_key_refuses_local_mistakes():
    with pytest.raises(ValueError, match="empty"):
        cheap("")
    with pytest.raises(ValueError, match="IPv4"):
        cheap(group="board.local")
    with pytest.raises(ValueError, match="port"):
        cheap(port=0)


def test_default_cost_is_the_documented_scrypt(monkeypatch):
    from cryptography.hazmat.primitives.kdf import scrypt
    seen = {}
    real = scrypt.Scrypt

    def spy(**kw):
        seen.update(kw)
        return real(**{**kw, "n": CHEAP})

    monkeypatch.setattr(scrypt, "Scrypt", spy)
    seal.derive_key("x" * 20, GROUP, PORT)
    assert (seen["n"], seen["r"], seen["p"], seen["length"]) == (2**15, 8, 1, 32)
    assert seen["salt"].startswith(seal.KDF_DOMAIN) and seen["salt"].endswith(
        bytes([239, 255, 80, 80]) + PORT.to_bytes(2, "big"))


# ---------------------------------------------------------------------------- envelope


@pytest.mark.parametrize("size", [1, wire.HEADER.size, 500, seal.MAX_INNER])
def test_round_trip(key, size):
    inner = plain(body=bytes(random.Random(size).randbytes(max(0, size - wire.HEADER.size))))
    inner = inner[:size]
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    sealed = s.seal(inner)
    assert len(sealed) == len(inner) + seal.OVERHEAD <= wire.MAX_DATAGRAM
    assert inner not in sealed or size < 4
    assert seal.is_sealed(sealed) and seal.sealed_key_id(sealed) == key.key_id
    assert seal.peek_transmitter(sealed) == T1
    assert o.open(sealed) == (T1, inner)


def test_overhead_and_budget():
    assert seal.OVERHEAD == 37
    assert seal.MAX_INNER == wire.MAX_DATAGRAM - seal.OVERHEAD == 1363
    assert seal.SEALED_TYPE not in {int(t) for t in wire.MsgType}


def test_sealer_refuses_what_cannot_fit(key):
    s = seal.Sealer(key, T1, EPOCH)
    for bad in (b"", bytes(seal.MAX_INNER + 1)):
        with pytest.raises(ValueError) as info:
            s.seal(bad)
        assert not isinstance(info.value, seal.SealError)  # local misuse, not remote garbage
    with pytest.raises(ValueError):
        seal.Sealer(key, 0, EPOCH)
    with pytest.raises(ValueError):
        seal.Sealer(key, T1, 1 << 32)


def test_plain_datagram_is_not_sealed(key):
    o = seal.Opener(key)
    for d in (plain(), b"", b"PB", b"hello world, not p2pboard", bytes(40)):
        assert not seal.is_sealed(d)
        assert seal.peek_transmitter(d) is None and seal.sealed_key_id(d) is None
        with pytest.raises(seal.NotSealedError) as info:
            o.open(d)
        assert info.value.counter == "rejected_unsealed"


def test_wrong_passphrase_is_recognised_by_key_id(key):
    other = cheap("another passphrase entirely")
    sealed = seal.Sealer(other, T1, EPOCH).seal(plain())
    with pytest.raises(seal.WrongKeyError) as info:
        seal.Opener(key).open(sealed)
    assert info.value.key_id == other.key_id and info.value.counter == "rejected_auth"


def test_forged_key_with_matching_key_id_fails_the_tag(key):
    forger = seal.BoardKey(bytes(32), key.key_id_bytes, GROUP, PORT)
    sealed = seal.Sealer(forger, T1, EPOCH).seal(plain())
    o = seal.Opener(key)
    with pytest.raises(seal.AuthError) as info:
        o.open(sealed)
    assert not isinstance(info.value, seal.WrongKeyError)
    assert len(o) == 0


def test_every_bit_flip_is_rejected_and_leaves_no_state(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    sealed = s.seal(plain(body=b"\x03" + bytes(range(40))))
    for i in range(len(sealed) * 8):
        bad = bytearray(sealed)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(seal.SealError):
            o.open(bytes(bad))
        assert len(o) == 0, f"bit {i} created replay state"
    assert o.open(sealed).transmitter == T1  # the original was not marked as seen


def test_truncated_and_extended_datagrams_are_rejected(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    sealed = s.seal(plain())
    for n in range(len(sealed)):
        with pytest.raises(seal.SealError):
            o.open(sealed[:n])
    for extra in (b"\x00", bytes(16)):
        with pytest.raises(seal.SealError):
            o.open(sealed + extra)
    assert len(o) == 0
    o.open(sealed)


def test_header_fields_are_checked(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    sealed = bytearray(s.seal(plain()))
    v2 = bytes(sealed[:2]) + bytes([wire.VERSION + 1]) + bytes(sealed[3:])
    with pytest.raises(seal.VersionError) as info:
        o.open(v2)
    assert info.value.version == wire.VERSION + 1 and info.value.counter == "rejected_version"
    flagged = bytes(sealed[:4]) + b"\x01" + bytes(sealed[5:])
    with pytest.raises(seal.MalformedError):
        o.open(flagged)
    zero = bytes(sealed[:9]) + bytes(4) + bytes(sealed[13:])
    with pytest.raises(seal.MalformedError):
        o.open(zero)
    huge = bytes(sealed[:seal.OUTER.size]) + bytes(wire.MAX_DATAGRAM)
    with pytest.raises(seal.MalformedError):
        o.open(huge)


def test_nonce_is_transmitter_epoch_counter(key):
    s = seal.Sealer(key, T1, EPOCH)
    for counter in range(3):
        magic, version, mtype, flags, kid, tx, epoch, c = header_of(s.seal(plain(counter + 1)))
        assert (magic, version, mtype, flags, kid) == (wire.MAGIC, wire.VERSION,
                                                       seal.SEALED_TYPE, 0, key.key_id_bytes)
        assert (tx, epoch, c) == (T1, EPOCH, counter)


def test_third_party_transmitter_differs_from_inner_author(key):
    author_copy = plain(seq=9, sender=T1)
    repair = wire.with_flags(author_copy, wire.FLAG_REPAIR)
    sealed = seal.Sealer(key, T2, EPOCH).seal(repair)
    opened = seal.Opener(key).open(sealed)
    assert opened.transmitter == T2
    assert wire.decode_header(opened.inner).sender == T1


# ---------------------------------------------------------------------------- replay


def test_replay_is_rejected_without_decrypting(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    sealed = s.seal(plain())
    o.open(sealed)

    class NoCipher:
        def decrypt(self, *a):
            raise AssertionError("a known replay reached the cipher")

    o._aead = NoCipher()
    with pytest.raises(seal.ReplayError) as info:
        o.open(sealed)
    assert info.value.counter == "rejected_replay"


def test_reordering_within_the_window_is_accepted_exactly_once(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    sealed = [s.seal(plain(i + 1)) for i in range(300)]
    order = list(range(300))
    random.Random(7).shuffle(order)
    got = [o.open(sealed[i]).inner for i in order]
    assert got == [plain(i + 1) for i in order]
    for i in order:
        with pytest.raises(seal.ReplayError):
            o.open(sealed[i])


def test_below_the_window_is_rejected(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    sealed = [s.seal(plain(i + 1)) for i in range(seal.REPLAY_WINDOW + 20)]
    top = len(sealed) - 1
    o.open(sealed[top])
    with pytest.raises(seal.ReplayError):
        o.open(sealed[top - seal.REPLAY_WINDOW])  # just below
    o.open(sealed[top - seal.REPLAY_WINDOW + 1])  # the oldest still in the window
    with pytest.raises(seal.ReplayError):
        o.open(sealed[0])


def test_big_jump_forward_clears_the_window(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    first = s.seal(plain(1))
    o.open(first)
    s._counter = 10 * seal.REPLAY_WINDOW
    o.open(s.seal(plain(2)))
    with pytest.raises(seal.ReplayError):
        o.open(first)


def test_epoch_change(key):
    o = seal.Opener(key)
    old = seal.Sealer(key, T1, EPOCH)
    old_sealed = [old.seal(plain(i + 1)) for i in range(5)]
    new = seal.Sealer(key, T1, EPOCH + 1)
    o.open(old_sealed[0])
    o.open(new.seal(plain(10)))  # higher epoch: a new window
    o.open(old_sealed[3])  # the previous epoch is still remembered: late ones pass once
    for d in old_sealed[0], old_sealed[3]:
        with pytest.raises(seal.ReplayError):
            o.open(d)
    o.open(seal.Sealer(key, T1, EPOCH + 5).seal(plain(11)))
    with pytest.raises(seal.ReplayError):  # two epochs back: too old to tell
        o.open(old_sealed[4])
    with pytest.raises(seal.ReplayError):
        o.open(seal.Sealer(key, T1, EPOCH - 1).seal(plain(12)))


def test_counter_wrap_moves_to_the_next_epoch(key):
    s, o = seal.Sealer(key, T1, EPOCH), seal.Opener(key)
    s._counter = seal.U32 - 1
    heads = []
    for i in range(4):
        d = s.seal(plain(i + 1))
        heads.append(header_of(d)[6:])
        o.open(d)
    assert heads == [(EPOCH, seal.U32 - 1), (EPOCH, seal.U32), (EPOCH + 1, 0), (EPOCH + 1, 1)]


def test_epoch_exhaustion_is_a_local_error(key):
    s = seal.Sealer(key, T1, seal.U32)
    s._counter = seal.U32 + 1
    with pytest.raises(OverflowError):
        s.seal(plain())


def test_epoch_follows_the_clock_when_given(key):
    s = seal.Sealer(key, T1, EPOCH)
    epochs = [header_of(s.seal(plain(), now=EPOCH + dt))[6:]
              for dt in (0.5, seal.EPOCH_ROLL - 0.1, seal.EPOCH_ROLL + 0.2, seal.EPOCH_ROLL + 1,
                         -100)]
    r = EPOCH + seal.EPOCH_ROLL
    assert epochs == [(EPOCH, 0), (EPOCH, 1), (r, 0), (r, 1), (r, 2)]  # a clock going back: kept


def test_nonces_never_repeat_over_a_long_run(key):
    s = seal.Sealer(key, T1, EPOCH)
    seen = []
    now = float(EPOCH)
    rng = random.Random(3)
    for i in range(20_000):
        if i == 5000:
            s._counter = seal.U32 - 3  # a wrap in the middle
        if i % 997 == 0:
            now += rng.uniform(0, 3 * seal.EPOCH_ROLL)
        seen.append(header_of(s.seal(b"x", now=now if i % 2 else None))[5:])
    assert len(set(seen)) == len(seen)
    assert all(t == T1 for t, _, _ in seen)
    assert [(e, c) for _, e, c in seen] == sorted((e, c) for _, e, c in seen)
    assert len({e for _, e, _ in seen}) > 10


def test_stale_epochs_are_rejected_after_authentication(key):
    s = seal.Sealer(key, T1, EPOCH)
    o = seal.Opener(key, max_age=300)
    fresh, late = s.seal(plain(1)), s.seal(plain(2))
    o.open(fresh, now=EPOCH + seal.EPOCH_ROLL + 300)
    with pytest.raises(seal.StaleError) as info:
        o.open(late, now=EPOCH + seal.EPOCH_ROLL + 301)
    assert info.value.transmitter == T1 and info.value.age == pytest.approx(361)
    assert info.value.counter == "rejected_stale"
    o.open(late)  # without a time there is no age check, and the stale try left no mark
    forged = bytearray(s.seal(plain(3)))
    forged[-1] ^= 1
    with pytest.raises(seal.AuthError):  # a forgery is never reported as stale
        o.open(bytes(forged), now=EPOCH + 10_000)


def test_forged_transmitters_never_enter_the_table(key):
    o = seal.Opener(key, max_transmitters=64)
    template = seal.Sealer(key, T1, EPOCH).seal(plain())
    head, rest = template[:9], template[13:]
    for tx in range(1, 100_001):
        with pytest.raises(seal.AuthError):
            o.open(head + struct.pack("!I", tx + 0x1000000) + rest)
    assert len(o) == 0
    assert o.open(template).transmitter == T1 and len(o) == 1


def test_authentic_transmitters_are_capped_least_recently_heard_first(key):
    o = seal.Opener(key, max_transmitters=8)
    sealers = [seal.Sealer(key, tx, EPOCH) for tx in range(1, 21)]
    keep = sealers[0]
    for s in sealers:
        o.open(s.seal(plain()))
        o.open(keep.seal(plain()))
        assert len(o) <= 8
    assert len(o) == 8
    assert set(o._table) == {1} | {tx for tx in range(14, 21)}


# ---------------------------------------------------------------------------- hostile bytes


@given(st.binary(max_size=1300))
@settings(max_examples=500, deadline=None)
def test_random_bytes_raise_only_seal_errors(data):
    o = seal.Opener(_HYP_KEY)
    with pytest.raises(seal.SealError):
        o.open(data)
    assert len(o) == 0


@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.binary(max_size=1200))
@settings(max_examples=500, deadline=None)
def test_plausible_headers_with_random_bodies_raise_only_seal_errors(flags, tx, epoch, ctr, body):
    o = seal.Opener(_HYP_KEY)
    data = seal.OUTER.pack(wire.MAGIC, wire.VERSION, seal.SEALED_TYPE, flags,
                           _HYP_KEY.key_id_bytes, tx, epoch, ctr) + body
    with pytest.raises(seal.SealError):
        o.open(data)
    assert len(o) == 0


_HYP_KEY = seal.derive_key("hypothesis", GROUP, PORT, n=CHEAP)


# ---------------------------------------------------------------------------- secrets


def write(path, data: bytes, mode: int = 0o600):
    path.write_bytes(data)
    path.chmod(mode)
    return str(path)


def test_no_secret_means_an_open_board():
    assert seal.load_secret(None, {}) is None
    assert seal.load_secret(None, {"OTHER": "x"}) is None


def test_file_wins_over_environment(tmp_path):
    f = write(tmp_path / "s", b"from the file, long enough\n")
    got = seal.load_secret(f, {seal.SECRET_ENV: "from the environment"})
    assert got.value == b"from the file, long enough" and got.source == f
    assert any(seal.SECRET_ENV in w and "ignored" in w for w in got.warnings)
    env = seal.load_secret(None, {seal.SECRET_ENV: "from the environment"})
    assert env.value == b"from the environment" and env.source == seal.SECRET_ENV
    assert env.warnings == ()


@pytest.mark.parametrize("raw, value", [
    (b"a long passphrase\n", b"a long passphrase"),
    (b"a long passphrase\r\n", b"a long passphrase"),
    (b"a long passphrase\n\n", b"a long passphrase\n"),
    (b"a long passphrase", b"a long passphrase"),
    (b" spaces kept inside and out ", b" spaces kept inside and out "),
])
def test_one_trailing_newline_is_dropped(tmp_path, raw, value):
    assert seal.load_secret(write(tmp_path / "s", raw), {}).value == value
    assert seal.load_secret(None, {seal.SECRET_ENV: raw.decode()}).value == value


@pytest.mark.parametrize("raw", [b"", b"\n", b"\r\n", b"   \n"])
def test_empty_secret_is_refused(tmp_path, raw):
    f = write(tmp_path / "empty", raw)
    with pytest.raises(seal.SecretError, match=f"{f}.*empty"):
        seal.load_secret(f, {seal.SECRET_ENV: "would be fine"})
    with pytest.raises(seal.SecretError, match=f"{seal.SECRET_ENV}.*empty"):
        seal.load_secret(None, {seal.SECRET_ENV: raw.decode()})


def test_unusable_files_are_refused_with_their_name(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(seal.SecretError, match=f"cannot read secret file {missing}"):
        seal.load_secret(missing, {})
    with pytest.raises(seal.SecretError, match=f"{tmp_path} is a directory"):
        seal.load_secret(str(tmp_path), {})
    big = write(tmp_path / "big", b"x" * (seal.MAX_SECRET_FILE + 1))
    with pytest.raises(seal.SecretError, match=f"{big} has {seal.MAX_SECRET_FILE + 1} bytes"):
        seal.load_secret(big, {})
    assert seal.load_secret(write(tmp_path / "max", b"y" * seal.MAX_SECRET_FILE), {})
    for err in (seal.SecretError("x"),):
        assert isinstance(err, ValueError) and "\n" not in str(err)


@pytest.mark.skipif(os.name != "posix" or (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="root reads every file")
def test_unreadable_file_is_refused(tmp_path):
    f = write(tmp_path / "locked", b"a long passphrase", mode=0o000)
    with pytest.raises(seal.SecretError, match=f"cannot read secret file {f}"):
        seal.load_secret(f, {})


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("mode, warned", [(0o600, False), (0o400, False), (0o640, True),
                                          (0o644, True), (0o604, True)])
def test_file_others_can_read_gives_a_warning(tmp_path, mode, warned):
    f = write(tmp_path / "s", b"a long passphrase", mode)
    got = seal.load_secret(f, {})
    assert got.value == b"a long passphrase"
    msgs = [w for w in got.warnings if "accessible by others" in w]
    assert bool(msgs) == warned
    if warned:
        assert f"{mode:04o}" in msgs[0] and f"chmod 600 {f}" in msgs[0]


@pytest.mark.skipif(not os.path.isdir("/dev/fd"), reason="needs /dev/fd")
def test_a_pipe_works_like_process_substitution():
    r, w = os.pipe()
    os.write(w, b"from a password manager\n")
    os.close(w)
    try:
        assert seal.load_secret(f"/dev/fd/{r}", {}).value == b"from a password manager"
    finally:
        os.close(r)


def test_short_passphrase_warns_and_repr_hides_it(tmp_path):
    got = seal.load_secret(None, {seal.SECRET_ENV: "hunter2"})
    assert any("only 7 bytes" in w for w in got.warnings)
    assert "hunter2" not in repr(got) and "hunter2" not in str(got)


def test_open_boards_work_without_cryptography():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'cryptography':
                    raise ImportError('blocked')
        sys.meta_path.insert(0, Block())
        from p2pboard import seal
        assert not seal.is_sealed(b'PB\\x01\\x01')
        assert seal.load_secret(None, {}) is None
        try:
            seal.derive_key('x' * 20, '239.255.80.80', 47777)
        except RuntimeError as err:
            print('refused:', err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert "refused: passphrase boards need the 'cryptography' package" in out.stdout


def test_module_is_sans_io():
    src = open(seal.__file__, encoding="utf-8").read()
    for banned in ("import socket", "import time", "import asyncio", "datetime", "time.time"):
        assert banned not in src
