"""Shard indexes: where each member lies inside its archive, so one ranged GET reads it. No I/O.

A shard index is a small JSONL object stored beside its archive, ``<archive>.index.jsonl``
(:func:`index_key_for`), and named by the shard entry's ``index_key``. Its first line describes
the archive it was made from::

    {"kind":"shard_index","version":1,"archive_key":"a.tar","etag":"\\"...\\"","size_bytes":N,
     "compression":null,"count":2}

and each further line is the member's internal manifest entry (``member_path``, ``id``,
``meta``, ``size_bytes``, ``crc32c``) plus where it lies: ``offset`` (its first header block)
and ``offset_data`` (its data) in the uncompressed tar stream, as ``tarfile``'s
``TarInfo.offset`` / ``offset_data`` give them. A seekable ``.tar.gz`` adds ``gz_offset`` and
``gz_size``, the compressed bytes to GET (they start at a full-flush point of the deflate
stream, where inflating needs no earlier byte), and ``gz_start``, the uncompressed offset that
range inflates from.

Why a sidecar rather than offsets inside ``__manifest__.jsonl``: the internal manifest leads the
archive, so every offset depends on its own length, and :class:`~s3exchange.ShardWriter` only
learns the compressed length of its head when the shard ends. The sidecar is written after the
archive, with every offset absolute and the archive's ETag, which ranged reads send as
``If-Match`` (a replaced archive is refused, never misread). Loading one costs one GET of ~150
bytes a member.

Why full-flush points rather than one gzip member per tar member: ``tarfile``'s stream mode
(``r|gz``, which webdataset uses) stops at the end of the first gzip member, so a multi-member
``.tar.gz`` looks like a one-member archive to webdataset (checked with webdataset 1.0.2 and
Python 3.11). A full flush resets the deflate dictionary and aligns to a byte, inside one gzip
member that every reader takes as it is. Flush points are placed before a member once
:data:`FLUSH_SPACING` uncompressed bytes have passed since the last one, which bounds both the
compression cost and the extra bytes a ranged read inflates (figures at :data:`FLUSH_SPACING`).
"""

from __future__ import annotations

import bisect
import functools
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .errors import ShardReadError
from .manifest import dumps_entry
from .shard_format import CHECKSUM_FIELDS, hexdigest, member_path_problem, new_digest
from .types import Compression, FileEntry, Readable


class IndexedMember(FileEntry, total=False):
    """A member line of an index: the internal manifest entry plus where the member lies."""

    offset: int
    offset_data: int
    gz_offset: int
    gz_size: int
    gz_start: int


__all__ = [
    "FLUSH_SPACING",
    "INDEX_SUFFIX",
    "INDEX_VERSION",
    "IndexedMember",
    "MemberReader",
    "MemberSpan",
    "ShardIndex",
    "byte_range",
    "check_member",
    "dumps_index",
    "encode_index",
    "extract",
    "index_key_for",
    "parse_index",
    "parse_member",
    "spans",
]

INDEX_SUFFIX: Final = ".index.jsonl"
INDEX_VERSION: Final = 1
FLUSH_SPACING: Final = 64 << 10
"""Uncompressed bytes between two full-flush points of a seekable ``.tar.gz`` (at member starts
only). Measured, gzip level 6, size against a whole-stream gzip of the same shard
(``python -m benchmarks.gzip_flush_cost``): text-like (8,000 captions and JSON, 207 B each on
average) +180% with a flush point before every member (each 512-byte header then compresses
alone), +18% every 16 KiB, **+5.3% every 64 KiB**, +1.3% every 256 KiB; image-like (400 JPEGs
of ~18 KB and their labels) +3.3% / +3.1% / **+0.8%** / +0.2%. At 64 KiB a ranged read inflates
at most ~64 KiB before the member and up to the next flush point after it."""

_SPAN_FIELDS: Final = ("offset", "offset_data", "gz_offset", "gz_size", "gz_start")


