"""Shared memory with no name, for batches handed from worker processes to the main process.

torch's shared storages (``share_memory_``, ``UntypedStorage._new_shared``) keep a named
``/dev/shm`` file while they fault in every page of a new segment (~0.35 ms per MiB here), and
a process killed in that window leaves the file behind for good: three 16-39 MiB ``torch_*``
files were found after a day of tests and benchmarks that kill workers. :class:`SharedBytes`
is a ``memfd_create`` descriptor (elsewhere an unlinked temporary file): it never has a name,
so it goes away with the last process that maps it, however they end, and its pages are
allocated only as they are first written.

It crosses processes as (process id, descriptor), and the receiver opens
``/proc/<pid>/fd/<fd>``: the sender keeps its descriptor open as long as it uses the memory,
which slabs and rings do (memory sent once and dropped says ``lasting=False``).
``multiprocessing``'s ``DupFd`` (what torch's tensors use) costs a
round trip to a listener thread in the sender, which waits for the GIL while that process
collates its next batch: 2-9 ms to pickle and 3-90 ms to unpickle the first batch's slab here
(2 cores, idle to loaded), against 0.05 ms through ``/proc``. ``DupFd`` remains where there is
no ``/proc``.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref
from multiprocessing.reduction import DupFd
from typing import Any

import torch

__all__ = ["SharedBytes"]


class SharedBytes:
    """``size`` bytes of shared memory; :attr:`data` is a uint8 tensor over all of them."""

    def __init__(self, size: int, fd: int | None = None, *, lasting: bool = True) -> None:
        """``lasting``: this process keeps the memory while a receiver may still open it;
        otherwise it travels as a ``DupFd``, which holds a duplicate until it is received."""
        if fd is None:
            fd = _anonymous_fd(size)
        self.size = size
        self.lasting = lasting
        self._fd = fd
        self._map = mmap.mmap(fd, size)  # holds its own duplicate of the descriptor
        weakref.finalize(self, os.close, fd)
        self.data = torch.frombuffer(self._map, dtype=torch.uint8)

    def __reduce__(self) -> tuple[Any, ...]:
        if _PROC_FD and self.lasting:
            return _reopen, (os.getpid(), self._fd, self.size)
        return _attach, (DupFd(self._fd), self.size)


def _proc_fd_opens() -> bool:
    """Whether this system reopens a descriptor through ``/proc`` (sandboxes such as gVisor
    may list ``/proc/self/fd`` yet refuse or mis-serve the open)."""
    try:
        fd = _anonymous_fd(1)
    except OSError:
        return False
    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    else:
        try:
            os.pwrite(own, b"\x01", 0)  # the same memory, not a copy
            return os.pread(fd, 1, 0) == b"\x01"
        finally:
            os.close(own)
    finally:
        os.close(fd)


def _reopen(pid: int, fd: int, size: int) -> SharedBytes:
    """The sender's memory, opened through its descriptor in ``/proc``."""
    try:
        own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot open shared memory of process {pid} (descriptor {fd}) through /proc: "
            f"{exc.strerror} (has the process exited?)",
        ) from None
    if os.fstat(own).st_size != size:  # the sender closed it and the number was reused
        os.close(own)
        raise OSError(f"shared memory of process {pid} (descriptor {fd}) is no longer there")
    return SharedBytes(size, own)


def _attach(fd: Any, size: int) -> SharedBytes:
    return SharedBytes(size, fd.detach())


def _anonymous_fd(size: int) -> int:
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("s3exchange", os.MFD_CLOEXEC)
    else:  # no memfd: a temporary file unlinked as it is made
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, size)
    return fd


_PROC_FD = os.path.isdir("/proc/self/fd") and _proc_fd_opens()
