"""``ShardWriter``: webdataset-style samples streamed into tar / tar.gz shards on S3.

Each sample ``{"__key__": "0001", "jpg": b"...", "json": {...}}`` becomes members
``0001.jpg``, ``0001.json``; shards roll at ``max_entries`` / ``max_bytes`` between samples,
never inside one; the manifest is written at close.

The problem: our format puts ``__manifest__.jsonl`` (every member's size and crc32c) *first*,
but a streaming writer knows the members only when the shard ends. The design: S3 multipart
parts may be uploaded in any order and only the last may be under 5 MiB (moto and SeaweedFS both
assemble parts by number whatever the upload order, and both refuse a smaller non-last part with
``EntityTooSmall`` at completion, as ``tests/integration/test_shard_writer.py`` pins). So each
shard keeps its first 5 MiB of archive bytes (the *head*) in memory, streams everything after it
as parts 2..N of the store's ``part_size`` (8 MiB) while samples arrive, and at close uploads
part 1 = internal manifest member + head, then completes. A shard that ends within the head and
one part is a single PutObject.

Cost: one shard is open at a time; it streams through :class:`~s3exchange.multipart.MultipartWriter`
(``hold_head``), so its memory is the head (5 MiB) + the part being filled (8 MiB) + up to
``2 x upload_concurrency`` parts queued or in flight (4 x 8 MiB, the writer's measured best for
throughput) + the internal manifest lines (~130 bytes a member): ~45 MiB + 130 B/member whatever
the shard size. Measured: a 54 MiB tracemalloc peak (botocore's buffers and the caller's 1 MiB
sample included) streaming 256 MiB into two 128 MiB shards on moto (33 MiB with the writer's own
upload loop of one part in flight per thread, before it shared MultipartWriter). Closing a shard
waits for one more request (part 1), and its first 5 MiB reach the server only then.

gzip: one gzip member, not two. Two concatenated gzip members are a valid .tar.gz to gzip, GNU
tar and ``tarfile``'s ``r:gz``, but ``tarfile``'s stream mode (``r|gz``, which webdataset uses)
stops after the first member and would see nothing but the internal manifest. So the data is a
raw deflate stream begun fresh (it never refers back into the manifest), part 1 is the gzip
header + the manifest deflated and sync-flushed to a byte boundary (no final block), and the last
part ends with the gzip trailer, whose CRC-32 over manifest + data comes from
:func:`crc32_combine` (zlib has it; Python's ``zlib`` module does not expose it).
"""

from __future__ import annotations

import enum
import io
import json
import struct
import sys
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import crc32c

from .errors import ShardWriteError
from .multipart import MIN_PART_SIZE, MultipartWriter
from .shard_format import MAX_INTERNAL_MANIFEST_BYTES, member_path_problem
from .shard_index import FLUSH_SPACING, MemberSpan, spans
from .sources import InMemory
from .tar_writer import tar_header
from .types import INTERNAL_MANIFEST_PATH, Compression, ShardEntry, UpdateMode

if TYPE_CHECKING:
    from .store import S3ExchangeStore

__all__ = ["DEFAULT_MAX_BYTES", "ShardWriter", "crc32_combine", "shard_compression"]

DEFAULT_MAX_BYTES = 256 << 20
"""Member bytes per shard unless told otherwise: ``pack``'s default too."""


def shard_compression(compression: Compression | Literal["none"]) -> Compression:
    """A shard's codec as given to a writer (``"none"`` means None); ValueError for any other
    than None or ``"gzip"``. The one check for :class:`ShardWriter` and ``put_shard_archive``."""
    if compression == "none":
        return None
    if compression not in (None, "gzip"):
        raise ValueError(f"unsupported compression {compression!r}: None or 'gzip'")
    return compression