def index_key_for(archive_key: str) -> str:
    """Where the index of ``archive_key`` is stored: beside it, with :data:`INDEX_SUFFIX`."""
    return archive_key + INDEX_SUFFIX


@dataclass(frozen=True, slots=True)
class MemberSpan:
    """Where one member lies: tar offsets, and for a seekable tar.gz the compressed range."""

    offset: int
    offset_data: int
    gz_offset: int | None = None
    gz_size: int | None = None
    gz_start: int | None = None

    def fields(self) -> dict[str, int]:
        """The index line fields (the gz ones only when set)."""
        out = {"offset": self.offset, "offset_data": self.offset_data}
        if self.gz_offset is not None:
            assert self.gz_size is not None
            assert self.gz_start is not None
            out.update(gz_offset=self.gz_offset, gz_size=self.gz_size, gz_start=self.gz_start)
        return out


def spans(
    members: Sequence[tuple[int, int, int]],
    flush_points: Sequence[tuple[int, int]] | None,
) -> list[MemberSpan]:
    """Spans of ``members`` (header offset, data offset, size; uncompressed) given the
    ``(uncompressed, compressed)`` offsets of the deflate stream's full-flush points (None for
    a plain tar). The last flush point must lie at or after the last member's end."""
    if flush_points is None:
        return [MemberSpan(offset, data) for offset, data, _ in members]
    starts = [u for u, _ in flush_points]
    out = []
    for offset, data, size in members:
        first = bisect.bisect_right(starts, offset) - 1
        last = bisect.bisect_left(starts, data + size)
        if first < 0 or last >= len(flush_points):
            raise ValueError(f"no flush point around member at {offset}")
        start_u, start_c = flush_points[first]
        out.append(MemberSpan(offset, data, start_c, flush_points[last][1] - start_c, start_u))
    return out


@dataclass(frozen=True)
class ShardIndex:
    """An index: the archive it describes and one JSON line per member, parsed and checked
    when asked for (:meth:`member`), so that holding a big index costs its bytes only: 10,000
    members split in ~2 ms where parsing them all takes ~100 ms."""

    archive_key: str
    etag: str | None
    size_bytes: int | None
    compression: Compression
    lines: tuple[bytes, ...]
    """Each member's line as stored (without its newline)."""
    index_key: str = ""
    """Where the index is stored, for errors."""

    def __len__(self) -> int:
        return len(self.lines)

    def member(self, position: int) -> IndexedMember:
        """Member ``position`` (0-based), checked: ShardReadError naming the index and line."""
        return parse_member(
            self.lines[position],
            compression=self.compression,
            where=self.index_key or index_key_for(self.archive_key),
            lineno=position + 2,
        )

    @functools.cached_property
    def members(self) -> list[IndexedMember]:
        """Every member, parsed and checked."""
        return [self.member(position) for position in range(len(self.lines))]

    @property
    def seekable(self) -> bool:
        """Whether every member can be read with one ranged GET (plain tar, or gzip with
        flush points recorded)."""
        return self.compression is None or all(b'"gz_offset":' in line for line in self.lines)


def encode_index(
    archive_key: str,
    entries: Sequence[FileEntry],
    member_spans: Sequence[MemberSpan],
    *,
    etag: str | None,
    size_bytes: int | None,
    compression: Compression,
) -> bytes:
    """The index object's bytes: the header line, then one line per member."""
    if len(entries) != len(member_spans):
        raise ValueError(f"{len(entries)} entries but {len(member_spans)} spans")
    lines = tuple(
        dumps_entry({**entry, **span.fields()}).rstrip(b"\n")
        for entry, span in zip(entries, member_spans, strict=True)
    )
    return dumps_index(ShardIndex(archive_key, etag, size_bytes, compression, lines))


def dumps_index(index: ShardIndex) -> bytes:
    """The index object's bytes: the header line, then one line per member."""
    header: dict[str, Any] = {
        "kind": "shard_index",
        "version": INDEX_VERSION,
        "archive_key": index.archive_key,
        "etag": index.etag,
        "size_bytes": index.size_bytes,
        "compression": index.compression,
        "count": len(index.lines),
    }
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    return b"\n".join((head, *index.lines)) + b"\n"


