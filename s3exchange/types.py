"""Typed shapes of manifest entries, shard items and reports.

Entries are TypedDicts because users index them as dicts (``entry["key"]``) and because they
round-trip to JSONL unchanged; unknown fields a producer adds are preserved.
"""

from __future__ import annotations

import os
from typing import IO, Any, Literal, NotRequired, Protocol, Required, TypeAlias, TypedDict


class Readable(Protocol):
    """What the manifest and tar parsers read from: a GET body, a file, a stream."""

    def read(self, size: int, /) -> bytes: ...


Compression: TypeAlias = Literal["gzip"] | None
"""Shard compression: ``None`` for a plain ``.tar``, ``"gzip"`` for ``.tar.gz``."""

ShardFormat: TypeAlias = Literal["tar"]

UpdateMode: TypeAlias = Literal["overwrite", "append_parts"]

ItemSource: TypeAlias = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]
"""What a shard member or loose object is made from: bytes, a local path, or a binary file."""

INTERNAL_MANIFEST_PATH = "__manifest__.jsonl"
MANIFEST_CONTENT_TYPE = "application/x-ndjson"


class FileEntry(TypedDict, total=False):
    """A loose object, or a shard member once expanded (then ``key`` is ``archive#member``)."""

    kind: Required[Literal["file"]]
    key: Required[str]
    id: str
    meta: dict[str, Any]
    size_bytes: int
    etag: str
    sha256: str
    content_type: str
    archive_key: str
    member_path: str


class ShardEntry(TypedDict, total=False):
    """A tar / tar.gz archive whose first member is an internal JSONL manifest."""

    kind: Required[Literal["shard"]]
    archive_key: Required[str]
    format: ShardFormat
    compression: Compression
    internal_manifest_path: str
    count: int
    size_bytes: int
    members_size_bytes: int
    etag: str
    index_key: str
    """The archive's :mod:`~s3exchange.shard_index` (member offsets for ranged reads)."""


class ManifestRefEntry(TypedDict, total=False):
    """A pointer to another manifest whose entries are read in its place."""

    kind: Required[Literal["manifest_ref"]]
    key: Required[str]


ManifestEntry: TypeAlias = FileEntry | ShardEntry | ManifestRefEntry


class ShardItem(TypedDict, total=False):
    """One member to put into a shard archive."""

    source: Required[ItemSource]
    member_path: Required[str]
    id: str
    meta: dict[str, Any]
    size_bytes: int


class DeleteFailure(TypedDict):
    """A key the server refused to delete, with its S3 error code and message."""

    key: str
    code: str
    message: str


class DeleteReport(TypedDict):
    """What :meth:`S3ExchangeStore.delete_manifest` removed."""

    deleted_object_count: int
    deleted_archive_count: int
    deleted_manifest_count: int
    errors: list[DeleteFailure]


class CompactReport(TypedDict):
    """What :meth:`S3ExchangeStore.compact_manifest` wrote."""

    src_manifest_key: str
    dst_manifest_key: str
    total_entries: int
    file_entries: int
    shard_entries: int
    manifest_ref_entries: int


class ListedObject(TypedDict):
    """One object of a listing, with the logical key (base prefix stripped)."""

    key: str
    size: int
    etag: NotRequired[str]
    last_modified: NotRequired[str]
