"""A shard's read-ahead thread reads ``queue_chunks`` lists, then the consumer reads the rest
itself: the order, errors and closing of the stream are the same on both sides of the hand-over.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import pytest

from s3exchange_torch.prefetch_threads import ShardRead


class _Stream:
    """A shard reader's stand-in: numbered one-sample chunks, noting where each was read."""

    def __init__(self, chunks: int, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.read_on: list[str] = []
        self.closed = threading.Event()

    def __call__(self) -> Generator[list[Any], None, None]:
        try:
            for i in range(self.chunks):
                if i == self.fail_at:
                    raise OSError(f"chunk {i} broke")
                self.read_on.append(threading.current_thread().name)
                yield [(i, None)]
        finally:
            self.closed.set()


def _numbers(chunks: list[list[Any]]) -> list[int]:
    return [sample[0] for chunk in chunks for sample in chunk]


def test_the_thread_reads_queue_chunks_ahead_then_the_consumer_reads_on() -> None:
    stream = _Stream(6)
    read = ShardRead(stream, threading.Event(), queue_chunks=2)
    assert _numbers(list(read.chunks())) == [0, 1, 2, 3, 4, 5]
    consumer = threading.current_thread().name
    assert stream.read_on == ["s3exchange-torch-shard"] * 2 + [consumer] * 4
    assert stream.closed.is_set()


def test_a_short_shard_ends_on_the_thread() -> None:
    stream = _Stream(2)
    read = ShardRead(stream, threading.Event(), queue_chunks=4)
    assert _numbers(list(read.chunks())) == [0, 1]
    assert stream.read_on == ["s3exchange-torch-shard"] * 2
    assert stream.closed.wait(5)


@pytest.mark.parametrize("fail_at", [1, 4], ids=["ahead", "after-hand-over"])
def test_a_failing_read_reaches_the_consumer_unchanged(fail_at: int) -> None:
    stream = _Stream(6, fail_at=fail_at)
    read = ShardRead(stream, threading.Event(), queue_chunks=2)
    got: list[list[Any]] = []
    with pytest.raises(OSError, match=f"chunk {fail_at} broke"):
        for chunk in read.chunks():
            got.append(chunk)
    assert _numbers(got) == list(range(fail_at))
    assert stream.closed.wait(5)


def test_leaving_after_the_hand_over_closes_the_stream() -> None:
    stream = _Stream(6)
    read = ShardRead(stream, threading.Event(), queue_chunks=1)
    chunks = read.chunks()
    assert _numbers([next(chunks), next(chunks)]) == [0, 1]  # the second read by the consumer
    assert not stream.closed.is_set()
    chunks.close()
    assert stream.closed.is_set()


def test_a_stop_while_reading_ahead_closes_the_stream_on_the_thread() -> None:
    stop, go = threading.Event(), threading.Event()
    stream = _Stream(6)

    def slow() -> Generator[list[Any], None, None]:
        go.wait(5)
        yield from stream()

    ShardRead(slow, stop, queue_chunks=4)
    stop.set()  # the consumer closed the prefetcher while the first chunk was on its way
    go.set()
    assert stream.closed.wait(5)
    assert stream.read_on == ["s3exchange-torch-shard"]
