"""Passphrase boards: every datagram encrypted and authenticated, as a sans-IO layer.

A board with a passphrase wraps each plain p2pboard datagram (wire.py) in a sealed
envelope just before it is sent, and opens each envelope just after it is received. This
module opens no socket and reads no clock; the caller passes in the time where it matters.

Theory of operation
-------------------
*Key.* ``derive_key`` stretches the passphrase with scrypt (memory-hard, so each guess of
an offline dictionary attack costs about 32 MiB and tens of milliseconds), salted with a
domain string and the board address (group and port): the same passphrase on another
board gives an unrelated key. HKDF then splits the scrypt output into the AEAD key
(ChaCha20-Poly1305) and a public 32-bit ``key_id``. The key_id is shown in the UI, names
the autosave file and travels in every envelope, so peers with different passphrases tell
"wrong passphrase" apart from "forged". It is derived after scrypt, so it makes no offline
guess cheaper than a captured ciphertext already does, and it says nothing about the key.

*Nonces.* The 12-byte nonce is ``transmitter u32 | epoch u32 | counter u32``, all three in
the clear header. The transmitter is the peer that sends this datagram (for a repair by a
third party it differs from the inner author); the counter counts that transmitter's
datagrams within the epoch. A :class:`Sealer` never goes back: on counter wrap, or when
the caller's clock passes ``epoch + EPOCH_ROLL`` seconds, it moves to a larger epoch and
restarts the counter. Nonces are unique for a key as long as one transmitter id is never
run twice with overlapping epochs: the engine's ids are random per run and the first epoch
is the wall-clock second of the start.

*Replay.* An :class:`Opener` keeps, per transmitter, a window of the last
``REPLAY_WINDOW`` counters of its current epoch (a bitmap in a Python int) and of the
epoch before (so reordering across an epoch change costs nothing). A higher epoch starts a
new window; a counter already seen, below the window, or of an older epoch is a replay.
The check runs before decryption (cheap rejection of obvious replays), but only a datagram
whose tag verified creates or updates a window, so forged transmitter ids never enter the
table, which is capped anyway (least recently used evicted). Optionally (``max_age``), an
authenticated datagram whose epoch is much older than the receiver's wall clock is
rejected as stale: this closes the replay of a capture from an earlier session to a peer
that has just started and so has no window for the old transmitter yet.

*Limits.* The key is shared by the board: it keeps outsiders out, it does not
authenticate peers to each other (any holder can seal as any transmitter). Datagram
sizes, timing and transmitter ids stay visible. Without ``max_age``, a peer that has just
started, or has forgotten a transmitter (table cap), accepts a capture of an earlier
session once.

Envelope, version 1 (all integers big-endian; AAD = the 21-byte clear header)

| field | type | meaning |
|---|---|---|
| magic | 2 bytes | `PB`, as every p2pboard datagram |
| version | u8 | `wire.VERSION` |
| type | u8 | `SEALED_TYPE` (0x53, 'S'), outside `wire.MsgType` |
| flags | u8 | 0; anything else is refused |
| key_id | 4 bytes | public id of the key: a wrong passphrase shows without decrypting |
| transmitter | u32 | peer sending this datagram, never 0 |
| epoch | u32 | nonce part: per run, only ever increases |
| counter | u32 | nonce part: per datagram within the epoch |
| ciphertext | n bytes | ChaCha20-Poly1305 of the plain datagram (header included) |
| tag | 16 bytes | Poly1305 tag over header and ciphertext |

The canvas size is not repeated in the clear: a peer with the key reads it from the inner
header after authentication (a clear copy could be forged), and a peer without the key
only needs to know that a protected board is there (:func:`is_sealed`). A sealed
datagram is at most ``wire.MAX_DATAGRAM`` bytes, so the plain one at most ``MAX_INNER``
(a PARITY datagram ``wire.PARITY_EXTRA`` more).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import stat
import struct
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from . import wire

SEALED_TYPE = 0x53  # 'S'; wire.MsgType uses 1..10
OUTER = struct.Struct("!2sBBB4sIII")  # magic version type flags key_id transmitter epoch counter
TAG_SIZE = 16
NONCE = struct.Struct("!III")  # transmitter epoch counter
#: Bytes a sealed datagram adds to the plain one.
OVERHEAD = OUTER.size + TAG_SIZE
#: Largest plain datagram that can be sealed within wire.MAX_DATAGRAM.
MAX_INNER = wire.MAX_DATAGRAM - OVERHEAD
MIN_SEALED = OUTER.size + 1 + TAG_SIZE

#: Counters remembered per transmitter and epoch. A datagram reordered by more than this
#: many of the same transmitter's datagrams is dropped (and repaired like a lost one).
REPLAY_WINDOW = 4096
#: Authenticated transmitters with replay state; the least recently heard is forgotten.
MAX_TRANSMITTERS = 1024
#: A Sealer given the time moves to a new epoch this many seconds after the current one,
#: so epochs follow the wall clock and old captures can be told by age (``max_age``).
EPOCH_ROLL = 60
U32 = 0xFFFFFFFF

# scrypt cost: n=2**15, r=8 needs 128 * n * r = 32 MiB and about 60 ms on a laptop core:
# affordable once at start even on a small machine, and it makes each offline guess of a
# passphrase (from one captured datagram) cost the same. p=1: the parallelism would only
# help an attacker with many cores as much as us.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
KDF_DOMAIN = b"p2pboard seal v1\x00"
MASTER_LEN = 32

#: Largest secret file accepted: a passphrase, not a data file by mistake.
MAX_SECRET_FILE = 64 * 1024
SECRET_ENV = "P2PBOARD_SECRET"
#: Shorter passphrases get a warning: one captured datagram allows offline guessing.
WEAK_SECRET = 12


# ---------------------------------------------------------------------------- errors


class SecretError(ValueError):
    """The local passphrase setting cannot be used (a one-line message for the user)."""


class SealError(ValueError):
    """A received datagram that is not a valid sealed datagram for our key.

    ``counter`` names the engine statistic that counts this kind of rejection.
    """

    counter = "rejected_auth"


class NotSealedError(SealError):
    """A plain (open board) datagram, or not p2pboard at all, on a protected board."""

    counter = "rejected_unsealed"


class MalformedError(SealError):
    """A sealed datagram with impossible lengths or fields."""

    counter = "rejected_malformed"


class VersionError(SealError):
    """A sealed datagram of another protocol version."""

    counter = "rejected_version"

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


class AuthError(SealError):
    """The tag does not verify: forged, corrupted, or sealed with another key."""

    counter = "rejected_auth"


class WrongKeyError(AuthError):
    """Sealed for the same address with another passphrase (key_id differs)."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class ReplayError(SealError):
    """An authentic datagram already received (or too old to tell)."""

    counter = "rejected_replay"


