"""The streaming shard writer: :func:`write_shard` and the tar headers it writes.

Streams to any object with ``write(bytes)`` (an S3 multipart writer in production) and never
touches the network; memory stays bounded by the chunk size, never by a member or the shard. The
format is described in :mod:`~s3exchange.shard_format`.
"""

from __future__ import annotations

import json
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ShardWriteError
from .shard_format import (
    BLOCK,
    MAX_INTERNAL_MANIFEST_BYTES,
    WRITE_CHECKSUM,
    ZERO_BLOCK,
    hexdigest,
    member_path_problem,
    new_digest,
)
from .shard_index import FLUSH_SPACING, MemberSpan, spans
from .sources import InMemory, Reader, Source, source_of
from .types import INTERNAL_MANIFEST_PATH, Compression, FileEntry, ShardItem

__all__ = ["ShardWriteResult", "item_size", "tar_header", "write_shard"]

_EOF_MARKER = bytes(2 * BLOCK)
_COALESCE_BYTES = 64 << 10
"""Writes smaller than this are gathered so the sink sees few, larger writes."""


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


def item_size(item: ShardItem) -> int:
    """The member size of ``item``, without reading its bytes (for
    :func:`~s3exchange.samples.split_items`)."""
    declared = item.get("size_bytes")
    if declared is not None:
        return declared
    size = source_of(item["source"]).size()
    if size is not None:
        return size
    raise ValueError(
        f"cannot size member {item['member_path']!r}: a non-seekable stream needs size_bytes"
    )


@dataclass(frozen=True, slots=True)
class ShardWriteResult:
    """What :func:`write_shard` wrote: the internal manifest entries and the byte counts."""

    members: list[FileEntry]
    count: int
    members_size_bytes: int
    archive_size_bytes: int
    spans: list[MemberSpan]
    """Where each member lies in the archive, for its :mod:`~s3exchange.shard_index`."""


@dataclass(frozen=True, slots=True)
class _Planned:
    """A member after the pre-pass: its manifest entry and where its bytes come from."""

    item: ShardItem
    source: Source
    entry: FileEntry
    size: int
    checksum: str | None

    @property
    def path(self) -> str:
        return self.item["member_path"]


class _Sink:
    """Counts (and optionally gzips) what goes to ``out``, gathering small writes."""

    def __init__(self, out: _Writable, compression: Compression, compresslevel: int) -> None:
        self._out = out
        self._zlib = (
            zlib.compressobj(compresslevel, zlib.DEFLATED, 31) if compression == "gzip" else None
        )
        self._pending = bytearray()
        self.written = 0
        self.position = 0
        """Uncompressed (tar) bytes written so far."""

    def flush_point(self) -> tuple[int, int]:
        """A full flush of the deflate stream (gzip only): inflating can start here without
        any earlier byte. Returns (uncompressed, compressed) offsets of the point."""
        assert self._zlib is not None
        self._pending += self._zlib.flush(zlib.Z_FULL_FLUSH)
        return self.position, self.written + len(self._pending)

    def write(self, data: bytes | memoryview) -> None:
        self.position += len(data)
        if self._zlib is not None:
            data = self._zlib.compress(data)
        if len(data) < _COALESCE_BYTES:
            self._pending += data
            if len(self._pending) >= _COALESCE_BYTES:
                self._flush_pending()
            return
        self._flush_pending()
        self._emit(data if isinstance(data, bytes) else data.tobytes())

    def finish(self) -> None:
        if self._zlib is not None:
            self._pending += self._zlib.flush()
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)


def _read_source(
    read: Callable[[int], bytes | memoryview], n: int, archive_key: str, member_path: str
) -> bytes | memoryview:
    try:
        return read(n)
    except OSError as exc:
        raise ShardWriteError(
            archive_key=archive_key,
            reason=f"reading the source failed: {exc}",
            member_path=member_path,
        ) from exc


