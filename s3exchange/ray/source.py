"""``read_s3exchange``: a manifest's samples as a Ray Dataset, one read task per group of shards.

The driver walks the manifest once (references followed, a ``pack`` that has not finished
refused) and cuts it into *units*: a shard, or a run of consecutive loose files (never splitting
a sample). Units are dealt to read tasks largest first, each to the task holding the fewest bytes
(so tasks carry about equal bytes whatever the shard sizes), and each task reads its units in
manifest order. A task builds its own client from the settings and streams each shard from one
GET, verifying every member's crc32c (and the archive's ETag when the manifest records it) as it
reads; no temporary file. Every unit belongs to exactly one task, so each sample is read once.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from ray.data import Dataset, read_datasource
from ray.data.block import Block, BlockMetadata
from ray.data.datasource.datasource import Datasource, ReadTask

from ..errors import ShardReadError
from ..packing import manifest_to_read
from ..samples import key_and_field
from ..store import S3ExchangeStore
from ..types import FileEntry, ManifestEntry, ShardEntry
from .clients import store_for

if TYPE_CHECKING:
    from ray.data.context import DataContext

    from ..settings import S3Settings

__all__ = ["S3ExchangeDatasource", "balance", "read_s3exchange"]

GroupBy = Literal["key"] | None
"""``"key"``: one row per webdataset sample (every field of a key); ``None``: one row per file."""

LOOSE_UNIT_BYTES = 64 << 20
"""Consecutive loose files are read by one task up to about this many bytes (whole samples)."""
LOOSE_UNIT_FILES = 4096
BLOCK_ROWS = 1024
"""Rows per block at most (fewer when the block reaches the context's target block size)."""


@dataclass(slots=True)
class _Unit:
    """What one read task reads in one go: a shard, or consecutive loose files."""

    position: int
    entries: list[ManifestEntry]
    size: int


@dataclass(slots=True)
class _Group:
    size: int = 0
    units: list[_Unit] = field(default_factory=list)


def _entry_size(entry: ManifestEntry) -> int:
    size = entry.get("size_bytes")
    return size if isinstance(size, int) and size > 0 else 1


def _units(entries: Iterator[ManifestEntry]) -> list[_Unit]:
    units: list[_Unit] = []
    loose: _Unit | None = None
    last_key: str | None = None
    for entry in entries:
        if entry["kind"] == "shard":
            units.append(_Unit(len(units), [entry], _entry_size(entry)))
            loose = None
            continue
        if entry["kind"] != "file":
            continue
        split = key_and_field(entry["key"])
        key = split[0] if split else entry["key"]
        full = loose is not None and (
            loose.size >= LOOSE_UNIT_BYTES or len(loose.entries) >= LOOSE_UNIT_FILES
        )
        if loose is None or (full and key != last_key):
            loose = _Unit(len(units), [], 0)
            units.append(loose)
        loose.entries.append(entry)
        loose.size += _entry_size(entry)
        last_key = key
    return units


def balance(units: Sequence[_Unit], tasks: int) -> list[list[_Unit]]:
    """Units dealt to at most ``tasks`` groups, largest first to the lightest group (LPT: within
    4/3 of the best split); each group keeps manifest order."""
    groups = [_Group() for _ in range(max(1, min(tasks, len(units))))]
    heap = [(0, i) for i in range(len(groups))]
    for unit in sorted(units, key=lambda u: (-u.size, u.position)):
        size, i = heapq.heappop(heap)
        groups[i].units.append(unit)
        groups[i].size += unit.size
        heapq.heappush(heap, (size + unit.size, i))
    return [sorted(g.units, key=lambda u: u.position) for g in groups if g.units]


class _Rows:
    """Rows gathered into Arrow blocks of at most ``BLOCK_ROWS`` rows and ``block_bytes``."""

    def __init__(self, block_bytes: int) -> None:
        self._block_bytes = block_bytes
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, row: dict[str, Any], size: int) -> Block | None:
        self._rows.append(row)
        self._bytes += size
        if len(self._rows) >= BLOCK_ROWS or self._bytes >= self._block_bytes:
            return self.flush()
        return None

    def flush(self) -> Block | None:
        if not self._rows:
            return None
        block = pa.Table.from_pylist(self._rows)
        self._rows, self._bytes = [], 0
        return block


def _files(store: S3ExchangeStore, unit: _Unit, verify: bool) -> Iterator[tuple[str, str, bytes]]:
    """``(url, path, bytes)`` of every file of a unit, in order, checked as they are read."""
    first = unit.entries[0]
    if first["kind"] == "shard":
        shard: ShardEntry = first
        for member in store.iter_shard_members(shard, verify=verify):
            yield shard["archive_key"], member.entry["member_path"], member.read()
        return
    for entry in unit.entries:
        file: FileEntry = entry  # type: ignore[assignment]
        yield file["key"], file["key"], store.read_file_entry(file, verify=verify)