class StaleError(ReplayError):
    """An authentic datagram whose epoch is older than ``max_age`` allows: a replay from
    an earlier session, or a transmitter whose clock is far behind ours."""

    counter = "rejected_stale"

    def __init__(self, message: str, transmitter: int, age: float) -> None:
        super().__init__(message)
        self.transmitter = transmitter
        self.age = age


def _chacha():
    """The AEAD class and its tag error, imported only by protected boards: an open board
    runs without the optional ``cryptography`` package."""
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    except ImportError as err:
        raise RuntimeError("passphrase boards need the 'cryptography' package: "
                           "pip install 'p2pboard[secure]'") from err
    return ChaCha20Poly1305, InvalidTag


# ---------------------------------------------------------------------------- key


@dataclass(frozen=True, eq=False, repr=False)
class BoardKey:
    """The key of one protected board. Its repr shows only the public key_id."""

    aead_key: bytes  #: 32-byte ChaCha20-Poly1305 key; never printed
    key_id_bytes: bytes  #: 4-byte public id, sent in every envelope
    group: str  #: the board address the key is bound to
    port: int

    @property
    def key_id(self) -> str:
        """8 hex digits, safe to show and to use in file names."""
        return self.key_id_bytes.hex()

    def __repr__(self) -> str:
        return f"BoardKey(key_id={self.key_id!r}, board={self.group}:{self.port})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoardKey):
            return NotImplemented
        return hmac.compare_digest(self.aead_key, other.aead_key) and (
            self.key_id_bytes, self.group, self.port) == (
            other.key_id_bytes, other.group, other.port)

    def __hash__(self) -> int:
        return hash((self.key_id_bytes, self.group, self.port))