def _hash_source(
    read: Callable[[int], bytes | memoryview], chunk_size: int, archive_key: str, member_path: str
) -> tuple[int, str]:
    """Size and checksum of what ``read`` yields until end of stream, one chunk at a time."""
    hasher = new_digest(WRITE_CHECKSUM)
    size = 0
    while chunk := _read_source(read, chunk_size, archive_key, member_path):
        hasher.update(chunk)
        size += len(chunk)
    return size, hexdigest(hasher)


def _open(source: Source, archive_key: str, member_path: str) -> Reader:
    try:
        return source.open()
    except OSError as exc:
        raise ShardWriteError(
            archive_key=archive_key,
            reason=f"cannot open the source: {exc}",
            member_path=member_path,
        ) from exc


def _check_item(item: ShardItem, archive_key: str, seen: set[str]) -> None:
    """Reject a member path that is unsafe, reserved or repeated, before anything is read."""
    path = item.get("member_path")
    if not isinstance(path, str):
        raise ShardWriteError(
            archive_key=archive_key, reason=f"member_path must be a str, got {path!r}"
        )
    problem = member_path_problem(path)
    if problem is None and path == INTERNAL_MANIFEST_PATH:
        problem = "member path is reserved for the internal manifest"
    if problem is None and path in seen:
        problem = "duplicate member path"
    if problem is not None:
        raise ShardWriteError(archive_key=archive_key, reason=problem, member_path=path)
    declared = item.get("size_bytes")
    if declared is not None and (
        not isinstance(declared, int) or isinstance(declared, bool) or declared < 0
    ):
        raise ShardWriteError(
            archive_key=archive_key, reason=f"invalid size_bytes {declared!r}", member_path=path
        )
    seen.add(path)


def _measure(
    item: ShardItem, source: Source, archive_key: str, chunk_size: int
) -> tuple[int, str | None]:
    """Pre-pass over one source: (size, checksum), hashed from its start; a stream, read only
    once, gives its declared size and no checksum."""
    path = item["member_path"]
    if not source.rereadable:
        declared = item.get("size_bytes")
        if declared is None:
            raise ShardWriteError(
                archive_key=archive_key,
                reason="a non-seekable stream needs size_bytes",
                member_path=path,
            )
        return declared, None
    reader = _open(source, archive_key, path)
    try:
        return _hash_source(reader.read, chunk_size, archive_key, path)
    finally:
        reader.close()


def _plan(item: ShardItem, archive_key: str, chunk_size: int) -> _Planned:
    """Measure one item and build its internal manifest entry."""
    path = item["member_path"]
    try:
        source = source_of(item["source"])
    except TypeError as exc:
        raise ShardWriteError(archive_key=archive_key, reason=str(exc), member_path=path) from None
    size, digest = _measure(item, source, archive_key, chunk_size)
    declared = item.get("size_bytes")
    if declared is not None and declared != size:
        raise ShardWriteError(
            archive_key=archive_key,
            reason=f"size_bytes says {declared} but the source has {size} bytes",
            member_path=path,
        )
    entry: FileEntry = {"kind": "file", "key": path, "member_path": path}
    if item.get("id") is not None:
        entry["id"] = item["id"]
    if item.get("meta") is not None:
        entry["meta"] = dict(item["meta"])
    entry["size_bytes"] = size
    if digest is not None:
        entry[WRITE_CHECKSUM] = digest  # type: ignore[literal-required]
    return _Planned(item, source, entry, size, digest)


