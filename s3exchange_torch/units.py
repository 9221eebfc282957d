"""Work units of a manifest: what the epoch plan splits, resolved once per dataset.

A unit is a loose file (1 sample), a shard (``count`` samples, one per member) or, when
grouping by key, a run of loose files sharing a sample key (1 sample) or a shard whose samples
are its groups of consecutive members sharing a key. Sample keys follow webdataset: the path up
to the first dot of its basename is the key, the rest (lower-cased) the field; a path without an
extension belongs to no sample and is skipped, as webdataset skips it.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeAlias

from s3exchange import InvalidManifestError, S3ExchangeStore, ShardReadError
from s3exchange.keys import split_virtual_key
from s3exchange.samples import key_and_field
from s3exchange.store import ManifestSource
from s3exchange.types import FileEntry, ShardEntry

__all__ = [
    "GroupBy",
    "Unit",
    "count_groups",
    "member_path",
    "resolve_units",
]

GroupBy: TypeAlias = Literal["key"] | None
"""``None``: one sample per file; ``"key"``: one sample per webdataset key (all its fields)."""

Unit: TypeAlias = FileEntry | ShardEntry | tuple[FileEntry, ...]
"""A loose file, a shard, or (grouping by key) consecutive loose files of one sample."""

log = logging.getLogger(__name__)

PLANNING_THREADS = 16
"""Shard internal manifests read concurrently while planning (grouping, or missing counts)."""


def member_path(entry: FileEntry) -> str:
    """The path of a shard member inside its archive (or a loose file's key)."""
    path = entry.get("member_path")
    if path:
        return path
    _, member = split_virtual_key(entry["key"])
    return member if member is not None else entry["key"]


def count_groups(paths: Iterable[str], archive_key: str) -> int:
    """Samples in a shard whose members have ``paths``: runs of consecutive equal keys.

    A field repeated within one run is an error (webdataset raises on it too).
    """
    return _groups(paths, archive_key)[0]


def _groups(paths: Iterable[str], archive_key: str) -> tuple[int, str | None, str | None]:
    """``count_groups``, with the first and the last key of the shard."""
    count = 0
    first: str | None = None
    current: str | None = None
    fields: set[str] = set()
    for path in paths:
        split = key_and_field(path)
        if split is None:
            continue
        key, field = split
        if key != current:
            count += 1
            current = key
            first = key if first is None else first
            fields = set()
        if field in fields:
            raise ShardReadError(
                archive_key=archive_key,
                reason=f"sample {key!r} repeats field {field!r}",
                member_path=path,
            )
        fields.add(field)
    return count, first, current


def _group_loose(units: list[Unit], entry: FileEntry, key: str, field: str) -> bool:
    """Append ``entry`` to the previous loose group when it shares its key; True if it did."""
    previous = units[-1] if units else None
    if not isinstance(previous, tuple) or _split(previous[0])[0] != key:
        return False
    if any(_split(other)[1] == field for other in previous):
        raise InvalidManifestError(
            key=None, reason=f"sample {key!r} repeats field {field!r} among consecutive loose files"
        )
    units[-1] = (*previous, entry)
    return True


def _split(entry: FileEntry) -> tuple[str, str]:
    """``key_and_field`` of a loose file already known to have an extension."""
    split = key_and_field(entry["key"])
    assert split is not None
    return split


def resolve_units(
    store: S3ExchangeStore, source: ManifestSource, group_by: GroupBy = None
) -> tuple[list[Unit], list[int]]:
    """The manifest's units in manifest order and the sample count of each.

    Shard counts come from the manifest's ``count``; a shard without one, and every shard when
    grouping by key, has its internal manifest streamed line by line (only the head of the
    archive, several shards at a time), so planning memory does not grow with it.
    """
    units: list[Unit] = []
    counts: list[int] = []
    to_read: list[int] = []  # indices of shards whose internal manifest is needed
    for entry in store.iter_entries(source):
        if entry["kind"] == "file":
            if group_by is None:
                units.append(entry)
                counts.append(1)
            else:
                split = key_and_field(entry["key"])
                if split is None:
                    continue  # no extension: no sample, as in webdataset
                if not _group_loose(units, entry, *split):
                    units.append((entry,))
                    counts.append(1)
        elif entry["kind"] == "shard":
            count = entry.get("count")
            if group_by is not None or count is None:
                to_read.append(len(units))
                count = 0
            units.append(entry)
            counts.append(count)
        else:  # pragma: no cover - references are resolved by _entries
            raise InvalidManifestError(key=None, reason=f"unexpected entry kind {entry['kind']!r}")
    if to_read:
        shards: list[ShardEntry] = [units[i] for i in to_read]  # type: ignore[misc]
        bounds: dict[int, tuple[str | None, str | None]] = {}
        for index, (count, first, last) in zip(
            to_read, _count_shards(store, shards, group_by), strict=True
        ):
            counts[index] = count
            bounds[index] = (first, last)
        if group_by is not None:
            _warn_split_sample(units, bounds)
    return units, counts


def _warn_split_sample(
    units: Sequence[Unit], bounds: dict[int, tuple[str | None, str | None]]
) -> None:
    """Warn once when a shard begins with the key the shard before it ended with: that sample's
    files were split across shards (an old ``pack``, or a writer that cut a sample), and it
    arrives as two partial samples."""
    for index in sorted(bounds):
        previous = bounds.get(index - 1)
        first = bounds[index][0]
        if previous is not None and first is not None and previous[1] == first:
            before: ShardEntry = units[index - 1]  # type: ignore[assignment]
            after: ShardEntry = units[index]  # type: ignore[assignment]
            log.warning(
                "sample %r is split between shards %r and %r: it arrives as two partial "
                "samples (repack it so that one shard holds all its files)",
                first,
                before["archive_key"],
                after["archive_key"],
            )
            return


def _count_shards(
    store: S3ExchangeStore, shards: Sequence[ShardEntry], group_by: GroupBy
) -> Iterator[tuple[int, str | None, str | None]]:
    """Each shard's sample count and (grouping by key) its first and last key."""

    def count(shard: ShardEntry) -> tuple[int, str | None, str | None]:
        # Streamed, never held: 8 shards without count once cost 3.1 GiB RSS read whole.
        members = store.iter_shard_manifest(shard)
        if group_by is None:
            return sum(1 for _ in members), None, None
        return _groups((member_path(m) for m in members), shard["archive_key"])

    if len(shards) == 1:
        yield count(shards[0])
        return
    with ThreadPoolExecutor(min(PLANNING_THREADS, len(shards))) as pool:
        yield from pool.map(count, shards)


def loose_sample(entries: Sequence[FileEntry], datas: Sequence[bytes]) -> dict[str, Any]:
    """A webdataset-style sample from loose files of one key: ``__key__``, ``__url__``, fields."""
    first = entries[0]["key"]
    split = key_and_field(first)
    key = split[0] if split else first
    sample: dict[str, Any] = {"__key__": key, "__url__": posixpath.dirname(first)}
    for entry, data in zip(entries, datas, strict=True):
        field = key_and_field(entry["key"])
        sample[field[1] if field else ""] = data
    return sample
