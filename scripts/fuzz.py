#!/usr/bin/env python3
"""Long fuzzing runs of p2pboard's untrusted-input paths.

    scripts/fuzz.py --target engine --seconds 600 --corpus fuzz-corpus/engine

Targets (tests/fuzzing.py has them):

  decoder  bytes into wire.decode_header and every body decoder: only DecodeError may come out
  engine   bytes split into datagrams (u16 length prefixes) fed to a synced or a joining
           Engine: it must never raise, never change the board for an invalid datagram,
           and keep every table within its cap
  store    bytes into store.load (also wrapped in a valid envelope): only StoreError, and
           what loads must dump and load back the same

With atheris installed (``pip install -e .[fuzz]``) the run is coverage-guided (libFuzzer);
otherwise it falls back to a seeded random mutation loop over the corpus. The corpus
directory is filled with seeds made from real datagrams on first use; atheris adds what it
finds there. A crash prints the exact input (hex) and saves it next to the corpus
directory as crash-TARGET-<sha1>; the exit status is non-zero.

A coverage-guided run longer than ``--chunk-seconds`` (300) goes on in a fresh process
every so many seconds, over the same corpus directory. Under atheris' instrumentation the
engine target's process grows by about 12 MB every 1,000 inputs (measured 2026-12-06: 70
MB to 3 GB in 240,000 inputs), while the same inputs run uninstrumented stay flat (68 MB
over 20,000 through atheris without instrumenting p2pboard, 43 MB over 40,000 in the
random loop), as does the store target instrumented: what grows is the instrumentation's,
not p2pboard's. One process would reach libFuzzer's memory limit (4 GB here) in about a
quarter of an hour and report it as an out-of-memory crash.

No socket is opened: everything runs in memory with virtual time.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

fz = None  # tests.fuzzing, imported in main() (under atheris' instrumentation if used)


def write_seeds(target: str, corpus: Path) -> int:
    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in fz.seeds(target):
        p = corpus / f"seed-{hashlib.sha1(s).hexdigest()[:16]}"
        if not p.exists():
            p.write_bytes(s)
            n += 1
    return n


#: the longest one libFuzzer process runs by default (see the module docstring)
CHUNK_SECONDS = 300.0


def run_chunks(target: str, seconds: float, chunk_seconds: float, corpus: Path,
               extra: list[str]) -> int:
    """A long coverage-guided run as a chain of processes of at most ``chunk_seconds``
    each, sharing the corpus directory (each starts from all that the ones before found).
    Stops at the first that fails, with its exit status."""
    end = time.monotonic() + seconds
    part = 0
    while (left := end - time.monotonic()) >= 1:
        part += 1
        chunk = min(left, chunk_seconds)
        print(f"fuzz.py: part {part}, {chunk:.0f} s ({left:.0f} s left)", flush=True)
        rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--target", target,
                              "--seconds", str(chunk), "--chunk-seconds", str(chunk),
                              "--corpus", str(corpus), *extra])
        if rc != 0:
            return rc
    return 0


def run_atheris(atheris, target: str, seconds: float, corpus: Path, extra: list[str]) -> int:
    fn = fz.TARGETS[target]
    argv = [sys.argv[0], f"-max_total_time={max(1, int(seconds))}", "-rss_limit_mb=4096",
            f"-max_len={8192 if target != 'decoder' else 1300}", "-print_final_stats=1",
            f"-artifact_prefix={corpus.parent}/crash-{target}-", *extra, str(corpus)]
    atheris.Setup(argv, fn)
    atheris.Fuzz()  # exits the process when the time is up (status 0) or on a crash
    return 0


def run_fallback(target: str, seconds: float, corpus: Path, seed: int) -> int:
    fn = fz.TARGETS[target]
    pool = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()]
    rng = random.Random(seed)
    end = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < end:
        data = fz.mutate(rng.choice(pool), rng, pool) if pool else rng.randbytes(64)
        if target == "decoder" and rng.random() < 0.1:
            data = rng.randbytes(rng.randrange(0, 1300))
        try:
            fn(data)
        except Exception:  # noqa: BLE001 - report any failure with its input
            path = corpus.parent / f"crash-{target}-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            traceback.print_exc()
            print(f"CRASH on input ({len(data)} bytes) saved as {path}:\n{data.hex()}",
                  file=sys.stderr)
            return 1
        runs += 1
    print(f"fuzz.py: {target}: {runs} inputs in {seconds:.0f} s (random mutation loop, "
          f"seed {seed}), no failure")
    return 0


def main(argv: list[str] | None = None) -> int:
    global fz
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=["decoder", "engine", "store"], default="engine")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--chunk-seconds", type=float, default=CHUNK_SECONDS,
                   help="with atheris, the longest one process fuzzes; a longer run goes on "
                        "in a fresh process over the same corpus (default %(default)s)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="corpus directory (default fuzz-corpus/TARGET); seeds are added")
    p.add_argument("--no-atheris", action="store_true", help="use the random mutation loop")
    p.add_argument("--seed", type=int, default=None, help="seed of the random loop")
    p.add_argument("--replay", type=Path, nargs="*", default=None,
                   help="run the target once on these files (e.g. a saved crash) and exit")
    a, extra = p.parse_known_args(argv)
    if a.chunk_seconds < 1:
        p.error("--chunk-seconds must be at least 1")
    corpus = a.corpus or ROOT / "fuzz-corpus" / a.target
    atheris = None
    if not a.no_atheris and a.replay is None:
        try:
            import atheris
        except ImportError:
            print("fuzz.py: atheris is not installed (pip install -e .[fuzz]): falling back "
                  "to the random mutation loop", file=sys.stderr)
    if atheris is not None and a.seconds > a.chunk_seconds:
        return run_chunks(a.target, a.seconds, a.chunk_seconds, corpus, extra)
    if atheris is not None:
        # Coverage feedback from p2pboard only (instrumenting NumPy too costs half a minute).
        with atheris.instrument_imports(include=["p2pboard"]):
            from tests import fuzzing as fz
    else:
        from tests import fuzzing as fz
    if a.replay is not None:
        for path in a.replay:
            fz.TARGETS[a.target](path.read_bytes())
            print(f"{path}: ok")
        return 0
    n = write_seeds(a.target, corpus)
    print(f"fuzz.py: target {a.target}, corpus {corpus} ({n} new seeds)", flush=True)
    if atheris is not None:
        return run_atheris(atheris, a.target, a.seconds, corpus, extra)
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    return run_fallback(a.target, a.seconds, corpus, seed)


if __name__ == "__main__":
    raise SystemExit(main())
