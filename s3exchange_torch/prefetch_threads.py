"""The threads behind :class:`~s3exchange_torch.prefetch.Prefetcher`: a pool of daemon threads
for loose files, and a pool whose threads each read one shard job's first bytes ahead.

Daemons, each checking a stop event, so closing the prefetcher ends them promptly and none can
hold up interpreter exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from typing import Any

from s3exchange.body import ObjectStream
from s3exchange.types import FileEntry, Readable

from .collate import Sample
from .prefetch_reads import Item
from .units import loose_sample

__all__ = ["DaemonPool", "LooseRead", "ShardRead"]


class DaemonPool:
    """A minimal thread pool of daemon threads (concurrent.futures joins its threads at exit)."""

    def __init__(self, size: int, stop: threading.Event, name: str = "s3exchange-torch-io") -> None:
        self._size = size
        self._stop = stop
        self._name = name
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
            self._start()
        return future

    def start_all(self) -> None:
        """Start every thread now, where waiting for each to run costs nobody (``submit``
        starts them one at a time, as tasks come)."""
        while not self._closed and len(self._threads) < self._size:
            self._start()

    def _start(self) -> None:
        thread = threading.Thread(target=self._work, name=self._name, daemon=True)
        thread.start()
        self._threads.append(thread)

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


_DONE = object()
"""The read-ahead is over: the consumer reads on from the stream itself."""
_READ = 1 << 18
"""Bytes a read-ahead thread asks the stream for at a time: the tar reader's read size."""


class ShardRead:
    """One shard job: a thread of the prefetcher's shard pool opens the archive's GET and reads
    its first ``ahead`` bytes; the consumer parses all of them, in its own thread, then reads
    the rest itself.

    Pooled, not a thread per shard: ``Thread.start`` waits until the new thread has run, and a
    worker's consumer spent 20-24 ms of a 350 ms epoch there (20 shards, one process, 2 cores).

    The thread only waits on its socket (the GIL released), so the parsing consumer keeps the
    GIL. A thread that parsed its read-ahead too took the GIL from the consumer at every
    socket read: one worker's shuffled path, in process on 2 cores, cost 1.23 CPU-s per GB
    from SeaweedFS against 1.06 now (medians of 6 alternating process pairs, 100 KiB
    members). The read-ahead still hides the GET's latency and its first bytes' transfer.
    """

    def __init__(
        self,
        opener: Callable[[], ObjectStream],
        parse: Callable[[Readable], Generator[list[Item], None, None]],
        stop: threading.Event,
        ahead: int,
        submit: Callable[[Callable[[], None]], object],
    ) -> None:
        """``opener`` opens the GET (the thread closes what it opens unless the consumer took
        it); ``parse`` reads samples from a stream; ``ahead``: bytes read ahead; ``submit``
        runs the read-ahead on a thread (:meth:`DaemonPool.submit`)."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # at most ahead / _READ + 3
        self._parse = parse
        self._stop = stop
        self._ahead = ahead
        self._lock = threading.Lock()
        self._reading = True  # the thread still reads ahead
        self._left = False  # the consumer has left
        self._closed = False
        submit(lambda: self._run(opener))

    def _run(self, opener: Callable[[], ObjectStream]) -> None:
        try:
            stream = opener()
        except BaseException as exc:
            self._queue.put(exc)
            return
        self._queue.put(stream)
        try:
            ahead = self._ahead
            while ahead > 0 and not (self._stop.is_set() or self._left):
                chunk = stream.read(_READ)
                self._queue.put(chunk)
                if not chunk:
                    break
                ahead -= len(chunk)
        except BaseException as exc:
            self._queue.put(exc)
        finally:
            self._queue.put(_DONE)
            with self._lock:
                self._reading = False
                close = self._left or self._stop.is_set()  # no consumer reads on
            if close:
                self._close(stream)

    def _take(self) -> Any:
        """The next thing the thread put: the stream, a chunk, the end of the read-ahead or
        an error."""
        return self._queue.get()

    def chunks(self) -> Iterator[list[Item]]:
        opened = self._take()
        if isinstance(opened, BaseException):
            raise opened
        try:
            yield from self._parse(_ReadAhead(self, opened))
        finally:
            with self._lock:
                self._left = True
                close = not self._reading
            if close:
                self._close(opened)

    def _close(self, stream: ObjectStream) -> None:
        """Close the stream once, from whichever side is last to let go of it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        stream.close()


class _ReadAhead:
    """The shard's stream as its consumer sees it: the thread's chunks, then the stream."""

    __slots__ = ("_direct", "_read", "_stream")

    def __init__(self, read: ShardRead, stream: ObjectStream) -> None:
        self._read = read
        self._stream = stream
        self._direct = False

    def read(self, n: int = -1) -> bytes:
        """The thread's next chunk (of ``_READ`` bytes, the size the tar reader asks for;
        ``b""`` at the end), then up to ``n`` bytes read from the stream."""
        if not self._direct:
            item = self._read._take()
            if item is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                return item  # type: ignore[no-any-return]
            self._direct = True
        return self._stream.read(n)


class LooseRead:
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
