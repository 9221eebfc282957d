"""How a data worker's C heap treats freed memory: kept for the next samples, not returned.

A worker allocates and frees ~100 KiB samples and 256 KiB read chunks at storage speed, on a
thread per shard. glibc gives each thread an arena and returns freed memory at a heap's top to
the kernel past its trim threshold (128-512 KiB), so the next samples fault the same pages in
again: a loader worker touched 23-39 fresh pages per MB read in steady state (1 worker, shuffle
buffer of 200, 2-core VM), where 64 MiB kept, allocations up to 4 MiB from the heap and one
arena touch 2.8. Each fault is a trap, dearer in sandboxes such as gVisor (the GPU node's).
With the default shuffle buffer the buffer's first fill dominates (96 -> 80 pages per MB).
Only processes that exist to load data call this: the loader's workers and DataLoader workers
iterating the dataset; never the training process.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["KEEP_FREED_BYTES", "keep_freed_memory"]

log = logging.getLogger("s3exchange_torch.dataset")

KEEP_FREED_BYTES = 64 << 20
"""Freed memory a worker's heap keeps (``M_TRIM_THRESHOLD``); allocations up to 4 MiB come from
the heap (``M_MMAP_THRESHOLD``), one arena serves every thread (``M_ARENA_MAX``)."""
_SETTINGS = ((-1, KEEP_FREED_BYTES), (-3, 4 << 20), (-8, 1))  # glibc's M_* numbers
_DONE: set[int] = set()


def keep_freed_memory() -> bool:
    """Set this process's glibc heap to keep freed memory, once per process; False where
    there is no glibc ``mallopt`` (musl, macOS) or glibc refused a setting."""
    pid = os.getpid()
    if pid in _DONE:
        return True
    _DONE.add(pid)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    if not ok:
        log.debug("glibc refused a mallopt setting; the heap trims as by default")
    return ok