HEAD_SIZE = MIN_PART_SIZE
"""Archive bytes held back per shard for part 1: S3's minimum for a part that is not the last."""
_CHUNK = 1 << 20
"""Slice a large field is copied (and deflated) in, so no step holds a second copy of it."""
_BLOCK = 512
_EOF_MARKER = bytes(2 * _BLOCK)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""deflate, no flags, mtime 0, no extra flags, OS unknown: the same bytes on every run."""


# --------------------------------------------------------------------------------------------
# gzip framing with the head written last
# --------------------------------------------------------------------------------------------

_CRC32_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial, bit-reflected as zlib has it (``a`` nonzero)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) mod p for k = 0..31: x^1 first
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """``zlib.crc32(a + b)`` from ``crc1 = crc32(a)``, ``crc2 = crc32(b)`` and ``len(b)``.

    zlib's own ``crc32_combine`` (multiply ``crc1`` by x^(8 len2) modulo the polynomial), in
    O(log len2) steps: the manifest's CRC is joined to the data's without re-reading the data.
    """
    if len2 < 0:
        raise ValueError(f"len2 must be >= 0, got {len2}")
    p, n, k = 1 << 31, len2, 3  # x^0; bytes are 2^3 bits
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


class _GzipFrame:
    """One gzip member whose first bytes (the manifest) are made after the rest (the data)."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self.compressed = 0
        """Deflated data bytes handed out so far (the head's excluded)."""

    def compress(self, data: bytes | memoryview) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._deflate.compress(data)
        self.compressed += len(out)
        return out

    def full_flush(self) -> bytes:
        """A full-flush point: inflating the data stream can start after these bytes."""
        out = self._deflate.flush(zlib.Z_FULL_FLUSH)
        self.compressed += len(out)
        return out

    def finish(self, head: bytes) -> tuple[bytes, bytes]:
        """(gzip header + ``head`` deflated, sync-flushed; final deflate block + trailer)."""
        deflate = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        first = _GZIP_HEADER + deflate.compress(head) + deflate.flush(zlib.Z_SYNC_FLUSH)
        crc = crc32_combine(zlib.crc32(head), self._crc, self._size)
        trailer = struct.pack("<II", crc, (len(head) + self._size) & 0xFFFFFFFF)
        return first, self._deflate.flush() + trailer


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Member:
    """One encoded field: its member path, its bytes and its internal manifest line."""

    path: str
    data: bytes | memoryview
    line: bytes


def _sample_problem(key: str, field: str, reason: str) -> str:
    return f"sample {key!r} field {field!r}: {reason}"


