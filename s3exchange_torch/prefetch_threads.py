"""The threads behind :class:`~s3exchange_torch.prefetch.Prefetcher`: a pool of daemon threads
for loose files, and one daemon thread per shard job streaming sample lists into a bounded queue.

Daemons, each checking a stop event, so closing the prefetcher ends them promptly and none can
hold up interpreter exit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from s3exchange.types import FileEntry

from .collate import Sample
from .prefetch_reads import Item
from .units import loose_sample

__all__ = ["DaemonPool", "LooseRead", "ShardRead"]

_POLL_S = 0.1
"""How often a thread blocked on a full queue looks at the stop event."""


class DaemonPool:
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


class ShardRead:
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
