"""Fetching one worker's samples in plan order, with bounded read-ahead in background threads.

The worker's plan becomes a sequence of :class:`Job` (one unit segment each, with the members it
still needs). :class:`Prefetcher` keeps a window of jobs in flight, in plan order:

- a shard job gets a thread of its own that streams the archive's GET body through
  :meth:`~s3exchange.S3ExchangeStore.iter_shard_members` and hands over *lists* of samples
  (at most ``chunk_samples`` samples or ``chunk_bytes`` bytes) through a queue of
  ``queue_chunks`` lists, so the consumer pays one thread hand-off per list, not per sample, and
  a shard's memory is bounded by the queue, never by its size. At most ``1 + prefetch_shards``
  shards are open at once (the one being consumed and the read-ahead);
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
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeAlias

from s3exchange import S3ExchangeError, S3ExchangeStore, ShardReadError, TransferConfig
from s3exchange.samples import key_and_field
from s3exchange.shard import ShardMember
from s3exchange.types import FileEntry, ShardEntry

from .collate import Sample
from .plan import Segment
from .shuffle import ResumePoint
from .units import GroupBy, Unit, loose_sample, member_path

__all__ = [
    "Job",
    "Prefetcher",
    "SampleTooLargeError",
    "Wanted",
    "plan_jobs",
]

_POLL_S = 0.1
"""How often a thread blocked on a full queue looks at the stop event."""

Item: TypeAlias = tuple[Any, Any]
"""A :class:`~s3exchange_torch.collate.Sample` per file, or ``(sample dict, entries)`` when
grouping by key."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """Which member indices of a segment are fetched: ``explicit`` ones and all from ``tail``."""

    explicit: frozenset[int] = frozenset()
    tail: int = 0

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and (index >= self.tail or index in self.explicit)


@dataclass(frozen=True, slots=True)
class Job:
    """Samples ``[start, stop)`` of ``unit`` (members, or groups when grouping), as ``wanted``."""

    unit: Unit
    start: int
    stop: int
    wanted: Wanted = Wanted()

    @property
    def expected(self) -> int:
        """How many samples this job delivers."""
        return len(self.wanted.explicit) + max(0, self.stop - max(self.wanted.tail, self.start))


_START = ResumePoint(0)


def plan_jobs(
    units: Sequence[Unit], segments: Iterable[Segment], point: ResumePoint = _START
) -> Iterator[Job]:
    """Jobs for a worker's segments, fetching only positions ``point`` says are still needed.

    A worker's positions number its segments' samples consecutively. Needed are the buffered
    ``point.pending`` and everything from ``point.arrived`` on; jobs that need nothing are left
    out, so a resumed epoch never downloads what it already delivered. Consecutive segments of
    one unit in increasing member order (what an elastic resume hands a worker: the members an
    old worker's shuffle buffer held, one segment each) become one job, so the shard is read
    once, not once per member.
    """
    pending = sorted(point.pending)
    next_pending = 0
    base = 0
    run: list[tuple[Segment, list[int], int]] = []  # segments of one unit, wanted members
    for segment in segments:
        end = base + segment.size
        explicit: list[int] = []
        while next_pending < len(pending) and pending[next_pending] < end:
            explicit.append(segment.start + pending[next_pending] - base)
            next_pending += 1
        tail = segment.start + max(0, point.arrived - base)
        previous = run[-1][0] if run else None
        if previous is not None and (
            previous.unit != segment.unit or segment.start < previous.stop
        ):
            job = _job(units, run)
            if job.expected:
                yield job
            run = []
        run.append((segment, explicit, tail))
        base = end
    if run:
        job = _job(units, run)
        if job.expected:
            yield job


def _job(units: Sequence[Unit], run: list[tuple[Segment, list[int], int]]) -> Job:
    """One job for segments of one unit: the last one's tail stays a tail, the members wanted
    before it (in earlier segments, or buffered) are listed."""
    explicit: list[int] = []
    for segment, buffered, tail in run[:-1]:
        explicit += buffered
        explicit += range(max(tail, segment.start), segment.stop)
    last, buffered, tail = run[-1]
    explicit += buffered
    first = run[0][0]
    return Job(units[last.unit], first.start, last.stop, Wanted(frozenset(explicit), tail))


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------


class _DaemonPool:
    """A minimal thread pool of daemon threads (concurrent.futures joins its threads at exit)."""

    def __init__(self, size: int, stop: threading.Event) -> None:
        self._size = size
        self._stop = stop
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()
        if self._closed:
            future.cancel()
            return future
        self._tasks.put((future, fn))
        if len(self._threads) < self._size:
            thread = threading.Thread(target=self._work, name="s3exchange-torch-io", daemon=True)
            thread.start()
            self._threads.append(thread)
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn = task
            if self._stop.is_set() or not future.set_running_or_notify_cancel():
                future.cancel()
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Cancel queued tasks and let every thread exit after its current request (idempotent)."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:  # never a sentinel: those are only put below, once
                task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        self._threads.clear()


_END = object()


class _ShardRead:
    """One shard job streamed by its own thread into a bounded queue of sample lists."""

    def __init__(
        self, reader: Callable[[], Iterator[list[Item]]], stop: threading.Event, queue_chunks: int
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(queue_chunks)
        self._stop = stop
        self._reader = reader
        thread = threading.Thread(target=self._run, name="s3exchange-torch-shard", daemon=True)
        thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._reader():
                if not self._put(chunk):
                    return
            self._put(_END)
        except BaseException as exc:
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
            except queue.Full:
                continue
            return True
        return False

    def chunks(self) -> Iterator[list[Item]]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item


class _LooseRead:
    """One loose unit: a future per file (several when grouping by key)."""

    __slots__ = ("entries", "futures", "grouped")

    def __init__(
        self, entries: tuple[FileEntry, ...], futures: list[Future[bytes]], grouped: bool
    ) -> None:
        self.entries = entries
        self.futures = futures
        self.grouped = grouped

    def done(self) -> bool:
        return all(future.done() for future in self.futures)

    def result(self) -> Item:
        if not self.grouped:
            return Sample(self.futures[0].result(), self.entries[0])
        datas = [future.result() for future in self.futures]
        return loose_sample(self.entries, datas), list(self.entries)


class SampleTooLargeError(S3ExchangeError):
    """A shard member or loose file larger than the dataset's ``max_sample_bytes``."""

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | None = None,
        size: int | None = None,
        limit: int | None = None,
        member_path: str | None = None,
    ) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        self.member_path = member_path
        if message is None:
            where = f"shard {key!r} member {member_path!r}" if member_path else f"{key!r}"
            message = (
                f"{where}: {size} bytes exceed max_sample_bytes={limit} "
                "(a sample is held whole in memory; raise the limit to read it)"
            )
        super().__init__(message)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _read_file(store: S3ExchangeStore, entry: FileEntry, verify: bool | None, limit: int) -> bytes:
    """One loose file, whole, in one GET (the store's fast path: ~10x less CPU than botocore)
    when its manifest size is within ``limit``; otherwise a stream whose size is checked first
    (a file without ``size_bytes``, a shard member listed as a file)."""
    size = entry.get("size_bytes")
    member = entry.get("member_path") if "archive_key" in entry else None
    key = entry["archive_key"] if member else entry["key"]
    if size is not None and size > limit:
        raise SampleTooLargeError(key=key, size=size, limit=limit, member_path=member)
    if size is not None and member is None:
        return store.read_file_entry(entry, verify=verify)
    with store.open_file_entry(entry, verify=verify) as stream:
        size = getattr(stream, "size", None)
        if size is not None and size > limit:
            raise SampleTooLargeError(key=key, size=size, limit=limit, member_path=member)
        return stream.read()


