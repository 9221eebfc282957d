"""Issue 10, items 5 and 7, at the reader: what a hostile archive can make it read or hold.

The end-of-archive marker ends the read; the internal manifest is capped from its header and
split into lines as it streams; a line nested too deeply for the JSON parser is a ShardReadError
naming the line.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from s3exchange import ShardReadError
from s3exchange.shard import (
    MAX_INTERNAL_MANIFEST_BYTES,
    iter_internal_manifest,
    iter_shard,
    read_internal_manifest,
    write_shard,
)
from s3exchange.types import INTERNAL_MANIFEST_PATH, ShardItem

ARCHIVE = "bounds.tar"


class CountingReader:
    """A byte source that counts what the reader took from it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.taken = 0

    def read(self, size: int, /) -> bytes:
        chunk = self._data.read(size)
        self.taken += len(chunk)
        return chunk


def shard(count: int = 3) -> bytes:
    items: list[ShardItem] = [
        {"source": f"member {i}".encode(), "member_path": f"m{i}.bin"} for i in range(count)
    ]
    out = io.BytesIO()
    write_shard(items, out, archive_key=ARCHIVE)
    return out.getvalue()


def tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def line(path: str, data: bytes) -> bytes:
    return json.dumps({"kind": "file", "key": path, "size_bytes": len(data)}).encode() + b"\n"


def test_zero_padding_after_the_end_marker_is_not_read() -> None:
    data = shard()
    padded = CountingReader(data + bytes(64 << 20))  # 3 GiB of it once cost 24 s of CPU
    assert [m.read() for m in iter_shard(padded, archive_key=ARCHIVE)] == [
        b"member 0",
        b"member 1",
        b"member 2",
    ]
    assert padded.taken < len(data) + (1 << 20)  # one read of 256 KiB past the marker at most


def test_junk_within_the_record_after_the_marker_is_still_refused() -> None:
    data = shard()
    with pytest.raises(ShardReadError, match="after the end-of-archive"):
        list(iter_shard(io.BytesIO(data + bytes(8192) + b"junk"), archive_key=ARCHIVE))


def test_an_internal_manifest_over_the_cap_is_refused_from_its_header() -> None:
    info = tarfile.TarInfo(INTERNAL_MANIFEST_PATH)
    info.size = MAX_INTERNAL_MANIFEST_BYTES + 1
    header = info.tobuf(format=tarfile.PAX_FORMAT)  # and no data: reading any would fail
    for read in (read_internal_manifest, iter_shard):
        with pytest.raises(ShardReadError, match="exceeds the 67108864 byte limit"):
            list(read(io.BytesIO(header), archive_key=ARCHIVE))
    assert MAX_INTERNAL_MANIFEST_BYTES == 64 << 20


def test_internal_manifest_lines_stream_across_chunks_and_blank_lines() -> None:
    members = {f"dir/m{i:05d}.bin": bytes([i % 251]) * (i % 7) for i in range(3000)}
    lines = [line(path, data) for path, data in members.items()]
    lines.insert(10, b"\n")  # a blank line still counts for the numbering
    manifest = b"".join(lines)
    assert len(manifest) > 2 * (1 << 16)  # several chunks, lines straddling their edges
    data = tar({INTERNAL_MANIFEST_PATH: manifest, **members})
    listed = list(iter_internal_manifest(io.BytesIO(data), archive_key=ARCHIVE))
    assert [entry["member_path"] for entry in listed] == list(members)
    read = {
        m.entry["member_path"]: m.read() for m in iter_shard(io.BytesIO(data), archive_key=ARCHIVE)
    }
    assert read == members
    bad = manifest.replace(line("dir/m00100.bin", members["dir/m00100.bin"]), b"{oops\n")
    with pytest.raises(ShardReadError, match="internal manifest line 102: "):
        list(
            iter_shard(
                io.BytesIO(tar({INTERNAL_MANIFEST_PATH: bad, **members})), archive_key=ARCHIVE
            )
        )


def test_a_line_nested_too_deeply_is_a_shard_read_error_naming_the_line() -> None:
    nested = b"[" * 200_000 + b"]" * 200_000 + b"\n"
    manifest = line("a.bin", b"a") + line("b.bin", b"b") + nested
    data = tar({INTERNAL_MANIFEST_PATH: manifest, "a.bin": b"a", "b.bin": b"b"})
    too_deep = r"'bounds\.tar': internal manifest line 3: JSON nested too deeply"
    with pytest.raises(ShardReadError, match=too_deep):
        read_internal_manifest(io.BytesIO(data), archive_key=ARCHIVE)
    with pytest.raises(ShardReadError, match=too_deep):
        list(iter_shard(io.BytesIO(data), archive_key=ARCHIVE))
