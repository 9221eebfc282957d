"""Reading through manifests, the bodies of :class:`~s3exchange.store.S3ExchangeStore`'s methods
that keep their signatures and docstrings on the façade: a manifest's entries (refs followed),
and the objects and shard members it lists, checked against what it records.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, cast

from . import manifest, shard_access
from .body import CheckedStream
from .errors import IntegrityError, ManifestNotFoundError, ObjectNotFoundError
from .keys import virtual_key
from .types import FileEntry, ManifestEntry, ShardEntry

if TYPE_CHECKING:
    from .store import ManifestSource, S3ExchangeStore

__all__ = [
    "flatten",
    "iter_entries",
    "iter_objects",
    "open_file_entry",
    "read_file_entry",
    "read_manifest",
]


def iter_entries(
    store: S3ExchangeStore,
    key: str | None,
    resolve_refs: bool,
    entries: Iterable[ManifestEntry] | None = None,
) -> Iterator[ManifestEntry]:
    """The entries of manifest ``key`` (or of ``entries`` in hand), refs followed depth-first
    when ``resolve_refs`` (:func:`s3exchange.manifest.walk_graph`)."""
    if not resolve_refs:
        yield from entries if entries is not None else read_manifest(store, cast(str, key))
        return
    for _, entry in manifest.walk_graph(functools.partial(read_manifest, store), key, entries):
        if entry["kind"] != "manifest_ref":
            yield entry


def read_manifest(store: S3ExchangeStore, key: str) -> Iterator[ManifestEntry]:
    """The entries of the one manifest object ``key``, refs not followed."""
    try:
        stream = store._stream(key)
    except ObjectNotFoundError:
        raise ManifestNotFoundError(key=key, bucket=store.bucket) from None
    with stream:
        yield from manifest.iter_entries_from_stream(stream, key=key)


def flatten(
    store: S3ExchangeStore, entries: Iterable[ManifestEntry], resolve_refs: bool
) -> Iterator[ManifestEntry]:
    """Entries in hand, validated, refs followed when ``resolve_refs``."""
    valid = (manifest.validate_entry(raw, index=i) for i, raw in enumerate(entries))
    return iter_entries(store, None, resolve_refs, valid)


def iter_objects(
    store: S3ExchangeStore,
    manifest: ManifestSource,
    vars: Mapping[str, Any] | None = None,
    *,
    verify: bool | None = None,
) -> Iterator[tuple[IO[bytes], FileEntry]]:
    """:meth:`S3ExchangeStore.iter_objects <s3exchange.store.S3ExchangeStore.iter_objects>`:
    consecutive members of one archive share its GET."""
    check = store.verify if verify is None else verify
    run: list[FileEntry] = []
    for entry in store.iter_entries(manifest, True, vars):
        if run and (entry["kind"] != "file" or entry.get("archive_key") != run[0]["archive_key"]):
            yield from _iter_member_run(store, run, check)
            run = []
        if entry["kind"] == "file":
            if "archive_key" in entry and "member_path" in entry:
                run.append(entry)
            else:
                yield open_file_entry(store, entry, verify=check), entry
        elif entry["kind"] == "shard":
            for member in store.iter_shard_members(entry, verify=check):
                yield cast(IO[bytes], member.stream), member.entry
    if run:
        yield from _iter_member_run(store, run, check)


def _iter_member_run(
    store: S3ExchangeStore, run: list[FileEntry], verify: bool
) -> Iterator[tuple[IO[bytes], FileEntry]]:
    """Consecutive member entries of one archive (a compacted, expanded manifest): one GET,
    members yielded in archive order; a listed member the archive lacks is an error."""
    archive = run[0]["archive_key"]
    wanted = {entry["member_path"]: entry for entry in run}
    shard: ShardEntry = {
        "kind": "shard",
        "archive_key": archive,
        "compression": shard_access.compression_of(archive),
    }
    for member in store.iter_shard_members(
        shard, select=lambda _, e: e["member_path"] in wanted, verify=verify
    ):
        yield cast(IO[bytes], member.stream), {**wanted.pop(member.entry["member_path"])}
    if wanted:
        missing = next(iter(wanted))
        raise ObjectNotFoundError(key=virtual_key(archive, missing))


def open_file_entry(
    store: S3ExchangeStore, entry: FileEntry, *, verify: bool | None = None
) -> IO[bytes]:
    """Open a file entry, checking it against the manifest's etag, size and sha256.

    A shard member listed as a file entry (``archive_key`` + ``member_path``) is opened by
    streaming its archive up to that member.
    """
    if "archive_key" in entry and "member_path" in entry:
        return cast(
            IO[bytes], shard_access.open_member(store, entry["archive_key"], entry["member_path"])
        )
    key = entry["key"]
    stream = store._stream(key)
    if not (store.verify if verify is None else verify):
        return cast(IO[bytes], stream)
    etag = entry.get("etag")
    if etag and stream.etag and etag.strip('"') != stream.etag.strip('"'):
        stream.close()
        raise IntegrityError(key=key, reason=f"ETag is {stream.etag}, manifest says {etag}")
    size = entry.get("size_bytes")
    if size is not None and stream.size is not None and size != stream.size:
        stream.close()
        raise IntegrityError(key=key, reason=f"size is {stream.size} bytes, manifest says {size}")
    return cast(IO[bytes], CheckedStream(stream, size, entry.get("sha256")))


def read_file_entry(
    store: S3ExchangeStore, entry: FileEntry, *, verify: bool | None = None
) -> bytes:
    """A file entry's whole object in one GET, checked as :meth:`open_file_entry` checks it.

    For many small objects: the GET goes through :meth:`Bucket.read_object
    <s3exchange.bucket.Bucket.read_object>` (a fraction of botocore's CPU per request).
    A shard member listed as a file entry is read through :meth:`open_file_entry`.
    """
    if "archive_key" in entry and "member_path" in entry:
        with open_file_entry(store, entry, verify=verify) as member:
            return member.read()
    key = entry["key"]
    data, got_etag = store._reconnecting(
        key, lambda: store._bucket.read_object(key, retry=store.read_retry)
    )
    if not (store.verify if verify is None else verify):
        return data
    etag = entry.get("etag")
    if etag and got_etag and etag.strip('"') != got_etag.strip('"'):
        raise IntegrityError(key=key, reason=f"ETag is {got_etag}, manifest says {etag}")
    size = entry.get("size_bytes")
    if size is not None and size != len(data):
        raise IntegrityError(key=key, reason=f"size is {len(data)} bytes, manifest says {size}")
    sha256 = entry.get("sha256")
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(key=key, reason="sha256 does not match the manifest")
    return data
