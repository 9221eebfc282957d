"""The public façade: :class:`S3ExchangeStore` resolves keys and delegates to the modules that
do the work (``bucket`` for requests, ``manifest`` and ``shard`` for formats, ``manifest_reads``
for reading through manifests, ``shard_access`` for shard indexes and ranged member reads,
``parts``, ``deletion`` and ``compaction`` for the longer workflows).

Over 500 lines because it is the whole public API in one class: each of its ~40 public methods
keeps its signature and docstring here, most bodies a few lines delegating to those modules."""

from __future__ import annotations

import copy
import hashlib
import logging
import posixpath
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

from . import compaction, deletion, manifest, manifest_reads, parts, shard_access
from .body import ObjectStream, OpenedBody, RetryPolicy
from .bucket import Bucket, ClientFactory
from .config import TransferConfig
from .errors import (
    InvalidKeyError,
    ObjectNotFoundError,
    ShardWriteError,
    StorageError,
)
from .keys import KeySpace, LiteralKey, resolve_template, split_virtual_key, virtual_key
from .multipart import MultipartWriter
from .samples import Shard, entry_id
from .settings import redact_secrets_in_logs
from .shard_index import (
    IndexedMember,
    MemberSpan,
    ShardIndex,
    encode_index,
    index_key_for,
)
from .shard_writer import DEFAULT_MAX_BYTES, ShardWriter, shard_compression
from .sources import InMemory, Source, source_of
from .tar_reader import ShardMember
from .tar_writer import write_shard
from .transport import PendingUpload
from .types import (
    INTERNAL_MANIFEST_PATH,
    MANIFEST_CONTENT_TYPE,
    CompactReport,
    Compression,
    DeleteReport,
    FileEntry,
    ItemSource,
    ListedObject,
    ManifestEntry,
    Readable,
    ShardEntry,
    ShardItem,
    UpdateMode,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .settings import S3Settings

log = logging.getLogger(__name__)

ManifestSource = str | Iterable[ManifestEntry]
"""A manifest key (template allowed) or entries already in hand."""

_RECONNECT_BACKOFF = RetryPolicy(backoff_s=0.2, max_backoff_s=2.0)
"""Pauses between attempts to reach a server: full jitter up to 0.2 s doubling to 2 s."""

_T = TypeVar("_T")

STALE_UPLOAD_SECONDS = 3600.0
"""Default age after which a pending upload counts as abandoned: a 256 MiB shard uploads in
seconds at the ~100 MB/s measured here, so an hour leaves any live writer far more than it needs."""


def id_from_key(key: str) -> str:
    """Default ``id`` of a stored object's entry (``S3ExchangeStore(infer_id=)`` replaces it):
    the :func:`~s3exchange.samples.entry_id` of the key's basename (``a/x.seg.png``: ``x.seg``)."""
    return entry_id(posixpath.basename(key))


class S3ExchangeStore:
    """Loose objects, manifests and shard archives in one bucket, under an optional base prefix.

    Every key argument is a template: ``{name}`` placeholders are filled from ``default_vars``
    merged with the call's ``vars``. Keys the store returns (listings, entries) are logical: the
    base prefix is stripped, so they round-trip into any other call. Keys read *from* manifests
    are taken literally, never re-templated.
    """

    def __init__(
        self,
        s3_client: S3Client,
        bucket: str,
        base_prefix: str = "",
        default_vars: Mapping[str, Any] | None = None,
        *,
        infer_id: Callable[[str], str] | None = None,
        config: TransferConfig | None = None,
        part_size: int | None = None,
        upload_concurrency: int | None = None,
        verify: bool = True,
        read_retry: RetryPolicy | None = None,
        conditional_writes: Literal["auto", "off"] = "auto",
        reconnect_s: float | None = None,
        _client_factory: ClientFactory | None = None,
    ) -> None:
        """``config`` holds the tuning knobs (:class:`~s3exchange.config.TransferConfig`);
        ``part_size``, ``upload_concurrency``, ``read_retry`` and ``reconnect_s`` override its
        fields. ``_client_factory`` (private, for :meth:`from_settings`) rebuilds the client in
        another process; by default it is captured from ``s3_client``."""
        self.bucket = bucket
        self.base_prefix = KeySpace(base_prefix).base_prefix
        self.default_vars: dict[str, Any] = dict(default_vars or {})
        self.infer_id = infer_id or id_from_key
        self.config = (config or TransferConfig()).replace(
            part_size=part_size,
            upload_concurrency=upload_concurrency,
            read_retry=read_retry,
            reconnect_s=reconnect_s,
        )
        self.verify = verify
        self.conditional_writes = conditional_writes
        self._bucket = Bucket(s3_client, bucket, KeySpace(base_prefix), factory=_client_factory)
        redact_secrets_in_logs()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a spawned worker: botocore's logs there are redacted too."""
        self.__dict__.update(state)
        redact_secrets_in_logs()

    @classmethod
    def from_settings(cls, settings: S3Settings | None = None, **kwargs: Any) -> S3ExchangeStore:
        """A store from :class:`S3Settings` (``S3EXCHANGE_*`` environment when omitted)."""
        from .settings import S3Settings

        settings = settings or S3Settings()
        bucket = kwargs.pop("bucket", None) or settings.bucket
        if not bucket:
            raise ValueError("no bucket: set S3EXCHANGE_BUCKET or pass bucket=")
        kwargs.setdefault("base_prefix", settings.base_prefix)
        if "config" not in kwargs:  # a config given whole is taken as it is
            kwargs.setdefault("reconnect_s", settings.reconnect_timeout)
        factory = ClientFactory.from_settings(settings)
        return cls(settings.create_client(), bucket, _client_factory=factory, **kwargs)

    @property
    def part_size(self) -> int:
        """``config.part_size``: bytes per part of a multipart upload."""
        return self.config.part_size

    @property
    def upload_concurrency(self) -> int:
        """``config.upload_concurrency``: parts of one upload in flight."""
        return self.config.upload_concurrency

    @property
    def read_retry(self) -> RetryPolicy:
        """``config.read_retry``: how a broken GET body is resumed."""
        return self.config.read_retry

    @property
    def reconnect_s(self) -> float:
        """``config.reconnect_s``: seconds a read retries a server it cannot reach."""
        return self.config.reconnect_s

    @property
    def s3_client(self) -> S3Client:
        """The boto3 client (rebuilt transparently in a forked or spawned process)."""
        return self._bucket.client

    @property
    def max_pool_connections(self) -> int:
        """The client's connection pool size; a forked worker reads it without building a
        client (it builds one only for what the fast GET path does not serve)."""
        return self._bucket.max_pool_connections

    def __repr__(self) -> str:
        return f"S3ExchangeStore(bucket={self.bucket!r}, base_prefix={self.base_prefix!r})"

    def scope(self, **vars: Any) -> S3ExchangeStore:
        """A store sharing this one's connection with extra default placeholder values."""
        scoped = copy.copy(self)  # the same Bucket, so the same client and connections
        scoped.default_vars = {**self.default_vars, **vars}
        return scoped

    # -- keys ----------------------------------------------------------------------------------

    def resolve(self, template: str, vars: Mapping[str, Any] | None = None) -> str:
        """The logical key for ``template``: placeholders filled, base prefix not applied."""
        return resolve_template(template, {**self.default_vars, **(vars or {})})

    def _resolve_key(self, template: str, vars: Mapping[str, Any] | None = None) -> str:
        """The physical key for ``template``: placeholders filled and base prefix applied."""
        return self._bucket.keyspace.physical(self.resolve(template, vars))

    # -- loose objects -------------------------------------------------------------------------

    def _stream(self, key: str) -> ObjectStream:
        """``key``'s GET as a resumable stream; every GET (the first and each resume) rides
        through an unreachable server for up to ``reconnect_s``."""

        def reopen(offset: int, etag: str | None) -> OpenedBody:
            return self._reconnecting(key, lambda: self._bucket.open(key, offset, etag))

        return ObjectStream(key, reopen, retry=self.read_retry)

    def _reconnecting(self, key: str, call: Callable[[], _T]) -> _T:
        """``call()``, repeated with backoff while the server cannot be reached (connection
        refused, reset, connect timeout: a restarting server, a network blip), until
        ``reconnect_s`` have passed; then the error. botocore's own retries of one request
        last ~1 s against a refused port, which once failed an epoch at a server restart
        (``weed`` restarts in ~1.5 s here)."""
        deadline = time.monotonic() + self.reconnect_s
        attempt = 0
        while True:
            try:
                return call()
            except StorageError as exc:
                left = deadline - time.monotonic()
                if left <= 0 or not _unreachable(exc):
                    raise
                attempt += 1
                delay = min(left, _RECONNECT_BACKOFF.delay(attempt))
                log.warning("%r: server unreachable (%s); retrying in %.1f s", key, exc, delay)
            time.sleep(delay)

    def get_object(self, key: str, vars: Mapping[str, Any] | None = None) -> ObjectStream:
        """A streaming, resumable body of ``key`` (``read(n)``, ``iter_chunks``, ``with``).

        A virtual key ``archive#member`` that names no object opens that shard member.
        """
        resolved = self.resolve(key, vars)
        try:
            return self._stream(resolved)
        except ObjectNotFoundError:
            archive, member = split_virtual_key(resolved)
            if member is None:
                raise
        return shard_access.open_member(self, archive, member)

    def head_object(self, key: str, vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The object's HEAD response (ContentLength, ETag, ContentType, Metadata ...)."""
        return self._bucket.head(self.resolve(key, vars))

    def exists(self, key: str, vars: Mapping[str, Any] | None = None) -> bool:
        """Whether an object is stored at ``key``."""
        return self._bucket.exists(self.resolve(key, vars))

    def put_object(
        self,
        key: str,
        data: ItemSource,
        id: str | None = None,
        meta: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        vars: Mapping[str, Any] | None = None,
    ) -> FileEntry:
        """Upload bytes, a local file (str / Path) or a binary file object; returns its entry.

        Bytes go in one PutObject. Files and streams (:mod:`~s3exchange.sources`) stream
        through a multipart upload (never read whole into memory) that is aborted on any error,
        so a failure leaves no object behind. The entry records size, ETag and sha256.
        """
        resolved = self.resolve(key, vars)
        source = source_of(data)
        digest = hashlib.sha256()
        if isinstance(source, InMemory):
            body = bytes(source.data)
            digest.update(body)
            etag = self._bucket.put(resolved, body, content_type=content_type)
            size = len(body)
        else:
            etag, size = self._upload(resolved, source, digest, content_type)
        entry: FileEntry = {"kind": "file", "key": resolved, "id": id or self.infer_id(resolved)}
        if meta is not None:
            entry["meta"] = dict(meta)
        entry["size_bytes"] = size
        if etag:
            entry["etag"] = etag
        entry["sha256"] = digest.hexdigest()
        if content_type:
            entry["content_type"] = content_type
        return entry

    def _upload(
        self, key: str, source: Source, digest: Any, content_type: str | None
    ) -> tuple[str | None, int]:
        """A file or stream through a multipart upload, hashed on the way."""
        writer = self._writer(key, content_type)
        with writer:
            for chunk in source.chunks(1 << 20):
                digest.update(chunk)
                writer.write(chunk)
        return writer.etag, writer.bytes_written

    def _writer(self, key: str, content_type: str | None, *, hold_head: int = 0) -> MultipartWriter:
        """The one way this store (and its ShardWriter) starts an upload."""
        return MultipartWriter(
            self._bucket,
            key,
            part_size=self.part_size,
            concurrency=self.upload_concurrency,
            content_type=content_type,
            hold_head=hold_head,
        )

    def delete_key(self, key: str, vars: Mapping[str, Any] | None = None) -> None:
        """Delete one object (no error when it does not exist, as in S3)."""
        self._bucket.delete(self.resolve(key, vars))

    # -- listing -------------------------------------------------------------------------------

    def list_keys(self, prefix: str = "", vars: Mapping[str, Any] | None = None) -> Iterator[str]:
        """Logical keys under ``prefix``, paginated lazily; each a :class:`LiteralKey`, so it
        opens as listed even when it holds braces."""
        for obj in self.list_objects(prefix, vars):
            yield obj["key"]

    def list_objects(
        self, prefix: str = "", vars: Mapping[str, Any] | None = None
    ) -> Iterator[ListedObject]:
        """Objects under ``prefix`` with size, ETag and modification time; keys as in
        :meth:`list_keys`."""
        listed = self._bucket.list_objects(self.resolve(prefix, vars) if prefix else "")
        return ({**obj, "key": LiteralKey(obj["key"])} for obj in listed)

    # -- manifests -----------------------------------------------------------------------------

    def iter_manifest_entries(
        self,
        manifest_key: str,
        resolve_refs: bool = True,
        vars: Mapping[str, Any] | None = None,
    ) -> Iterator[ManifestEntry]:
        """Entries of a manifest, lazily; ``manifest_ref`` entries are followed depth-first.

        Each manifest is read once (see :func:`s3exchange.manifest.walk_graph`): one
        referenced twice contributes its entries once, at its first reference. A reference
        cycle, or nesting deeper than ``MAX_REF_DEPTH``, raises InvalidManifestError.
        """
        return manifest_reads.iter_entries(self, self.resolve(manifest_key, vars), resolve_refs)

    def _read_manifest(self, key: str) -> Iterator[ManifestEntry]:
        return manifest_reads.read_manifest(self, key)

    def iter_entries(
        self,
        source: ManifestSource,
        resolve_refs: bool = True,
        vars: Mapping[str, Any] | None = None,
    ) -> Iterator[ManifestEntry]:
        """Entries of a manifest key (a template) or of entries in hand, refs followed.

        Entries in hand are validated first; the keys their refs name are taken literally.
        """
        if isinstance(source, str):
            return self.iter_manifest_entries(source, resolve_refs, vars)
        return manifest_reads.flatten(self, source, resolve_refs)

    def write_manifest(
        self,
        key: str,
        entries: Iterable[Mapping[str, Any]],
        mode: UpdateMode = "overwrite",
        vars: Mapping[str, Any] | None = None,
    ) -> str:
        """Write entries as JSONL; returns the key written.

        ``overwrite`` replaces the manifest at ``key``. ``append_parts`` writes the entries to a
        new, uniquely named part beside it and appends a ``manifest_ref`` to the root with a
        conditional write, so concurrent writers lose no part (see :mod:`s3exchange.parts`).
        Entries are validated before anything is written.
        """
        resolved = self.resolve(key, vars)
        body = b"".join(
            manifest.dumps_entry(manifest.validate_entry(entry, key=resolved, index=i))
            for i, entry in enumerate(entries)
        )
        if mode == "overwrite":
            self._bucket.put(resolved, body, content_type=MANIFEST_CONTENT_TYPE)
            return resolved
        if mode == "append_parts":
            return parts.append_part(
                self._bucket, resolved, body, conditional=self.conditional_writes
            )
        raise ValueError(f"mode must be 'overwrite' or 'append_parts', not {mode!r}")

    # -- reading objects through a manifest ----------------------------------------------------

    def iter_objects(
        self,
        manifest: ManifestSource,
        vars: Mapping[str, Any] | None = None,
        *,
        verify: bool | None = None,
    ) -> Iterator[tuple[IO[bytes], FileEntry]]:
        """``(stream, entry)`` for every file of a manifest, shards expanded member by member.

        Lazy: one object is open at a time. Shard members are parsed from the archive's GET
        stream; read each stream before advancing (the next member reuses the connection).
        With ``verify`` (the store's default) sizes and checksums recorded in the manifest are
        checked while streaming and a mismatch raises IntegrityError / ShardReadError.
        """
        return manifest_reads.iter_objects(self, manifest, vars, verify=verify)

    def open_file_entry(self, entry: FileEntry, *, verify: bool | None = None) -> IO[bytes]:
        """Open a file entry, checking it against the manifest's etag, size and sha256.

        A shard member listed as a file entry (``archive_key`` + ``member_path``) is opened by
        streaming its archive up to that member.
        """
        return manifest_reads.open_file_entry(self, entry, verify=verify)

    def read_file_entry(self, entry: FileEntry, *, verify: bool | None = None) -> bytes:
        """A file entry's whole object in one GET, checked as :meth:`open_file_entry` checks it.

        For many small objects: the GET goes through :meth:`Bucket.read_object
        <s3exchange.bucket.Bucket.read_object>` (a fraction of botocore's CPU per request).
        A shard member listed as a file entry is read through :meth:`open_file_entry`.
        """
        return manifest_reads.read_file_entry(self, entry, verify=verify)

    def open_shard(self, entry: ShardEntry) -> ObjectStream:
        """The shard's archive as a GET stream, for :meth:`iter_shard_members` to parse once
        its bytes were read ahead (the torch prefetcher does so in a thread).

        An entry's ``etag`` must match the stored archive's (ObjectChangedError otherwise).
        """
        return shard_access.open_archive(self, entry)

    def iter_shard_members(
        self,
        entry: ShardEntry,
        *,
        select: Callable[[int, FileEntry], bool] | None = None,
        verify: bool | None = None,
        stream: Readable | None = None,
    ) -> Generator[ShardMember, None, None]:
        """Stream a shard's members from its GET body; ``select`` skips members unread.

        An entry's ``etag`` must match the stored archive's (ObjectChangedError otherwise).
        ``stream``: the archive's bytes from its start, read from :meth:`open_shard` by the
        caller, who closes it; by default the GET is opened and closed here.
        """
        if stream is not None:
            yield from shard_access.iter_members(self, entry, stream, select=select, verify=verify)
            return
        with shard_access.open_archive(self, entry) as opened:
            yield from shard_access.iter_members(self, entry, opened, select=select, verify=verify)

    def read_shard_index(self, entry: ShardEntry) -> ShardIndex:
        """Where each member of a shard lies, for ranged reads (:mod:`~s3exchange.shard_index`).

        The :meth:`stored_shard_index`; a shard without one (written before indexes, or by
        another tool, or replaced since) is indexed by :meth:`scan_shard_index`, a pass over
        the whole archive, with a warning: ``s3exchange index`` stores the index once.
        """
        return shard_access.read_shard_index(self, entry)

    def stored_shard_index(self, entry: ShardEntry) -> ShardIndex | None:
        """The shard's index as stored (the entry's ``index_key``, else the key beside the
        archive), or None when there is none or it describes an archive with another ETag than
        the one the entry records."""
        return shard_access.stored_shard_index(self, entry)

    def write_shard_index(self, index: ShardIndex) -> str:
        """Store ``index`` beside its archive (e.g. one :meth:`scan_shard_index` made); returns
        its key."""
        return shard_access.write_shard_index(self, index)

    def scan_shard_index(self, entry: ShardEntry) -> ShardIndex:
        """A shard's index made by streaming its archive once, checking every member (its
        recorded checksum, or a crc32c computed and recorded here). A whole-stream .tar.gz
        has no flush points, so its index is not :attr:`~ShardIndex.seekable`."""
        return shard_access.scan_shard_index(self, entry)

    def read_range(self, key: str, start: int, stop: int, *, etag: str | None = None) -> bytes:
        """Bytes ``[start, stop)`` of ``key`` in one ranged GET (the fast GET path where it
        applies); with ``etag``, an object whose ETag differs is ObjectChangedError."""
        data, _ = self._reconnecting(
            key,
            lambda: self._bucket.read_object(
                key, retry=self.read_retry, byte_range=(start, stop), if_match=etag
            ),
        )
        return data

    def read_indexed_member(
        self, index: ShardIndex, member: IndexedMember, *, verify: bool | None = None
    ) -> bytes:
        """One member of an indexed shard in one ranged GET, checked against its recorded
        checksum when ``verify`` (the store's default). Errors name archive and member.

        A member of a whole-stream .tar.gz (no flush points) is streamed from the archive's
        start instead: nothing else can read it.
        """
        return shard_access.read_indexed_member(self, index, member, verify=verify)

    def read_shard_manifest(self, entry: ShardEntry) -> list[FileEntry]:
        """A shard's internal manifest, read from the head of the archive only.

        Member paths obey the rules of the tar reader (relative, no ``..``): a hostile
        manifest's paths never reach a listing, a compacted manifest or a deletion plan.
        """
        return list(self.iter_shard_manifest(entry))

    def iter_shard_manifest(self, entry: ShardEntry) -> Iterator[FileEntry]:
        """:meth:`read_shard_manifest` one entry at a time, the manifest never held whole
        (planning counts the members of shards listed without ``count`` this way)."""
        return shard_access.iter_shard_manifest(self, entry)

    # -- shards --------------------------------------------------------------------------------

    def put_shard_archive(
        self,
        archive_key: str,
        shard_items: Iterable[ShardItem],
        format: Literal["tar"] = "tar",
        compression: Compression | Literal["none"] = None,
        vars: Mapping[str, Any] | None = None,
        *,
        compresslevel: int = 6,
    ) -> Shard:
        """Stream a tar (or tar.gz) of ``shard_items`` straight into a multipart upload.

        The internal manifest (``__manifest__.jsonl``: id, meta, size and crc32c per member) is
        the first member. Nothing touches local disk; memory is bounded by the part size. Any
        error aborts the upload, so no partial archive is left behind.
        """
        if format != "tar":
            raise ValueError(f"unsupported shard format {format!r}: only 'tar'")
        compression = shard_compression(compression)
        resolved = self.resolve(archive_key, vars)
        items = list(shard_items)
        if not items:
            raise ShardWriteError(archive_key=resolved, reason="no items")
        content_type = "application/gzip" if compression else "application/x-tar"
        writer = self._writer(resolved, content_type)
        with writer:
            result = write_shard(
                items,
                writer,
                archive_key=resolved,
                compression=compression,
                compresslevel=compresslevel,
            )
        entry: ShardEntry = {
            "kind": "shard",
            "archive_key": resolved,
            "format": "tar",
            "compression": compression,
            "internal_manifest_path": INTERNAL_MANIFEST_PATH,
            "count": result.count,
            "size_bytes": writer.bytes_written,
            "members_size_bytes": result.members_size_bytes,
        }
        if writer.etag:
            entry["etag"] = writer.etag
        entry["index_key"] = self.put_shard_index(entry, result.members, result.spans)
        return Shard(entry=entry, members=result.members)

    def put_shard_index(
        self, entry: ShardEntry, members: Sequence[FileEntry], spans: Sequence[MemberSpan]
    ) -> str:
        """Store the index of the archive ``entry`` describes (member offsets, for ranged
        reads) beside it, after the archive; returns its key (:mod:`~s3exchange.shard_index`)."""
        archive = entry["archive_key"]
        key = index_key_for(archive)
        data = encode_index(
            archive,
            members,
            spans,
            etag=entry.get("etag"),
            size_bytes=entry.get("size_bytes"),
            compression=entry.get("compression"),
        )
        self._bucket.put(key, data, content_type=MANIFEST_CONTENT_TYPE)
        return key

    def put_sharded(
        self,
        manifest_key: str,
        shard_entries: Iterable[ShardEntry],
        update_mode: UpdateMode = "append_parts",
        vars: Mapping[str, Any] | None = None,
    ) -> str:
        """Record shard entries in a manifest (``append_parts`` by default)."""
        return self.write_manifest(manifest_key, shard_entries, mode=update_mode, vars=vars)

    def shard_writer(
        self,
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
    ) -> ShardWriter:
        """A writer of webdataset-style samples into shards ``pattern`` (``{index}``: 0, 1, ...).

        Each shard streams into its upload as samples arrive and holds at most ``max_entries``
        members and ``max_bytes`` member bytes (a sample exceeding them alone gets a shard of its
        own; samples are never split). At close the entries go to ``manifest`` with
        ``update_mode``; an exception aborts the open upload and writes no manifest.
        """
        return ShardWriter(
            self,
            pattern,
            manifest,
            max_entries=max_entries,
            max_bytes=max_bytes,
            compression=compression,
            update_mode=update_mode,
            start_index=start_index,
            compresslevel=compresslevel,
            vars=vars,
        )

    # -- listing through manifests -------------------------------------------------------------

    def list_manifest_files(
        self,
        manifest: ManifestSource,
        include_shards: bool = True,
        vars: Mapping[str, Any] | None = None,
    ) -> Iterator[FileEntry]:
        """File entries of a manifest; with ``include_shards`` also every shard member (from
        the internal manifests, which are read without downloading the archives' data)."""
        for entry in self.iter_entries(manifest, True, vars):
            if entry["kind"] == "file":
                yield entry
            elif entry["kind"] == "shard" and include_shards:
                yield from self._shard_files(entry)

    def _shard_files(self, entry: ShardEntry) -> Iterator[FileEntry]:
        archive = entry["archive_key"]
        for member in self.iter_shard_manifest(entry):
            expanded: FileEntry = {**member}
            expanded["archive_key"] = archive
            expanded["member_path"] = member.get("member_path", member["key"])
            expanded["key"] = virtual_key(archive, expanded["member_path"])
            yield expanded

    def list_by_manifest_prefix(
        self,
        manifest: ManifestSource,
        prefix_filter: str,
        include_shards: bool = True,
        vars: Mapping[str, Any] | None = None,
    ) -> Iterator[FileEntry]:
        """File entries (and shard members) whose key or virtual key starts with the prefix.

        A shard's internal manifest is read only when its virtual keys could match.
        """
        prefix = self.resolve(prefix_filter, vars)
        for entry in self.iter_entries(manifest, True, vars):
            if entry["kind"] == "file":
                if entry["key"].startswith(prefix):
                    yield entry
            elif entry["kind"] == "shard" and include_shards:
                archive = entry["archive_key"]
                if archive.startswith(prefix) or prefix.startswith(archive):
                    for member in self._shard_files(entry):
                        if member["key"].startswith(prefix):
                            yield member

    # -- pending multipart uploads -------------------------------------------------------------

    def list_uploads(
        self, prefix: str, vars: Mapping[str, Any] | None = None
    ) -> Iterator[PendingUpload]:
        """Multipart uploads under ``prefix`` never completed nor aborted (a killed writer's)."""
        return self._bucket.list_multipart_uploads(self.resolve(prefix, vars))

    def abort_stale_uploads(
        self,
        prefix: str,
        older_than: float = STALE_UPLOAD_SECONDS,
        *,
        dry_run: bool = False,
        vars: Mapping[str, Any] | None = None,
    ) -> list[PendingUpload]:
        """Abort the uploads under ``prefix`` started more than ``older_than`` seconds ago.

        A writer killed mid-upload (``kill -9``, a lost machine) leaves its parts stored, and
        billed, until aborted: no ``finally`` runs. An empty prefix is refused (it would reach
        every writer under the base prefix). Returns what was (or would be) aborted.
        """
        resolved = self.resolve(prefix, vars)
        if not resolved.strip("/"):
            raise InvalidKeyError(
                key=resolved, reason="name the prefix whose stale uploads to abort"
            )
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        stale = [u for u in self.list_uploads(resolved) if u.initiated <= cutoff]
        if not dry_run:
            self.abort_uploads(stale)
        return stale

    def abort_uploads(self, uploads: Iterable[PendingUpload]) -> None:
        """Abort these pending uploads (from :meth:`list_uploads`); one already completed or
        aborted meanwhile is no error."""
        for upload in uploads:
            self._bucket.abort_multipart_upload(upload.key, upload.upload_id)

    # -- deletion and compaction ---------------------------------------------------------------

    def delete_prefix(
        self,
        prefix: str,
        regex: str | None = None,
        vars: Mapping[str, Any] | None = None,
        *,
        allow_all: bool = False,
    ) -> int:
        """Delete every key under ``prefix`` (matching ``regex`` when given); returns the count.

        Prefixes follow the key rules (``"/x"`` is refused, as in :meth:`delete_key`); an
        empty prefix, every key under the base prefix, needs ``allow_all=True``. Per-key
        failures reported by the server raise DeleteError listing them, after every other key
        has been deleted.
        """
        resolved = self.resolve(prefix, vars)
        return deletion.delete_prefix(
            self._bucket, resolved, regex, allow_all=allow_all, batch_size=self.config.delete_batch
        )

    def plan_delete_manifest(
        self, manifest: str, dedupe: bool = True, vars: Mapping[str, Any] | None = None
    ) -> deletion.DeletePlan:
        """What :meth:`delete_manifest` would delete, and the archives it would keep; reads the
        whole graph (and the internal manifests of archives listed member by member)."""
        return self._plan_delete(self.resolve(manifest, vars), dedupe)

    def _plan_delete(self, root: str, dedupe: bool) -> deletion.DeletePlan:
        def members(archive: str) -> list[str]:
            entry: ShardEntry = {
                "kind": "shard",
                "archive_key": archive,
                "compression": shard_access.compression_of(archive),
            }
            return [m.get("member_path", m["key"]) for m in self.read_shard_manifest(entry)]

        return deletion.plan_delete_manifest(
            self._bucket.keyspace,
            root,
            self._read_manifest,
            members,
            dedupe=dedupe,
        )

    def delete_manifest(
        self,
        manifest: str,
        delete_manifests: bool = True,
        dedupe: bool = True,
        vars: Mapping[str, Any] | None = None,
        *,
        plan: deletion.DeletePlan | None = None,
    ) -> DeleteReport:
        """Delete everything a manifest references (recursively), and the manifests too.

        Exactly the keys of :meth:`plan_delete_manifest` (pass ``plan`` to delete one already
        shown): a whole archive only when a shard entry lists it or its members are all listed
        one by one. The plan is complete and every key valid before the first delete.
        """
        resolved = self.resolve(manifest, vars)
        if plan is None:
            plan = self._plan_delete(resolved, dedupe)
        elif plan.root != resolved:
            raise ValueError(f"the plan is for {plan.root!r}, not {resolved!r}")
        return deletion.delete_manifest(
            self._bucket,
            plan,
            delete_manifests=delete_manifests,
            batch_size=self.config.delete_batch,
        )

    def compact_manifest(
        self,
        src_manifest_key: str,
        dst_manifest_key: str,
        resolve_refs: bool = True,
        expand_shards: bool = False,
        vars: Mapping[str, Any] | None = None,
    ) -> CompactReport:
        """Flatten a manifest (and its parts) into one manifest at ``dst_manifest_key``.

        Compacting a manifest onto itself survives a crash but not concurrent ``append_parts``
        writers: stop them first. The old part files stay where they are.
        """
        src = self.resolve(src_manifest_key, vars)
        dst = self.resolve(dst_manifest_key, vars)
        return compaction.compact(
            self._bucket,
            src,
            dst,
            entries=manifest_reads.iter_entries(self, src, resolve_refs),
            expand=self._shard_files if expand_shards else None,
            part_size=self.part_size,
        )


def _unreachable(error: StorageError) -> bool:
    """Whether a request failed because the server could not be reached at all; not a TLS
    failure (botocore counts SSLError as a connection error), which waiting does not mend: an
    untrusted certificate made every read wait out ``reconnect_s`` (30 s) before failing."""
    import ssl

    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import SSLError

    cause = error.__cause__
    if isinstance(cause, SSLError | ssl.SSLError):
        return False
    return isinstance(cause, BotoConnectionError | ConnectionError)
