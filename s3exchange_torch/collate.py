"""Batches of sample bytes that cross from DataLoader workers as one shared-memory tensor.

A DataLoader worker sends each batch to the main process pickled through a pipe: a batch of
``bytes`` samples is copied into the pickle, through the kernel twice and out of the pickle
again. :func:`pack_bytes` copies the samples of a batch once, into one uint8 tensor in shared
memory that the main process reads in place.

The dataset yields :class:`Sample` tuples, and importing this module registers
:func:`pack_bytes` for them in ``torch``'s ``default_collate_fn_map`` (the extension point
``default_collate`` documents): a plain ``DataLoader(dataset, batch_size=64)`` packs without a
``collate_fn``.

**Slabs, reused.** A fresh shared-memory segment per batch cost more than the copy into it:
creating and first touching 3.2 MiB took 3-12 ms here (tmpfs allocation, zeroing, a page fault
per 4 KiB) against 0.15-0.2 ms to rewrite mapped memory; and torch sends a segment's file
descriptor through ``multiprocessing``'s resource sharer, a new authenticated connection per
batch (~19 % of all CPU samples in a py-spy profile of the DataLoader alone, both ends). So
each worker packs into at most :data:`MAX_SLABS` *slabs* it keeps, and the main process maps
each slab once, on its first batch, and finds it by a token afterwards (a batch then pickles as
a few integers and its entries). Byte 0 of a slab says the main process holds a batch in it; a
``weakref.finalize`` on the array under the batch's tensor clears it once the last view of the
batch is freed, and only then does the worker write the slab again. When every slab is held (a
consumer that keeps batches), a batch gets a segment of its own, as torch's tensors do: never a
wait. Measured on 2 cores, 100 KiB samples, batch 32, 2 workers, no S3 (``DataLoader`` alone):
a segment per batch 3,200-3,700 samples/s, slabs 8,200-14,700; list collate 2,100-5,000. The
main process spends 19-20 us per sample (a segment per batch: 56-61; list collate: 115-170).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from .shm import SharedBytes

__all__ = ["MAX_SLABS", "Alloc", "PackedBatch", "Sample", "collate_into", "pack_bytes"]

MAX_SLABS = 8
"""Slabs a process keeps for packing. A DataLoader worker has ``prefetch_factor`` (2) batches
queued plus the few the main process holds; past this, batches get one-off segments."""
_HEADER = 64
"""Bytes before a slab's data; byte 0 is 1 while the main process holds the batch in it."""
_ROUND = 1 << 20
"""Slab sizes are rounded up to this, so batches of slightly different sizes share slabs."""


def byte_offsets(datas: Sequence[Any]) -> list[int]:
    """Where each of ``datas`` starts in one packed buffer, and its end: ``len(datas) + 1``."""
    offsets = [0]
    for data in datas:
        offsets.append(offsets[-1] + len(data))
    return offsets


def copy_packed(datas: Sequence[Any], target: torch.Tensor, offsets: list[int]) -> None:
    """Copy ``datas`` into the uint8 tensor ``target`` at ``offsets``.

    Slice assignment copies holding the GIL. ``ctypes.memmove`` releases and re-takes it per
    sample, and with the prefetch threads running that re-take cost ~78 us per 100 KiB sample
    (py-spy, in the loader's workers) against ~5 us for the copy itself.
    """
    if offsets[-1] == 0:
        return
    view = target.numpy().data
    for index, data in enumerate(datas):
        view[offsets[index] : offsets[index + 1]] = data


class Sample(NamedTuple):
    """One file's ``(data, entry)``: what the dataset yields without ``transform``.

    A plain tuple to unpack; its own type so that ``default_collate`` packs a batch of them
    with :func:`pack_bytes`.
    """

    data: bytes
    entry: Any


_PLAIN = frozenset({str, int, float, bool, type(None)})