def _encode_value(value: Any, key: str, field: str) -> bytes | memoryview:
    """A field's bytes: bytes-likes as they are, str as UTF-8, dict/list as JSON, ndarray as .npy.

    numpy is never imported here: an ndarray can only exist once its caller imported numpy.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        view = memoryview(value)
        if not view.c_contiguous:
            raise ValueError(_sample_problem(key, field, "memoryview is not C-contiguous"))
        return view.cast("B")
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(_sample_problem(key, field, f"str is not valid UTF-8: {exc}")) from exc
    if isinstance(value, dict | list):
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(_sample_problem(key, field, f"is not JSON: {exc}")) from exc
        return text.encode("utf-8")
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        out = io.BytesIO()
        try:
            numpy.save(out, value, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(_sample_problem(key, field, f"cannot save as .npy: {exc}")) from exc
        return out.getvalue()
    raise TypeError(
        _sample_problem(
            key,
            field,
            f"cannot encode {type(value).__name__}; give bytes, str, dict or list (JSON) "
            "or a numpy array",
        )
    )


def _check_key(sample: Mapping[str, Any]) -> str:
    if "__key__" not in sample:
        fields = ", ".join(repr(field) for field in sample)
        raise ValueError(f"sample has no '__key__' (fields: {fields or 'none'})")
    key = sample["__key__"]
    if not isinstance(key, str):
        raise TypeError(f"sample '__key__' must be a str, got {type(key).__name__} {key!r}")
    problem = member_path_problem(key)
    if problem is None and "." in key.rpartition("/")[2]:
        problem = "the last path component holds a '.', where readers would split the field"
    if problem is not None:
        raise ValueError(f"sample {key!r}: invalid key: {problem}")
    return key


def _encode_sample(sample: Mapping[str, Any]) -> tuple[str, list[_Member]]:
    """The key and members of ``sample``, checked and encoded before anything is written.

    Fields starting with ``_`` (``__url__``, ``__local_path__``) are metadata and skipped, as
    webdataset's writer skips them. Readers lower-case fields, so two that differ only in case
    would collide and are refused.
    """
    if not isinstance(sample, Mapping):
        raise TypeError(f"a sample is a dict with '__key__', got {type(sample).__name__}")
    key = _check_key(sample)
    members: list[_Member] = []
    seen: set[str] = set()
    for field, value in sample.items():
        if not isinstance(field, str):
            raise TypeError(f"sample {key!r}: field names are str, got {field!r}")
        if field.startswith("_"):
            continue
        problem = None
        if not field or "/" in field or "\0" in field:
            problem = "a field is a non-empty name without '/'"
        elif field.lower() in seen:
            problem = "repeats another field but for case (readers lower-case fields)"
        path = f"{key}.{field}"
        if problem is None and path == INTERNAL_MANIFEST_PATH:
            problem = "the member path is reserved for the internal manifest"
        if problem is None:
            problem = member_path_problem(path)
        if problem is not None:
            raise ValueError(_sample_problem(key, field, problem))
        seen.add(field.lower())
        data = _encode_value(value, key, field)
        entry = {
            "kind": "file",
            "key": path,
            "member_path": path,
            "size_bytes": len(data),
            "crc32c": f"{crc32c.crc32c(data):08x}",
        }
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        members.append(_Member(path, data, line))
    if not members:
        raise ValueError(f"sample {key!r} has no fields to write")
    return key, members


# --------------------------------------------------------------------------------------------
# One shard's upload
# --------------------------------------------------------------------------------------------


class _ShardUpload:
    """One archive being written through a :class:`MultipartWriter` that holds its head back."""

    def __init__(
        self,
        writer: MultipartWriter,
        archive_key: str,
        *,
        compression: Compression,
        compresslevel: int,
    ) -> None:
        """``writer`` holds back :data:`HEAD_SIZE` bytes (``hold_head``)."""
        self.archive_key = archive_key
        self.compression = compression
        self._gzip = _GzipFrame(compresslevel) if compression == "gzip" else None
        self._writer = writer
        self.lines: list[bytes] = []
        self.manifest_bytes = 0
        self.members_size = 0
        self.keys: set[str] = set()
        self._position = 0
        """Tar bytes written after the internal manifest member (which is made last)."""
        self._placed: list[tuple[int, int, int]] = []
        self._flush_points: list[tuple[int, int]] | None = [] if self._gzip is not None else None
        self.spans: list[MemberSpan] = []
        """Where each member lies in the finished archive (set by :meth:`finish`)."""

    @property
    def count(self) -> int:
        return len(self.lines)

    def add(self, key: str, members: list[_Member]) -> None:
        """Append one sample's members to the archive stream."""
        for member in members:
            size = len(member.data)
            points = self._flush_points
            if points is not None and (
                not points or self._position - points[-1][0] >= FLUSH_SPACING
            ):
                self._flush_point()
            header = tar_header(member.path, size)
            self._placed.append((self._position, self._position + len(header), size))
            self._write(header)
            for chunk in InMemory(member.data).chunks(_CHUNK):
                self._write(chunk)
            if size % _BLOCK:
                self._write(_EOF_MARKER[: _BLOCK - size % _BLOCK])
            self.lines.append(member.line)
            self.manifest_bytes += len(member.line)
            self.members_size += size
        self.keys.add(key)

    def _write(self, data: bytes | memoryview) -> None:
        """Tar bytes in: deflated when gzip, then to the upload (head first, then parts)."""
        self._position += len(data)
        self._writer.write(self._gzip.compress(data) if self._gzip is not None else data)

    def _flush_point(self) -> None:
        """Record a place the data stream inflates from alone (the fresh stream's start needs
        no flush)."""
        assert self._gzip is not None
        assert self._flush_points is not None
        if self._position:
            self._writer.write(self._gzip.full_flush())
        self._flush_points.append((self._position, self._gzip.compressed))

    def finish(self) -> ShardEntry:
        """End the archive, put the internal manifest in front, and complete the upload."""
        manifest = b"".join(self.lines)
        head = tar_header(INTERNAL_MANIFEST_PATH, len(manifest)) + manifest
        head += bytes(-len(head) % _BLOCK)
        if self._gzip is not None:
            self._flush_point()
        self._write(_EOF_MARKER)
        if self._gzip is not None:
            first, last = self._gzip.finish(head)
            self._writer.write(last)
        else:
            first = head
        base, zbase = len(head), len(first)  # the data's offsets were counted from the head's end
        placed = [(o + base, d + base, size) for o, d, size in self._placed]
        points = self._flush_points
        moved = None if points is None else [(u + base, c + zbase) for u, c in points]
        self.spans = spans(placed, moved)
        self._writer.prepend(first)
        self._writer.close()
        entry: ShardEntry = {
            "kind": "shard",
            "archive_key": self.archive_key,
            "format": "tar",
            "compression": self.compression,
            "internal_manifest_path": INTERNAL_MANIFEST_PATH,
            "count": self.count,
            "size_bytes": self._writer.bytes_written,
            "members_size_bytes": self.members_size,
        }
        if self._writer.etag:
            entry["etag"] = self._writer.etag
        return entry

    def abort(self) -> None:
        """Drop the buffers, stop the parts in flight and abort the upload server-side."""
        self._writer.abort()


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------


