"""A shard's read-ahead thread opens the GET and reads its first bytes; the consumer parses them
and reads the rest itself: the order, errors and closing of the stream are the same on both
sides of the hand-over.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import pytest

from s3exchange_torch.prefetch_threads import DaemonPool, ShardRead

_CHUNK = 1000
"""Bytes each read of the stand-in stream returns."""


class _Stream:
    """A GET body's stand-in: ``chunks`` numbered chunks, noting the thread of each read."""

    def __init__(self, chunks: int, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.read_on: list[str] = []
        self.closed = threading.Event()
        self.close_on: list[str] = []
        self._next = 0

    def read(self, size: int = -1, /) -> bytes:
        assert not self.closed.is_set(), "read after close"
        if self._next == self.fail_at:
            raise OSError(f"chunk {self._next} broke")
        self.read_on.append(threading.current_thread().name)
        if self._next == self.chunks:
            return b""
        self._next += 1
        return bytes([self._next - 1]) * _CHUNK

    def close(self) -> None:
        self.close_on.append(threading.current_thread().name)
        self.closed.set()


def _parse(stream: Any) -> Generator[list[Any], None, None]:
    """What ``shard_members`` does, simplified: a one-sample list per chunk read."""
    while chunk := stream.read(_CHUNK):
        yield [(chunk[0], None)]


def _numbers(chunks: list[list[Any]]) -> list[int]:
    return [sample[0] for chunk in chunks for sample in chunk]


_THREAD = "s3exchange-torch-shard"


_POOLS: list[DaemonPool] = []


def _submit() -> Any:
    """A shard pool's ``submit``, as the prefetcher makes one."""
    pool = DaemonPool(1, threading.Event(), _THREAD)
    _POOLS.append(pool)
    return pool.submit


@pytest.fixture(autouse=True)
def _shut_pools() -> Generator[None, None, None]:
    """Each test's pool threads end with it (later tests count the threads left alive)."""
    yield
    while _POOLS:
        _POOLS.pop().shutdown()


def test_the_thread_reads_ahead_then_the_consumer_reads_on() -> None:
    stream = _Stream(6)
    read = ShardRead(lambda: stream, _parse, threading.Event(), ahead=2 * _CHUNK, submit=_submit())
    assert _numbers(list(read.chunks())) == [0, 1, 2, 3, 4, 5]
    consumer = threading.current_thread().name
    assert stream.read_on == [_THREAD] * 2 + [consumer] * 5  # the 5th: the end
    assert stream.closed.wait(5)
    assert len(stream.close_on) == 1


def test_a_short_shard_ends_on_the_thread() -> None:
    stream = _Stream(2)
    read = ShardRead(lambda: stream, _parse, threading.Event(), ahead=4 * _CHUNK, submit=_submit())
    assert _numbers(list(read.chunks())) == [0, 1]
    assert stream.read_on == [_THREAD] * 3
    assert stream.closed.wait(5)
    assert len(stream.close_on) == 1


@pytest.mark.parametrize("fail_at", [1, 4], ids=["ahead", "after-hand-over"])
def test_a_failing_read_reaches_the_consumer_unchanged(fail_at: int) -> None:
    stream = _Stream(6, fail_at=fail_at)
    read = ShardRead(lambda: stream, _parse, threading.Event(), ahead=2 * _CHUNK, submit=_submit())
    got: list[list[Any]] = []
    with pytest.raises(OSError, match=f"chunk {fail_at} broke"):
        for chunk in read.chunks():
            got.append(chunk)
    assert _numbers(got) == list(range(fail_at))
    assert stream.closed.wait(5)


def test_a_failing_open_reaches_the_consumer_unchanged() -> None:
    def refused() -> Any:
        raise PermissionError("AccessDenied on shard-0.tar")

    read = ShardRead(refused, _parse, threading.Event(), ahead=_CHUNK, submit=_submit())
    with pytest.raises(PermissionError, match=r"AccessDenied on shard-0\.tar"):
        list(read.chunks())


def test_leaving_after_the_hand_over_closes_the_stream_on_the_consumer() -> None:
    stream = _Stream(6)
    read = ShardRead(lambda: stream, _parse, threading.Event(), ahead=_CHUNK, submit=_submit())
    chunks = read.chunks()
    assert _numbers([next(chunks), next(chunks)]) == [0, 1]  # the second read by the consumer
    assert not stream.closed.is_set()
    chunks.close()
    assert stream.close_on == [threading.current_thread().name]


def test_leaving_during_the_read_ahead_stops_it_and_closes_the_stream_on_the_thread() -> None:
    gate = threading.Event()
    stream = _Stream(100)
    read_chunk = stream.read

    def second_read_waits(size: int = -1, /) -> bytes:
        if stream.read_on:
            gate.wait(5)
        return read_chunk(size)

    stream.read = second_read_waits  # type: ignore[method-assign]
    ahead = 100 * _CHUNK
    read = ShardRead(lambda: stream, _parse, threading.Event(), ahead=ahead, submit=_submit())
    chunks = read.chunks()
    assert _numbers([next(chunks)]) == [0]
    chunks.close()  # the consumer leaves with the thread still reading ahead
    assert not stream.closed.is_set()
    gate.set()
    assert stream.closed.wait(5)
    assert stream.close_on == [_THREAD]
    assert stream.read_on == [_THREAD] * 2  # it stopped reading ahead


def test_a_stop_while_opening_closes_the_stream_on_the_thread() -> None:
    stop, go = threading.Event(), threading.Event()
    stream = _Stream(6)

    def slow() -> Any:
        go.wait(5)
        return stream

    ShardRead(slow, _parse, stop, ahead=4 * _CHUNK, submit=_submit())
    stop.set()  # the consumer closed the prefetcher while the GET was being opened
    go.set()
    assert stream.closed.wait(5)
    assert stream.close_on == [_THREAD]
    assert stream.read_on == []
