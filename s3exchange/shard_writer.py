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

The gzip framing lives in :mod:`~s3exchange.gzip_frame`, encoding samples into members in
:mod:`~s3exchange.sample_encoding` (both pure); this module uploads shards.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from .errors import ShardWriteError
from .gzip_frame import GzipFrame, crc32_combine
from .multipart import MIN_PART_SIZE, MultipartWriter
from .sample_encoding import Member, encode_sample
from .shard_format import MAX_INTERNAL_MANIFEST_BYTES
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
        self._gzip = GzipFrame(compresslevel) if compression == "gzip" else None
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

    def add(self, key: str, members: list[Member]) -> None:
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
        from .shard_access import compression_of

        named = compression_of(first)
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
        key, members = encode_sample(sample)
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

    def _full(self, shard: _ShardUpload, members: list[Member]) -> bool:
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