def _encode_manifest(plans: Sequence[_Planned], archive_key: str) -> bytes:
    """The internal manifest as JSONL bytes; unserialisable ``meta`` names its member."""
    lines: list[bytes] = []
    for plan in plans:
        try:
            line = json.dumps(
                plan.entry, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise ShardWriteError(
                archive_key=archive_key, reason=f"entry is not JSON: {exc}", member_path=plan.path
            ) from exc
        lines.append(line.encode("utf-8") + b"\n")
    data = b"".join(lines)
    if len(data) > MAX_INTERNAL_MANIFEST_BYTES:
        raise ShardWriteError(
            archive_key=archive_key,
            reason=f"internal manifest of {len(data)} bytes exceeds {MAX_INTERNAL_MANIFEST_BYTES}",
        )
    return data


_USTAR_IDS = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
_USTAR_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)
"""A regular file's header after its checksum: type, empty link name, magic and version, empty
owner names, device numbers and prefix, padding (as ``tarfile`` writes them)."""
_USTAR_TAIL_SUM = 8 * ord(" ") + sum(_USTAR_TAIL)  # with the checksum field as 8 spaces
_USTAR_NUMBER_END = 8**11
"""Sizes and times from here on take a PAX record: 11 octal digits hold less."""


def tar_header(name: str, size: int, mtime: int = 0) -> bytes:
    """A deterministic PAX header block (plus extended header when the name or size needs one).

    The plain block, for an ASCII name of at most 100 characters and numbers that fit, is built
    here byte for byte as ``tarfile`` builds it, in 0.9 us instead of 18 (half of the
    writer's CPU for 4 KiB members); anything else goes to ``tarfile``.
    """
    if (
        len(name) <= 100
        and name.isascii()
        and 0 <= size < _USTAR_NUMBER_END
        and 0 <= mtime < _USTAR_NUMBER_END
    ):
        raw = name.encode("ascii")
        head = b"%s%s%s%011o\0%011o\0" % (raw, bytes(100 - len(raw)), _USTAR_IDS, size, mtime)
        # the head's bytes sum to at most 148 x 255 < 65521: Adler-32's low half is 1 + the sum
        checksum = (zlib.adler32(head) & 0xFFFF) - 1 + _USTAR_TAIL_SUM
        return b"%s%06o\0 %s" % (head, checksum, _USTAR_TAIL)
    return _tarfile_header(name, size, mtime)


