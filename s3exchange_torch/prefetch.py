"""Fetching one worker's samples in plan order, with bounded read-ahead in background threads.

The worker's plan becomes a sequence of :class:`Job` (one unit segment each, with the members it
still needs). :class:`Prefetcher` keeps a window of jobs in flight, in plan order:

- a shard job gets a thread of the shard pool (``1 + prefetch_shards`` daemon threads, all
  started with the first shard job) that opens the archive's GET body and reads its first
  ``queue_chunks x chunk_bytes`` bytes into a queue as they arrive; the consumer parses them
  through :meth:`~s3exchange.S3ExchangeStore.iter_shard_members` when it gets there, in
  *lists* of samples (at most ``chunk_samples`` samples or ``chunk_bytes`` bytes), then reads
  the rest of the stream itself. The thread only waits on its socket, so it never takes the
  GIL from the parsing consumer for long; a shard's memory is bounded by the read-ahead,
  never by its size. At most ``1 + prefetch_shards`` shards are open at once (the one being
  consumed and the read-ahead);
- a loose file job is a future on a pool of ``io_threads`` daemon threads; up to
  ``2 * io_threads`` loose files are requested ahead, so per-request latency overlaps instead
  of adding up, while results are still consumed strictly in plan order.

The sizes are the store's :class:`~s3exchange.config.TransferConfig` (whose docstring gives the
memory they imply), as the dataset resolved it.

Every thread is a daemon and checks a stop event between members and while waiting on a full
queue, so :meth:`Prefetcher.close` (called when the consuming generator finishes, raises, is
closed or is garbage-collected) ends them promptly and none can hold up interpreter exit. An
error in a thread (a missing object, a corrupt archive) is re-raised, unchanged, in the
consumer when it reaches that job.

The jobs are planned in :mod:`~s3exchange_torch.prefetch_jobs`, read in
:mod:`~s3exchange_torch.prefetch_reads`, on the threads of
:mod:`~s3exchange_torch.prefetch_threads`; this module keeps the window in plan order and
re-exports their public names.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator

from s3exchange import S3ExchangeStore, TransferConfig
from s3exchange.types import FileEntry, ShardEntry

from .prefetch_jobs import Job, Wanted, plan_jobs
from .prefetch_reads import Item, SampleTooLargeError, read_file, shard_groups, shard_members
from .prefetch_threads import DaemonPool, LooseRead, ShardRead
from .units import GroupBy

__all__ = [
    "Item",
    "Job",
    "Prefetcher",
    "SampleTooLargeError",
    "Wanted",
    "plan_jobs",
]


class Prefetcher:
    """Runs a worker's jobs ahead of the consumer and yields their samples in job order."""

    def __init__(
        self,
        store: S3ExchangeStore,
        jobs: Iterable[Job],
        *,
        group_by: GroupBy = None,
        io_threads: int = 16,
        verify: bool | None = None,
        config: TransferConfig | None = None,
    ) -> None:
        """``io_threads`` is the number resolved for this prefetcher; the other sizes (shard
        read-ahead, chunks, queue, largest sample) are ``config``'s."""
        self._store = store
        self._config = config = config or TransferConfig()
        self._jobs = iter(jobs)
        self._next: Job | None = next(self._jobs, None)
        self._group_by = group_by
        self._verify = verify
        self._stop = threading.Event()
        self._pool = DaemonPool(max(1, io_threads), self._stop)
        self._read_ahead = 1 + config.prefetch_shards
        self._shard_pool = DaemonPool(self._read_ahead, self._stop, "s3exchange-torch-shard")
        self._window: deque[ShardRead | LooseRead] = deque()
        self._shards = 0
        self._files = 0
        # One shard stream until the first chunk is in hand, then the read-ahead: three streams
        # from the start split the first shard's bandwidth and CPU, and a forked worker's
        # first sample took 37 ms instead of 20 (2 cores, 100 KiB members).
        self._max_shards = 1
        self._max_files = 2 * max(1, io_threads)

    def chunks(self) -> Iterator[list[Item]]:
        """Lists of samples in job order; closes the threads when done or abandoned."""
        try:
            self._fill()
            window = self._window
            while window:
                head = window[0]
                if isinstance(head, ShardRead):
                    for chunk in head.chunks():
                        if self._max_shards < self._read_ahead:  # the first chunk is here
                            self._max_shards = self._read_ahead
                            self._fill()
                        yield chunk
                    window.popleft()
                    self._shards -= 1
                    self._fill()
                    continue
                chunk = [self._pop_loose(head)]
                while window and isinstance(window[0], LooseRead) and window[0].done():
                    chunk.append(self._pop_loose(window[0]))
                self._fill()
                yield chunk
        finally:
            self.close()

    def _pop_loose(self, head: LooseRead) -> Item:
        item = head.result()
        self._window.popleft()
        self._files -= len(head.futures)
        return item

    def _fill(self) -> None:
        """Start jobs, in order, while the shard and loose budgets allow."""
        while (job := self._next) is not None:
            if isinstance(job.unit, dict) and job.unit["kind"] == "shard":
                if self._shards >= self._max_shards:
                    return
                if not self._shards:
                    self._shard_pool.start_all()  # before the first GET, not at its first chunk
                self._window.append(self._shard_read(job))
                self._shards += 1
            else:
                entries = job.unit if isinstance(job.unit, tuple) else (job.unit,)
                if self._files and self._files + len(entries) > self._max_files:
                    return
                futures = [self._pool.submit(self._fetch(entry)) for entry in entries]
                self._window.append(LooseRead(entries, futures, self._group_by is not None))
                self._files += len(entries)
            self._next = next(self._jobs, None)

    def _shard_read(self, job: Job) -> ShardRead:
        store, verify, stop, config = self._store, self._verify, self._stop, self._config
        entry: ShardEntry = job.unit  # type: ignore[assignment]
        read = shard_members if self._group_by is None else shard_groups
        return ShardRead(
            lambda: store.open_shard(entry),
            lambda stream: read(store, job, verify, stop, config, stream),
            stop,
            config.queue_chunks * config.chunk_bytes,
            self._shard_pool.submit,
        )

    def _fetch(self, entry: FileEntry) -> Callable[[], bytes]:
        store, verify, limit = self._store, self._verify, self._config.max_sample_bytes
        return lambda: read_file(store, entry, verify, limit)

    def close(self) -> None:
        """Stop every thread (each finishes at most its current request) and drop the window."""
        self._stop.set()
        self._pool.shutdown()
        self._shard_pool.shutdown()
        for read in self._window:
            if isinstance(read, LooseRead):
                for future in read.futures:
                    future.cancel()
        self._window.clear()
        self._next = None
