"""What an upload is made from: bytes, a local path, a seekable file or a stream, each able to
size itself and to read itself from its start.

:func:`source_of` chooses the adapter by kind (as s3transfer's upload input managers are chosen),
so the ladder "bytes / path / seekable / stream" is written here once: the shard writer sizes,
hashes and streams members through it (:mod:`~s3exchange.tar_writer`, and
:func:`~s3exchange.samples.split_items` for sizes), and :meth:`S3ExchangeStore.put_object
<s3exchange.store.S3ExchangeStore.put_object>` uploads through it. Adapters raise ``OSError`` as
the file system does; each caller turns it into the error that names its key or member.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import IO, ClassVar, Protocol

from .types import ItemSource

__all__ = [
    "InMemory",
    "LocalFile",
    "Reader",
    "SeekableFile",
    "Source",
    "Stream",
    "source_of",
]


class Reader(Protocol):
    """An opened source: ``read(n)`` until it returns ``b""``, then ``close()``."""

    def read(self, size: int, /) -> bytes | memoryview: ...

    def close(self) -> None: ...


class Source(ABC):
    """One upload source. ``rereadable`` sources can be opened again from their start (a
    pre-pass that hashes, then the data pass); a :class:`Stream` is read once."""

    rereadable: ClassVar[bool] = True

    @abstractmethod
    def size(self) -> int | None:
        """Bytes from the start to the end, known without reading them; None for a stream."""

    @abstractmethod
    def open(self) -> Reader:
        """A reader from the source's start (``OSError`` when a path cannot be opened)."""

    def chunks(self, chunk_size: int) -> Iterator[bytes | memoryview]:
        """Everything from the start, in chunks of at most ``chunk_size`` bytes."""
        reader = self.open()
        try:
            while chunk := reader.read(chunk_size):
                yield chunk
        finally:
            reader.close()

    def mtime(self) -> int:
        """Modification time in whole seconds; 0 where there is none (bytes, streams)."""
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class InMemory(Source):
    """``bytes``, ``bytearray`` or a (C-contiguous) ``memoryview``: sized exactly, sliced
    without a copy, and sent by ``put_object`` in one request."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = data
        self.view = memoryview(data).cast("B")

    def size(self) -> int:
        return self.view.nbytes

    def open(self) -> Reader:
        return _ViewReader(self.data, self.view)

    def chunks(self, chunk_size: int) -> Iterator[bytes | memoryview]:
        if isinstance(self.data, bytes) and len(self.data) <= chunk_size:
            yield self.data  # the common small member: no slicing, no copy
            return
        for offset in range(0, self.view.nbytes, chunk_size):
            yield self.view[offset : offset + chunk_size]


class LocalFile(Source):
    """A local file named by ``str`` or ``os.PathLike``; opened (and closed) on each read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path

    def size(self) -> int:
        return os.path.getsize(self.path)

    def open(self) -> Reader:
        return open(self.path, "rb")

    def mtime(self) -> int:
        """For the tar header (``tar tv`` showed 1970); 0 when the file cannot be stat'ed, and
        the read that follows reports why."""
        try:
            return max(0, int(os.stat(self.path).st_mtime))
        except OSError:
            return 0

    def __repr__(self) -> str:
        return f"LocalFile({os.fspath(self.path)!r})"


class SeekableFile(Source):
    """A binary file object that seeks: read from the position it had when adapted, to its
    end. The caller owns it; it is never closed here."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.start = file.tell()

    def size(self) -> int:
        position = self.file.tell()
        end = self.file.seek(0, io.SEEK_END)
        self.file.seek(position)
        return end - self.start

    def open(self) -> Reader:
        if self.file.tell() != self.start:  # a second pass: rewind to where the first began
            self.file.seek(self.start)
        return _Borrowed(self.file)


class Stream(Source):
    """A binary file object that cannot seek (a pipe, a socket, a GET body): read once, its
    size unknown until the end. The caller owns it; it is never closed here."""

    rereadable = False

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file

    def size(self) -> None:
        return None

    def open(self) -> Reader:
        return _Borrowed(self.file)


def source_of(source: ItemSource | object) -> Source:
    """The adapter for ``source``, chosen by kind; TypeError for anything that cannot be read."""
    if isinstance(source, bytes | bytearray | memoryview):
        return InMemory(source)
    if isinstance(source, str | os.PathLike):
        return LocalFile(source)
    if not callable(getattr(source, "read", None)):
        raise TypeError(f"unsupported source {type(source).__name__}")
    file: IO[bytes] = source  # type: ignore[assignment]  # anything with read()
    seekable = getattr(file, "seekable", None)
    if callable(seekable) and seekable():
        return SeekableFile(file)
    return Stream(file)


class _ViewReader:
    """``read(n)`` over bytes in memory, each read a slice of the caller's buffer (no copy)."""

    def __init__(self, data: bytes | bytearray | memoryview, view: memoryview) -> None:
        self._data, self._view, self._offset = data, view, 0

    def read(self, size: int, /) -> bytes | memoryview:
        start = self._offset
        if start == 0 and isinstance(self._data, bytes) and size >= len(self._data):
            self._offset = len(self._data)
            return self._data
        self._offset = min(self._view.nbytes, start + size)
        return self._view[start : self._offset]

    def close(self) -> None:
        pass


class _Borrowed:
    """The caller's file object, read but never closed."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def read(self, size: int, /) -> bytes:
        return self._file.read(size)

    def close(self) -> None:
        pass
