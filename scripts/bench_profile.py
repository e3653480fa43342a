"""Summarise a py-spy profile (``--format raw``: one collapsed stack per line, then the
sample count) as the functions with the most samples: *self* (the function itself was
running) and *total* (it was on the stack), in percent of the samples in which the
process was busy (py-spy leaves idle threads out by default).

    python scripts/bench_profile.py PROFILE.txt [--top 15]

scripts/bench.py compare --profile runs chosen peers under py-spy and calls this."""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    f = m["file"]
    for marker in ("p2pboard/", "scripts/", "site-packages/", "python3.11/"):
        if marker in f:
            keep = marker.startswith(("p2p", "scr"))
            f = f[f.index(marker) + (0 if keep else len(marker)):]
            break
    return f"{m['func']} ({f})"


#: frames every busy sample shares (the event loop, the peer's main, imports at start):
#: left out of "total"
_PLUMBING = ("asyncio/", "<module> (", "main (", "Handle._run", "<frozen importlib")


def summarise(path: Path, top: int = 15) -> tuple[int, list, list]:
    """(busy samples, [(self %, function)], [(total %, function)])."""
    selfs: collections.Counter[str] = collections.Counter()
    totals: collections.Counter[str] = collections.Counter()
    n = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        n += c
        selfs[frames[-1]] += c
        for f in set(frames):
            if not any(p in f for p in _PLUMBING):
                totals[f] += c
    pick = lambda ctr: [(round(100 * v / n, 1), k) for k, v in ctr.most_common(top)]  # noqa: E731
    return n, pick(selfs), pick(totals) if n else []


def markdown(path: Path, title: str, top: int = 15) -> str:
    n, selfs, totals = summarise(path, top)
    rows = "\n".join(f"| {s}% | `{f}` |" for s, f in selfs)
    trows = "\n".join(f"| {s}% | `{f}` |" for s, f in totals)
    return (f"#### {title}\n\n{n} busy samples at 250 Hz.\n\n| self | function |\n|---|---|\n"
            f"{rows}\n\n| total | function (on the stack) |\n|---|---|\n{trows}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    print(markdown(a.profile, a.profile.stem, a.top))


if __name__ == "__main__":
    main()
