"""A data worker's memory: freed C heap kept for the next samples, inherited objects frozen.

A worker allocates and frees ~100 KiB samples and 256 KiB read chunks at storage speed, on a
thread per shard. glibc gives each thread an arena and returns freed memory at a heap's top to
the kernel past its trim threshold (128-512 KiB), so the next samples fault the same pages in
again: a loader worker touched 23-39 fresh pages per MB read in steady state (1 worker, shuffle
buffer of 200, 2-core VM), where 64 MiB kept, allocations up to 4 MiB from the heap and one
arena touch 2.8. Each fault is a trap, dearer in sandboxes such as gVisor (the GPU node's).
With the default shuffle buffer the buffer's first fill dominates (96 -> 80 pages per MB).

A forked worker also inherits the training process's objects (229,000 with torch imported), and
the first full garbage collection walked every one: 252 ms of one worker's 3 s, writing to each
object's header and so copying every page they sit on. :func:`gc.freeze` moves them out of the
collector's sight, as CPython's documentation advises for forked children: 25 collections then
took 6 ms in all.

Only processes that exist to load data call this: the loader's workers and DataLoader workers
iterating the dataset; never the training process.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os

__all__ = ["KEEP_FREED_BYTES", "keep_freed_memory", "settle_worker_memory"]

log = logging.getLogger("s3exchange_torch.dataset")

KEEP_FREED_BYTES = 64 << 20
"""Freed memory a worker's heap keeps (``M_TRIM_THRESHOLD``); allocations up to 4 MiB come from
the heap (``M_MMAP_THRESHOLD``), one arena serves every thread (``M_ARENA_MAX``)."""
_SETTINGS = ((-1, KEEP_FREED_BYTES), (-3, 4 << 20), (-8, 1))  # glibc's M_* numbers
_DONE: set[int] = set()
_SETTLED: set[int] = set()


def settle_worker_memory() -> None:
    """Once per data-loading process: keep freed heap, and freeze the objects it started with
    (inherited through fork or imported) out of the garbage collector's walks."""
    pid = os.getpid()
    if pid in _SETTLED:
        return
    _SETTLED.add(pid)
    keep_freed_memory()
    gc.freeze()


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
