"""Member offsets and shard indexes (no server): what the writer records agrees with
``tarfile``'s own offsets, and a member's byte range alone gives back its bytes."""

from __future__ import annotations

import bisect
import io
import itertools
import tarfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3exchange.errors import ShardReadError
from s3exchange.shard_index import (
    FLUSH_SPACING,
    IndexedMember,
    MemberSpan,
    byte_range,
    encode_index,
    extract,
    parse_index,
    spans,
)
from s3exchange.tar_writer import ShardWriteResult, write_shard
from s3exchange.types import Compression, FileEntry, ShardItem

_SIZES = st.one_of(
    st.sampled_from([0, 1, 511, 512, 513, 1024]), st.integers(min_value=0, max_value=200_000)
)


def _shard(
    sizes: list[int], compression: Compression, long_names: bool = False
) -> tuple[bytes, list[ShardItem], ShardWriteResult]:
    items: list[ShardItem] = []
    for i, size in enumerate(sizes):
        name = f"{'d' * 120}/{i:04d}.bin" if long_names else f"{i:04d}.bin"
        data = (i.to_bytes(4, "big") * (size // 4 + 1))[:size]
        items.append({"source": data, "member_path": name})
    out = io.BytesIO()
    result = write_shard(items, out, archive_key="a.tar", compression=compression)
    return out.getvalue(), items, result


def _indexed(entry: FileEntry, span: MemberSpan) -> IndexedMember:
    member: IndexedMember = {**entry}  # type: ignore[typeddict-item]
    member.update(span.fields())  # type: ignore[typeddict-item]
    return member


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_SIZES, min_size=1, max_size=12), st.sampled_from([None, "gzip"]), st.booleans())
def test_offsets_agree_with_tarfile(sizes: list[int], compression: Compression, long: bool) -> None:
    archive, items, result = _shard(sizes, compression, long)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz" if compression else "r:") as tar:
        infos = [info for info in tar if info.name != "__manifest__.jsonl"]
    assert [info.name for info in infos] == [item["member_path"] for item in items]
    for info, span, entry, item in zip(infos, result.spans, result.members, items, strict=True):
        assert (span.offset, span.offset_data) == (info.offset, info.offset_data)
        member = _indexed(entry, span)
        start, stop = byte_range(member)
        assert extract(member, archive[start:stop], archive_key="a.tar") == item["source"]
        if compression:
            assert span.gz_start is not None
            assert span.gz_start <= span.offset


class _Recorder:
    """A sink that keeps the small writes (headers, manifest, padding) and only counts the
    large ones (zero data), so an 8 GiB archive costs no memory."""

    def __init__(self) -> None:
        self.regions: list[tuple[int, bytes]] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        if len(data) < 1 << 20:
            self.regions.append((self.size, bytes(data)))
        self.size += len(data)


class _Sparse(io.RawIOBase):
    """The recorded archive read back: kept regions as written, zeros elsewhere."""

    def __init__(self, recorder: _Recorder) -> None:
        self._regions = recorder.regions
        self._starts = [start for start, _ in recorder.regions]
        self._size = recorder.size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = {0: pos, 1: self._pos + pos, 2: self._size + pos}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        n = self._size - self._pos if n < 0 else min(n, self._size - self._pos)
        out = bytearray(n)
        i = max(0, bisect.bisect_right(self._starts, self._pos) - 1)
        while i < len(self._regions) and self._regions[i][0] < self._pos + n:
            start, data = self._regions[i]
            lo, hi = max(start, self._pos), min(start + len(data), self._pos + n)
            if lo < hi:
                out[lo - self._pos : hi - self._pos] = data[lo - start : hi - start]
            i += 1
        self._pos += n
        return bytes(out)


