"""Keep big numpy arrays out of glibc's heap, so that freeing one gives its memory back.

glibc serves an allocation from the heap unless it is at least the mmap threshold, and raises that
threshold to the size of every mmapped block freed (up to 32 MB). Reading a trace frees many arrays
of several MB, after which the next ones come from the heap, which does not shrink: a 1M-slice load
then peaked ~100 MB higher than the arrays it holds. A fixed threshold (mallopt, which also turns
the raising off) keeps them mmapped. No effect where the C library is not glibc.
"""

from __future__ import annotations

import ctypes

_M_MMAP_THRESHOLD = -3
THRESHOLD = 128 << 10  # (glibc's own starting value, kept from being raised)
_done = False


def keep_big_arrays_mmapped() -> None:
    """Fix glibc's mmap threshold at `THRESHOLD` (once per process)."""
    global _done
    if _done:
        return
    _done = True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # (the C library already loaded in this process)
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, THRESHOLD)
