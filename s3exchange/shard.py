"""Shard archives: a tar (or tar.gz) whose first member is a JSONL manifest of the other members.

Format code only. The writer streams to any object with ``write(bytes)`` (an S3 multipart writer in
production) and the reader parses any object with ``read(n)`` (an HTTP body in production); neither
touches the network, and memory stays bounded by the chunk size, never by a member or the shard.

Layout: ``__manifest__.jsonl`` first (one :class:`~s3exchange.types.FileEntry` line per data
member, in member order, with ``size_bytes`` and ``crc32c``), then the members, then the two zero
blocks that mark the end of a tar. Headers are PAX, mode 0644 and uid/gid 0; mtime is a path
source's own (whole seconds) and 0 for bytes and streams, so the same items always give the same
bytes. ``tarfile`` and ``webdataset`` read the result as a plain tar.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import struct
import tarfile
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Protocol, cast

import crc32c

from .errors import ShardReadError, ShardWriteError
from .keys import virtual_key
from .types import INTERNAL_MANIFEST_PATH, Compression, FileEntry, ShardEntry, ShardItem

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "MAX_INTERNAL_MANIFEST_BYTES",
    "Shard",
    "ShardMember",
    "ShardMemberStream",
    "ShardWriteResult",
    "iter_internal_manifest",
    "iter_shard",
    "key_and_field",
    "read_internal_manifest",
    "sample_key",
    "split_items",
    "write_shard",
]

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_EOF_MARKER = bytes(2 * _BLOCK)
_MAX_EXTENDED_HEADER = 1 << 20
"""Cap on a PAX / GNU long-name header, so a hostile header cannot exhaust memory."""
MAX_INTERNAL_MANIFEST_BYTES = 64 << 20
"""Cap on the internal manifest member: 1 KiB per line (the writer's are ~130 bytes plus the
member's meta) x 65,536 members; refused from its tar header before a byte of it is read, and
writers roll shards before reaching it. Readers never hold it parsed: listings and planning
stream it line by line, and :func:`iter_shard` keeps the raw lines (the bytes plus 16 per line,
~1.6x for the smallest lines) where parsed entries cost 8-13x (a 250 MB manifest in a 255 KB
.tar.gz once cost 1 GiB RSS)."""
_MAX_INTERNAL_MANIFEST = MAX_INTERNAL_MANIFEST_BYTES
_MAX_TRAILER = 20 * _BLOCK
"""Bytes read after the end-of-archive marker, which must be zero: one 10 KiB record, the most a
tar written with the default blocking factor (GNU tar, bsdtar, Python's tarfile) pads with.
Anything later is never read: 3 GiB of zero padding once cost 24 s of CPU to check."""
_MANIFEST_CHUNK = 1 << 16
"""Internal manifest bytes taken from the archive at a time while its lines are split."""
_COALESCE_BYTES = 64 << 10
"""Writes smaller than this are gathered so the sink sees few, larger writes."""
_HASH_HEX = {"crc32c": re.compile(r"[0-9a-f]{8}"), "sha256": re.compile(r"[0-9a-f]{64}")}
_DRIVE = re.compile(r"[A-Za-z]:")
_OCTAL = re.compile(rb"[0-7]*")
_REGULAR_TYPES = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_TYPE_NAMES = {
    tarfile.LNKTYPE: "hard link",
    tarfile.SYMTYPE: "symbolic link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.DIRTYPE: "directory",
    tarfile.FIFOTYPE: "FIFO",
}
_EMPTY_VIEW = memoryview(b"")


class _Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...


WRITE_CHECKSUM = "crc32c"
"""What the writer records per member: CRC32C (hardware-accelerated, ~30 GB/s here, 15x sha256),
enough to catch corruption and truncation; readers also verify ``sha256`` when an archive
records that instead."""
CHECKSUM_FIELDS = ("crc32c", "sha256")


def new_digest(field: str) -> _Digest:
    """A running checksum for a manifest field (``crc32c`` or ``sha256``)."""
    if field == "crc32c":
        checksum: _Digest = crc32c.CRC32CHash()
        return checksum
    return hashlib.sha256()


def hexdigest(digest: _Digest) -> str:
    """The checksum as lowercase hex."""
    return str(digest.hexdigest())  # type: ignore[attr-defined]


class _Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _member_path_problem(path: str) -> str | None:
    """Why ``path`` cannot name a member (it could escape an extraction directory), or None."""
    if not path:
        return "empty member path"
    if "\0" in path:
        return "member path contains a NUL character"
    if path.startswith(("/", "\\")) or _DRIVE.match(path):
        return "member path is absolute"
    if ".." in path and ".." in re.split(r"[/\\]", path):
        return "member path has a '..' component"
    if path.endswith("/"):
        return "member path ends with '/' (a directory name)"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "member path is not valid Unicode"
    return None


# --------------------------------------------------------------------------------------------
# Splitting items into shards
# --------------------------------------------------------------------------------------------


def _is_seekable(source: object) -> bool:
    seekable = getattr(source, "seekable", None)
    return callable(seekable) and bool(seekable())


def _item_size(item: ShardItem) -> int:
    """The member size of ``item`` for :func:`split_items`, without reading its bytes."""
    declared = item.get("size_bytes")
    if declared is not None:
        return declared
    source = item["source"]
    if isinstance(source, bytes | bytearray | memoryview):
        return memoryview(source).nbytes
    if isinstance(source, str | os.PathLike):
        return os.path.getsize(source)
    if _is_seekable(source):
        start = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(start)
        return end - start
    raise ValueError(
        f"cannot size member {item['member_path']!r}: a non-seekable stream needs size_bytes"
    )


_KEY_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""webdataset's ``base_plus_ext``: key up to the first dot of the basename, then the field."""


def key_and_field(path: str) -> tuple[str, str] | None:
    """``(key, field)`` of a path as webdataset splits it, or ``None`` without an extension.

    ``"a/b/x.seg.PNG"`` gives ``("a/b/x", "seg.png")``: the field is lower-cased, as
    webdataset's ``group_by_keys`` does. The same regular expression, so edge cases agree too.
    """
    match = _KEY_FIELD.match(path)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def sample_key(member_path: str) -> str:
    """The webdataset sample ``member_path`` belongs to; a path without extension is its own."""
    split = key_and_field(member_path)
    return split[0] if split else member_path


def split_items(
    items: Iterable[ShardItem], max_entries: int | None = None, max_bytes: int | None = None
) -> list[list[ShardItem]]:
    """Cut ``items`` into batches of at most ``max_entries`` items and ``max_bytes``.

    Files of one webdataset sample (:func:`sample_key`: ``x.jpg`` and ``x.json``) always land
    in one batch, next to each other where the first of them stood, so a reader grouping by key
    never sees a sample split. Otherwise order is kept. Sizes are member sizes (tar headers not
    counted); a sample larger than the limits gets a batch of its own. No batch is empty. Sizes
    are only looked up when ``max_bytes`` is given; a non-seekable stream without
    ``size_bytes`` then raises ValueError.
    """
    for name, limit in (("max_entries", max_entries), ("max_bytes", max_bytes)):
        if limit is not None and limit <= 0:
            raise ValueError(f"{name} must be positive, got {limit}")
    samples: dict[str, list[ShardItem]] = {}
    for item in items:
        samples.setdefault(sample_key(item["member_path"]), []).append(item)
    batches: list[list[ShardItem]] = []
    batch: list[ShardItem] = []
    batch_bytes = 0
    for sample in samples.values():
        size = sum(_item_size(item) for item in sample) if max_bytes is not None else 0
        full = max_entries is not None and len(batch) + len(sample) > max_entries
        over = max_bytes is not None and batch_bytes + size > max_bytes
        if batch and (full or over):
            batches.append(batch)
            batch, batch_bytes = [], 0
        batch += sample
        batch_bytes += size
    if batch:
        batches.append(batch)
    return batches


@dataclass(frozen=True, slots=True)
class Shard:
    """An uploaded shard: its outer manifest entry and the members its internal manifest lists."""

    entry: ShardEntry
    members: list[FileEntry]

    @staticmethod
    def split_items(
        items: Iterable[ShardItem], max_entries: int | None = None, max_bytes: int | None = None
    ) -> list[list[ShardItem]]:
        """Same as the module-level :func:`split_items`."""
        return split_items(items, max_entries, max_bytes)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardWriteResult:
    """What :func:`write_shard` wrote: the internal manifest entries and the byte counts."""

    members: list[FileEntry]
    count: int
    members_size_bytes: int
    archive_size_bytes: int


@dataclass(frozen=True, slots=True)
class _Planned:
    """A member after the pre-pass: its manifest entry and where its bytes come from."""

    item: ShardItem
    entry: FileEntry
    size: int
    checksum: str | None
    start: int | None
    """Position a seekable file source is read from (None for other sources)."""

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

    def write(self, data: bytes | memoryview) -> None:
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


def _read_source(read: Callable[[int], bytes], n: int, archive_key: str, member_path: str) -> bytes:
    try:
        return read(n)
    except OSError as exc:
        raise ShardWriteError(
            archive_key, f"reading the source failed: {exc}", member_path
        ) from exc


def _hash_source(
    read: Callable[[int], bytes], chunk_size: int, archive_key: str, member_path: str
) -> tuple[int, str]:
    """Size and checksum of what ``read`` yields until end of stream, one chunk at a time."""
    hasher = new_digest(WRITE_CHECKSUM)
    size = 0
    while chunk := _read_source(read, chunk_size, archive_key, member_path):
        hasher.update(chunk)
        size += len(chunk)
    return size, hexdigest(hasher)


def _open_path(source: str | os.PathLike[str], archive_key: str, member_path: str) -> IO[bytes]:
    try:
        return open(source, "rb")
    except OSError as exc:
        raise ShardWriteError(archive_key, f"cannot open {source!r}: {exc}", member_path) from exc


def _check_item(item: ShardItem, archive_key: str, seen: set[str]) -> None:
    """Reject a member path that is unsafe, reserved or repeated, before anything is read."""
    path = item.get("member_path")
    if not isinstance(path, str):
        raise ShardWriteError(archive_key, f"member_path must be a str, got {path!r}")
    problem = _member_path_problem(path)
    if problem is None and path == INTERNAL_MANIFEST_PATH:
        problem = "member path is reserved for the internal manifest"
    if problem is None and path in seen:
        problem = "duplicate member path"
    if problem is not None:
        raise ShardWriteError(archive_key, problem, path)
    declared = item.get("size_bytes")
    if declared is not None and (
        not isinstance(declared, int) or isinstance(declared, bool) or declared < 0
    ):
        raise ShardWriteError(archive_key, f"invalid size_bytes {declared!r}", path)
    seen.add(path)


def _measure(
    item: ShardItem, archive_key: str, chunk_size: int
) -> tuple[int, str | None, int | None]:
    """Pre-pass over one source: (size, checksum or None, start position of a seekable file)."""
    source, path = item["source"], item["member_path"]
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        hasher = new_digest(WRITE_CHECKSUM)
        hasher.update(view)
        return view.nbytes, hexdigest(hasher), None
    if isinstance(source, str | os.PathLike):
        with _open_path(source, archive_key, path) as handle:
            size, digest = _hash_source(handle.read, chunk_size, archive_key, path)
        return size, digest, None
    if not callable(getattr(source, "read", None)):
        raise ShardWriteError(archive_key, f"unsupported source {type(source).__name__}", path)
    if _is_seekable(source):
        start = source.tell()
        size, digest = _hash_source(source.read, chunk_size, archive_key, path)
        source.seek(start)
        return size, digest, start
    declared = item.get("size_bytes")
    if declared is None:
        raise ShardWriteError(archive_key, "a non-seekable stream needs size_bytes", path)
    return declared, None, None


def _plan(item: ShardItem, archive_key: str, chunk_size: int) -> _Planned:
    """Measure one item and build its internal manifest entry."""
    path = item["member_path"]
    size, digest, start = _measure(item, archive_key, chunk_size)
    declared = item.get("size_bytes")
    if declared is not None and declared != size:
        raise ShardWriteError(
            archive_key, f"size_bytes says {declared} but the source has {size} bytes", path
        )
    entry: FileEntry = {"kind": "file", "key": path, "member_path": path}
    if item.get("id") is not None:
        entry["id"] = item["id"]
    if item.get("meta") is not None:
        entry["meta"] = dict(item["meta"])
    entry["size_bytes"] = size
    if digest is not None:
        entry[WRITE_CHECKSUM] = digest  # type: ignore[literal-required]
    return _Planned(item, entry, size, digest, start)


def _encode_manifest(plans: Sequence[_Planned], archive_key: str) -> bytes:
    """The internal manifest as JSONL bytes; unserialisable ``meta`` names its member."""
    lines: list[bytes] = []
    for plan in plans:
        try:
            line = json.dumps(
                plan.entry, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            )
        except (TypeError, ValueError) as exc:
            raise ShardWriteError(archive_key, f"entry is not JSON: {exc}", plan.path) from exc
        lines.append(line.encode("utf-8") + b"\n")
    data = b"".join(lines)
    if len(data) > _MAX_INTERNAL_MANIFEST:
        raise ShardWriteError(
            archive_key, f"internal manifest of {len(data)} bytes exceeds {_MAX_INTERNAL_MANIFEST}"
        )
    return data


def _tar_header(name: str, size: int, mtime: int = 0) -> bytes:
    """A deterministic PAX header block (plus extended header when the name or size needs one)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _exact_chunks(
    read: Callable[[int], bytes], plan: _Planned, chunk_size: int, archive_key: str
) -> Iterator[bytes]:
    """Exactly ``plan.size`` bytes from ``read``; the source must neither end early nor run on.

    When the pre-pass hashed the source, the data pass hashes it again so a file that changed in
    between is caught here instead of by every reader later.
    """
    hasher = new_digest(WRITE_CHECKSUM) if plan.checksum is not None else None
    remaining = plan.size
    while remaining:
        chunk = _read_source(read, min(chunk_size, remaining), archive_key, plan.path)
        if not chunk or len(chunk) > remaining:
            got = plan.size - remaining + len(chunk)
            raise ShardWriteError(
                archive_key,
                f"source gave {'at least ' if chunk else ''}{got} bytes, expected {plan.size}",
                plan.path,
            )
        if hasher is not None:
            hasher.update(chunk)
        remaining -= len(chunk)
        yield chunk
    if _read_source(read, 1, archive_key, plan.path):
        raise ShardWriteError(archive_key, f"source has more than {plan.size} bytes", plan.path)
    if hasher is not None and hexdigest(hasher) != plan.checksum:
        raise ShardWriteError(archive_key, "source changed after it was hashed", plan.path)


def _member_chunks(
    plan: _Planned, chunk_size: int, archive_key: str
) -> Iterator[bytes | memoryview]:
    """The data pass over one source, in chunks of at most ``chunk_size`` bytes."""
    source = plan.item["source"]
    if isinstance(source, bytes) and len(source) <= chunk_size:
        yield source  # the common small member: no slicing, no copy
    elif isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        for offset in range(0, view.nbytes, chunk_size):
            yield view[offset : offset + chunk_size]
    elif isinstance(source, str | os.PathLike):
        with _open_path(source, archive_key, plan.path) as handle:
            yield from _exact_chunks(handle.read, plan, chunk_size, archive_key)
    else:
        if plan.start is not None:
            source.seek(plan.start)
        yield from _exact_chunks(source.read, plan, chunk_size, archive_key)


def _source_mtime(source: object) -> int:
    """A path source's modification time for its tar header (``tar tv`` showed 1970); 0 for
    bytes and streams, which have none, so their shards stay byte-identical run to run."""
    if isinstance(source, str | os.PathLike):
        try:
            return max(0, int(os.stat(source).st_mtime))
        except OSError:
            return 0  # the data pass opens it again and reports the error
    return 0


def _write_member(
    sink: _Sink, name: str, size: int, chunks: Iterable[bytes | memoryview], mtime: int = 0
) -> None:
    sink.write(_tar_header(name, size, mtime))
    for chunk in chunks:
        sink.write(chunk)
    if size % _BLOCK:
        sink.write(_ZERO_BLOCK[: _BLOCK - size % _BLOCK])


def write_shard(
    items: Sequence[ShardItem],
    out: _Writable,
    *,
    archive_key: str,
    compression: Compression = None,
    compresslevel: int = 6,
    chunk_size: int = 1 << 20,
) -> ShardWriteResult:
    """Stream a shard of ``items`` to ``out`` (which need not be seekable).

    Every source is measured and hashed first, because the internal manifest that leads the
    archive records sizes and CRC32C checksums. Bytes are hashed in place; a path is read twice; a
    seekable file is hashed from its current position and rewound. A non-seekable stream must
    carry ``size_bytes`` and is recorded without a checksum. Path problems, size disagreements and
    unreadable sources raise :class:`ShardWriteError` before anything is written; a source that
    changes during the data pass raises mid-stream, leaving ``out`` without the end-of-archive
    marker (and, for gzip, without a trailer), so no reader accepts it.
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
    for plan in plans:
        chunks = _member_chunks(plan, chunk_size, archive_key)
        _write_member(sink, plan.path, plan.size, chunks, _source_mtime(plan.item["source"]))
    sink.write(_EOF_MARKER)
    sink.finish()
    return ShardWriteResult(
        members=[plan.entry for plan in plans],
        count=len(plans),
        members_size_bytes=sum(plan.size for plan in plans),
        archive_size_bytes=sink.written,
    )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class _GzipChunks:
    """Decompressed chunks of a (possibly multi-member) gzip stream; b"" at a clean end."""

    def __init__(self, source: _Readable, read_size: int, archive_key: str) -> None:
        self._source = source
        self._read_size = read_size
        self._archive_key = archive_key
        self._inflater = zlib.decompressobj(31)
        self._pending = b""
        self._started = False
        self._members = 0

    def __call__(self) -> bytes:
        while True:
            if self._inflater.eof:
                self._pending = self._inflater.unused_data + self._pending
                self._inflater = zlib.decompressobj(31)
                self._started = False
                self._members += 1
            data = self._next_input()
            if data is None:
                return b""
            try:
                out = self._inflater.decompress(data, self._read_size)
            except zlib.error as exc:
                raise ShardReadError(self._archive_key, f"corrupt gzip stream: {exc}") from exc
            if out:
                return out
            if not data and not self._inflater.eof:
                raise ShardReadError(self._archive_key, "truncated gzip stream")

    def _next_input(self) -> bytes | None:
        """Compressed bytes to feed next: b"" lets the inflater flush at the end of the source,
        None marks a clean end after a complete gzip member."""
        while True:
            if self._inflater.unconsumed_tail:
                return self._inflater.unconsumed_tail
            data, self._pending = self._pending, b""
            if not data:
                data = self._source.read(self._read_size)
            if not data:
                if self._started:
                    return b""
                if self._members:
                    return None
                raise ShardReadError(self._archive_key, "empty gzip stream")
            if not self._started and self._members:
                data = data.lstrip(b"\0")  # zero padding between members, as gzip tolerates
                if not data:
                    continue
            self._started = True
            return data


class _Buffer:
    """Serves bytes from a chunk source as zero-copy views, refilling only when empty."""

    __slots__ = ("_end", "_next_chunk", "_pos", "_view")

    def __init__(self, next_chunk: Callable[[], bytes]) -> None:
        self._next_chunk = next_chunk
        self._view = _EMPTY_VIEW
        self._pos = self._end = 0

    def take(self, n: int) -> memoryview:
        """Up to ``n`` (> 0) bytes; empty only at the end of the stream."""
        if self._pos == self._end:
            chunk = self._next_chunk()
            if not chunk:
                return _EMPTY_VIEW
            self._view = memoryview(chunk).cast("B")
            self._pos, self._end = 0, len(self._view)
        start = self._pos
        self._pos = min(self._end, start + n)
        return self._view[start : self._pos]

    def take_exact(self, n: int) -> bytes:
        """``n`` bytes, or fewer only at the end of the stream."""
        first = self.take(n)
        if len(first) == n or not first:
            return first.tobytes()
        parts = [first]
        got = len(first)
        while got < n and (view := self.take(n - got)):
            parts.append(view)
            got += len(view)
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class _Header:
    """A data member's header after extended headers were applied."""

    name: str
    size: int


def _byte_sum(block: bytes) -> int:
    """``sum(block)`` of a 512-byte header in 0.4 us instead of 4: Adler-32's first half is 1 +
    the byte sum mod 65521, exact for each 256-byte half (at most 256 * 255 = 65280)."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _nts(field: bytes) -> str:
    """A NUL-terminated header string."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _TarReader:
    """Parses tar headers and hands out member data; every failure is a ShardReadError."""

    __slots__ = ("_buffer", "archive_key", "last_member")

    def __init__(self, buffer: _Buffer, archive_key: str) -> None:
        self._buffer = buffer
        self.archive_key = archive_key
        self.last_member: str | None = None

    def error(self, reason: str, member_path: str | None = None) -> ShardReadError:
        return ShardReadError(self.archive_key, reason, member_path)

    def _after(self) -> str:
        return f" (after member {self.last_member!r})" if self.last_member is not None else ""

    def next_member(self) -> _Header | None:
        """The next data member's header, or None after a well-formed end-of-archive marker."""
        pax: dict[str, str] = {}
        longname: str | None = None
        while True:
            block = self._header_block()
            if block == _ZERO_BLOCK:
                if pax or longname is not None:
                    raise self.error("extended header not followed by a member" + self._after())
                self._end_of_archive()
                return None
            name, size, typeflag = self._parse_block(block)
            if typeflag == tarfile.XHDTYPE:
                pax.update(self._parse_pax(self._extended(size)))
            elif typeflag == tarfile.GNUTYPE_LONGNAME:
                longname = _nts(self._extended(size))
            elif typeflag in (tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK):
                self._extended(size)  # global headers carry nothing we use; links are refused
            else:
                name = pax.get("path", longname if longname is not None else name)
                if "size" in pax:
                    size = self._pax_size(pax["size"], name)
                self._check_member(name, typeflag, pax)
                self.last_member = name
                return _Header(name, size)

    def _header_block(self) -> bytes:
        block = self._buffer.take_exact(_BLOCK)
        if not block:
            raise self.error("stream ended without the end-of-archive marker" + self._after())
        if len(block) < _BLOCK:
            raise self.error("stream ended inside a header" + self._after())
        return block

    def _number(self, field: bytes, what: str) -> int:
        """A numeric header field: octal text, or GNU base-256 for large values."""
        if field[0] == 0x80:
            return int.from_bytes(field[1:], "big")
        digits = field.split(b"\0", 1)[0].strip(b" ")
        if field[0] == 0xFF or not _OCTAL.fullmatch(digits):
            raise self.error(f"malformed {what} field in header {field!r}" + self._after())
        return int(digits, 8) if digits else 0

    def _parse_block(self, block: bytes) -> tuple[str, int, bytes]:
        """(name, size, typeflag) of a header block whose checksum is verified."""
        stored = self._number(block[148:156], "checksum")
        unsigned = _byte_sum(block) - sum(block[148:156]) + 256
        if stored != unsigned and stored != sum(struct.unpack("148b8x356b", block)) + 256:
            raise self.error("header checksum mismatch" + self._after())
        name = _nts(block[0:100])
        if block[257:263] == b"ustar\x00" and block[345] != 0:
            name = _nts(block[345:500]) + "/" + name
        return name, self._number(block[124:136], "size"), block[156:157]

    def _parse_pax(self, data: bytes) -> dict[str, str]:
        """Records ``"<len> <key>=<value>\\n"`` of a PAX extended header."""
        records: dict[str, str] = {}
        pos = 0
        while pos < len(data) and data[pos] != 0:
            space = data.find(b" ", pos)
            length = int(data[pos:space]) if data[pos:space].isdigit() else 0
            end = pos + length
            if space < 0 or end > len(data) or end <= space or data[end - 1] != 0x0A:
                raise self.error("malformed PAX extended header" + self._after())
            key, equals, value = data[space + 1 : end - 1].partition(b"=")
            if not equals:
                raise self.error("malformed PAX record" + self._after())
            records[key.decode("utf-8", "surrogateescape")] = value.decode(
                "utf-8", "surrogateescape"
            )
            pos = end
        return records

    def _pax_size(self, value: str, name: str) -> int:
        if not value.isdigit():
            raise self.error(f"malformed PAX size {value!r}", name)
        return int(value)

    def _check_member(self, name: str, typeflag: bytes, pax: dict[str, str]) -> None:
        """Refuse anything but a regular file at a safe relative path."""
        if typeflag not in _REGULAR_TYPES:
            kind = _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")
            raise self.error(f"refusing {kind} member", name)
        if pax and any(key.startswith("GNU.sparse") for key in pax):
            raise self.error("refusing GNU sparse member", name)
        problem = _member_path_problem(name)
        if problem is not None:
            raise self.error(f"unsafe {problem}", name)

    def _extended(self, size: int) -> bytes:
        """The body of an extended header, capped at 1 MiB."""
        if size > _MAX_EXTENDED_HEADER:
            raise self.error(
                f"extended header of {size} bytes exceeds the {_MAX_EXTENDED_HEADER} byte limit"
                + self._after()
            )
        data = self.read_exact(size, None)
        self.skip_padding(size, None)
        return data

    def read_exact(self, size: int, member: str | None) -> bytes:
        """A whole (small) member body."""
        data = self._buffer.take_exact(size)
        if len(data) < size:
            raise self.error("stream ended inside member data" + self._after(), member)
        return data

    def read_data(self, n: int, member: str | None) -> memoryview:
        """Up to ``n`` bytes of the current member's data."""
        view = self._buffer.take(n)
        if not view:
            raise self.error("stream ended inside member data", member)
        return view

    def skip(self, size: int, member: str | None) -> None:
        while size:
            size -= len(self.read_data(size, member))

    def skip_padding(self, size: int, member: str | None) -> None:
        pad = -size % _BLOCK
        while pad:
            view = self._buffer.take(pad)
            if not view:
                raise self.error("stream ended inside member padding" + self._after(), member)
            pad -= len(view)

    def _end_of_archive(self) -> None:
        """Require the second zero block; then at most one record of zero padding is read."""
        block = self._buffer.take_exact(_BLOCK)
        if len(block) < _BLOCK:
            raise self.error("stream ended inside the end-of-archive marker" + self._after())
        if block != _ZERO_BLOCK:
            raise self.error("malformed end-of-archive marker" + self._after())
        left = _MAX_TRAILER
        while left and (view := self._buffer.take(left)):
            if view.tobytes().strip(b"\0"):
                raise self.error("data after the end-of-archive marker")
            left -= len(view)


def _open_tar(
    fileobj: _Readable, archive_key: str, compression: Compression, read_size: int
) -> _TarReader:
    if read_size <= 0:
        raise ValueError(f"read_size must be positive, got {read_size}")
    chunks: Callable[[], bytes]
    if compression is None:
        chunks = functools.partial(fileobj.read, read_size)
    elif compression == "gzip":
        chunks = _GzipChunks(fileobj, read_size, archive_key)
    else:
        raise ValueError(f"unsupported compression {compression!r}")
    return _TarReader(_Buffer(chunks), archive_key)


def _manifest_entry(obj: Any, archive_key: str, line: int) -> FileEntry:
    """Check one parsed internal manifest line; ``member_path`` defaults to ``key``."""

    def bad(reason: str) -> ShardReadError:
        return ShardReadError(archive_key, f"internal manifest line {line}: {reason}")

    if not isinstance(obj, dict) or obj.get("kind") != "file":
        raise bad("not a file entry")
    path = obj.get("member_path", obj.get("key"))
    if not isinstance(path, str):
        raise bad("no member_path")
    size = obj.get("size_bytes")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad(f"invalid size_bytes {size!r}")
    for field, pattern in _HASH_HEX.items():
        digest = obj.get(field)
        if digest is not None and not (isinstance(digest, str) and pattern.fullmatch(digest)):
            raise bad(f"invalid {field} {digest!r}")
    obj["member_path"] = path
    obj.setdefault("key", path)
    return cast(FileEntry, obj)


def _parse_line(text: bytes, archive_key: str, line: int) -> FileEntry:
    """One internal manifest line as a checked entry; JSON too deeply nested for the parser
    (200k ``[``) is a ShardReadError naming the line like any other invalid JSON."""
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ShardReadError(archive_key, f"internal manifest line {line}: {exc}") from None
    except RecursionError:
        reason = f"internal manifest line {line}: JSON nested too deeply"
        raise ShardReadError(archive_key, reason) from None
    return _manifest_entry(obj, archive_key, line)


def _manifest_lines(reader: _TarReader, header: _Header) -> Iterator[tuple[int, bytes]]:
    """``(line number, text)`` of each non-blank internal manifest line, streamed from the
    archive ``_MANIFEST_CHUNK`` bytes at a time; refused from its header when over the cap."""
    if header.size > MAX_INTERNAL_MANIFEST_BYTES:
        raise reader.error(
            f"internal manifest of {header.size} bytes exceeds the "
            f"{MAX_INTERNAL_MANIFEST_BYTES} byte limit",
            header.name,
        )
    remaining = header.size
    parts: list[bytes] = []  # the line being gathered, across chunks
    line = 0
    while remaining:
        data = reader.read_data(min(remaining, _MANIFEST_CHUNK), header.name).tobytes()
        remaining -= len(data)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line += 1
            text = b"".join((*parts, data[start:end])) if parts else data[start:end]
            parts.clear()
            if text.strip():
                yield line, text
            start = end + 1
        if start < len(data):
            parts.append(data[start:])
    reader.skip_padding(header.size, header.name)
    if parts and (text := b"".join(parts)).strip():
        yield line + 1, text


class _ListedManifest:
    """The internal manifest as iter_shard holds it: raw lines in one buffer, each parsed and
    checked when its member arrives (the bytes plus 16 per line, not 8-13x as dicts)."""

    __slots__ = ("_archive_key", "_data", "_ends", "_lines")

    def __init__(self, lines: Iterable[tuple[int, bytes]], archive_key: str) -> None:
        self._archive_key = archive_key
        self._data = bytearray()
        self._ends = array("Q")
        self._lines = array("Q")
        for line, text in lines:
            self._data += text
            self._ends.append(len(self._data))
            self._lines.append(line)

    def __len__(self) -> int:
        return len(self._ends)

    def entry(self, index: int) -> FileEntry:
        start = self._ends[index - 1] if index else 0
        text = bytes(self._data[start : self._ends[index]])
        return _parse_line(text, self._archive_key, self._lines[index])


def iter_internal_manifest(
    fileobj: _Readable,
    *,
    archive_key: str,
    compression: Compression = None,
    internal_manifest_path: str = INTERNAL_MANIFEST_PATH,
) -> Iterator[FileEntry]:
    """The internal manifest entries, as stored, one line at a time: never held whole.

    Reads only the archive's first member; raises :class:`ShardReadError` when it is not the
    internal manifest, or is larger than ``MAX_INTERNAL_MANIFEST_BYTES``.
    """
    reader = _open_tar(fileobj, archive_key, compression, 1 << 16)
    header = reader.next_member()
    if header is None or header.name != internal_manifest_path:
        found = "no members" if header is None else f"first member {header.name!r}"
        raise reader.error(f"no internal manifest {internal_manifest_path!r} ({found})")
    for line, text in _manifest_lines(reader, header):
        yield _parse_line(text, archive_key, line)


def read_internal_manifest(
    fileobj: _Readable,
    *,
    archive_key: str,
    compression: Compression = None,
    internal_manifest_path: str = INTERNAL_MANIFEST_PATH,
) -> list[FileEntry]:
    """:func:`iter_internal_manifest` as a list."""
    return list(
        iter_internal_manifest(
            fileobj,
            archive_key=archive_key,
            compression=compression,
            internal_manifest_path=internal_manifest_path,
        )
    )


def _checksum_of(entry: FileEntry) -> tuple[str, str] | None:
    """The (field, hex) to verify a member against: crc32c if recorded, else sha256."""
    for field in CHECKSUM_FIELDS:
        value = entry.get(field)
        if isinstance(value, str):
            return field, value
    return None


class ShardMemberStream(io.RawIOBase):
    """The data of one shard member, read straight from the archive stream.

    When verification is on, the checksum (``field``: crc32c or sha256) is checked as the last
    byte is read, so a corrupt member raises before its final chunk is returned. Closed once the
    iterator moves on.
    """

    def __init__(
        self,
        reader: _TarReader,
        member_path: str,
        size: int,
        checksum: tuple[str, str] | None,
        chunk: int,
    ) -> None:
        super().__init__()
        self._reader = reader
        self.member_path = member_path
        self.size = size
        self._remaining = size
        self._field: str = checksum[0] if checksum is not None else ""
        self._expected: str | None = checksum[1] if checksum is not None else None
        self._hasher = new_digest(self._field) if checksum is not None else None
        self._chunk = chunk
        self._failure: ShardReadError | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """Up to ``size`` bytes (all that is left when negative); fewer only at member end."""
        self._check_open()
        n = self._remaining if size is None or size < 0 else min(size, self._remaining)
        if n == 0:
            return b""
        first = self._take(n)
        if len(first) == n:
            return first.tobytes()
        parts = [first]
        got = len(first)
        while got < n:
            view = self._take(n - got)
            parts.append(view)
            got += len(view)
        return b"".join(parts)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        self._check_open()
        with memoryview(buffer) as raw, raw.cast("B") as target:
            n = min(len(target), self._remaining)
            got = 0
            while got < n:
                view = self._take(n - got)
                target[got : got + len(view)] = view
                got += len(view)
        return got

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"shard member stream {self.member_path!r} is closed")

    def _take(self, n: int) -> memoryview:
        if self._failure is not None:
            raise self._failure
        view = self._reader.read_data(n, self.member_path)
        self._remaining -= len(view)
        if self._hasher is not None:
            self._hasher.update(view)
            if self._remaining == 0:
                self._verify(hexdigest(self._hasher))
        return view

    def _verify(self, digest: str) -> None:
        if digest != self._expected:
            self._failure = self._reader.error(
                f"{self._field} mismatch: archive has {digest}, manifest says {self._expected}",
                self.member_path,
            )
            raise self._failure

    def _finish(self) -> None:
        """Consume (and verify) whatever the caller left unread."""
        if self._failure is not None:
            raise self._failure
        while self._remaining:
            self._take(min(self._remaining, self._chunk))


@dataclass(frozen=True, slots=True)
class ShardMember:
    """One data member: its index among data members, its entry, and its data stream."""

    index: int
    entry: FileEntry
    stream: ShardMemberStream

    def read(self) -> bytes:
        """The whole (remaining) member data."""
        return self.stream.read()


def _expanded(entry: FileEntry, archive_key: str, member_path: str) -> FileEntry:
    """A member entry as users see it: keyed ``archive#member`` and naming its archive."""
    out = entry.copy()
    out["key"] = virtual_key(archive_key, member_path)
    out["archive_key"] = archive_key
    out["member_path"] = member_path
    return out


def _listed_entry(
    manifest: _ListedManifest, index: int, header: _Header, reader: _TarReader
) -> FileEntry:
    """The manifest entry of member ``index``; its name and size must agree with the header."""
    if index >= len(manifest):
        raise reader.error(f"more members than the {len(manifest)} listed", header.name)
    entry = manifest.entry(index)
    if entry["member_path"] != header.name:
        raise reader.error(
            f"member {index} should be {entry['member_path']!r} per the internal manifest",
            header.name,
        )
    size = entry.get("size_bytes")
    if size is not None and size != header.size:
        raise reader.error(
            f"header size {header.size} disagrees with manifest size_bytes {size}", header.name
        )
    return _expanded(entry, reader.archive_key, header.name)


def _header_entry(header: _Header, archive_key: str) -> FileEntry:
    """An entry synthesised from the header, for a plain (webdataset-style) tar."""
    return {
        "kind": "file",
        "key": virtual_key(archive_key, header.name),
        "member_path": header.name,
        "size_bytes": header.size,
        "archive_key": archive_key,
    }


def _check_count(reader: _TarReader, found: str, count: int, expected: int | None) -> None:
    if expected is not None and count != expected:
        raise reader.error(f"{found} {count} members but expected_count is {expected}")


def iter_shard(
    fileobj: _Readable,
    *,
    archive_key: str,
    compression: Compression = None,
    expected_count: int | None = None,
    verify: bool = True,
    select: Callable[[int, FileEntry], bool] | None = None,
    internal_manifest_path: str = INTERNAL_MANIFEST_PATH,
    read_size: int = 1 << 18,
) -> Iterator[ShardMember]:
    """Yield the data members of a shard, in order, streaming from ``fileobj``.

    Structure is always checked: header checksums, safe paths, regular files only, capped
    extended headers, the end-of-archive marker (a stream that ends anywhere else raises), and
    the agreement of member names, sizes and count with the internal manifest and
    ``expected_count``; the end-of-archive marker ends the read (at most one record of zero
    padding after it is looked at). ``verify`` adds checksum (crc32c or sha256) checking. The
    internal manifest is held as raw lines, each parsed and checked when its member arrives. A
    tar without the internal manifest first is read webdataset-style with entries built from
    its headers.
    Members for which ``select(index, entry)`` is false are skipped unhashed. A member the
    caller did not finish is consumed (and verified) before the next is yielded; its stream is
    then closed.
    """
    reader = _open_tar(fileobj, archive_key, compression, read_size)
    header = reader.next_member()
    manifest: _ListedManifest | None = None
    if header is not None and header.name == internal_manifest_path:
        manifest = _ListedManifest(_manifest_lines(reader, header), archive_key)
        _check_count(reader, "internal manifest lists", len(manifest), expected_count)
        header = reader.next_member()
    index = 0
    while header is not None:
        if manifest is not None:
            entry = _listed_entry(manifest, index, header, reader)
        elif expected_count is not None and index >= expected_count:
            raise reader.error(f"more members than expected_count {expected_count}", header.name)
        else:
            entry = _header_entry(header, archive_key)
        if select is None or select(index, entry):
            checksum = _checksum_of(entry) if verify else None
            stream = ShardMemberStream(reader, header.name, header.size, checksum, read_size)
            try:
                yield ShardMember(index, entry, stream)
                stream._finish()
            finally:
                stream.close()
        else:
            reader.skip(header.size, header.name)
        reader.skip_padding(header.size, header.name)
        index += 1
        header = reader.next_member()
    if manifest is not None and index != len(manifest):
        missing = manifest.entry(index)["member_path"]
        raise reader.error(f"archive ends after {index} of {len(manifest)} listed members", missing)
    _check_count(reader, "archive has", index, expected_count)