class _Zeros:
    """A non-seekable stream of ``n`` zero bytes."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.block = bytes(1 << 20)

    def read(self, n: int = -1) -> bytes:
        n = min(self.left, len(self.block) if n < 0 else n)
        self.left -= n
        return self.block if n == len(self.block) else bytes(n)


def test_offsets_past_8_gib_use_the_pax_size_and_agree_with_tarfile() -> None:
    big = (8 << 30) + 3  # over the 8 GiB octal size field: the PAX header carries the size
    items: list[ShardItem] = [
        {"source": b"x" * 10, "member_path": "a.bin"},
        {"source": _Zeros(big), "member_path": "big.bin", "size_bytes": big},  # type: ignore[typeddict-item]
        {"source": b"y" * 700, "member_path": "c.bin"},
    ]
    recorder = _Recorder()
    result = write_shard(items, recorder, archive_key="big.tar")
    with tarfile.open(fileobj=_Sparse(recorder), mode="r:") as tar:  # type: ignore[call-overload]
        infos = {info.name: info for info in tar}
    assert infos["big.bin"].size == big
    for entry, span in zip(result.members, result.spans, strict=True):
        info = infos[entry["member_path"]]
        assert (span.offset, span.offset_data) == (info.offset, info.offset_data)
    assert result.spans[2].offset_data > 8 << 30


def test_gzip_flush_points_are_spaced_and_one_gzip_member() -> None:
    archive, _, result = _shard([3000] * 100, "gzip")
    starts = sorted({span.gz_start for span in result.spans if span.gz_start is not None})
    assert 1 < len(starts) < 100  # 300 KB of members, a flush point every FLUSH_SPACING
    assert min(b - a for a, b in itertools.pairwise(starts)) >= FLUSH_SPACING
    inflater = zlib.decompressobj(31)
    inflater.decompress(archive)
    assert inflater.eof
    assert inflater.unused_data == b""  # one gzip member: r|gz (webdataset) reads it all
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|gz") as tar:
        assert len(list(tar)) == 101


def test_the_index_round_trips_and_names_what_is_wrong() -> None:
    archive, items, result = _shard([0, 512, 700], "gzip")
    encoded = encode_index(
        "a.tar.gz",
        result.members,
        result.spans,
        etag='"e"',
        size_bytes=len(archive),
        compression="gzip",
    )
    lines = encoded.splitlines(keepends=True)
    index = parse_index(lines, index_key="a.tar.gz.index.jsonl")
    assert index.seekable
    assert (index.etag, len(index.members)) == ('"e"', 3)
    for member, item in zip(index.members, items, strict=True):
        start, stop = byte_range(member)
        assert extract(member, archive[start:stop], archive_key="a.tar.gz") == item["source"]
    with pytest.raises(ShardReadError, match="header says 3 members"):
        parse_index(lines[:-1], index_key="x.index.jsonl")
    with pytest.raises(ShardReadError, match="line 1"):
        parse_index([b"{}\n"], index_key="x.index.jsonl")
    broken = lines[2].replace(b'"offset_data"', b'"offset_datum"')
    lazy = parse_index([lines[0], lines[1], broken, lines[3]], index_key="x.index.jsonl")
    assert lazy.member(0) == index.member(0)  # member lines are checked when read
    with pytest.raises(ShardReadError, match=r"'x\.index\.jsonl'.*line 3: member without offset"):
        lazy.member(1)
    with pytest.raises(ShardReadError, match=r"line 3: member without offset"):
        _ = lazy.members


def test_extract_names_archive_and_member_when_bytes_are_short() -> None:
    archive, _, result = _shard([1000], None)
    member = _indexed(result.members[0], result.spans[0])
    start, stop = byte_range(member)
    with pytest.raises(ShardReadError, match=r"'a\.tar' member '0000\.bin'.*999 bytes"):
        extract(member, archive[start : stop - 1], archive_key="a.tar")


def test_spans_need_a_flush_point_after_the_last_member() -> None:
    with pytest.raises(ValueError, match="no flush point"):
        spans([(0, 512, 10)], [(0, 0)])
