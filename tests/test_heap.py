"""p2pboard/heap.py: with glibc's mmap threshold fixed, big blocks freed after a bigger one
go back to the system instead of staying resident in the heap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Frees a 16 MB block (glibc then raises its threshold to 16 MB), then allocates 64 blocks
# of 1 MB with small buffers between them, frees the big ones and prints how many MB more
# are resident than before.
PROGRAM = """
import sys
import numpy as np
if sys.argv[1] == "steady":
    from p2pboard.heap import steady_heap
    assert steady_heap()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
big = np.ones(16 << 20, np.uint8)
del big
before = rss()
blocks, keep = [], []
for i in range(64):
    blocks.append(np.ones(1 << 20, np.uint8))
    keep.append(bytearray(4000))
del blocks
print(rss() - before)
"""


def resident_after_free(mode: str) -> int:
    r = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_big_blocks_leave_the_heap():
    assert resident_after_free("default") >= 48  # glibc's own behaviour: kept resident
    assert resident_after_free("steady") <= 8


def test_elsewhere_it_does_nothing(monkeypatch):
    from p2pboard import heap

    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.steady_heap() is False
