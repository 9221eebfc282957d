"""The pure plan of a pack: source files cut into shards, reconciled with what is listed and stored.

:func:`plan_shards` cuts sorted files with :func:`~s3exchange.samples.split_items` into
``{prefix}/shard-{i:05d}.tar[.gz]``; :func:`reconcile` decides per shard what a run does (the
rules are in :mod:`s3exchange.packing`'s docstring). No I/O: the run lives in
:mod:`s3exchange.packing`.
"""

from __future__ import annotations

import hashlib
import posixpath
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import PackConflictError, PackError
from .keys import LiteralKey
from .samples import entry_id, sample_key, split_items
from .types import Compression, ShardEntry, ShardItem

__all__ = [
    "CHANGED_HINT",
    "PATHS_FIELD",
    "Action",
    "PlannedShard",
    "ShardTask",
    "SourceFile",
    "default_prefix",
    "plan_shards",
    "reconcile",
    "shard_key",
    "shuffled",
]

Action = Literal["skip", "upload", "replace", "restore"]
"""What a run does with one planned shard (see the module docstring)."""

CHANGED_HINT = (
    "The source directory or the split options (max entries, max bytes, compression) changed "
    "since the manifest was written: pack into a new manifest and prefix instead"
)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A file to pack: where it is (a local path; an object key for
    :func:`s3exchange.ray.pack_objects`), the member path it gets, and its size."""

    path: str
    member_path: str
    size: int


@dataclass(frozen=True, slots=True)
class PlannedShard:
    """Shard ``index`` of a plan: its archive key and its files, in order."""

    index: int
    archive_key: str
    files: tuple[SourceFile, ...]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def members_size_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def paths_digest(self) -> str:
        """sha256 of the member paths, in order: recorded in the entry, so that a rerun with
        other files of the same count and sizes (another ``--shuffle`` seed, another
        ``--exclude``) is told apart."""
        joined = "\n".join(f.member_path for f in self.files)
        return hashlib.sha256(joined.encode("utf-8", "surrogateescape")).hexdigest()

    def items(self) -> list[ShardItem]:
        """The shard items for :meth:`S3ExchangeStore.put_shard_archive`."""
        return [_item(f) for f in self.files]


@dataclass(frozen=True, slots=True)
class ShardTask:
    """A planned shard with the action a run takes and the entry the manifest lists, if any."""

    shard: PlannedShard
    action: Action
    listed: ShardEntry | None = None


def default_prefix(manifest_key: str) -> str:
    """Where shards go by default: ``<manifest directory>/shards``."""
    directory = posixpath.dirname(manifest_key)
    return f"{directory}/shards" if directory else "shards"


def shard_key(prefix: str, index: int, compression: Compression) -> str:
    """``{prefix}/shard-{index:05d}.tar`` (``.tar.gz`` when gzipped)."""
    suffix = ".tar.gz" if compression == "gzip" else ".tar"
    return LiteralKey(f"{prefix}/shard-{index:05d}{suffix}")


def shuffled(files: Sequence[SourceFile], seed: int) -> list[SourceFile]:
    """``files`` with their samples (files sharing a :func:`~s3exchange.samples.sample_key`) in
    an order drawn from ``seed``; a sample's files stay together, in their order."""
    samples: dict[str, list[SourceFile]] = {}
    for f in files:
        samples.setdefault(sample_key(f.member_path), []).append(f)
    order = list(samples.values())
    random.Random(seed).shuffle(order)
    return [f for sample in order for f in sample]


def _item(f: SourceFile) -> ShardItem:
    return {
        "source": f.path,
        "member_path": f.member_path,
        "id": entry_id(f.member_path),
        "size_bytes": f.size,
    }


def plan_shards(
    files: Sequence[SourceFile],
    *,
    prefix: str,
    max_entries: int | None = None,
    max_bytes: int | None = None,
    compression: Compression = None,
) -> list[PlannedShard]:
    """Cut ``files`` (in the given order) into shards with :func:`split_items`."""
    by_member = {f.member_path: f for f in files}
    if len(by_member) != len(files):
        raise PackError("duplicate member paths in the source list")
    batches = split_items([_item(f) for f in files], max_entries, max_bytes)
    return [
        PlannedShard(
            index=i,
            archive_key=shard_key(prefix, i, compression),
            files=tuple(by_member[item["member_path"]] for item in batch),
        )
        for i, batch in enumerate(batches)
    ]


PATHS_FIELD = "member_paths_sha256"
"""The shard entry field holding :attr:`PlannedShard.paths_digest` (older entries lack it)."""


def _disagreement(entry: ShardEntry, shard: PlannedShard) -> str | None:
    count, size = entry.get("count"), entry.get("members_size_bytes")
    if (count is not None and count != shard.count) or (
        size is not None and size != shard.members_size_bytes
    ):
        return (
            f"{shard.archive_key} is listed with {count} members / {size} bytes but the source "
            f"now gives {shard.count} members / {shard.members_size_bytes} bytes"
        )
    recorded = entry.get(PATHS_FIELD)
    if isinstance(recorded, str) and recorded != shard.paths_digest:
        return (
            f"{shard.archive_key} is listed with other member paths than the source now gives "
            "(other files, another --shuffle seed or --exclude)"
        )
    return None


def reconcile(
    plan: Sequence[PlannedShard],
    listed: Mapping[str, Sequence[ShardEntry]],
    stored: Mapping[str, int],
    *,
    prefix: str,
) -> list[ShardTask]:
    """Decide what to do with every planned shard; raise PackConflictError on any mismatch.

    ``listed`` maps archive keys to the shard entries the manifest holds for them; ``stored``
    maps archive keys under ``prefix`` to their stored sizes.
    """
    planned = {shard.archive_key for shard in plan}
    problems = [
        f"the manifest lists {key}, which this plan does not produce"
        for key in sorted(listed)
        if key.startswith(f"{prefix}/shard-") and key not in planned
    ]
    tasks: list[ShardTask] = []
    for shard in plan:
        entries = listed.get(shard.archive_key, ())
        found = [p for p in (_disagreement(e, shard) for e in entries) if p is not None]
        problems += found[:1]
        size = stored.get(shard.archive_key)
        if not entries:
            tasks.append(ShardTask(shard, "upload" if size is None else "replace"))
        elif size is None:
            tasks.append(ShardTask(shard, "restore", entries[0]))
        else:
            recorded = {e["size_bytes"] for e in entries if "size_bytes" in e}
            if recorded - {size}:
                problems.append(
                    f"{shard.archive_key} is stored with {size} bytes but listed with "
                    f"{sorted(recorded)[0]}; run `s3exchange verify`"
                )
            tasks.append(ShardTask(shard, "skip", entries[0]))
    if problems:
        raise PackConflictError(problems=problems, hint=CHANGED_HINT)
    return tasks
