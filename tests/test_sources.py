"""The upload sources: each kind sized without reading and read from its start, chosen by kind."""

from __future__ import annotations

import io
import os
import pathlib

import pytest

from s3exchange.sources import InMemory, LocalFile, SeekableFile, Source, Stream, source_of


class OneWay(io.RawIOBase):
    """A readable that cannot seek (a pipe)."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._inner.readinto(buffer)


def read_all(source: object, chunk_size: int = 3) -> bytes:
    return b"".join(bytes(chunk) for chunk in source_of(source).chunks(chunk_size))


def test_each_kind_gets_its_adapter(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    assert isinstance(source_of(b"x"), InMemory)
    assert isinstance(source_of(bytearray(b"x")), InMemory)
    assert isinstance(source_of(memoryview(b"x")), InMemory)
    assert isinstance(source_of(str(path)), LocalFile)
    assert isinstance(source_of(path), LocalFile)
    assert isinstance(source_of(io.BytesIO(b"x")), SeekableFile)
    assert isinstance(source_of(OneWay(b"x")), Stream)
    with pytest.raises(TypeError, match="unsupported source int"):
        source_of(42)


def test_sizes_come_without_reading(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"p" * 1234)
    assert source_of(memoryview(bytes(range(8))).cast("B", (2, 4))).size() == 8
    assert source_of(os.fspath(path)).size() == 1234
    file = io.BytesIO(b"head" + b"s" * 10)
    file.seek(4)
    assert source_of(file).size() == 10
    assert file.tell() == 4  # sizing leaves the position alone
    assert source_of(OneWay(b"abc")).size() is None


def test_every_kind_reads_its_bytes_in_chunks(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"path-bytes")
    file = io.BytesIO(b"skip|seekable")
    file.seek(5)
    assert read_all(b"bytes") == b"bytes"
    assert read_all(bytearray(b"bytearray")) == b"bytearray"
    assert read_all(path) == b"path-bytes"
    assert read_all(file) == b"seekable"
    assert read_all(OneWay(b"one-way")) == b"one-way"
    chunks = list(source_of(b"abcdefg").chunks(3))
    assert [bytes(c) for c in chunks] == [b"abc", b"def", b"g"]


def test_small_bytes_are_handed_over_without_a_copy() -> None:
    data = b"small"
    source = source_of(data)
    assert [c is data for c in source.chunks(1 << 20)] == [True]
    reader = source.open()
    assert reader.read(1 << 20) is data
    assert reader.read(1 << 20) == b""


def test_rereadable_kinds_read_again_from_their_start(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"again")
    file = io.BytesIO(b"--again")
    file.seek(2)
    for given in (b"again", path, file):
        source = source_of(given)
        assert source.rereadable
        assert read_all_twice(source) == (b"again", b"again")
    stream = source_of(OneWay(b"once"))
    assert not stream.rereadable
    assert read_all_twice(stream) == (b"once", b"")


def read_all_twice(source: Source) -> tuple[bytes, bytes]:
    first = b"".join(bytes(c) for c in source.chunks(2))
    return first, b"".join(bytes(c) for c in source.chunks(2))


def test_caller_files_stay_open_and_paths_are_closed(tmp_path: pathlib.Path) -> None:
    file = io.BytesIO(b"mine")
    assert read_all(file) == b"mine"
    assert not file.closed
    path = tmp_path / "f"
    path.write_bytes(b"x")
    reader = source_of(path).open()
    reader.close()
    assert getattr(reader, "closed", None) is True


def test_only_a_local_file_has_a_modification_time(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    assert source_of(path).mtime() == 1_700_000_000
    assert source_of(tmp_path / "missing").mtime() == 0
    assert source_of(b"x").mtime() == 0
    assert source_of(io.BytesIO(b"x")).mtime() == 0


def test_a_missing_path_fails_when_opened(tmp_path: pathlib.Path) -> None:
    source = source_of(tmp_path / "missing")
    assert repr(source) == f"LocalFile({os.fspath(tmp_path / 'missing')!r})"
    with pytest.raises(FileNotFoundError):
        source.open()
