"""Checks that a pack may overwrite or re-list a shard: a stored, unlisted archive must hold this
plan's members byte for byte (by their recorded checksums), and a re-uploaded listed shard must
match its entry.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING

from .errors import PackConflictError, ShardReadError
from .pack_plan import ShardTask, SourceFile
from .pack_scan import unreadable
from .shard_format import CHECKSUM_FIELDS, hexdigest, new_digest
from .types import Compression, FileEntry, ShardEntry

if TYPE_CHECKING:
    from .store import S3ExchangeStore

__all__ = ["check_all_replaceable", "restore_problem"]

OpenSource = Callable[[SourceFile], IO[bytes]]
"""Opens a source's bytes (``ShardBuilder.open``)."""


def check_all_replaceable(
    store: S3ExchangeStore,
    tasks: Iterable[ShardTask],
    compression: Compression,
    open_source: OpenSource,
    jobs: int,
) -> None:
    """Refuse the run unless every stored, unlisted archive it would replace is this plan's own
    (checked on ``jobs`` threads)."""
    replace = [task for task in tasks if task.action == "replace"]
    if not replace:
        return

    def check(task: ShardTask) -> None:
        _check_replaceable(store, task, compression, open_source)

    threads = max(1, jobs)
    with concurrent.futures.ThreadPoolExecutor(threads, "s3exchange-pack-check") as pool:
        for _ in pool.map(check, replace):
            pass


def _check_replaceable(
    store: S3ExchangeStore, task: ShardTask, compression: Compression, open_source: OpenSource
) -> None:
    """Refuse to overwrite a stored, unlisted archive unless it holds this plan's members."""
    key = task.shard.archive_key
    entry: ShardEntry = {"kind": "shard", "archive_key": key, "compression": compression}
    try:
        members = store.read_shard_manifest(entry)
    except ShardReadError as exc:
        raise PackConflictError(
            f"{key} exists, is not listed in the manifest and is not a readable shard "
            f"({exc.reason}); delete it or pack under another --prefix"
        ) from None
    found = [(m.get("member_path"), m.get("size_bytes")) for m in members]
    wanted = [(f.member_path, f.size) for f in task.shard.files]
    if found != wanted:
        raise PackConflictError(
            f"{key} exists and is not listed in the manifest, but holds other files than "
            "this plan; another dataset may use this prefix: pack under another --prefix"
        )
    # Names and sizes are not an identity: two datasets of equally sized files (fixed-length
    # audio, resized images) agree on both. Only the members' checksums show that the stored
    # archive is this plan's own, interrupted run; hashing the files costs one local read at
    # CRC32C speed (~25 GB/s), and only for shards stored but not listed.
    for member, source in zip(members, task.shard.files, strict=True):
        problem = _content_problem(member, source, open_source)
        if problem is not None:
            raise PackConflictError(
                f"{key} exists and is not listed in the manifest, but its member "
                f"{source.member_path!r} {problem}; another dataset may use this prefix: "
                "pack under another --prefix"
            )


def _content_problem(member: FileEntry, source: SourceFile, open_source: OpenSource) -> str | None:
    """Why the stored member is not ``source``'s bytes, or None when its checksum matches."""
    for field in CHECKSUM_FIELDS:
        recorded = member.get(field)
        if isinstance(recorded, str):
            digest = new_digest(field)
            try:
                with open_source(source) as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
            except OSError as exc:
                raise unreadable(exc) from None
            if hexdigest(digest) == recorded:
                return None
            return f"holds other bytes than {source.path} ({field} differs)"
    return "records no checksum, so it cannot be shown to hold the same bytes"


def restore_problem(new: ShardEntry, listed: ShardEntry) -> str | None:
    """Why a re-uploaded shard does not match the entry listing it (its size or ETag), if so."""
    for field in ("size_bytes", "etag"):
        old, now = listed.get(field), new.get(field)
        if old is not None and now is not None and old != now:
            return (
                f"{new['archive_key']} was missing and has been uploaded again, but its "
                f"{field} is now {now} while the manifest lists {old}: the source files changed"
            )
    return None
