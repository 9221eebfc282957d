"""ObjectStream resumes a broken body from the byte where it broke, pinned to the ETag."""

from __future__ import annotations

import hashlib

import pytest
from urllib3.exceptions import ProtocolError

from s3exchange.body import CheckedStream, ObjectStream, OpenedBody, RetryPolicy, inner_stream
from s3exchange.errors import IntegrityError, ObjectChangedError, ReadInterruptedError

DATA = bytes(range(256)) * 100
FAST = RetryPolicy(max_attempts=4, backoff_s=0.0)


class FlakyBody:
    """Serves ``data`` and raises after ``fail_after`` bytes (or truncates when ``truncate``)."""

    def __init__(self, data: bytes, fail_after: int | None, truncate: bool = False) -> None:
        self.data, self.pos, self.fail_after, self.truncate = data, 0, fail_after, truncate

    def read(self, amt: int | None = None) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            if self.truncate:
                return b""
            raise ProtocolError("Connection broken: reset by peer")
        end = len(self.data) if amt is None else self.pos + amt
        if self.fail_after is not None:
            end = min(end, self.fail_after)
        chunk = self.data[self.pos : end]
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        pass


class Server:
    """An opener that breaks the first ``breaks`` responses partway and records requests."""

    def __init__(self, breaks: int, truncate: bool = False, etag: str = '"v1"') -> None:
        self.breaks, self.truncate, self.etag = breaks, truncate, etag
        self.requests: list[tuple[int, str | None]] = []

    def __call__(self, offset: int, etag: str | None) -> OpenedBody:
        self.requests.append((offset, etag))
        if etag is not None and etag != self.etag:
            raise ObjectChangedError(key="k", etag=etag)
        fail_after = 1000 if len(self.requests) <= self.breaks else None
        body = FlakyBody(DATA[offset:], fail_after, self.truncate)
        return OpenedBody(body=body, size=len(DATA), etag=self.etag)


@pytest.mark.parametrize("truncate", [False, True])
def test_resumes_with_range_and_if_match(truncate: bool) -> None:
    server = Server(breaks=3, truncate=truncate)
    stream = ObjectStream("k", server, retry=FAST)
    assert b"".join(stream.iter_chunks(333)) == DATA
    assert server.requests == [(0, None), (1000, '"v1"'), (2000, '"v1"'), (3000, '"v1"')]
    assert stream.resumes == 3


def test_gives_up_after_consecutive_failures_without_progress() -> None:
    class Dead(Server):
        def __call__(self, offset: int, etag: str | None) -> OpenedBody:
            self.requests.append((offset, etag))
            body = FlakyBody(DATA[offset:], 0)
            return OpenedBody(body=body, size=len(DATA), etag=self.etag)

    stream = ObjectStream("k", Dead(breaks=0), retry=FAST)
    with pytest.raises(ReadInterruptedError) as err:
        stream.read()
    assert err.value.key == "k"
    assert err.value.offset == 0


def test_object_replaced_meanwhile_raises_instead_of_mixing_versions() -> None:
    server = Server(breaks=1)
    stream = ObjectStream("k", server, retry=FAST)
    assert stream.read(500) == DATA[:500]
    server.etag = '"v2"'
    with pytest.raises(ObjectChangedError):
        stream.read()


def test_readinto_and_context_manager() -> None:
    with ObjectStream("k", Server(breaks=0), retry=FAST) as stream:
        buf = bytearray(10)
        assert stream.readinto(buf) == 10
        assert bytes(buf) == DATA[:10]
    assert stream.closed


def test_checked_stream_iterates_in_chunks_through_its_check() -> None:
    checked = CheckedStream(ObjectStream("k", Server(breaks=0)), len(DATA), _sha(DATA))
    assert b"".join(checked) == DATA
    wrong = CheckedStream(ObjectStream("k", Server(breaks=0)), len(DATA), _sha(b"other"))
    with pytest.raises(IntegrityError, match="sha256"):
        b"".join(wrong.iter_chunks(1000))


def test_inner_stream_reads_the_outer_body_and_closes_it() -> None:
    outer = FlakyBody(DATA, None)
    closed: list[bool] = []
    with inner_stream("a.tar#m", outer.read, len(DATA), lambda: closed.append(True)) as stream:
        assert stream.read(10) == DATA[:10]
        assert stream.read() == DATA[10:]
    assert closed == [True]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
