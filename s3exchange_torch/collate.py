"""Collate functions that hand sample bytes to the main process through shared memory.

A DataLoader worker sends each batch to the main process pickled through a pipe: a batch of
``bytes`` samples is copied into the pickle, through the kernel twice and out of the pickle
again. :func:`pack_bytes` copies the samples of a batch once, into one uint8 tensor that a
worker allocates in shared memory, so the batch crosses as a file descriptor and the main
process reads the bytes in place. With 100 KiB samples and 2 workers this raises the
DataLoader's own hand-over ceiling from ~7,600 to ~10,800 samples/s on the benchmark machine
(``benchmarks/experiments.py shards_proposed``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

__all__ = ["PackedBatch", "pack_bytes"]


class PackedBatch:
    """``(data, extra)`` samples whose data share one uint8 tensor, delimited by ``offsets``.

    ``batch[i]`` is ``(tensor view, extra)``; :meth:`tobytes` copies one sample out.
    """

    __slots__ = ("data", "extras", "offsets")

    def __init__(self, data: torch.Tensor, offsets: list[int], extras: list[Any]) -> None:
        self.data = data
        self.offsets = offsets
        self.extras = extras

    def __len__(self) -> int:
        return len(self.extras)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.data[start:stop], self.extras[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        for index in range(len(self.extras)):
            yield self[index]

    def tobytes(self, index: int) -> bytes:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return ctypes.string_at(self.data.data_ptr() + start, stop - start)


def pack_bytes(batch: Sequence[tuple[bytes, Any]]) -> PackedBatch:
    """``collate_fn`` for ``(bytes, entry)`` samples (the dataset's output without a transform)."""
    offsets = [0]
    for data, _ in batch:
        offsets.append(offsets[-1] + len(data))
    if get_worker_info() is not None:  # in a worker: allocate straight in shared memory
        storage = torch.UntypedStorage._new_shared(offsets[-1])  # type: ignore[no-untyped-call]
        packed = torch.empty(0, dtype=torch.uint8).set_(storage)
    else:
        packed = torch.empty(offsets[-1], dtype=torch.uint8)
    base = packed.data_ptr()
    for index, (data, _) in enumerate(batch):
        ctypes.memmove(base + offsets[index], data, len(data))
    return PackedBatch(packed, offsets, [extra for _, extra in batch])