def _tarfile_header(name: str, size: int, mtime: int) -> bytes:
    """The header as ``tarfile`` writes it: what :func:`tar_header` gives in every case."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _exact_chunks(
    read: Callable[[int], bytes | memoryview], plan: _Planned, chunk_size: int, archive_key: str
) -> Iterator[bytes | memoryview]:
    """Exactly ``plan.size`` bytes from ``read``; the source must neither end early nor run on.

    When the pre-pass hashed the source, the data pass hashes it again so a file that changed in
    between is caught here instead of by every reader later.
    """
    hasher = new_digest(WRITE_CHECKSUM) if plan.checksum is not None else None
    remaining = plan.size
    while remaining:
        chunk = _read_source(read, min(chunk_size, remaining), archive_key, plan.path)
        if not chunk or len(chunk) > remaining:
            got = f"{'at least ' if chunk else ''}{plan.size - remaining + len(chunk)}"
            raise ShardWriteError(
                archive_key=archive_key,
                reason=f"source gave {got} bytes, expected {plan.size}",
                member_path=plan.path,
            )
        if hasher is not None:
            hasher.update(chunk)
        remaining -= len(chunk)
        yield chunk
    if _read_source(read, 1, archive_key, plan.path):
        raise ShardWriteError(
            archive_key=archive_key,
            reason=f"source has more than {plan.size} bytes",
            member_path=plan.path,
        )
    if hasher is not None and hexdigest(hasher) != plan.checksum:
        raise ShardWriteError(
            archive_key=archive_key,
            reason="source changed after it was hashed",
            member_path=plan.path,
        )


def _member_chunks(
    plan: _Planned, chunk_size: int, archive_key: str
) -> Iterator[bytes | memoryview]:
    """The data pass over one source, in chunks of at most ``chunk_size`` bytes. Bytes in
    memory, sized exactly by the pre-pass, are sliced as they are; whatever is read from a file
    or a stream is held to the size (and checksum) the pre-pass recorded."""
    if isinstance(plan.source, InMemory):
        yield from plan.source.chunks(chunk_size)
        return
    reader = _open(plan.source, archive_key, plan.path)
    try:
        yield from _exact_chunks(reader.read, plan, chunk_size, archive_key)
    finally:
        reader.close()


def _write_member(
    sink: _Sink, name: str, size: int, chunks: Iterable[bytes | memoryview], mtime: int = 0
) -> tuple[int, int, int]:
    """Write one member; returns its (header offset, data offset, size) in the tar stream."""
    offset = sink.position
    sink.write(tar_header(name, size, mtime))
    placed = (offset, sink.position, size)
    for chunk in chunks:
        sink.write(chunk)
    if size % BLOCK:
        sink.write(ZERO_BLOCK[: BLOCK - size % BLOCK])
    return placed


def write_shard(
    items: Sequence[ShardItem],
    out: _Writable,
    *,
    archive_key: str,
    compression: Compression = None,
    compresslevel: int = 6,
    chunk_size: int = 1 << 20,
    flush_spacing: int = FLUSH_SPACING,
) -> ShardWriteResult:
    """Stream a shard of ``items`` to ``out`` (which need not be seekable).

    Every source is measured and hashed first, because the internal manifest that leads the
    archive records sizes and CRC32C checksums. Bytes are hashed in place; a path is read twice; a
    seekable file is hashed from its current position and rewound. A non-seekable stream must
    carry ``size_bytes`` and is recorded without a checksum. Path problems, size disagreements and
    unreadable sources raise :class:`ShardWriteError` before anything is written; a source that
    changes during the data pass raises mid-stream, leaving ``out`` without the end-of-archive
    marker (and, for gzip, without a trailer), so no reader accepts it.

    The result's ``spans`` say where each member lies (:mod:`~s3exchange.shard_index`). A gzip
    shard is one gzip member with a full-flush point before a member header once
    ``flush_spacing`` bytes (:data:`~s3exchange.shard_index.FLUSH_SPACING`) have passed since
    the last one (and one before the end-of-archive marker), so each member is inflated from its
    range alone.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if compression not in (None, "gzip"):
        raise ValueError(f"unsupported compression {compression!r}")
    if not 0 <= compresslevel <= 9:
        raise ValueError(f"compresslevel must be 0..9, got {compresslevel}")
    seen: set[str] = set()
    for item in items:
        _check_item(item, archive_key, seen)
    plans = [_plan(item, archive_key, chunk_size) for item in items]
    manifest = _encode_manifest(plans, archive_key)
    # gzip framing comes from zlib (wbits=31, mtime 0) rather than gzip.GzipFile: the latter
    # writes its trailer from __del__ if an error leaves it open, making a broken shard look whole.
    sink = _Sink(out, compression, compresslevel)
    _write_member(sink, INTERNAL_MANIFEST_PATH, len(manifest), [manifest])
    placed: list[tuple[int, int, int]] = []
    flush_points: list[tuple[int, int]] | None = [] if compression == "gzip" else None
    for plan in plans:
        if flush_points is not None and (
            not flush_points or sink.position - flush_points[-1][0] >= flush_spacing
        ):
            flush_points.append(sink.flush_point())
        chunks = _member_chunks(plan, chunk_size, archive_key)
        mtime = plan.source.mtime()
        placed.append(_write_member(sink, plan.path, plan.size, chunks, mtime))
    if flush_points is not None:
        flush_points.append(sink.flush_point())
    sink.write(_EOF_MARKER)
    sink.finish()
    return ShardWriteResult(
        members=[plan.entry for plan in plans],
        count=len(plans),
        members_size_bytes=sum(plan.size for plan in plans),
        archive_size_bytes=sink.written,
        spans=spans(placed, flush_points),
    )
