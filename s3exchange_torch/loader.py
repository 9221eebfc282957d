"""``S3ExchangeLoader``: batches from worker processes through shared-memory rings, not pickles.

A ``DataLoader`` worker hands each batch to the main process pickled through a pipe, and every
tensor in it through a freshly created shared-memory segment; that hand-over tops out at
0.65-0.9 GB/s on a 16-core node, a quarter of what the storage delivers (issue 9's table).
Here each worker owns a ring of shared memory (an *arena*) created once, before the worker
starts:

- the worker collates a batch straight into its ring: sample ``bytes`` become one
  :class:`~s3exchange_torch.collate.PackedBatch` (one copy per byte), equal-shape tensors are
  stacked in place, any other tensor a ``collate`` returns is copied in once;
- only the batch's *structure* crosses the pipe (offsets, entries, small values; tensors as
  ``(offset, dtype, shape)``), plus the dataset state after the batch, for resumption;
- the main process wraps the ring region as tensors without copying. Without a ``device``
  those views are the batch, and the region returns to the worker when the last view of it is
  garbage-collected; with a ``device`` the region (page-locked when CUDA is present) is copied
  with a non-blocking copy on a side stream and returned once the copy has completed;
- regions return in order, so a ring is a pair of counters: the worker's write position and
  the main process's release position, an ``int64`` in shared memory next to the ring.

A batch that does not fit a ring makes the worker create a ring twice the size and send it
over the pipe (a file descriptor, once); a batch kept alive by the caller while the worker
waits for room (``list(loader)``) goes over the pipe in fresh shared memory instead, so the
loader never deadlocks on batches held by the user.

Order and resumption follow ``DataLoader`` for an ``IterableDataset``: batch ``i`` comes from
worker ``i mod num_workers``, skipping workers that have finished; each worker's last batch may
be short (``drop_last`` drops it). :meth:`S3ExchangeLoader.state_dict` holds every worker's
dataset state after its last delivered batch and which worker is next: a few integers per
worker, and resuming from it continues the interrupted sequence exactly.

Workers persist across epochs (a new epoch is one message per worker); an iteration abandoned
mid-epoch, an error or ``Ctrl-C`` stops them, and the next ``iter()`` starts new ones. A worker
that dies (``SIGKILL``, out of memory) ends the epoch with :class:`LoaderWorkerError` within
``poll`` seconds. Rings are nameless shared memory (``memfd_create``), so nothing is left in
``/dev/shm`` whatever happens to the processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import multiprocessing.connection as mpc
import os
import pickle
import random
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as tmp

from .collate import PackedBatch, byte_offsets, copy_packed
from .dataset import S3ExchangeIterableDataset
from .shm import SharedBytes

__all__ = ["LOADER_STATE_VERSION", "LoaderWorkerError", "S3ExchangeLoader"]

log = logging.getLogger(__name__)

LOADER_STATE_VERSION = 1
ALIGN = 64
"""Byte alignment of every tensor in a ring (any dtype can view it; cache-line aligned)."""
MIN_RING_BYTES = 16 << 20
"""Smallest ring: a few 100 KiB-sample batches of 64."""
_HOLD_WAIT_S = 0.05
"""How long a worker waits for room while the main process holds all its batches."""

_RELEASED = 0
"""Header slot: ring position up to which the main process has released regions."""
_RECEIVED = 1
"""Header slot: batches of this worker the main process has received."""


class LoaderWorkerError(RuntimeError):
    """A loader worker process died or could not report its error."""


# --------------------------------------------------------------------------------------------
# The ring, worker side
# --------------------------------------------------------------------------------------------


_HEAD = 4096
"""Bytes before a ring's data: its two counters, then padding so the data is page-aligned
(``cudaHostRegister`` wants whole pages)."""


def _new_ring(capacity: int) -> SharedBytes:
    """A ring of at least ``capacity`` bytes (whole pages) after its counter page, counters at
    zero. Nameless shared memory (:mod:`s3exchange_torch.shm`): a worker killed while making
    one leaves nothing in ``/dev/shm``."""
    return SharedBytes(_HEAD + -(-capacity // 4096) * 4096)


def _ring_views(ring: SharedBytes) -> tuple[torch.Tensor, np.ndarray[Any, Any]]:
    """The ring's data (page-aligned) and its two counters."""
    return ring.data[_HEAD:], ring.data[:16].numpy().view(np.int64)