class _PickledExtras:
    """A batch's extras as the producer pickled them, unpickled when first read."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, ...]:
        return _PickledExtras, (self.blob,)


_Extras = list[Any] | _PickledExtras


def _travelling(extras: _Extras) -> _Extras:
    """How a batch's extras cross processes: flat entries (dicts of plain values, what the
    dataset yields) as one pickle of their own, which the receiver unpickles only if they
    are read (42 us of the main process's ~265 per loader batch of 32, 2 cores); anything
    else inline, as the pickler at hand treats it."""
    if isinstance(extras, _PickledExtras):
        return extras
    for extra in extras:
        if type(extra) is not dict or any(type(v) not in _PLAIN for v in extra.values()):
            return extras
    return _PickledExtras(pickle.dumps(extras, protocol=pickle.HIGHEST_PROTOCOL))


class PackedBatch:
    """``(data, extra)`` samples whose data share one uint8 tensor, delimited by ``offsets``.

    ``batch[i]`` is ``(tensor view, extra)``; :meth:`tobytes` copies one sample out. Entries
    that came from another process are decoded when :attr:`extras` is first read.
    """

    __slots__ = ("_extras", "_segment", "_slab", "data", "offsets")

    def __init__(self, data: torch.Tensor, offsets: list[int], extras: _Extras) -> None:
        self.data = data
        self.offsets = offsets
        self._extras = extras
        self._slab: _Slab | None = None  # the worker's slab that ``data`` lies in
        self._segment: SharedBytes | None = None  # or memory of this batch's own

    @property
    def extras(self) -> list[Any]:
        """Each sample's extra (its manifest entry, for the dataset's samples)."""
        extras = self._extras
        if isinstance(extras, _PickledExtras):
            extras = self._extras = pickle.loads(extras.blob)
        return extras

    def with_data(self, data: torch.Tensor) -> PackedBatch:
        """The same samples over ``data`` (a copy of :attr:`data`, e.g. on a device)."""
        return PackedBatch(data, self.offsets, self._extras)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.data[start:stop], self.extras[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"PackedBatch({len(self)} samples, {self.offsets[-1]} bytes)"

    def tobytes(self, index: int) -> bytes:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return ctypes.string_at(self.data.data_ptr() + start, stop - start)

    def __reduce__(self) -> tuple[Any, ...]:
        slab = self._slab
        extras = _travelling(self._extras)
        if slab is None or slab.pid != os.getpid():
            if self._segment is not None:
                return _over_segment, (self._segment, self.offsets, extras)
            return PackedBatch, (self.data, self.offsets, extras)
        retired, slab.pool.retired = slab.pool.retired, []
        if slab.header[_MAPPED]:  # the consumer holds the slab mapped: its token suffices
            return _from_slab, (slab.token, self.offsets, extras, retired)
        # first time: the slab's file descriptor goes with the batch
        return _map_slab, (slab.pid, slab.token, slab.shared, self.offsets, extras, retired)


# --------------------------------------------------------------------------------------------
# Slabs: the producing side (a DataLoader worker, or the main process with num_workers=0)
# --------------------------------------------------------------------------------------------

_HELD = 0
"""Header byte: 1 while the consumer holds a batch in the slab (set by the producer)."""
_MAPPED = 1
"""Header byte: 1 once the consumer keeps the slab mapped under its token."""


class _Slab:
    __slots__ = ("header", "pid", "pool", "shared", "tensor", "token")

    def __init__(self, pool: _Slabs, nbytes: int, shared: bool) -> None:
        self.pool = pool
        self.pid = pool.pid
        self.token = int.from_bytes(os.urandom(8), "little")
        # nameless shared memory: a worker killed while making a slab leaves no /dev/shm file
        self.shared = SharedBytes(nbytes) if shared else None
        self.tensor = self.shared.data if self.shared else torch.zeros(nbytes, dtype=torch.uint8)
        self.header: np.ndarray[Any, Any] = self.tensor[:_HEADER].numpy()


class _Slabs:
    """The slabs of one process, and the tokens of those it replaced (for the consumer)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.slabs: list[_Slab] = []
        self.retired: list[int] = []

    def lease(self, nbytes: int, shared: bool) -> _Slab | None:
        """A slab of at least ``_HEADER + nbytes`` bytes, marked held; None when all are."""
        free = [slab for slab in self.slabs if not slab.header[_HELD]]
        slab = next((s for s in free if len(s.tensor) >= _HEADER + nbytes), None)
        if slab is None:
            if free:  # too small: replaced by a larger one
                self.slabs.remove(free[0])
                if free[0].header[_MAPPED]:
                    self.retired.append(free[0].token)
            elif len(self.slabs) >= MAX_SLABS:
                return None
            slab = _Slab(self, -(-(_HEADER + nbytes) // _ROUND) * _ROUND, shared)
            self.slabs.append(slab)
        slab.header[_HELD] = 1
        return slab


_pools: list[_Slabs] = []
"""This process's slabs (at most one pool); a forked child starts without its parent's."""


def _pool() -> _Slabs:
    if not _pools:
        _pools.append(_Slabs())
    return _pools[0]


# --------------------------------------------------------------------------------------------
# Slabs: the consuming side (the DataLoader's main process)
# --------------------------------------------------------------------------------------------

_mapped: dict[int, tuple[int, torch.Tensor, np.ndarray[Any, Any]]] = {}
"""token -> (producer pid, slab, header) of the slabs this process keeps mapped. A producer's
entries go when it retires them or once it has exited (checked as a new producer appears)."""


def _forget() -> None:
    """In a forked child: never write the parent's slabs, nor hold its consumer's mappings."""
    _pools.clear()
    _mapped.clear()


os.register_at_fork(after_in_child=_forget)


def _release(header: np.ndarray[Any, Any]) -> None:
    header[_HELD] = 0


def _over(
    slab: torch.Tensor, header: np.ndarray[Any, Any], offsets: list[int], extras: _Extras
) -> PackedBatch:
    """A batch over ``slab``'s data; freeing its last tensor view frees the slab for reuse."""
    region = slab[_HEADER : _HEADER + offsets[-1]].numpy()
    weakref.finalize(region, _release, header)
    return PackedBatch(torch.from_numpy(region), offsets, extras)


def _map_slab(
    pid: int,
    token: int,
    shared: SharedBytes,
    offsets: list[int],
    extras: _Extras,
    retired: list[int],
) -> PackedBatch:
    """Unpickling a batch in a slab seen for the first time: keep the slab mapped."""
    slab = shared.data
    if all(entry[0] != pid for entry in _mapped.values()):
        for gone in [t for t, entry in _mapped.items() if not _alive(entry[0])]:
            del _mapped[gone]
    header = slab[:_HEADER].numpy()
    _mapped[token] = (pid, slab, header)
    header[_MAPPED] = 1
    return _from_slab(token, offsets, extras, retired)


def _from_slab(token: int, offsets: list[int], extras: _Extras, retired: list[int]) -> PackedBatch:
    """Unpickling a batch in a slab this process keeps mapped."""
    for gone in retired:
        _mapped.pop(gone, None)
    try:
        _, slab, header = _mapped[token]
    except KeyError:
        raise RuntimeError(
            "a packed batch names a shared-memory slab this process never mapped: it must be "
            "unpickled by the process that received the slab's first batch"
        ) from None
    return _over(slab, header, offsets, extras)


def _over_segment(shared: SharedBytes, offsets: list[int], extras: _Extras) -> PackedBatch:
    """Unpickling a batch that came in memory of its own (every slab was held)."""
    return PackedBatch(shared.data[: offsets[-1]], offsets, extras)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pack_bytes(batch: Sequence[tuple[bytes, Any]]) -> PackedBatch:
    """``collate_fn`` for ``(bytes, extra)`` samples, such as the dataset's :class:`Sample`."""
    datas = [data for data, _ in batch]
    offsets = byte_offsets(datas)
    extras = [extra for _, extra in batch]
    in_worker = get_worker_info() is not None
    slab = _pool().lease(offsets[-1], shared=in_worker)
    segment = None
    if slab is None:  # every slab held by the consumer: a segment of this batch's own
        if in_worker:
            segment = SharedBytes(max(1, offsets[-1]), lasting=False)
            packed = segment.data[: offsets[-1]]
        else:
            packed = torch.empty(offsets[-1], dtype=torch.uint8)
    else:
        packed = slab.tensor[_HEADER : _HEADER + offsets[-1]]
    copy_packed(datas, packed, offsets)
    if slab is None:
        result = PackedBatch(packed, offsets, extras)
        result._segment = segment
        return result
    if not in_worker:  # consumed in this process: hand it over as the consumer does
        return _over(slab.tensor, slab.header, offsets, extras)
    result = PackedBatch(packed, offsets, extras)
    result._slab = slab
    return result


def _collate_samples(batch: Sequence[Sample], *, collate_fn_map: Any = None) -> PackedBatch:
    return pack_bytes(batch)


default_collate_fn_map[Sample] = _collate_samples


# --------------------------------------------------------------------------------------------
# Collation through an allocator (the loader's rings)
# --------------------------------------------------------------------------------------------

Alloc = Callable[[int], torch.Tensor]
_BYTES = (bytes, bytearray, memoryview)


def _plain_alloc(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


def _pack(datas: Sequence[Any], extras: list[Any], alloc: Alloc) -> PackedBatch:
    offsets = byte_offsets(datas)
    packed = alloc(offsets[-1])
    copy_packed(datas, packed, offsets)
    return PackedBatch(packed, offsets, extras)


def _stack(tensors: Sequence[torch.Tensor], alloc: Alloc) -> torch.Tensor:
    first = tensors[0]
    if any(t.shape != first.shape or t.dtype != first.dtype for t in tensors):
        return list(tensors)  # type: ignore[return-value]  # ragged: kept as a list
    shape = (len(tensors), *first.shape)
    nbytes = first.element_size() * first.numel() * len(tensors)
    out = alloc(nbytes)[:nbytes].view(first.dtype).view(shape)
    torch.stack(list(tensors), out=out)
    return out


def collate_into(samples: Sequence[Any], alloc: Alloc = _plain_alloc) -> Any:
    """The loader's default collate, writing tensor data through ``alloc``.

    ``(bytes, entry)`` samples (the dataset without a transform) give a :class:`PackedBatch`
    whose extras are the entries; ``bytes`` fields a ``PackedBatch`` with ``None`` extras;
    equal-shape tensors (and numpy arrays) one stacked tensor; numbers a tensor; tuples,
    lists and dicts (webdataset samples) are collated per position / key; anything else
    (``str`` keys, ragged tensors) stays a list.
    """
    first = samples[0]
    if isinstance(first, tuple) and len(first) == 2 and isinstance(first[0], _BYTES):
        return _pack([s[0] for s in samples], [s[1] for s in samples], alloc)
    if isinstance(first, _BYTES):
        return _pack(samples, [None] * len(samples), alloc)
    if isinstance(first, torch.Tensor):
        return _stack(samples, alloc)
    if isinstance(first, np.ndarray) and first.dtype != np.object_:
        return _stack([torch.from_numpy(np.ascontiguousarray(s)) for s in samples], alloc)
    if isinstance(first, bool | int | float) and not isinstance(first, np.generic):
        return torch.tensor(samples)
    if isinstance(first, Mapping):
        return {key: collate_into([s[key] for s in samples], alloc) for key in first}
    if isinstance(first, tuple | list) and not isinstance(first, str):
        columns = [collate_into(list(column), alloc) for column in zip(*samples, strict=True)]
        return columns if isinstance(first, list) else tuple(columns)
    return list(samples)