def _salt(group: str, port: int) -> bytes:
    try:
        addr = ipaddress.IPv4Address(group)
    except ValueError as err:
        raise ValueError(f"board group {group!r} is not an IPv4 address") from err
    if not 0 < port < 65536:
        raise ValueError(f"board port {port} is not in 1..65535")
    return KDF_DOMAIN + addr.packed + struct.pack("!H", port)


def derive_key(passphrase: bytes | str, group: str, port: int, *, n: int = SCRYPT_N) -> BoardKey:
    """The key of the board at ``group:port`` for ``passphrase``. Slow on purpose (scrypt,
    about 60 ms and 32 MiB): call it once per start. A str passphrase is NFC-normalised
    and UTF-8 encoded, so the same text typed on any system gives the same key; bytes are
    used exactly. ``n`` is for tests only."""
    _chacha()  # a clear message when the optional package is missing
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    if isinstance(passphrase, str):
        passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    if not passphrase:
        raise ValueError("empty passphrase")
    salt = _salt(group, port)
    master = Scrypt(salt=salt, length=MASTER_LEN, n=n, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)

    def expand(info: bytes, length: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt,
                    info=b"p2pboard seal v1 " + info).derive(master)

    return BoardKey(expand(b"chacha20-poly1305 key", 32), expand(b"key id", 4),
                    str(ipaddress.IPv4Address(group)), port)


# ---------------------------------------------------------------------------- secret


@dataclass(frozen=True, repr=False)
class Secret:
    """A passphrase read from the local configuration, with warnings for the user."""

    value: bytes  #: the passphrase; never printed
    source: str  #: where it came from: the file's path, or the variable's name
    warnings: tuple[str, ...] = ()  #: one line each, for the CLI to print

    def __repr__(self) -> str:
        return (f"Secret(source={self.source!r}, {len(self.value)} bytes, "
                f"warnings={self.warnings!r})")


