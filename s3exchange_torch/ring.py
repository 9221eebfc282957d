"""A loader worker's ring of shared memory, from both sides: pure bookkeeping, no processes.

The worker allocates each batch's region at its write position (:class:`RingWriter`), waiting
for the main process to release the previous lap's bytes; the main process hands regions out
as tensors and releases them in order (:class:`Ring`), so the ring is two ``int64`` counters
in its first page. Tensors cross the pipe as ``(offset, nbytes, dtype, shape)`` references
into the ring (:class:`RingPickler` / :class:`RingUnpickler`).
"""

from __future__ import annotations

import io
import os
import pickle
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .shm import SharedBytes

__all__ = [
    "ALIGN",
    "RECEIVED",
    "RELEASED",
    "Full",
    "Restart",
    "Ring",
    "RingPickler",
    "RingUnpickler",
    "RingWriter",
    "new_ring",
]

ALIGN = 64
"""Byte alignment of every tensor in a ring (any dtype can view it; cache-line aligned)."""
_HOLD_WAIT_S = 0.05
"""How long a worker waits for room while the main process holds all its batches."""

RELEASED = 0
"""Header slot: ring position up to which the main process has released regions."""
RECEIVED = 1
"""Header slot: batches of this worker the main process has received."""

_HEAD = 4096
"""Bytes before a ring's data: its two counters, then padding so the data is page-aligned
(``cudaHostRegister`` wants whole pages)."""


def new_ring(capacity: int) -> SharedBytes:
    """A ring of at least ``capacity`` bytes (whole pages) after its counter page, counters at
    zero. Nameless shared memory (:mod:`s3exchange_torch.shm`): a worker killed while making
    one leaves nothing in ``/dev/shm``."""
    return SharedBytes(_HEAD + -(-capacity // 4096) * 4096)


def _ring_views(ring: SharedBytes) -> tuple[torch.Tensor, np.ndarray[Any, Any]]:
    """The ring's data (page-aligned) and its two counters."""
    return ring.data[_HEAD:], ring.data[:16].numpy().view(np.int64)


class Restart(Exception):
    """The batch would straddle the ring's end: write it again from the ring's start."""


class Full(Exception):
    """The batch does not fit this ring (``need`` bytes), or the caller holds the ring."""

    def __init__(self, need: int, held: bool) -> None:
        super().__init__(need)
        self.need = need
        self.held = held


class RingWriter:
    """Allocates batch regions in a worker's ring, waiting for the main process to free room."""

    def __init__(self, ring: SharedBytes | None, parent: int) -> None:
        self.ring = ring  # None until the first batch sizes one
        if ring is None:
            self.data, self.header = torch.empty(0, dtype=torch.uint8), np.zeros(2, np.int64)
        else:
            self.data, self.header = _ring_views(ring)
        self.capacity = self.data.numel()
        self.base = self.data.data_ptr()
        self.head = 0  # end of the last region written (absolute position)
        self.start = 0  # start of the region of the batch being written
        self.written = 0  # end of the regions of the batches already sent
        self.sent = 0
        self._parent = parent

    def begin(self) -> None:
        """Start a batch at the write position (abandoning any partly written one)."""
        self.head = self.start = self.written

    def restart(self) -> None:
        """Start the batch again at the ring's start, skipping the tail."""
        capacity = self.capacity
        self.head = self.start = self.start + (capacity - self.start % capacity)

    def commit(self) -> None:
        self.written = self.head
        self.sent += 1

    def alloc(self, nbytes: int) -> torch.Tensor:
        """``nbytes`` of the ring as a uint8 tensor, contiguous, aligned; one region a batch."""
        padded = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        pos = self.head
        if pos + padded - self.start > self.capacity:
            raise Full(pos + padded - self.start, held=False)
        if pos % self.capacity + padded > self.capacity:
            if pos != self.start:
                raise Restart
            pos += self.capacity - pos % self.capacity
            self.start = pos
        self._wait_room(pos + padded)
        self.head = pos + padded
        offset = pos % self.capacity
        return self.data[offset : offset + nbytes]

    def _wait_room(self, end: int) -> None:
        """Until the previous lap's bytes under ``[.., end)`` are released by the main process."""
        need = min(self.written, end - self.capacity)
        header = self.header
        delay = 0.0002
        held_since: float | None = None
        while header[RELEASED] < need:
            if header[RECEIVED] >= self.sent:  # the main process has every batch: user holds
                now = time.monotonic()
                held_since = held_since or now
                if now - held_since > _HOLD_WAIT_S:
                    raise Full(0, held=True)
            else:
                held_since = None
            if os.getppid() != self._parent:
                os._exit(1)  # orphaned: the main process is gone
            time.sleep(delay)
            delay = min(delay * 2, 0.005)

    def offset_of(self, tensor: torch.Tensor) -> int | None:
        """The ring offset of ``tensor``'s data when it lies in this ring."""
        pointer = tensor.data_ptr()
        if self.base <= pointer < self.base + self.capacity:
            return pointer - self.base
        return None


class RingPickler(pickle.Pickler):
    """Pickles tensors as ``(offset, nbytes, dtype, shape)`` in the ring, copying them in once."""

    def __init__(self, file: io.BytesIO, writer: RingWriter) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer = writer

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is not torch.Tensor:
            return None
        tensor = obj
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        offset = self._writer.offset_of(tensor) if tensor.is_contiguous() else None
        nbytes = tensor.element_size() * tensor.numel()
        if offset is None:
            target = self._writer.alloc(nbytes)
            target[:nbytes].view(tensor.dtype).view(tensor.shape).copy_(tensor)
            offset = self._writer.offset_of(target)
        return (offset, nbytes, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape))


class RingUnpickler(pickle.Unpickler):
    """Turns ring references back into tensors over ``base`` (the batch's region)."""

    def __init__(self, file: io.BytesIO, make: Callable[[int, int, str, tuple[int, ...]], Any]):
        super().__init__(file)
        self._make = make

    def persistent_load(self, pid: Any) -> Any:
        offset, nbytes, dtype, shape = pid
        return self._make(offset, nbytes, dtype, shape)


@dataclass
class Ring:
    """The main process's view of one worker's ring, and the regions it has handed out."""

    shared: SharedBytes
    pending: deque[list[Any]] = field(default_factory=deque)
    pinned: bool = False

    def __post_init__(self) -> None:
        self.data, self.header = _ring_views(self.shared)
        self.array: np.ndarray[Any, Any] = self.data.numpy()
        self.capacity = self.data.numel()

    def region(self, start: int, end: int) -> tuple[np.ndarray[Any, Any], list[Any]]:
        """The ring bytes of ``[start, end)`` as a numpy view, and its release record."""
        first = start % self.capacity
        record = [end, False]
        self.pending.append(record)
        return self.array[first : first + (end - start)], record

    def release(self, record: list[Any]) -> None:
        """Mark a region free; advance the shared counter over every leading free region."""
        record[1] = True
        pending = self.pending
        end = None
        while pending and pending[0][1]:
            end = pending.popleft()[0]
        if end is not None:
            self.header[RELEASED] = end
