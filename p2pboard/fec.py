"""Parity repairs: Reed-Solomon erasure coding of a block of DATA datagrams (zfec).

A source's DATA datagrams are grouped by number into blocks of ``wire.FEC_K``. The author
can make up to ``wire.FEC_N - wire.FEC_K`` parity symbols per block; a receiver that holds
any ``FEC_K`` of the block's symbols (data or parity, in any mix) rebuilds the rest. One
parity datagram therefore repairs a *different* lost datagram at every receiver that lost
one of the block: with many receivers and independent loss the author sends as many
parity datagrams as the unluckiest receiver lost, instead of every datagram that anyone
lost (RFC 5740, NORM, repairs the same way).

Pure functions over bytes; no state, no I/O.
"""

from __future__ import annotations

import zfec

from . import wire

_K, _N = wire.FEC_K, wire.FEC_N
_encoder = zfec.Encoder(_K, _N)
_decoder = zfec.Decoder(_K, _N)


def symbol(body: bytes, length: int) -> bytes:
    """A DATA body as a symbol of ``length`` bytes: its length, the body, zeros."""
    return len(body).to_bytes(2, "big") + body + bytes(length - 2 - len(body))


def body_of(symbol: bytes) -> bytes:
    """The DATA body a decoded symbol holds; wire.DecodeError if its length cannot be."""
    n = int.from_bytes(symbol[:2], "big")
    if n > len(symbol) - 2 or n == 0:
        raise wire.DecodeError(f"symbol of {len(symbol)} bytes says its body has {n}")
    return bytes(symbol[2:2 + n])


def symbol_length(bodies: list[bytes]) -> int:
    return 2 + max(len(b) for b in bodies)


def parity(bodies: list[bytes], indices: list[int]) -> list[bytes]:
    """The parity symbols ``indices`` (each in FEC_K .. FEC_N - 1) of a whole block, given
    the FEC_K DATA bodies in order."""
    if len(bodies) != _K or not all(_K <= i < _N for i in indices):
        raise ValueError("a block is FEC_K bodies; parity indices are FEC_K .. FEC_N - 1")
    n = symbol_length(bodies)
    syms = tuple(symbol(b, n) for b in bodies)
    return [bytes(p) for p in _encoder.encode(syms, tuple(indices))]


def rebuild(held: dict[int, bytes], parities: dict[int, bytes]) -> dict[int, bytes]:
    """The DATA bodies missing from ``held`` (position in the block -> body), rebuilt from
    the parity symbols ``parities`` (index -> symbol, all of one length). Needs
    ``len(held) + len(parities) >= FEC_K``. Raises wire.DecodeError if the symbols cannot
    belong together (a body longer than the symbols, a rebuilt length that is absurd)."""
    if len(held) + len(parities) < _K or not parities:
        raise ValueError("not enough symbols to rebuild the block")
    n = len(next(iter(parities.values())))
    if any(len(p) != n for p in parities.values()):
        raise wire.DecodeError("parity symbols of one block differ in length")
    if any(len(b) + 2 > n for b in held.values()):
        raise wire.DecodeError("a held datagram is longer than the block's parity symbols")
    spare = iter(sorted(parities.items()))
    shares, nums = [], []
    for pos in range(_K):
        if pos in held:
            shares.append(symbol(held[pos], n))
            nums.append(pos)
        else:
            idx, sym = next(spare)
            shares.append(sym)
            nums.append(idx)
    out = _decoder.decode(tuple(shares), tuple(nums))
    return {pos: body_of(bytes(out[pos])) for pos in range(_K) if pos not in held}
