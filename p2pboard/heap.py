"""Keep a peer's memory close to what it holds (glibc's malloc on Linux).

A board is a few large NumPy arrays (the 1920x1080 stamps alone are 16 MB) and many
short-lived ones: snapshots built and parsed, autosave buffers, decoded image pieces.
glibc serves blocks over its mmap threshold (128 KiB) with their own mappings, returned to
the system when freed, but each time such a block is freed it raises the threshold to that
block's size (up to 32 MiB). From then on, blocks of up to several megabytes come from the
heap and its per-thread arenas, and freed ones stay there, fragmented, as resident memory
nothing uses. Fixing the threshold turns that adjustment off. Measured with
``scripts/soak.py --peers 6 --minutes 2 --seed 2026``: a fresh peer 148 MB resident before,
77 MB after; the six peers at the end, 292-359 MB before, 161-168 MB after.

The cost is a system call pair (and fresh pages) for each big allocation: a snapshot, an
autosave, a paste, and per datagram only for an image piece of flat colour over 32,768
pixels, whose write to the board costs several times more. Elsewhere (macOS, Windows,
musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value


def steady_heap() -> bool:
    """Fix glibc's mmap threshold for this process. True if it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