def _uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_index(lines: Iterable[bytes], *, index_key: str) -> ShardIndex:
    """An index from its object's lines: the header checked, the member lines counted and
    kept as they are (each is checked when :meth:`ShardIndex.member` parses it). Any problem
    is a ShardReadError naming the index and the line."""
    iterator = iter(lines)
    first = next(iterator, b"")
    try:
        header = json.loads(first)
    except ValueError:
        header = None
    if (
        not isinstance(header, dict)
        or header.get("kind") != "shard_index"
        or header.get("version") != INDEX_VERSION
        or not isinstance(header.get("archive_key"), str)
        or header.get("compression") not in (None, "gzip")
        or not (header.get("etag") is None or isinstance(header.get("etag"), str))
        or not (header.get("size_bytes") is None or _uint(header.get("size_bytes")))
        or not _uint(header.get("count"))
    ):
        raise ShardReadError(
            archive_key=index_key,
            reason=f"line 1: not a version {INDEX_VERSION} shard index header",
        )
    members = tuple(line.rstrip(b"\r\n") for line in iterator if line.strip())
    if len(members) != header["count"]:
        raise ShardReadError(
            archive_key=index_key,
            reason=f"header says {header['count']} members, the index lists {len(members)}",
        )
    return ShardIndex(
        archive_key=header["archive_key"],
        etag=header["etag"],
        size_bytes=header["size_bytes"],
        compression=header["compression"],
        lines=members,
        index_key=index_key,
    )


def parse_member(
    line: bytes, *, compression: Compression, where: str, lineno: int | None = None
) -> IndexedMember:
    """One member line, checked (json.loads and the checks an index needs: 4x faster than
    ``manifest.parse_line``'s full validation); ShardReadError naming ``where`` (the index)
    and the line otherwise."""
    at = f"line {lineno}: " if lineno is not None else ""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ShardReadError(archive_key=where, reason=f"{at}invalid JSON: {exc}") from None
    problem = _member_problem(entry, compression)
    if problem is not None:
        path = entry.get("member_path") if isinstance(entry, dict) else None
        raise ShardReadError(
            archive_key=where,
            reason=f"{at}{problem}",
            member_path=path if isinstance(path, str) else None,
        )
    member: IndexedMember = entry
    return member


def _member_problem(entry: Any, compression: Compression) -> str | None:
    if not isinstance(entry, dict) or entry.get("kind") != "file":
        return "a member line is a file entry"
    path = entry.get("member_path")
    if not isinstance(path, str) or not isinstance(entry.get("key"), str):
        return "member without key and member_path"
    problem = member_path_problem(path)
    if problem is not None:
        return problem
    if not all(isinstance(entry.get(name, ""), str) for name in CHECKSUM_FIELDS):
        return "a checksum is not a string"
    if not _uint(entry.get("size_bytes")):
        return "member without size_bytes"
    if not (_uint(entry.get("offset")) and _uint(entry.get("offset_data"))):
        return "member without offset and offset_data"
    if entry["offset_data"] < entry["offset"]:
        return "offset_data before offset"
    gz = [entry.get(name) for name in _SPAN_FIELDS[2:]]
    if compression is None and any(value is not None for value in gz):
        return "gz offsets in the index of a plain tar"
    if any(value is not None for value in gz):
        if not all(_uint(value) for value in gz):
            return "gz_offset, gz_size and gz_start go together"
        if not entry["gz_start"] <= entry["offset_data"]:
            return "gz_start after offset_data"
    return None


def byte_range(entry: IndexedMember) -> tuple[int, int]:
    """The archive bytes ``[start, stop)`` one GET fetches to serve ``entry``: its data in a
    plain tar, its flush-point segment in a seekable tar.gz."""
    if "gz_offset" in entry:
        return entry["gz_offset"], entry["gz_offset"] + entry["gz_size"]
    start = entry["offset_data"]
    return start, start + entry.get("size_bytes", 0)