class _Restart(Exception):
    """The batch would straddle the ring's end: write it again from the ring's start."""


class _Full(Exception):
    """The batch does not fit this ring (``need`` bytes), or the caller holds the ring."""

    def __init__(self, need: int, held: bool) -> None:
        super().__init__(need)
        self.need = need
        self.held = held


class _Writer:
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
            raise _Full(pos + padded - self.start, held=False)
        if pos % self.capacity + padded > self.capacity:
            if pos != self.start:
                raise _Restart
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
        while header[_RELEASED] < need:
            if header[_RECEIVED] >= self.sent:  # the main process has every batch: user holds
                now = time.monotonic()
                held_since = held_since or now
                if now - held_since > _HOLD_WAIT_S:
                    raise _Full(0, held=True)
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


# --------------------------------------------------------------------------------------------
# Collation into an allocator
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


# --------------------------------------------------------------------------------------------
# Pickling tensors as ring references
# --------------------------------------------------------------------------------------------


class _RingPickler(pickle.Pickler):
    """Pickles tensors as ``(offset, nbytes, dtype, shape)`` in the ring, copying them in once."""

    def __init__(self, file: io.BytesIO, writer: _Writer) -> None:
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


class _RingUnpickler(pickle.Unpickler):
    """Turns ring references back into tensors over ``base`` (the batch's region)."""

    def __init__(self, file: io.BytesIO, make: Callable[[int, int, str, tuple[int, ...]], Any]):
        super().__init__(file)
        self._make = make

    def persistent_load(self, pid: Any) -> Any:
        offset, nbytes, dtype, shape = pid
        return self._make(offset, nbytes, dtype, shape)


# --------------------------------------------------------------------------------------------
# Worker process
# --------------------------------------------------------------------------------------------


@dataclass
class _WorkerArgs:
    dataset: S3ExchangeIterableDataset
    worker_id: int
    num_workers: int
    batch_size: int
    drop_last: bool
    collate: Callable[[list[Any]], Any] | None
    seed: int
    ring_bytes: int
    commands: mpc.Connection
    results: mpc.Connection
    parent: int


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the main process dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def _worker_loop(args: _WorkerArgs) -> None:
    """Run epochs on command; each batch goes into the ring, its structure into the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _die_with_parent()
    torch.set_num_threads(1)
    random.seed(args.seed + args.worker_id)
    torch.manual_seed(args.seed + args.worker_id)
    with contextlib.suppress(Exception):  # user transforms may ask where they run
        from torch.utils.data._utils import worker as torch_worker

        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=args.worker_id,
            num_workers=args.num_workers,
            seed=args.seed + args.worker_id,
            dataset=args.dataset,
        )
    # No ring yet: the first batch sizes one and sends it with itself.
    writer = _Writer(None, args.parent)
    results = args.results
    try:
        while True:
            command = args.commands.recv()
            if command[0] == "stop":
                return
            _, state = command
            if state is not None:
                args.dataset.load_state_dict(state)
            writer = _run_epoch(args, writer)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return
    except BaseException as exc:
        with contextlib.suppress(Exception):
            results.send(("error", _portable(exc), traceback.format_exc()))
            # Stay until told to stop: a ring sent earlier reaches the main process through
            # this process's resource sharer, which must still be there when it is unpickled.
            while args.commands.recv()[0] != "stop":
                pass


def _portable(exc: BaseException) -> BaseException | None:
    """``exc`` if it survives pickling, else None (the main process then reports the text)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return exc