def _member_data(member: ShardMember, archive_key: str, limit: int) -> bytes:
    """A member's data, refused from its header size (checked against the internal manifest)
    before any of it is read when it exceeds ``limit``."""
    size = member.stream.size
    if size > limit:
        raise SampleTooLargeError(
            key=archive_key, size=size, limit=limit, member_path=member.stream.member_path
        )
    return member.read()


def _shard_members(
    store: S3ExchangeStore,
    job: Job,
    verify: bool | None,
    stop: threading.Event,
    config: TransferConfig,
) -> Iterator[list[Item]]:
    """A shard job's ``(data, entry)`` samples, in lists; stops reading after the last one."""
    entry: ShardEntry = job.unit  # type: ignore[assignment]
    start, end, wanted = job.start, job.stop, job.wanted
    remaining = job.expected
    members = store.iter_shard_members(
        entry, select=lambda i, _: start <= i < end and i in wanted, verify=verify
    )
    chunk: list[Item] = []
    size = 0
    try:
        for member in members:
            data = _member_data(member, entry["archive_key"], config.max_sample_bytes)
            chunk.append(Sample(data, member.entry))
            size += len(data)
            remaining -= 1
            if not remaining or stop.is_set():
                break
            if len(chunk) >= config.chunk_samples or size >= config.chunk_bytes:
                yield chunk
                chunk, size = [], 0
    finally:
        members.close()  # closes the GET body without reading the rest of the archive
    if remaining and not stop.is_set():
        raise ShardReadError(
            archive_key=entry["archive_key"], reason=f"ended {remaining} members short of the plan"
        )
    if chunk:
        yield chunk