def _read(
    settings: S3Settings,
    units: Sequence[_Unit],
    group_by: GroupBy,
    verify: bool,
    block_bytes: int,
) -> Iterator[Block]:
    """One read task: its units' samples as Arrow blocks."""
    store = store_for(settings)
    rows = _Rows(block_bytes)
    for unit in units:
        sample: dict[str, Any] | None = None
        size = 0
        for url, path, data in _files(store, unit, verify):
            if group_by is None:
                block = rows.add({"__url__": url, "path": path, "data": data}, len(data))
                if block is not None:
                    yield block
                continue
            split = key_and_field(path)
            if split is None:
                continue  # no extension: no sample, as in webdataset
            key, name = split
            if sample is not None and sample["__key__"] != key:
                block = rows.add(sample, size)
                if block is not None:
                    yield block
                sample, size = None, 0
            if sample is None:
                sample = {"__key__": key, "__url__": url}
            if name in sample:
                raise ShardReadError(
                    archive_key=url, reason=f"sample {key!r} repeats field {name!r}"
                )
            sample[name] = data
            size += len(data)
        if sample is not None:
            block = rows.add(sample, size)
            if block is not None:
                yield block
    last = rows.flush()
    if last is not None:
        yield last


class S3ExchangeDatasource(Datasource):
    """The samples of an s3exchange manifest (shards and loose files) for ``ray.data``.

    Use :func:`read_s3exchange`. Rows are ``{"__key__", "__url__", <field>: bytes, ...}`` with
    ``group_by="key"`` (fields lower-cased as webdataset splits member paths; a member without
    extension is left out, as webdataset does) or ``{"__url__", "path", "data"}`` per file with
    ``group_by=None``. Values stay bytes: decode them in a ``map``/``map_batches`` stage.
    """

    def __init__(
        self,
        settings: S3Settings,
        manifest: str,
        *,
        group_by: GroupBy = "key",
        verify: bool = True,
        allow_unfinished: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if group_by not in ("key", None):
            raise ValueError(f"group_by must be 'key' or None, not {group_by!r}")
        self._settings = settings
        self._group_by: GroupBy = group_by
        self._verify = verify
        store = store_for(settings)
        self._manifest = manifest_to_read(store, manifest, allow_unfinished=allow_unfinished)
        self._units = _units(store.iter_manifest_entries(self._manifest))

    def __repr__(self) -> str:
        return (
            f"S3ExchangeDatasource(bucket={self._settings.bucket!r}, "
            f"manifest={self._manifest!r}, units={len(self._units)})"
        )

    def get_name(self) -> str:
        return "S3Exchange"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(unit.size for unit in self._units)

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: DataContext | None = None,
    ) -> list[ReadTask]:
        block_bytes = (
            data_context.target_max_block_size
            if data_context is not None and data_context.target_max_block_size
            else 128 << 20
        )
        tasks = []
        for group in balance(self._units, parallelism):
            keys = tuple(
                e["archive_key"] if e["kind"] == "shard" else e["key"]
                for unit in group
                for e in unit.entries
            )
            # rows are known beforehand only one per file, and only when every shard has a count
            counts = [
                e.get("count") if e["kind"] == "shard" else 1
                for unit in group
                for e in unit.entries
            ]
            known = self._group_by is None and None not in counts
            metadata = BlockMetadata(
                num_rows=sum(c or 0 for c in counts) if known else None,
                size_bytes=sum(unit.size for unit in group),
                input_files=keys,
                exec_stats=None,
            )
            read = functools.partial(
                _read, self._settings, group, self._group_by, self._verify, block_bytes
            )
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks


def read_s3exchange(
    settings: S3Settings,
    manifest: str,
    *,
    group_by: GroupBy = "key",
    verify: bool = True,
    allow_unfinished: bool = False,
    override_num_blocks: int | None = None,
    concurrency: int | None = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> Dataset:
    """A manifest's samples as a :class:`ray.data.Dataset` (see :class:`S3ExchangeDatasource`).

    ``override_num_blocks`` sets the number of read tasks (at most one per unit); by default Ray
    picks it from the cluster's CPUs and the data's size.
    """
    source = S3ExchangeDatasource(
        settings,
        manifest,
        group_by=group_by,
        verify=verify,
        allow_unfinished=allow_unfinished,
    )
    dataset: Dataset = read_datasource(
        source,
        override_num_blocks=override_num_blocks,
        concurrency=concurrency,
        ray_remote_args=ray_remote_args,
    )
    return dataset