def _strip_newline(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def load_secret(path: str | os.PathLike | None, env: Mapping[str, str]) -> Secret | None:
    """The board passphrase from ``--secret-file`` (``path``) or else ``$P2PBOARD_SECRET``
    in ``env``; None when neither is set (an open board). One trailing newline is dropped.
    Raises :class:`SecretError` when the setting cannot be used. A file that others may
    read, a short passphrase, or both settings at once give warnings, not errors."""
    warnings: list[str] = []
    if path is not None:
        name = os.fspath(path)
        try:
            # Not O_NONBLOCK: `--secret-file <(pass show board)` is a pipe, and waiting for
            # its writer is what the user asked for.
            with open(name, "rb") as f:
                st = os.fstat(f.fileno())
                if stat.S_ISDIR(st.st_mode):
                    raise SecretError(f"secret file {name} is a directory")
                if stat.S_ISREG(st.st_mode) and st.st_size > MAX_SECRET_FILE:
                    raise SecretError(f"secret file {name} has {st.st_size} bytes; a passphrase "
                                      f"file has at most {MAX_SECRET_FILE}")
                data = f.read(MAX_SECRET_FILE + 1)
        except IsADirectoryError as err:
            raise SecretError(f"secret file {name} is a directory") from err
        except OSError as err:
            raise SecretError(f"cannot read secret file {name}: {err.strerror or err}") from err
        if len(data) > MAX_SECRET_FILE:
            raise SecretError(f"secret file {name} is over {MAX_SECRET_FILE} bytes")
        value = _strip_newline(data)
        if not value.strip():
            raise SecretError(f"secret file {name} is empty")
        if os.name == "posix" and stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            warnings.append(f"secret file {name} is accessible by others (mode {mode:04o}); "
                            f"chmod 600 {name}")
        if env.get(SECRET_ENV):
            warnings.append(f"{SECRET_ENV} is ignored: --secret-file {name} is given")
        source = name
    elif SECRET_ENV in env:
        try:  # as os.fsencode would: undecodable bytes of a POSIX environment come back
            raw = env[SECRET_ENV].encode("utf-8", "surrogateescape")
        except UnicodeEncodeError as err:
            raise SecretError(f"{SECRET_ENV} is not valid text: {err.reason}") from err
        value = _strip_newline(raw)
        if not value.strip():
            raise SecretError(f"{SECRET_ENV} is set but empty")
        source = SECRET_ENV
    else:
        return None
    if len(value) < WEAK_SECRET:
        warnings.append(f"the passphrase from {source} has only {len(value)} bytes: anyone who "
                        f"captures one datagram can try guesses offline; use {WEAK_SECRET} or more")
    return Secret(value, source, tuple(warnings))


# ---------------------------------------------------------------------------- envelope


def is_sealed(datagram: bytes) -> bool:
    """Whether ``datagram`` looks like a sealed p2pboard datagram (any version or key): an
    open-board peer counts these and reports that a protected board uses the address."""
    return len(datagram) >= 4 and datagram[:2] == wire.MAGIC and datagram[3] == SEALED_TYPE


def sealed_key_id(datagram: bytes) -> str | None:
    """The public key_id of a sealed datagram (unauthenticated), or None."""
    if not is_sealed(datagram) or len(datagram) < OUTER.size:
        return None
    return bytes(datagram[5:9]).hex()


def peek_transmitter(datagram: bytes) -> int | None:
    """The clear (unauthenticated) transmitter of a sealed datagram, or None: lets a peer
    drop its own looped-back datagrams without decrypting them."""
    if not is_sealed(datagram) or len(datagram) < OUTER.size:
        return None
    return OUTER.unpack_from(datagram)[5]


class Opened(NamedTuple):
    transmitter: int  #: the peer that sent this datagram (for repairs, not the author)
    inner: bytes  #: the plain p2pboard datagram


class Sealer:
    """Seals the datagrams of one transmitter. Never reuses a nonce: the epoch only grows
    and the counter restarts only in a new epoch."""

    def __init__(self, key: BoardKey, transmitter: int, epoch: int) -> None:
        if not 0 < transmitter <= U32:
            raise ValueError(f"transmitter {transmitter} is not a non-zero u32")
        if not 0 <= epoch <= U32:
            raise ValueError(f"epoch {epoch} is not a u32")
        self.key = key
        self.transmitter = transmitter
        self.epoch = epoch
        self._counter = 0  # the next counter to use
        self._aead = _chacha()[0](key.aead_key)
        self.sealed = 0  #: datagrams sealed

    def _new_epoch(self, epoch: int) -> None:
        if epoch > U32:
            raise OverflowError("sealer epochs exhausted; start again with a new transmitter id")
        self.epoch = epoch
        self._counter = 0

    def seal(self, inner: bytes, now: float | None = None) -> bytes:
        """The sealed datagram for the plain one. ``now`` (wall-clock seconds, optional)
        lets the epoch follow the clock, for receivers that check ``max_age``."""
        limit = MAX_INNER + (wire.PARITY_EXTRA if inner[3:4] == bytes([wire.MsgType.PARITY])
                             else 0)
        if not 0 < len(inner) <= limit:
            raise ValueError(f"datagram of {len(inner)} bytes cannot be sealed "
                             f"(1..{limit} bytes)")
        if now is not None and now >= self.epoch + EPOCH_ROLL:
            self._new_epoch(max(self.epoch + 1, int(now)))
        if self._counter > U32:
            self._new_epoch(self.epoch + 1)
        header = OUTER.pack(wire.MAGIC, wire.VERSION, SEALED_TYPE, 0, self.key.key_id_bytes,
                            self.transmitter, self.epoch, self._counter)
        nonce = NONCE.pack(self.transmitter, self.epoch, self._counter)
        self._counter += 1
        self.sealed += 1
        return header + self._aead.encrypt(nonce, bytes(inner), header)


@dataclass(slots=True)
class _Window:
    """Counters seen in one epoch: ``top`` the highest, bit i of ``bits`` = top - i seen."""

    epoch: int
    top: int = -1
    bits: int = 0

    def seen(self, counter: int) -> bool:
        if counter > self.top:
            return False
        back = self.top - counter
        return back >= REPLAY_WINDOW or bool(self.bits >> back & 1)

    def mark(self, counter: int) -> None:
        if counter > self.top:
            shift = counter - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) \
                if shift < REPLAY_WINDOW else 1
            self.top = counter
        else:
            self.bits |= 1 << (self.top - counter)


