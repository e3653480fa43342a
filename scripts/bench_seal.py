#!/usr/bin/env python3
"""Cost of passphrase boards: key derivation, and seal + open of full datagrams.

    .venv/bin/python scripts/bench_seal.py [--seconds 2]

No network: the sealing layer is pure computation (p2pboard/seal.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pboard import seal, wire  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    kdf = []
    for i in range(5):
        t = time.perf_counter()
        key = seal.derive_key(f"bench passphrase {i}", "239.255.80.80", 47777)
        kdf.append(time.perf_counter() - t)
    inner = wire.encode_header(wire.MsgType.DATA, 1, 1, (1920, 1080)) + os.urandom(
        seal.MAX_INNER - wire.HEADER.size)
    sealer = seal.Sealer(key, 1, 1_700_000_000)
    batch = 20_000

    def rate(fn) -> float:
        n, spent = 0, 0.0
        while spent < args.seconds / 3:
            spent += fn()
            n += batch
        return n / spent

    def seal_only() -> float:
        t = time.perf_counter()
        for _ in range(batch):
            sealer.seal(inner)
        return time.perf_counter() - t

    def open_only() -> float:
        opener = seal.Opener(key)
        sealed = [sealer.seal(inner) for _ in range(batch)]  # untimed
        t = time.perf_counter()
        for d in sealed:
            opener.open(d)
        return time.perf_counter() - t

    def both() -> float:
        opener = seal.Opener(key)
        t = time.perf_counter()
        for _ in range(batch):
            opener.open(sealer.seal(inner))
        return time.perf_counter() - t

    results = {"seal": rate(seal_only), "open": rate(open_only), "seal+open": rate(both)}
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"derive_key (scrypt n=2^15 r=8 p=1 + HKDF): median {statistics.median(kdf) * 1e3:.0f} ms"
          f" (min {min(kdf) * 1e3:.0f}, max {max(kdf) * 1e3:.0f})")
    size = len(sealer.seal(inner))
    for name in ("seal", "open", "seal+open"):
        rate = results[name]
        print(f"{name:>9}: {rate:,.0f} datagrams/s of {size} bytes "
              f"({rate * size * 8 / 1e6:,.0f} Mbit/s), {1e6 / rate:.1f} us each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