def _run_epoch(args: _WorkerArgs, writer: _Writer) -> _Writer:
    """One epoch's batches; returns the ring writer in use at its end (rings only grow)."""
    dataset, results = args.dataset, args.results
    batch: list[Any] = []
    for sample in dataset._iter_worker(args.worker_id, args.num_workers):
        batch.append(sample)
        if len(batch) == args.batch_size:
            writer = _send_batch(args, writer, batch, dataset.state_dict())
            batch = []
    if batch and not args.drop_last:
        writer = _send_batch(args, writer, batch, dataset.state_dict())
    results.send(("end", dataset.state_dict()))
    return writer


def _send_batch(
    args: _WorkerArgs, writer: _Writer, batch: list[Any], state: dict[str, Any]
) -> _Writer:
    """Collate ``batch`` into the ring and send its structure; returns the ring now in use."""
    collate = args.collate
    writer.begin()
    while True:
        buffer = io.BytesIO()
        try:
            result = collate(batch) if collate is not None else collate_into(batch, writer.alloc)
            _RingPickler(buffer, writer).dump(result)
        except _Restart:
            writer.restart()
            continue
        except _Full as full:
            writer.begin()  # nothing of this batch was sent: its room is free again
            if full.held:  # the caller keeps every batch alive: this one goes by itself
                result = collate(batch) if collate is not None else collate_into(batch)
                writer.sent += 1
                args.results.send(("whole", result, state))
                return writer
            log.info(
                "batch of %d bytes: loader worker %d grows its ring", full.need, args.worker_id
            )
            ring = _new_ring(max(2 * writer.capacity, 2 * full.need, args.ring_bytes))
            args.results.send(("ring", ring))
            writer = _Writer(ring, args.parent)
            writer.begin()
            continue
        writer.commit()
        args.results.send(("batch", writer.start, writer.head, buffer.getvalue(), state))
        return writer


# --------------------------------------------------------------------------------------------
# Main process
# --------------------------------------------------------------------------------------------


@dataclass
class _Ring:
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
            self.header[_RELEASED] = end


class _Worker:
    """One worker process and its pipes and rings, as the main process sees them."""

    def __init__(self, process: Any, commands: mpc.Connection, results: mpc.Connection) -> None:
        self.process = process
        self.commands = commands
        self.results = results
        self.ring: _Ring | None = None  # the worker sends its ring with its first batch
        self.received = 0


def _release(ring: _Ring, record: list[Any], lock: threading.Lock) -> None:
    with lock:
        ring.release(record)