@dataclass(slots=True)
class _Replay:
    cur: _Window
    prev: _Window | None = None

    def seen(self, epoch: int, counter: int) -> bool:
        if epoch > self.cur.epoch:
            return False
        if epoch == self.cur.epoch:
            return self.cur.seen(counter)
        if self.prev is not None and epoch == self.prev.epoch:
            return self.prev.seen(counter)
        return True  # older than the two epochs we remember

    def mark(self, epoch: int, counter: int) -> None:
        if epoch > self.cur.epoch:
            self.prev, self.cur = self.cur, _Window(epoch)
        w = self.cur if epoch == self.cur.epoch else self.prev
        assert w is not None and w.epoch == epoch
        w.mark(counter)


class Opener:
    """Opens sealed datagrams for one board key, rejecting replays.

    ``max_age`` (seconds, None: off) with ``now`` passed to :meth:`open` rejects
    authenticated datagrams whose epoch is more than ``EPOCH_ROLL + max_age`` seconds
    behind ``now``; it must cover the clock skew between peers.
    """

    def __init__(self, key: BoardKey, max_transmitters: int = MAX_TRANSMITTERS,
                 max_age: float | None = None) -> None:
        if max_transmitters < 1:
            raise ValueError("max_transmitters must be at least 1")
        self.key = key
        self.max_transmitters = max_transmitters
        self.max_age = max_age
        self._table: OrderedDict[int, _Replay] = OrderedDict()
        aead, self._invalid_tag = _chacha()
        self._aead = aead(key.aead_key)

    def __repr__(self) -> str:
        return f"Opener({self.key!r}, {len(self._table)} transmitters)"

    def __len__(self) -> int:
        """Transmitters with replay state."""
        return len(self._table)

    def open(self, outer: bytes, now: float | None = None) -> Opened:
        """The transmitter and plain datagram of a sealed one. Raises a :class:`SealError`
        subclass (its ``counter`` names the statistic) and nothing else on bad input."""
        n = len(outer)
        if n < 4 or outer[:2] != wire.MAGIC or outer[3] != SEALED_TYPE:
            raise NotSealedError(f"datagram of {n} bytes is not sealed")
        if outer[2] != wire.VERSION:
            raise VersionError(f"sealed datagram of version {outer[2]}, we speak "
                               f"{wire.VERSION}", outer[2])
        if n < MIN_SEALED or n > wire.MAX_WIRE:
            raise MalformedError(f"sealed datagram of {n} bytes is not in "
                                 f"{MIN_SEALED}..{wire.MAX_WIRE}")
        _, _, _, flags, key_id, transmitter, epoch, counter = OUTER.unpack_from(outer)
        if flags != 0:
            raise MalformedError(f"sealed datagram with unknown flags {flags:#04x}")
        if transmitter == 0:
            raise MalformedError("sealed datagram from transmitter 0")
        if key_id != self.key.key_id_bytes:
            raise WrongKeyError(f"sealed with key {key_id.hex()}, ours is {self.key.key_id}",
                                key_id.hex())
        state = self._table.get(transmitter)
        if state is not None and state.seen(epoch, counter):
            # Before decrypting: a replay costs no cipher work. Nothing is updated here.
            raise ReplayError(f"{transmitter:08x} epoch {epoch} counter {counter} "
                              "already received or too old")
        header = bytes(outer[:OUTER.size])
        try:
            inner = self._aead.decrypt(NONCE.pack(transmitter, epoch, counter),
                                       bytes(outer[OUTER.size:]), header)
        except self._invalid_tag as err:
            raise AuthError(f"tag of a datagram from {transmitter:08x} does not verify") from err
        # Authentic from here on: only now may it touch the replay table.
        if self.max_age is not None and now is not None:
            age = now - epoch
            if age > EPOCH_ROLL + self.max_age:
                raise StaleError(f"{transmitter:08x} sealed this {age:.0f} s ago by our clock",
                                 transmitter, age)
        if state is None:
            state = self._table[transmitter] = _Replay(_Window(epoch))
            if len(self._table) > self.max_transmitters:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(transmitter)
        state.mark(epoch, counter)
        return Opened(transmitter, inner)
