"""Giving freed memory back to the operating system.

A peer allocates and frees large buffers in bursts: a snapshot built for a joiner or
loaded when joining (tens of MB of NumPy arrays and compressed chunks), a paste decoded
band by band, an autosave. glibc keeps what Python frees in its heap, where small live
objects pin it, so resident memory ratchets up with every burst and never comes down:
five snapshot dumps and loads of a 1920x1080 board take a process from 85 to 184 MB and
leave it there. ``malloc_trim(0)`` hands the free pages back (``madvise``), which took
2.5 ms there and brought it to 88 MB.

:class:`Trimmer` calls it when resident memory has grown by :data:`GROWTH` since the last
time, no more: memory given back is faulted in again when it is next used, so trimming
after every paste would cost more than it saves. The edge polls it every
``TRIM_EVERY`` seconds, only while nothing is queued and no stream (a paste, a snapshot)
has come in for ``TRIM_QUIET``: a trim walks the whole heap, up to tens of ms. Where
there is no glibc (macOS, Windows, musl) it does nothing.

(Fixing glibc's mmap threshold instead, so large arrays never enter the heap, was tried
and taken out: docs/RELIABILITY.md, below the soak's results, says why.)
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable

#: resident memory growth (bytes) since the last trim that makes the next one worth it
GROWTH = 32 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this process already uses
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Trimmer:
    """Trim the heap once resident memory has grown by ``growth`` bytes since the last
    trim (or since it was made). ``trim`` and ``rss`` stand in for malloc_trim and
    :func:`resident_bytes` in tests."""

    def __init__(self, trim: Callable[[int], int] | None = None,
                 rss: Callable[[], int | None] = resident_bytes, growth: int = GROWTH) -> None:
        self._trim = trim if trim is not None else _malloc_trim()
        self._rss = rss
        self.growth = growth
        base = rss() if self._trim is not None else None
        self.available = self._trim is not None and base is not None
        self.base = base or 0  #: resident bytes after the last trim
        self.trims = 0  #: times the heap was trimmed
        self.released = 0  #: bytes those trims gave back, in all
        self.seconds = 0.0  #: time they took, in all

    def poll(self) -> int:
        """Trim if memory grew enough; the bytes given back (0 if it did not trim)."""
        if not self.available:
            return 0
        before = self._rss()
        if before is None or before - self.base < self.growth:
            return 0
        t = time.perf_counter()
        self._trim(0)
        self.seconds += time.perf_counter() - t
        after = self._rss()
        after = before if after is None else after
        self.base = after
        self.trims += 1
        self.released += max(0, before - after)
        return max(0, before - after)
