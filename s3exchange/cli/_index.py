"""``s3exchange index``: store shard indexes beside archives we did not write (or wrote before
indexes), so ranged reads and ``S3ExchangeMapDataset`` work over them; optionally a ``wids``
shard list.

``SRC`` is a manifest (a key ending in ``.jsonl``: its shards are indexed, the manifest is left
as it is, since readers look for an index beside each archive) or a prefix (every ``.tar``,
``.tar.gz`` and ``.tgz`` under it is indexed and listed in a new manifest, ``--manifest``,
default ``<prefix>/manifest.jsonl``). Each archive is read once, start to end; one whose index
is current is skipped unless ``--force``. The archives are never rewritten.
"""

from __future__ import annotations

import argparse
import json
import posixpath
from typing import TYPE_CHECKING, Any

from ..keys import LiteralKey
from ..samples import sample_key
from ..shard_index import ShardIndex, index_key_for
from ..types import ShardEntry
from ._common import CliError, ExitCode, emit, emit_json, open_store, plural

if TYPE_CHECKING:
    from ..store import S3ExchangeStore

__all__ = ["cmd_index", "wids_shard_list"]

_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def _shards_under(store: S3ExchangeStore, prefix: str) -> list[ShardEntry]:
    """A shard entry for every archive under ``prefix``, with its listed size and ETag."""
    shards: list[ShardEntry] = []
    for listed in store.list_objects(prefix):
        key = listed["key"]
        if not key.endswith(_ARCHIVE_SUFFIXES):
            continue
        entry: ShardEntry = {
            "kind": "shard",
            "archive_key": key,
            "format": "tar",
            "compression": "gzip" if key.endswith(("gz", ".tgz")) else None,
            "size_bytes": listed["size"],
        }
        if listed.get("etag"):
            entry["etag"] = listed["etag"]
        shards.append(entry)
    return shards


def _sample_count(index: ShardIndex) -> int:
    """Samples as ``wids`` counts them: runs of consecutive members sharing a webdataset key,
    plus one for a member before the first indexed one (our internal manifest)."""
    keys = [sample_key(member["member_path"]) for member in index.members]
    runs = sum(1 for i, key in enumerate(keys) if i == 0 or keys[i - 1] != key)
    leading = bool(index.members) and index.members[0]["offset"] > 0
    return runs + int(leading)


def wids_shard_list(
    indexes: list[ShardIndex], *, list_key: str, bucket: str, base_prefix: str
) -> dict[str, Any]:
    """A ``wids-shard-index-v1`` description of the plain-tar shards among ``indexes``: URLs
    relative to the list's own directory where the shard lies under it, else ``s3://``."""
    base = posixpath.dirname(list_key)
    shards = []
    for index in indexes:
        if index.compression is not None:
            continue  # wids reads plain tar only
        key = index.archive_key
        if base and key.startswith(base + "/"):
            url = key[len(base) + 1 :]
        elif not base:
            url = key
        else:
            url = f"s3://{bucket}/{posixpath.join(base_prefix, key) if base_prefix else key}"
        shard: dict[str, Any] = {"url": url, "nsamples": _sample_count(index)}
        if index.size_bytes is not None:
            shard["filesize"] = index.size_bytes
        shards.append(shard)
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "shardlist": shards}


def cmd_index(args: argparse.Namespace) -> int:
    """Index the shards of a manifest or under a prefix; write a manifest / wids list."""
    store = open_store(args)
    src: str = args.src
    from_manifest = src.endswith(".jsonl")
    if from_manifest:
        shards = [e for e in store.iter_manifest_entries(src) if e["kind"] == "shard"]
    else:
        shards = _shards_under(store, src)
        if not shards:
            raise CliError(ExitCode.NOT_FOUND, f"no .tar, .tar.gz or .tgz archive under {src!r}")
    indexes: list[ShardIndex] = []
    written = 0
    for entry in shards:
        index = None if args.force else store.stored_shard_index(entry)
        if index is None:
            index = store.scan_shard_index(entry)
            store.write_shard_index(index)
            written += 1
        indexes.append(index)
    manifest = None
    if not from_manifest:
        manifest = args.manifest or LiteralKey(posixpath.join(src.rstrip("/"), "manifest.jsonl"))
        entries: list[ShardEntry] = []
        for shard, index in zip(shards, indexes, strict=True):
            listed: ShardEntry = {**shard, "count": len(index.members)}
            listed["members_size_bytes"] = sum(m.get("size_bytes", 0) for m in index.members)
            listed["index_key"] = index_key_for(index.archive_key)
            entries.append(listed)
        store.write_manifest(manifest, entries, mode="overwrite")
    wids_listed = 0
    if args.wids is not None:
        listing = wids_shard_list(
            indexes, list_key=args.wids, bucket=store.bucket, base_prefix=store.base_prefix
        )
        wids_listed = len(listing["shardlist"])
        store.put_object(
            args.wids,
            json.dumps(listing, indent=1).encode(),
            content_type="application/json",
        )
    report = {
        "shards": len(shards),
        "indexed": written,
        "current": len(shards) - written,
        "members": sum(len(index.members) for index in indexes),
        "seekable": sum(index.seekable for index in indexes),
        "manifest": manifest,
        "wids": args.wids,
        "wids_shards": wids_listed,
    }
    if args.json:
        emit_json(report)
    else:
        emit(
            f"indexed {plural(written, 'shard')} ({report['current']} already current), "
            f"{plural(report['members'], 'member')}"
            + (f"; manifest {manifest}" if manifest else "")
            + (
                f"; wids list {args.wids} ({plural(wids_listed, 'plain tar shard')})"
                if args.wids
                else ""
            )
        )
        unseekable = len(shards) - report["seekable"]
        if unseekable:
            emit(
                f"{plural(unseekable, 'whole-stream .tar.gz shard')}: items stream from the "
                "archive's start (no flush points to seek to)"
            )
    return ExitCode.OK