def extract(entry: IndexedMember, raw: bytes | memoryview, *, archive_key: str) -> bytes:
    """The member's data from the bytes of its :func:`byte_range`; ShardReadError naming the
    archive and member when they do not hold it."""
    size = entry.get("size_bytes", 0)
    path = entry.get("member_path")
    if "gz_offset" in entry:
        skip = entry["offset_data"] - entry["gz_start"]
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(raw, skip + size)
        except zlib.error as exc:
            raise ShardReadError(
                archive_key=archive_key, reason=f"corrupt gzip segment: {exc}", member_path=path
            ) from exc
        data = data[skip:]
    else:
        data = bytes(raw)
    if len(data) != size:
        raise ShardReadError(
            archive_key=archive_key,
            reason=f"ranged read gave {len(data)} bytes, the index says {size}",
            member_path=path,
        )
    return data


def check_member(entry: FileEntry, data: bytes, *, archive_key: str) -> None:
    """Verify ``data`` against the checksum ``entry`` records (crc32c or sha256), if any;
    ShardReadError naming the archive and member otherwise."""
    found: Mapping[str, Any] = entry
    for name in CHECKSUM_FIELDS:
        expected = found.get(name)
        if expected:
            digest = new_digest(name)
            digest.update(data)
            if hexdigest(digest) != expected:
                raise ShardReadError(
                    archive_key=archive_key,
                    reason=f"{name} does not match the index",
                    member_path=found.get("member_path"),
                )
            return


_CHUNK = 1 << 18


class MemberReader:
    """One member's data read from a stream of its :func:`byte_range` (a ranged GET body):
    inflated for a seekable tar.gz (``max_length`` bounded, so a bomb costs no memory), cut to
    its size, and checked against its recorded checksum when the last byte is read. Every
    failure is a ShardReadError naming the archive and the member."""

    def __init__(
        self, source: Readable, member: IndexedMember, *, archive_key: str, verify: bool
    ) -> None:
        self._source = source
        self._member = member
        self._archive_key = archive_key
        gz = "gz_offset" in member
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if gz else None
        self._skip = member["offset_data"] - member["gz_start"] if gz else 0
        self._left = member.get("size_bytes", 0)
        self._buffer = memoryview(b"")
        self._checksum = next(
            ((name, found) for name in CHECKSUM_FIELDS if (found := member.get(name))), None
        )
        self._digest = new_digest(self._checksum[0]) if verify and self._checksum else None

    def _error(self, reason: str) -> ShardReadError:
        return ShardReadError(
            archive_key=self._archive_key, reason=reason, member_path=self._member["member_path"]
        )

    def _next(self) -> bytes:
        """The next decoded bytes of the member (b"" when the source ran out)."""
        if self._inflater is None:
            return self._source.read(min(_CHUNK, self._left))
        while True:
            data = self._inflater.unconsumed_tail or self._source.read(_CHUNK)
            try:
                out = self._inflater.decompress(data, _CHUNK)
            except zlib.error as exc:
                raise self._error(f"corrupt gzip segment: {exc}") from exc
            if self._skip:
                cut = min(self._skip, len(out))
                out, self._skip = out[cut:], self._skip - cut
            if out or not data:
                return out

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); b"" at the member's end."""
        want = self._left if size < 0 else min(size, self._left)
        parts: list[bytes | memoryview] = []
        got = 0
        while got < want:
            if not self._buffer:
                self._buffer = memoryview(self._next())
                if not self._buffer:
                    raise self._error(f"the ranged read ended {self._left - got} bytes short")
            piece = self._buffer[: want - got]
            self._buffer = self._buffer[len(piece) :]
            parts.append(piece)
            got += len(piece)
        data = b"".join(parts)
        self._left -= got
        checksum = self._checksum
        if self._digest is not None and checksum is not None:
            self._digest.update(data)
            if not self._left and hexdigest(self._digest) != checksum[1]:
                raise self._error(f"{checksum[0]} does not match the index")
        return data
