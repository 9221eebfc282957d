"""Random access to shard archives, the bodies of :class:`~s3exchange.store.S3ExchangeStore`'s
methods that keep their signatures and docstrings on the façade: the archive's ETag-checked GET,
shard indexes (stored, scanned, written), members read by one ranged GET or streamed, virtual
keys' members, and internal manifests. They use the store's read primitives (``_stream``,
``_reconnecting``, ``_bucket``) as its methods did.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, cast

from .body import ObjectStream, inner_stream
from .errors import ObjectChangedError, ObjectNotFoundError, ShardReadError
from .keys import virtual_key
from .shard_format import (
    CHECKSUM_FIELDS,
    WRITE_CHECKSUM,
    hexdigest,
    member_path_problem,
    new_digest,
)
from .shard_index import (
    IndexedMember,
    MemberReader,
    MemberSpan,
    ShardIndex,
    byte_range,
    check_member,
    dumps_index,
    encode_index,
    extract,
    index_key_for,
    parse_index,
)
from .tar_reader import ShardMember, iter_internal_manifest, iter_shard
from .types import (
    INTERNAL_MANIFEST_PATH,
    MANIFEST_CONTENT_TYPE,
    Compression,
    FileEntry,
    Readable,
    ShardEntry,
)

if TYPE_CHECKING:
    from .store import S3ExchangeStore

__all__ = [
    "compression_of",
    "iter_members",
    "iter_shard_manifest",
    "open_archive",
    "open_member",
    "read_indexed_member",
    "read_shard_index",
    "scan_shard_index",
    "stored_shard_index",
    "write_shard_index",
]

log = logging.getLogger(__name__)


def compression_of(archive_key: str) -> Compression:
    """A shard's compression from its name, where no shard entry says it."""
    return "gzip" if archive_key.endswith((".gz", ".tgz")) else None


def open_member(store: S3ExchangeStore, archive_key: str, member_path: str) -> ObjectStream:
    """One shard member, streamed: by one ranged GET of its bytes when an index lies beside
    the archive, else from the archive's GET (no index, an index of another version of the
    archive, a whole-stream .tar.gz). Never read whole: a 3 GiB member of a 3 MB .tar.gz
    once cost 6 GiB RSS. Closing the stream closes the GET."""
    ranged = _open_indexed_member(store, archive_key, member_path)
    if ranged is not None:
        return ranged
    entry: ShardEntry = {
        "kind": "shard",
        "archive_key": archive_key,
        "compression": compression_of(archive_key),
    }
    members = store.iter_shard_members(entry, select=lambda _, e: e["member_path"] == member_path)
    try:
        member = next(members, None)
    except BaseException:
        members.close()
        raise
    if member is None:
        members.close()
        raise ObjectNotFoundError(key=virtual_key(archive_key, member_path))
    return inner_stream(member.entry["key"], member.stream.read, member.stream.size, members.close)


def _open_indexed_member(
    store: S3ExchangeStore, archive_key: str, member_path: str
) -> ObjectStream | None:
    """The member by a ranged GET (``If-Match`` the ETag its index records), or None."""
    index = _fetch_index(store, index_key_for(archive_key))
    if index is None:
        return None
    found = (index.member(i) for i in range(len(index)))  # parsed up to the one asked for
    member = next((m for m in found if m["member_path"] == member_path), None)
    if member is None or (index.compression is not None and "gz_offset" not in member):
        return None
    start, stop = byte_range(member)
    opener = store._bucket.range_opener(archive_key, start, stop, index.etag)
    source: ObjectStream | None = None
    if start < stop:
        try:
            source = ObjectStream(
                archive_key,
                lambda o, e: store._reconnecting(archive_key, lambda: opener(o, e)),
                retry=store.read_retry,
            )
        except ObjectChangedError:
            log.debug("%r changed since its index was written; streaming it", archive_key)
            return None
    reader = MemberReader(
        source or io.BytesIO(), member, archive_key=archive_key, verify=store.verify
    )
    close = source.close if source is not None else (lambda: None)
    size = member.get("size_bytes")
    return inner_stream(virtual_key(archive_key, member_path), reader.read, size, close)


def open_archive(store: S3ExchangeStore, entry: ShardEntry) -> ObjectStream:
    """The archive's GET stream, refused when the entry records another ETag: a shard
    rewritten under the same key (another dataset packed there) must not be read as this
    one. Checked on every read, whatever ``verify`` says: it costs no request."""
    key = entry["archive_key"]
    stream = store._stream(key)
    listed = entry.get("etag")
    if listed and stream.etag and listed.strip('"') != stream.etag.strip('"'):
        stream.close()
        raise ObjectChangedError(
            key=key,
            etag=listed,
            reason=f"was replaced since the manifest listed it (its ETag is {stream.etag})",
        )
    return stream


def iter_members(
    store: S3ExchangeStore,
    entry: ShardEntry,
    stream: Readable,
    *,
    select: Callable[[int, FileEntry], bool] | None = None,
    verify: bool | None = None,
) -> Generator[ShardMember, None, None]:
    """The members of the shard ``entry`` lists, parsed from ``stream``, its archive's bytes
    from the start (:func:`open_archive`'s, or a read-ahead of it); the caller closes it."""
    return iter_shard(
        stream,
        archive_key=entry["archive_key"],
        compression=entry.get("compression"),
        expected_count=entry.get("count"),
        verify=store.verify if verify is None else verify,
        select=select,
        internal_manifest_path=entry.get("internal_manifest_path", INTERNAL_MANIFEST_PATH),
    )


