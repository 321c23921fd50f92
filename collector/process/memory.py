"""glibc tuning, so the peak of pass 1 and the compressors' memory do not add up."""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc: its defaults stay, only the memory margin is smaller


def tune_malloc() -> None:
    """Keep glibc from holding on to freed memory: allocations of 256 KiB and more (chunk
    data, the index's tables, xz's ~46 MB of match-finder tables per compressor, 4 MiB
    blocks) get their own mappings, returned to the system as soon as they are freed.
    glibc's default raises that threshold to the largest block freed so far (up to 32 MiB)
    and then keeps up to twice as much freed memory, which measured ~25 MB of peak here."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024)


def release_free_memory() -> None:
    """Hand memory freed by Python back to the system (glibc keeps some otherwise), so the
    peak of pass 1 and the compressors' memory do not add up."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
