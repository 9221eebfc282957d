"""Readable object bodies: resumable after mid-stream failures, checked against a manifest.

botocore retries a request only until its response headers arrive; a reset, a truncated body or
a read timeout while the body streams is raised to the caller. :class:`ObjectStream` re-issues the
GET from the byte where it broke (``Range: bytes=N-``) pinned to the first response's ETag
(``IfMatch``), so a resumed read never mixes two versions of an object. :class:`CheckedStream`
compares what was read with the size and sha256 a manifest records; :func:`inner_stream` serves
a body read from inside another stream (a shard member inside its archive's GET).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import logging
import random
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import (
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from .errors import IntegrityError, ReadInterruptedError

log = logging.getLogger(__name__)

TRANSIENT_READ_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
    Urllib3HTTPError,
    http.client.HTTPException,
    ConnectionError,
    socket.timeout,
)
"""Errors raised while a body streams that a ranged re-GET can recover from."""


class RawBody(Protocol):
    """What a botocore ``StreamingBody`` offers that we use."""

    def read(self, amt: int | None = ...) -> bytes: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class OpenedBody:
    """A GET response reduced to what a stream needs."""

    body: RawBody
    size: int | None  # bytes from the requested offset to the end
    etag: str | None
    content_type: str | None = None
    metadata: dict[str, str] | None = None


Opener = Callable[[int, str | None], OpenedBody]
"""``opener(offset, etag)`` issues ``GET Range: bytes=offset-`` with ``IfMatch: etag``."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a broken body is resumed."""

    max_attempts: int = 5
    backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * (2 ** (attempt - 1))))


class _ChunkReader:
    """``iter_chunks`` over ``read``, for :class:`ObjectStream` and :class:`CheckedStream`."""

    def read(self, size: int = -1, /) -> bytes | None:
        raise NotImplementedError

    def iter_chunks(self, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the rest of the object in chunks of at most ``chunk_size`` bytes."""
        while chunk := self.read(chunk_size):
            yield chunk


class ObjectStream(io.RawIOBase, _ChunkReader):
    """A streaming, resumable view of one object; also a context manager and chunk iterator.

    ``attempts`` counts consecutive failures without progress, so a long read through a flaky
    link is not failed by failures spread over hours.
    """

    def __init__(
        self,
        key: str,
        opener: Opener,
        first: OpenedBody | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.key = key
        self._opener = opener
        self._retry = retry or RetryPolicy()
        opened = first if first is not None else opener(0, None)
        self._current: OpenedBody | _FailedBody | None = opened
        self.etag = opened.etag
        self.size = opened.size
        self.content_type = opened.content_type
        self.metadata = opened.metadata or {}
        self._offset = 0
        self.resumes = 0

    @property
    def offset(self) -> int:
        """Bytes delivered so far."""
        return self._offset

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); ``b""`` only at the end."""
        if self.closed:
            raise ValueError("read from a closed ObjectStream")
        if size is None or size < 0:
            return self._read_all()
        if size == 0 or self._at_end():
            return b""
        failures = 0
        while True:
            try:
                assert self._current is not None
                chunk = self._current.body.read(size)
            except TRANSIENT_READ_ERRORS as exc:
                failures = self._recover(failures, exc)
                continue
            if not chunk and self.size is not None and self._offset < self.size:
                failures = self._recover(
                    failures,
                    IncompleteReadError(actual_bytes=self._offset, expected_bytes=self.size),
                )
                continue
            self._offset += len(chunk)
            return chunk

    def _read_all(self) -> bytes:
        parts: list[bytes] = []
        while chunk := self.read(1 << 20):
            parts.append(chunk)
        return b"".join(parts)

    def _at_end(self) -> bool:
        return self.size is not None and self._offset >= self.size

    def _recover(self, failures: int, exc: BaseException) -> int:
        failures += 1
        if failures >= self._retry.max_attempts:
            raise ReadInterruptedError(
                key=self.key, offset=self._offset, attempts=failures, cause=exc
            ) from exc
        log.warning("resuming %r at byte %d after %r", self.key, self._offset, exc)
        self._close_current()
        time.sleep(self._retry.delay(failures))
        try:
            self._current = self._opener(self._offset, self.etag)
        except TRANSIENT_READ_ERRORS as reopen_exc:
            self._current = _FailedBody(reopen_exc)
        self.resumes += 1
        return failures

    def _close_current(self) -> None:
        if self._current is not None:
            with contextlib.suppress(*TRANSIENT_READ_ERRORS):
                self._current.body.close()
            self._current = None

    def close(self) -> None:
        self._close_current()
        super().close()

    def __enter__(self) -> ObjectStream:
        # io.IOBase's __enter__ refuses a closed stream (ValueError); this one never has, so it
        # stays. Its __exit__ (close()) is the one io.IOBase provides.
        return self


class _FailedBody:
    """Stands in for a body whose re-open failed, so the retry loop sees the error again."""

    def __init__(self, error: BaseException) -> None:
        self._error = error

    @property
    def body(self) -> _FailedBody:
        return self

    def read(self, amt: int | None = None) -> bytes:
        raise self._error

    def close(self) -> None:
        return None


class CheckedStream(_ChunkReader):
    """Passes reads through, hashing them; at the end compares size and sha256 to the entry."""

    def __init__(self, stream: ObjectStream, size: int | None, sha256: str | None) -> None:
        self._stream = stream
        self._size = size
        self._expected = sha256
        self._digest = hashlib.sha256() if sha256 else None
        self._seen = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        if data:
            self._seen += len(data)
            if self._digest is not None:
                self._digest.update(data)
        if not data or (n < 0):
            self._check()
        return data

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        key = self._stream.key
        if self._size is not None and self._seen != self._size:
            raise IntegrityError(
                key=key, reason=f"read {self._seen} bytes, manifest says {self._size}"
            )
        if self._digest is not None and self._digest.hexdigest() != self._expected:
            raise IntegrityError(key=key, reason="sha256 does not match the manifest")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_chunks()

    def __enter__(self) -> CheckedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()

    def close(self) -> None:
        self._stream.close()


def inner_stream(
    key: str, read: Callable[[int], bytes], size: int | None, close: Callable[[], object]
) -> ObjectStream:
    """A stream over a body read from inside another stream (a shard member inside its
    archive's GET): never re-opened on its own, as the outer stream resumes itself; closing it
    calls ``close`` (which ends the outer stream)."""
    return ObjectStream(key, _no_reopen, OpenedBody(_InnerBody(read, close), size, etag=None))


class _InnerBody:
    def __init__(self, read: Callable[[int], bytes], close: Callable[[], object]) -> None:
        self._read = read
        self._close = close

    def read(self, amt: int | None = None) -> bytes:
        return self._read(-1 if amt is None else amt)

    def close(self) -> None:
        self._close()


def _no_reopen(offset: int, etag: str | None) -> OpenedBody:
    raise AssertionError("a body read inside another stream resumes with that stream")
