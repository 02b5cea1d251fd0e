"""Keep freed memory in the process instead of returning it to the system (glibc only).

A training step with a Gramian method on a CNN allocates tensors of T × the activations'
size (tens of MiB each) and frees them before the next step. glibc serves blocks above its
mmap threshold (dynamic, at most 32 MiB) with fresh ``mmap`` calls and unmaps them when freed,
so every step pays one page fault per 4 KiB page it touches again: on the CNN of
docs/benchmarks.md at T = 10, about 50 000 faults and 70–90 ms of system time per step, a third
of the step. :func:`retain_freed_memory` raises the mmap and trim thresholds so that large
blocks come from the heap and stay there once freed; the next step reuses them without
faults. It is a property of the process, not of one model: the ``mtlkit`` command calls it
at start (``MTLKIT_MALLOC=default`` opts out); a script that drives the library itself may
call it once. The cost: the process's resident memory stays near its peak instead of shrinking
between steps, as a caching allocator (CUDA's) does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: blocks at most this large come from the heap (larger ones are still mapped on their own)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap kept before it is given back (glibc's upper bound)
TRIM_THRESHOLD = (1 << 31) - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (``mallopt``); True when both were applied, False
    on a C library without ``mallopt`` (macOS, Windows, musl) or when ``MTLKIT_MALLOC`` is
    ``default``."""
    if os.environ.get("MTLKIT_MALLOC", "").lower() == "default" or not sys.platform.startswith(
        "linux"
    ):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
