"""Read-only commands: ``ls``, ``cat``, ``manifest show`` and ``manifest stats``."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, TypedDict

from ..errors import ObjectNotFoundError
from ..keys import LiteralKey, split_virtual_key, virtual_key
from ..types import INTERNAL_MANIFEST_PATH, Compression, ShardEntry
from ._common import CHUNK, CliError, ExitCode, Progress, emit, emit_json, human_size, open_store
from ._walk import walk_manifest

if TYPE_CHECKING:
    from ..store import S3ExchangeStore

BIG_OBJECT = 64 << 20
"""``cat`` shows a progress bar from this size on (stdout redirected, stderr a terminal)."""


def cmd_ls(args: argparse.Namespace) -> int:
    """Keys under a prefix with their sizes; ``archive#`` (or ``archive#prefix``): its members."""
    store = open_store(args)
    listed: Iterator[Mapping[str, Any]]
    listed = store.list_objects(LiteralKey(args.prefix))  # as printed, braces included
    archive, sep, member_prefix = args.prefix.partition("#")
    if sep:
        first = next(listed, None)
        if first is None:  # no key holds the '#': list the archive's members
            listed = _members(store, LiteralKey(archive), member_prefix)
        else:
            listed = itertools.chain([first], listed)
    for obj in listed:
        if args.json:
            emit_json(obj)
        else:
            emit(f"{obj['size']:>14}  {obj['key']}")
    return ExitCode.OK


def _members(store: S3ExchangeStore, archive: str, prefix: str) -> Iterator[dict[str, Any]]:
    """``archive#member`` keys and sizes, from the internal manifest (the archive's head only)."""
    entry: ShardEntry = {
        "kind": "shard",
        "archive_key": archive,
        "compression": archive_compression(archive),
    }
    for member in store.read_shard_manifest(entry):
        path = member["member_path"]
        if path.startswith(prefix):
            yield {"key": virtual_key(archive, path), "size": member.get("size_bytes", 0)}


def archive_compression(archive_key: str) -> Compression:
    return "gzip" if archive_key.endswith((".gz", ".tgz")) else None


def cmd_cat(args: argparse.Namespace) -> int:
    """Stream an object, or one member of a shard (``archive#member``), to stdout."""
    store = open_store(args)
    out = sys.stdout.buffer
    key = LiteralKey(args.key)  # a key as `ls` prints it, braces included
    archive, member = split_virtual_key(key)
    if key.endswith("#") and store.exists(LiteralKey(key[:-1])) and not store.exists(key):
        raise CliError(
            ExitCode.USAGE,
            f"{args.key!r} names no member: `s3exchange ls {args.key!r}` lists the members",
        )
    if member == INTERNAL_MANIFEST_PATH and not store.exists(key):
        _cat_internal_manifest(store, LiteralKey(archive))
        return ExitCode.OK
    if member is not None and not store.exists(key):
        _cat_member(store, LiteralKey(archive), member, out)
        return ExitCode.OK
    with store.get_object(key) as stream:
        size = stream.size or 0
        show = size >= BIG_OBJECT and not sys.stdout.isatty()
        with Progress(args.key, size, enabled=None if show else False) as bar:
            for chunk in stream.iter_chunks(CHUNK):
                out.write(chunk)
                bar.advance(len(chunk))
    out.flush()
    return ExitCode.OK


def _cat_internal_manifest(store: S3ExchangeStore, archive: str) -> None:
    """The archive's first member, its internal manifest, as JSON Lines (as stored)."""
    entry: ShardEntry = {
        "kind": "shard",
        "archive_key": archive,
        "compression": archive_compression(archive),
    }
    for member in store.read_shard_manifest(entry):
        emit_json(member)
    sys.stdout.flush()


def _cat_member(store: S3ExchangeStore, archive: str, member: str, out: IO[bytes]) -> None:
    """Stream one member from the archive's GET body (never whole in memory)."""
    entry: ShardEntry = {
        "kind": "shard",
        "archive_key": archive,
        "compression": archive_compression(archive),
    }
    for found in store.iter_shard_members(entry, select=lambda _, e: e["member_path"] == member):
        while chunk := found.stream.read(CHUNK):
            out.write(chunk)
        out.flush()
        return  # the rest of the archive is not read
    raise ObjectNotFoundError(key=f"{archive}#{member}", bucket=store.bucket)


def cmd_manifest_show(args: argparse.Namespace) -> int:
    """Entries as JSON Lines, references followed (``--resolve``, the default) or not."""
    store = open_store(args)
    for entry in store.iter_manifest_entries(args.key, resolve_refs=args.resolve):
        emit_json(entry)
    return ExitCode.OK


class ManifestStats(TypedDict):
    """Counts and byte totals of a manifest graph."""

    manifest_key: str
    manifests: int
    refs: int
    files: int
    shards: int
    members: int
    expanded_members: int
    file_bytes: int
    shard_bytes: int
    member_bytes: int
    total_bytes: int
    entries_without_size: int


def manifest_stats(store: S3ExchangeStore, key: str) -> ManifestStats:
    """Walk ``key`` and its parts: files, shards, members (sum of shard counts), bytes."""
    stats: ManifestStats = {
        "manifest_key": store.resolve(key),
        "manifests": 1,
        "refs": 0,
        "files": 0,
        "shards": 0,
        "members": 0,
        "expanded_members": 0,
        "file_bytes": 0,
        "shard_bytes": 0,
        "member_bytes": 0,
        "total_bytes": 0,
        "entries_without_size": 0,
    }
    manifests = {stats["manifest_key"]}
    for _, entry in walk_manifest(store, key):
        if entry["kind"] == "manifest_ref":
            stats["refs"] += 1
            manifests.add(entry["key"])  # one referenced twice is read (and counted) once
            stats["manifests"] = len(manifests)
        elif entry["kind"] == "shard":
            stats["shards"] += 1
            stats["members"] += entry.get("count", 0)
            stats["shard_bytes"] += entry.get("size_bytes", 0)
            stats["member_bytes"] += entry.get("members_size_bytes", 0)
            if "size_bytes" not in entry:
                stats["entries_without_size"] += 1
        elif "archive_key" in entry:  # a shard member listed on its own (compact --expand)
            stats["expanded_members"] += 1
            stats["member_bytes"] += entry.get("size_bytes", 0)
        else:
            stats["files"] += 1
            stats["file_bytes"] += entry.get("size_bytes", 0)
            if "size_bytes" not in entry:
                stats["entries_without_size"] += 1
    stats["total_bytes"] = stats["file_bytes"] + stats["shard_bytes"]
    return stats


def cmd_manifest_stats(args: argparse.Namespace) -> int:
    """Print :func:`manifest_stats` as text or one JSON object."""
    stats = manifest_stats(open_store(args), args.key)
    if args.json:
        emit_json(stats)
        return ExitCode.OK
    for name, value in stats.items():
        shown = f"{value}" if isinstance(value, str) else f"{value:,}"
        if name.endswith("_bytes") and isinstance(value, int):
            shown += f"  ({human_size(value)})"
        emit(f"{name:<22}{shown}")
    return ExitCode.OK