def read_shard_index(store: S3ExchangeStore, entry: ShardEntry) -> ShardIndex:
    """Where each member of a shard lies, for ranged reads (:mod:`~s3exchange.shard_index`).

    The :meth:`stored_shard_index`; a shard without one (written before indexes, or by
    another tool, or replaced since) is indexed by :meth:`scan_shard_index`, a pass over
    the whole archive, with a warning: ``s3exchange index`` stores the index once.
    """
    index = stored_shard_index(store, entry)
    if index is None:
        log.warning(
            "shard %r has no index (or one of another version of the archive): reading "
            "the whole archive once to index it (`s3exchange index` stores an index)",
            entry["archive_key"],
        )
        index = scan_shard_index(store, entry)
    return index


def stored_shard_index(store: S3ExchangeStore, entry: ShardEntry) -> ShardIndex | None:
    """The shard's index as stored (the entry's ``index_key``, else the key beside the
    archive), or None when there is none or it describes an archive with another ETag than
    the one the entry records."""
    index = _fetch_index(store, entry.get("index_key") or index_key_for(entry["archive_key"]))
    if index is None:
        return None
    listed = entry.get("etag")
    if listed and index.etag and listed.strip('"') != index.etag.strip('"'):
        return None
    return index


def _fetch_index(store: S3ExchangeStore, key: str) -> ShardIndex | None:
    """The index stored at ``key`` (one GET; its header checked, member lines parsed when
    asked for), or None when there is none."""
    try:
        data, _ = store._reconnecting(
            key, lambda: store._bucket.read_object(key, retry=store.read_retry)
        )
    except ObjectNotFoundError:
        return None
    return parse_index(data.splitlines(keepends=True), index_key=key)


def write_shard_index(store: S3ExchangeStore, index: ShardIndex) -> str:
    """Store ``index`` beside its archive (e.g. one :meth:`scan_shard_index` made); returns
    its key."""
    key = index_key_for(index.archive_key)
    store._bucket.put(key, dumps_index(index), content_type=MANIFEST_CONTENT_TYPE)
    return key


def scan_shard_index(store: S3ExchangeStore, entry: ShardEntry) -> ShardIndex:
    """A shard's index made by streaming its archive once, checking every member (its
    recorded checksum, or a crc32c computed and recorded here). A whole-stream .tar.gz
    has no flush points, so its index is not :attr:`~ShardIndex.seekable`."""
    archive = entry["archive_key"]
    compression = entry.get("compression")
    members: list[FileEntry] = []
    spans: list[MemberSpan] = []
    with open_archive(store, entry) as stream:
        for member in iter_shard(
            stream,
            archive_key=archive,
            compression=compression,
            expected_count=entry.get("count"),
            verify=True,
            internal_manifest_path=entry.get("internal_manifest_path", INTERNAL_MANIFEST_PATH),
        ):
            digest = new_digest(WRITE_CHECKSUM)
            while chunk := member.stream.read(1 << 20):
                digest.update(chunk)
            found = {k: v for k, v in member.entry.items() if k != "archive_key"}
            found["key"] = member.entry["member_path"]
            if not any(name in found for name in CHECKSUM_FIELDS):
                found[WRITE_CHECKSUM] = hexdigest(digest)
            members.append(cast(FileEntry, found))
            spans.append(MemberSpan(member.offset, member.offset_data))
        etag, size = stream.etag, stream.size
    encoded = encode_index(
        archive, members, spans, etag=etag, size_bytes=size, compression=compression
    )
    return parse_index(encoded.splitlines(keepends=True), index_key=index_key_for(archive))


def read_indexed_member(
    store: S3ExchangeStore, index: ShardIndex, member: IndexedMember, *, verify: bool | None = None
) -> bytes:
    """One member of an indexed shard in one ranged GET, checked against its recorded
    checksum when ``verify`` (the store's default). Errors name archive and member.

    A member of a whole-stream .tar.gz (no flush points) is streamed from the archive's
    start instead: nothing else can read it.
    """
    if index.compression is not None and "gz_offset" not in member:
        return _stream_member(store, index, member["member_path"], verify)
    start, stop = byte_range(member)
    raw = (
        b"" if start == stop else store.read_range(index.archive_key, start, stop, etag=index.etag)
    )
    data = extract(member, raw, archive_key=index.archive_key)
    if store.verify if verify is None else verify:
        check_member(member, data, archive_key=index.archive_key)
    return data


def _stream_member(
    store: S3ExchangeStore, index: ShardIndex, member_path: str, verify: bool | None
) -> bytes:
    entry: ShardEntry = {
        "kind": "shard",
        "archive_key": index.archive_key,
        "compression": index.compression,
    }
    if index.etag:
        entry["etag"] = index.etag
    members = store.iter_shard_members(
        entry, select=lambda _, e: e["member_path"] == member_path, verify=verify
    )
    with contextlib.closing(members):
        for member in members:
            return member.read()
    raise ObjectNotFoundError(key=virtual_key(index.archive_key, member_path))


def iter_shard_manifest(store: S3ExchangeStore, entry: ShardEntry) -> Iterator[FileEntry]:
    """:meth:`read_shard_manifest` one entry at a time, the manifest never held whole
    (planning counts the members of shards listed without ``count`` this way)."""
    key = entry["archive_key"]
    with open_archive(store, entry) as stream:
        for member in iter_internal_manifest(
            stream, archive_key=key, compression=entry.get("compression")
        ):
            problem = member_path_problem(member["member_path"])
            if problem is not None:
                raise ShardReadError(
                    archive_key=key,
                    reason=f"internal manifest: {problem}",
                    member_path=member["member_path"],
                )
            yield member