class _State(enum.Enum):
    """OPEN -> CLOSED (every shard completed, manifest written) or OPEN -> ABORTED (an error:
    the open shard's upload aborted, no manifest). Neither end state accepts samples."""

    OPEN = "open"
    CLOSED = "closed"
    ABORTED = "aborted"


class ShardWriter:
    """Writes webdataset-style samples to shards ``pattern.format(index=0, 1, ...)``.

    Made by :meth:`S3ExchangeStore.shard_writer <s3exchange.store.S3ExchangeStore.shard_writer>`;
    use it as a context manager. Not thread-safe: one producer calls :meth:`write`.
    """

    def __init__(
        self,
        store: S3ExchangeStore,
        pattern: str,
        manifest: str | None = None,
        *,
        max_entries: int | None = None,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        compression: Compression | Literal["none"] = None,
        update_mode: UpdateMode = "overwrite",
        start_index: int = 0,
        compresslevel: int = 6,
        vars: Mapping[str, Any] | None = None,
    ) -> None:
        for name, limit in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if limit is not None and limit <= 0:
                raise ValueError(f"{name} must be positive, got {limit}")
        compression = shard_compression(compression)
        if update_mode not in ("overwrite", "append_parts"):
            raise ValueError(
                f"update_mode must be 'overwrite' or 'append_parts', not {update_mode!r}"
            )
        if not 0 <= compresslevel <= 9:
            raise ValueError(f"compresslevel must be 0..9, got {compresslevel}")
        self._store = store
        self._pattern = pattern
        self._vars = dict(vars or {})
        self._manifest = manifest
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._compression: Compression = compression
        self._compresslevel = compresslevel
        self._update_mode: UpdateMode = update_mode
        self._index = start_index
        self._check_pattern()
        self._entries: list[ShardEntry] = []
        self._shard: _ShardUpload | None = None
        self._state = _State.OPEN

    def _archive_key(self, index: int) -> str:
        return self._store.resolve(self._pattern, {**self._vars, "index": index})

    def _check_pattern(self) -> None:
        """Refuse, before any upload, a pattern that names one key for every shard, or whose
        name says another compression than ``compression`` (``archive#member`` reads go by it)."""
        first = self._archive_key(self._index)
        if first == self._archive_key(self._index + 1):
            raise ValueError(f"shard pattern {self._pattern!r} has no {{index}} placeholder")
        from .store import _compression_of

        named = _compression_of(first)
        if named != self._compression:
            raise ValueError(
                f"shard {first!r} is named for compression {named!r} but compression is "
                f"{self._compression!r}: name gzip shards .tar.gz, plain ones .tar"
            )

    @property
    def entries(self) -> list[ShardEntry]:
        """The entries of the shards completed so far (all of them once closed)."""
        return list(self._entries)

    def write(self, sample: Mapping[str, Any]) -> None:
        """Add one sample: ``__key__`` plus one field per member (``<key>.<field>``).

        A field is bytes / bytearray / memoryview (as is), str (UTF-8), dict or list (JSON) or a
        numpy array (``.npy``). A sample that cannot be encoded raises TypeError / ValueError
        naming its key and field, before anything is written: the writer stays usable. Any
        other failure (an upload) aborts the writer and raises.
        """
        if self._state is not _State.OPEN:
            raise ValueError(f"the ShardWriter is {self._state.value}: no more samples")
        key, members = _encode_sample(sample)
        shard = self._shard
        roll = shard is not None and self._full(shard, members)
        if shard is not None and not roll and key in shard.keys:
            raise ValueError(f"sample {key!r}: key repeated within shard {shard.archive_key!r}")
        if sum(len(m.line) for m in members) > MAX_INTERNAL_MANIFEST_BYTES:
            raise ValueError(f"sample {key!r}: too many fields for one internal manifest")
        try:
            if roll:
                self._finish_shard()
            if self._shard is None:
                self._shard = self._open_shard()
            self._shard.add(key, members)
        except BaseException:
            self.abort()
            raise

    def _full(self, shard: _ShardUpload, members: list[_Member]) -> bool:
        """Whether ``members`` must go to the next shard: every limit holds for each shard
        but one holding a single sample that exceeds them by itself."""
        count = shard.count + len(members)
        size = shard.members_size + sum(len(member.data) for member in members)
        lines = shard.manifest_bytes + sum(len(member.line) for member in members)
        return (
            (self._max_entries is not None and count > self._max_entries)
            or (self._max_bytes is not None and size > self._max_bytes)
            or lines > MAX_INTERNAL_MANIFEST_BYTES
        )

    def _open_shard(self) -> _ShardUpload:
        key = self._archive_key(self._index)
        if self._update_mode == "append_parts" and self._store.exists(key):
            raise ShardWriteError(
                archive_key=key,
                reason="already exists; appending must not replace a shard an earlier part lists "
                "(give this run its own start_index or a placeholder in the pattern)",
            )
        self._index += 1
        content_type = "application/gzip" if self._compression else "application/x-tar"
        return _ShardUpload(
            self._store._writer(key, content_type, hold_head=HEAD_SIZE),
            key,
            compression=self._compression,
            compresslevel=self._compresslevel,
        )

    def _finish_shard(self) -> None:
        assert self._shard is not None
        shard = self._shard
        entry = shard.finish()
        members = [json.loads(line) for line in shard.lines]
        entry["index_key"] = self._store.put_shard_index(entry, members, shard.spans)
        self._entries.append(entry)
        self._shard = None

    def close(self) -> list[ShardEntry]:
        """Complete the open shard and write the manifest; returns every shard entry.

        With ``append_parts`` and no sample written nothing is appended; ``overwrite`` writes
        the (empty) manifest. Any failure aborts the open upload and writes no manifest.
        """
        if self._state is _State.CLOSED:
            return self.entries
        if self._state is _State.ABORTED:
            raise ValueError("the ShardWriter is aborted: nothing to close")
        try:
            if self._shard is not None:
                self._finish_shard()
            if self._manifest is not None and (self._entries or self._update_mode == "overwrite"):
                self._store.put_sharded(
                    self._manifest, self._entries, update_mode=self._update_mode, vars=self._vars
                )
        except BaseException:
            self.abort()
            raise
        self._state = _State.CLOSED
        return self.entries

    def abort(self) -> None:
        """Abort the open shard's upload and write no manifest. Shards completed before stay
        stored but unlisted (a rerun in ``overwrite`` mode replaces them)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.ABORTED
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.abort()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