class S3ExchangeLoader:
    """Batches of an :class:`S3ExchangeIterableDataset`, past the DataLoader's hand-over.

    Args:
        dataset: the dataset; its ranks, balance, shuffle, epoch and transform all apply.
        batch_size: samples per batch; each worker's last batch may be shorter.
        num_workers: worker processes (``0``: read in this process).
        device: where batches go (``"cuda"``, ``torch.device``); ``None`` keeps them on the
            CPU as views of shared memory (no copy).
        drop_last: drop each worker's short last batch.
        prefetch_batches: batches each worker may have ready ahead of the consumer; sizes the
            initial rings (they grow when a batch does not fit).
        collate: ``collate(samples)`` run in the worker instead of :func:`collate_into`; the
            tensors it returns travel through the ring (one copy), the rest is pickled.
        multiprocessing_context: ``"fork"``, ``"spawn"`` or ``"forkserver"`` (default: the
            platform's, as ``DataLoader``).
        poll: seconds between checks that the worker being waited on is still alive.

    Batches from ``(bytes, entry)`` samples are :class:`PackedBatch` (``.data`` one uint8
    tensor, ``.offsets``, ``.extras`` the entries). Without ``device`` a batch's tensors are
    views of the worker's ring, valid as long as they are referenced: keeping many alive only
    slows the worker down (it then sends batches through fresh shared memory).
    """

    def __init__(
        self,
        dataset: S3ExchangeIterableDataset,
        *,
        batch_size: int,
        num_workers: int = 0,
        device: str | torch.device | None = None,
        drop_last: bool = False,
        prefetch_batches: int = 2,
        collate: Callable[[list[Any]], Any] | None = None,
        multiprocessing_context: str | None = None,
        poll: float = 1.0,
    ) -> None:
        if batch_size < 1 or num_workers < 0 or prefetch_batches < 1:
            raise ValueError("batch_size and prefetch_batches must be >= 1, num_workers >= 0")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = torch.device(device) if device is not None else None
        self.drop_last = drop_last
        self.prefetch_batches = prefetch_batches
        self.collate = collate
        self._context = tmp.get_context(multiprocessing_context)
        self._poll = poll
        self._seed = int(torch.empty((), dtype=torch.int64).random_().item())
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._stream: Any = None
        self._resume: dict[str, Any] | None = None
        self._state: dict[str, Any] | None = None
        self._active: _Iteration | None = None
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)

    # -- sizes ---------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """The dataset's epoch for the next ``iter()`` (workers see it too)."""
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """Batches of the current epoch (each worker's count rounded as ``drop_last`` says)."""
        _, counts = self.dataset._resolved()
        plan = self.dataset._plan(self.dataset.epoch, counts)
        workers = max(1, self.num_workers)
        total = 0
        for worker in range(workers):
            size = plan.worker_size(self.dataset.rank, worker, workers)
            total += size // self.batch_size if self.drop_last else -(-size // self.batch_size)
        return total

    def _ring_bytes(self) -> int:
        """Ring size to start with: ``prefetch_batches + 1`` batches of the manifest's mean
        sample, twice (a ring wrapping around then rarely waits)."""
        units, counts = self.dataset._resolved()
        total_bytes = 0
        samples = 0
        for unit, count in zip(units, counts, strict=True):
            entries = unit if isinstance(unit, tuple) else (unit,)
            for entry in entries:
                size = entry.get("members_size_bytes") or entry.get("size_bytes")
                if isinstance(size, int):
                    total_bytes += size
            samples += count
        mean = total_bytes // samples if samples else 0
        batch = mean * self.batch_size + ALIGN * self.batch_size
        return max(MIN_RING_BYTES, 2 * (self.prefetch_batches + 1) * batch)

    # -- workers -------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        self.dataset.resolve()
        capacity = self._ring_bytes()
        parent = os.getpid()
        for worker_id in range(self.num_workers):
            commands_out, commands_in = self._context.Pipe(duplex=False)
            results_out, results_in = self._context.Pipe(duplex=False)
            args = _WorkerArgs(
                dataset=self.dataset,
                worker_id=worker_id,
                num_workers=self.num_workers,
                batch_size=self.batch_size,
                drop_last=self.drop_last,
                collate=self.collate,
                seed=self._seed,
                ring_bytes=capacity,
                commands=commands_out,
                results=results_in,
                parent=parent,
            )
            process = self._context.Process(  # type: ignore[attr-defined]
                target=_worker_loop,
                args=(args,),
                name=f"s3exchange-loader-{worker_id}",
                daemon=True,
            )
            process.start()
            commands_out.close()
            results_in.close()
            self._workers.append(_Worker(process, commands_in, results_out))

    def _pin(self, ring: _Ring) -> None:
        """Page-lock a ring for asynchronous copies to CUDA (best effort)."""
        if self.device is None or self.device.type != "cuda" or not torch.cuda.is_available():
            return
        cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        code = cudart.cudaHostRegister(ring.data.data_ptr(), ring.capacity, 0)
        ring.pinned = int(code) == 0

    def close(self) -> None:
        """Stop the workers (idempotent); a later ``iter()`` starts new ones."""
        self._shutdown(graceful=self._active is None)

    def _shutdown(self, graceful: bool) -> None:
        """Stop the workers: asked to between epochs, terminated when mid-epoch."""
        self._active = None
        _stop_workers(self._workers, graceful)
        for worker in self._workers:
            if worker.ring is not None:
                self._unpin(worker.ring)
        self._workers.clear()

    def _unpin(self, ring: _Ring) -> None:
        if ring.pinned:
            torch.cuda.synchronize()
            cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call]
            cudart.cudaHostUnregister(ring.data.data_ptr())
            ring.pinned = False

    def __enter__(self) -> S3ExchangeLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- iteration -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        if self._active is not None:  # an earlier iteration was abandoned mid-epoch
            self._shutdown(graceful=False)
        resume, self._resume = self._resume, None
        if resume is not None:
            self.dataset.set_epoch(int(resume["epoch"]))
        if self.num_workers == 0:
            return self._in_process(resume)
        if not self._workers or not all(w.process.is_alive() for w in self._workers):
            self._shutdown(graceful=False)
            self._start_workers()
        iteration = _Iteration(self, resume)
        self._active = iteration
        return iteration.batches()

    def _in_process(self, resume: dict[str, Any] | None) -> Iterator[Any]:
        dataset = self.dataset
        if resume is not None and resume["workers"][0] is not None:
            dataset.load_state_dict(resume["workers"][0])
        epoch = dataset.epoch
        state = self._new_state(epoch, 1)
        self._state = state
        batch: list[Any] = []
        for sample in dataset._iter_worker(0, 1):
            batch.append(sample)
            if len(batch) == self.batch_size:
                state["workers"][0] = dataset.state_dict()
                state["batches"] += 1
                yield self._to_device(self._collate(batch))
                batch = []
        state["workers"][0] = dataset.state_dict()
        if batch and not self.drop_last:
            state["batches"] += 1
            yield self._to_device(self._collate(batch))
        state["exhausted"][0] = True

    def _collate(self, batch: list[Any]) -> Any:
        return self.collate(batch) if self.collate is not None else collate_into(batch)

    def _to_device(self, batch: Any) -> Any:
        if self.device is None:
            return batch
        device = self.device
        return _map_tensors(batch, lambda t: t.to(device, non_blocking=False))

    # -- state ---------------------------------------------------------------------------------

    def _new_state(self, epoch: int, workers: int) -> dict[str, Any]:
        return {
            "version": LOADER_STATE_VERSION,
            "epoch": epoch,
            "rank": self.dataset.rank,
            "world_size": self.dataset.world_size,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "drop_last": self.drop_last,
            "next_worker": 0,
            "batches": 0,
            "workers": [None] * workers,
            "exhausted": [False] * workers,
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the latest iteration stands: each worker's dataset state and the next worker."""
        if self._resume is not None:
            return _copy_state(self._resume)
        if self._state is None:
            return self._new_state(self.dataset.epoch, max(1, self.num_workers))
        return _copy_state(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next ``iter()`` continue the iteration ``state`` describes.

        A state of this rank with the same workers, batch size and ``drop_last`` continues the
        exact batch sequence. A state of another topology (rank, world size, workers) is taken
        as the synchronous case, every rank having consumed as many batches: each rank of the
        new job loads any one rank's state and reads its share of what the job had not
        delivered (:meth:`S3ExchangeIterableDataset.merge_states`, which also merges the states
        of every rank when progress differed; its result loads here too).
        """
        if state.get("kind") == "elastic":
            self._resume = self._elastic(state)
            return
        if state.get("version") != LOADER_STATE_VERSION:
            raise ValueError(f"not an S3ExchangeLoader state (version {state.get('version')!r})")
        if not self._same_topology(state):
            started = [w for w in state["workers"] if w is not None]
            if not started:  # nothing read yet: the epoch from its start
                self._resume = self._new_state(int(state["epoch"]), max(1, self.num_workers))
                return
            self._resume = self._elastic(S3ExchangeIterableDataset.merge_states([state]))
            return
        for key in ("batch_size", "num_workers", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: state has {key}={state[key]!r}, loader has "
                    f"{getattr(self, key)!r}"
                )
        self._resume = _copy_state(state)

    def _same_topology(self, state: dict[str, Any]) -> bool:
        """Whether ``state`` was saved by this rank of a job of this many ranks and workers."""
        dataset = self.dataset
        if state["num_workers"] != self.num_workers:
            return False
        for worker in state["workers"]:
            if worker is not None:
                saved = (worker.get("rank"), worker.get("world_size"), worker.get("balance"))
                return saved == (dataset.rank, dataset.world_size, dataset._balance)
        place = (state.get("rank", dataset.rank), state.get("world_size", dataset.world_size))
        return place == (dataset.rank, dataset.world_size)

    def _elastic(self, elastic: dict[str, Any]) -> dict[str, Any]:
        """A fresh loader state whose every worker starts from the elastic dataset state."""
        state = self._new_state(int(elastic["epoch"]), max(1, self.num_workers))
        state["workers"] = [dict(elastic) for _ in state["workers"]]
        return state


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    copied = dict(state)
    copied["workers"] = [None if s is None else dict(s) for s in state["workers"]]
    copied["exhausted"] = list(state["exhausted"])
    return copied


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, PackedBatch):
        return PackedBatch(fn(value.data), value.offsets, value.extras)
    if isinstance(value, dict):
        return {key: _map_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_map_tensors(item, fn) for item in value)
    return value


def _stop_workers(workers: list[_Worker], graceful: bool = True) -> None:
    """Stop every worker: asked to (when ``graceful``), else or then SIGTERM, then SIGKILL."""
    for worker in workers:
        if graceful:
            with contextlib.suppress(OSError, ValueError):
                worker.commands.send(("stop",))
        else:
            worker.process.terminate()
    deadline = time.monotonic() + 1.0
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.terminate()
            worker.process.join(1.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(1.0)
        for connection in (worker.commands, worker.results):
            with contextlib.suppress(OSError):
                connection.close()


class _Iteration:
    """One epoch (or the rest of one) across the workers, in DataLoader's round-robin order."""

    def __init__(self, loader: S3ExchangeLoader, resume: dict[str, Any] | None) -> None:
        self._loader = loader
        workers = loader._workers
        if resume is None:
            state = loader._new_state(loader.dataset.epoch, len(workers))
        else:
            state = _copy_state(resume)
        loader._state = state
        self._state = state
        self._finished = False
        self._copies: deque[tuple[Any, Any]] = deque()
        self._retired: list[_Ring] = []  # outgrown rings, unpinned when the epoch ends
        for index, worker in enumerate(workers):
            if not state["exhausted"][index]:
                worker.commands.send(("epoch", state["workers"][index]))

    def batches(self) -> Iterator[Any]:
        state = self._state
        workers = self._loader._workers
        try:
            while not all(state["exhausted"]):
                index = state["next_worker"]
                if state["exhausted"][index]:
                    state["next_worker"] = (index + 1) % len(workers)
                    continue
                message = self._receive(index)
                kind = message[0]
                if kind == "end":
                    state["exhausted"][index] = True
                    state["workers"][index] = message[1]
                    state["next_worker"] = (index + 1) % len(workers)
                    continue
                batch = self._batch(workers[index], message)
                state["workers"][index] = message[-1]
                state["next_worker"] = (index + 1) % len(workers)
                state["batches"] += 1
                yield batch
            self._finished = True
        finally:
            self._drain_copies(wait=True)
            for ring in self._retired:
                self._loader._unpin(ring)
            if self._loader._active is self:
                if self._finished:
                    self._loader._active = None
                else:  # failed or interrupted: the workers are mid-epoch
                    self._loader._shutdown(graceful=False)

    def _receive(self, index: int) -> tuple[Any, ...]:
        loader = self._loader
        worker = loader._workers[index]
        while True:
            ready = mpc.wait([worker.results, worker.process.sentinel], timeout=self._timeout())
            self._drain_copies(wait=False)
            if worker.results in ready:
                try:
                    message: tuple[Any, ...] = worker.results.recv()
                except (EOFError, OSError):  # gone, or gone before its ring could be fetched
                    message = ()
                if not message:
                    raise self._died(index)
                if message[0] == "ring":
                    ring = _Ring(message[1])
                    loader._pin(ring)
                    if worker.ring is not None:
                        self._retired.append(worker.ring)
                    worker.ring = ring
                    worker.received = 0
                    continue
                if message[0] == "error":
                    raise _reraise(index, message[1], message[2])
                return message
            if worker.process.sentinel in ready or not worker.process.is_alive():
                raise self._died(index)

    def _timeout(self) -> float:
        return 0.002 if self._copies else self._loader._poll

    def _died(self, index: int) -> LoaderWorkerError:
        process = self._loader._workers[index].process
        process.join(0.1)
        return LoaderWorkerError(
            f"S3ExchangeLoader worker {index} (pid {process.pid}) exited unexpectedly "
            f"with exit code {process.exitcode}"
        )

    def _batch(self, worker: _Worker, message: tuple[Any, ...]) -> Any:
        loader = self._loader
        worker.received += 1
        ring = worker.ring
        if message[0] == "whole":
            if ring is not None:
                ring.header[_RECEIVED] = worker.received
            return loader._to_device(message[1])
        _, start, end, payload, _ = message
        assert ring is not None, "a ring batch before the ring"
        array, record = ring.region(start, end)
        ring.header[_RECEIVED] = worker.received
        base = torch.from_numpy(array)
        lock = loader._lock
        weakref.finalize(array, _release, ring, record, lock)
        del array
        first = start % ring.capacity
        device = loader.device

        def make(offset: int, nbytes: int, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
            view = base[offset - first : offset - first + nbytes]
            return view.view(getattr(torch, dtype)).view(shape)

        batch = _RingUnpickler(io.BytesIO(payload), make).load()
        if device is None:
            return batch
        return self._copy(batch, device)

    def _copy(self, batch: Any, device: torch.device) -> Any:
        """Copy a batch's ring tensors to ``device``; the ring region is freed once copied."""
        if device.type != "cuda":
            return _map_tensors(batch, lambda t: t.to(device))
        loader = self._loader
        if loader._stream is None:
            loader._stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        stream = loader._stream
        current = torch.cuda.current_stream(device)
        sources: list[torch.Tensor] = []

        def to_device(tensor: torch.Tensor) -> torch.Tensor:
            sources.append(tensor)
            with torch.cuda.stream(stream):
                copied = tensor.to(device, non_blocking=True)
            copied.record_stream(current)
            return copied

        # No wait on the current stream: the copy overlaps the training step; record_stream
        # keeps each copy's memory from reuse until the current stream has used it.
        result = _map_tensors(batch, to_device)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(stream)
        current.wait_event(event)
        self._copies.append((event, sources))  # keeps the ring views alive until copied
        return result

    def _drain_copies(self, wait: bool) -> None:
        copies = self._copies
        while copies and (wait or copies[0][0].query()):
            event, _ = copies.popleft()
            if wait:
                event.synchronize()


def _reraise(index: int, exc: BaseException | None, text: str) -> BaseException:
    """The worker's exception with its traceback as a note, or a LoaderWorkerError."""
    if exc is None:
        return LoaderWorkerError(f"S3ExchangeLoader worker {index} failed:\n{text}")
    exc.add_note(f"in S3ExchangeLoader worker {index}:\n{text}")
    return exc