class _GroupSelector:
    """``select`` for a grouped shard job: numbers groups of consecutive equal keys.

    ``iter_shard`` calls ``select`` for member ``i`` right before it yields it, so ``group``
    is the group of the member just yielded. The first member past the job's last group is
    selected too (``sentinel``): seeing it tells the reader its last group is complete
    without reading on to the end of the archive.
    """

    def __init__(self, job: Job) -> None:
        self._job = job
        self._key: str | None = None
        self.group = -1
        self.field = ""
        self.sentinel = -1

    def __call__(self, index: int, entry: FileEntry) -> bool:
        split = key_and_field(member_path(entry))
        if split is None:
            return False  # no extension: part of no sample, as webdataset skips it
        key, self.field = split
        if key != self._key:
            self._key = key
            self.group += 1
        job = self._job
        if self.group >= job.stop:
            self.sentinel = index
            return True
        return self.group >= job.start and self.group in job.wanted


def _shard_groups(
    store: S3ExchangeStore,
    job: Job,
    verify: bool | None,
    stop: threading.Event,
    config: TransferConfig,
) -> Iterator[list[Item]]:
    """A grouped shard job's ``(sample, entries)`` samples, in lists."""
    entry: ShardEntry = job.unit  # type: ignore[assignment]
    archive = entry["archive_key"]
    selector = _GroupSelector(job)
    remaining = job.expected
    members = store.iter_shard_members(entry, select=selector, verify=verify)
    chunk: list[Item] = []
    size = 0
    group = -1
    sample: dict[str, Any] = {}
    entries: list[FileEntry] = []
    try:
        for member in members:
            if member.index == selector.sentinel or stop.is_set():
                break
            if selector.group != group:
                if entries:
                    chunk.append((sample, entries))
                    remaining -= 1
                    if len(chunk) >= config.chunk_samples or size >= config.chunk_bytes:
                        yield chunk
                        chunk, size = [], 0
                group = selector.group
                key = key_and_field(member_path(member.entry))
                sample = {"__key__": key[0] if key else "", "__url__": archive}
                entries = []
            data = _member_data(member, archive, config.max_sample_bytes)
            sample[selector.field] = data
            entries.append(member.entry)
            size += len(data)
    finally:
        members.close()
    if entries:
        chunk.append((sample, entries))
        remaining -= 1
    if remaining and not stop.is_set():
        raise ShardReadError(
            archive_key=archive, reason=f"ended {remaining} samples short of the plan"
        )
    if chunk:
        yield chunk


# --------------------------------------------------------------------------------------------
# The window
# --------------------------------------------------------------------------------------------


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
        self._pool = _DaemonPool(max(1, io_threads), self._stop)
        self._window: deque[_ShardRead | _LooseRead] = deque()
        self._shards = 0
        self._files = 0
        # One shard stream until the first chunk is in hand, then the read-ahead: three streams
        # from the start split the first shard's bandwidth and CPU, and a forked worker's
        # first sample took 37 ms instead of 20 (2 cores, 100 KiB members).
        self._max_shards = 1
        self._read_ahead = 1 + config.prefetch_shards
        self._max_files = 2 * max(1, io_threads)

    def chunks(self) -> Iterator[list[Item]]:
        """Lists of samples in job order; closes the threads when done or abandoned."""
        try:
            self._fill()
            window = self._window
            while window:
                head = window[0]
                if isinstance(head, _ShardRead):
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
                while window and isinstance(window[0], _LooseRead) and window[0].done():
                    chunk.append(self._pop_loose(window[0]))
                self._fill()
                yield chunk
        finally:
            self.close()

    def _pop_loose(self, head: _LooseRead) -> Item:
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
                reader = self._reader(job)
                self._window.append(_ShardRead(reader, self._stop, self._config.queue_chunks))
                self._shards += 1
            else:
                entries = job.unit if isinstance(job.unit, tuple) else (job.unit,)
                if self._files and self._files + len(entries) > self._max_files:
                    return
                futures = [self._pool.submit(self._fetch(entry)) for entry in entries]
                self._window.append(_LooseRead(entries, futures, self._group_by is not None))
                self._files += len(entries)
            self._next = next(self._jobs, None)

    def _reader(self, job: Job) -> Callable[[], Iterator[list[Item]]]:
        store, verify, stop, config = self._store, self._verify, self._stop, self._config
        read = _shard_members if self._group_by is None else _shard_groups
        return lambda: read(store, job, verify, stop, config)

    def _fetch(self, entry: FileEntry) -> Callable[[], bytes]:
        store, verify, limit = self._store, self._verify, self._config.max_sample_bytes
        return lambda: _read_file(store, entry, verify, limit)

    def close(self) -> None:
        """Stop every thread (each finishes at most its current request) and drop the window."""
        self._stop.set()
        self._pool.shutdown()
        for read in self._window:
            if isinstance(read, _LooseRead):
                for future in read.futures:
                    future.cancel()
        self._window.clear()
        self._next = None
