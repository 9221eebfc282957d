"""``S3ExchangeLoader``: batches from worker processes through shared-memory rings, not pickles.

A ``DataLoader`` worker hands each batch to the main process pickled through a pipe, and every
tensor in it through a freshly created shared-memory segment; that hand-over tops out at
0.65-0.9 GB/s on a 16-core node, a quarter of what the storage delivers (issue 9's table).
Here each worker owns a ring of shared memory (an *arena*), made with its first batch (sized
from the manifest's mean sample, or the batch if larger) and kept across epochs:

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

This module is the main process (start, iterate, copy to the device, state: ~550 lines that
share one iteration's bookkeeping); the ring's bookkeeping is :mod:`.ring`, the worker process
:mod:`.loader_worker`, the collation into a ring :func:`.collate.collate_into`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing.connection as mpc
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.multiprocessing as tmp

from .collate import PackedBatch, collate_into
from .dataset import S3ExchangeIterableDataset
from .loader_worker import WorkerArgs, worker_loop
from .ring import ALIGN, RECEIVED, Ring, RingUnpickler

__all__ = ["LOADER_STATE_VERSION", "LoaderWorkerError", "S3ExchangeLoader"]

log = logging.getLogger(__name__)

LOADER_STATE_VERSION = 1
MIN_RING_BYTES = 16 << 20
"""Smallest ring: a few 100 KiB-sample batches of 64."""


class LoaderWorkerError(RuntimeError):
    """A loader worker process died or could not report its error."""


class _Worker:
    """One worker process and its pipes and rings, as the main process sees them."""

    def __init__(self, process: Any, commands: mpc.Connection, results: mpc.Connection) -> None:
        self.process = process
        self.commands = commands
        self.results = results
        self.ring: Ring | None = None  # the worker sends its ring with its first batch
        self.received = 0


def _release(ring: Ring, record: list[Any], lock: threading.Lock) -> None:
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
        in_order: batches in DataLoader's round-robin order over the workers. ``False`` (as
            ``DataLoader(in_order=False)``): the next batch is the first one ready, preferring
            that order, so a slow worker (a transform, a shard's first bytes) does not stall
            the others. Each worker's batches keep their order, so :meth:`state_dict` still
            resumes every worker exactly where it was; only the interleaving differs.

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
        in_order: bool = True,
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
        self.in_order = in_order
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

    def _start_workers(self, first: list[tuple[Any, ...] | None]) -> None:
        """Start the workers, each with its first command (``first[worker_id]``)."""
        self.dataset.resolve()
        capacity = self._ring_bytes()
        parent = os.getpid()
        for worker_id in range(self.num_workers):
            commands_out, commands_in = self._context.Pipe(duplex=False)
            results_out, results_in = self._context.Pipe(duplex=False)
            args = WorkerArgs(
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
                first=first[worker_id],
            )
            process = self._context.Process(  # type: ignore[attr-defined]
                target=worker_loop,
                args=(args,),
                name=f"s3exchange-loader-{worker_id}",
                daemon=True,
            )
            process.start()
            commands_out.close()
            results_in.close()
            self._workers.append(_Worker(process, commands_in, results_out))

    def _pin(self, ring: Ring) -> None:
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

    def _unpin(self, ring: Ring) -> None:
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
        start = not self._workers or not all(w.process.is_alive() for w in self._workers)
        if start:
            self._shutdown(graceful=False)
        iteration = _Iteration(self, resume, start)
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
        return value.with_data(fn(value.data))
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
    """One epoch (or the rest of one) across the workers, in DataLoader's round-robin order
    (or, with ``in_order=False``, each batch from the first worker that has one ready)."""

    def __init__(
        self, loader: S3ExchangeLoader, resume: dict[str, Any] | None, start: bool
    ) -> None:
        """``start``: start the loader's workers, each given its epoch as it starts."""
        self._loader = loader
        if resume is None:
            state = loader._new_state(loader.dataset.epoch, loader.num_workers)
        else:
            state = _copy_state(resume)
        loader._state = state
        self._state = state
        self._finished = False
        self._copies: deque[tuple[Any, Any]] = deque()
        self._retired: list[Ring] = []  # outgrown rings, unpinned when the epoch ends
        commands = [
            None if done else ("epoch", worker_state)
            for done, worker_state in zip(state["exhausted"], state["workers"], strict=True)
        ]
        if start:
            loader._start_workers(commands)
            return
        for worker, command in zip(loader._workers, commands, strict=True):
            if command is not None:
                worker.commands.send(command)

    def batches(self) -> Iterator[Any]:
        state = self._state
        workers = self._loader._workers
        try:
            while not all(state["exhausted"]):
                index = state["next_worker"]
                if state["exhausted"][index]:
                    state["next_worker"] = (index + 1) % len(workers)
                    continue
                if not self._loader.in_order:
                    index = self._first_ready(index)
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
                    ring = Ring(message[1])
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

    def _first_ready(self, preferred: int) -> int:
        """The first worker in round-robin order from ``preferred`` whose pipe has a message
        (or that is gone: receiving from it then says so); waits for one."""
        workers = self._loader._workers
        exhausted = self._state["exhausted"]
        count = len(workers)
        order = [i % count for i in range(preferred, preferred + count) if not exhausted[i % count]]
        owner: dict[Any, int] = {}
        for index in order:
            owner[workers[index].results] = owner[workers[index].process.sentinel] = index
        while True:
            ready = {owner[item] for item in mpc.wait(list(owner), timeout=self._timeout())}
            if ready:
                return next(index for index in order if index in ready)
            self._drain_copies(wait=False)
            for index in order:
                if not workers[index].process.is_alive():
                    return index

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
                ring.header[RECEIVED] = worker.received
            return loader._to_device(message[1])
        _, start, end, payload, _ = message
        assert ring is not None, "a ring batch before the ring"
        array, record = ring.region(start, end)
        ring.header[RECEIVED] = worker.received
        base = torch.from_numpy(array)
        lock = loader._lock
        weakref.finalize(array, _release, ring, record, lock)
        del array
        first = start % ring.capacity
        device = loader.device

        def make(offset: int, nbytes: int, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
            view = base[offset - first : offset - first + nbytes]
            return view.view(getattr(torch, dtype)).view(shape)

        batch = RingUnpickler(io.BytesIO(payload), make).load()
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
