"""``S3ExchangeMapDataset``: a manifest as a map-style dataset, ``dataset[i]`` in one ranged GET.

- **Items.** Item ``i`` is the ``i``-th file of the manifest (references followed, each shard
  expanded into its members in archive order): the order :class:`S3ExchangeIterableDataset
  <s3exchange_torch.S3ExchangeIterableDataset>` reads without shuffling. Every shard's
  :mod:`~s3exchange.shard_index` is read once, at construction (8 at a time); a shard without
  one is indexed by a pass over its archive, with a warning (``s3exchange index`` stores one).
- **One item, one request.** A shard member is one ranged GET of its bytes (of its flush-point
  segment in a seekable ``.tar.gz``), sent with ``If-Match`` the archive's ETag so a replaced
  archive is refused, never misread; a loose file is one plain GET. With ``verify`` (the
  store's default) a member is checked against the crc32c (or sha256) its index records, a
  loose file against its entry's size, ETag and sha256. A member of a whole-stream ``.tar.gz``
  (written before flush points, or by another tool) streams from its archive's start: slow,
  warned about at construction.
- **Batches.** ``__getitems__(indices)``, which the DataLoader calls with a batch's indices,
  groups the members per archive, merges neighbours whose ranges lie within
  :data:`COALESCE_GAP` of each other into one GET (up to :data:`COALESCE_MAX` bytes), and issues
  the GETs concurrently on ``io_threads`` threads. Items come back in the order asked.
- **Workers.** The dataset pickles without a client or threads (the store rebuilds its client
  per process), so ``fork`` and ``spawn`` workers both work, as does ``DistributedSampler``. It
  holds one JSON line per item as its index stores it (~150-250 bytes) plus an integer: ~0.3 GB
  for a million items, copied into each spawned worker. A line is parsed and checked when its
  item is read (a broken one fails that item, naming the archive), which keeps construction at
  the cost of the GETs: a 10,000-member index is fetched and split in ~9 ms.
"""

from __future__ import annotations

import array
import concurrent.futures
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from s3exchange import LiteralKey, S3ExchangeStore
from s3exchange.keys import virtual_key
from s3exchange.packing import manifest_to_read
from s3exchange.shard_index import (
    IndexedMember,
    ShardIndex,
    byte_range,
    check_member,
    extract,
    parse_member,
)
from s3exchange.types import Compression, FileEntry, ShardEntry

from .collate import Sample

__all__ = ["COALESCE_GAP", "COALESCE_MAX", "S3ExchangeMapDataset"]

log = logging.getLogger(__name__)

COALESCE_GAP = 256 << 10
"""Members of one archive whose ranges are at most this far apart are read in one GET: at
~30 ms per request and ~100 MB/s per connection, 256 KiB more in a response costs ~2.5 ms."""
COALESCE_MAX = 8 << 20
"""Largest merged GET, so one request never holds up a batch for long."""
_INDEX_THREADS = 8
_LOCATION_FIELDS = ("offset", "offset_data", "gz_offset", "gz_size", "gz_start")


@dataclass(frozen=True, slots=True)
class _Archive:
    """What a ranged read of one shard needs (a ShardIndex without its members)."""

    key: str
    etag: str | None
    compression: Compression
    seekable: bool

    def index(self) -> ShardIndex:
        return ShardIndex(self.key, self.etag, None, self.compression, ())

    def member(self, line: bytes) -> IndexedMember:
        """An item's line, checked as an index member (errors name the archive)."""
        return parse_member(line, compression=self.compression, where=self.key)


@dataclass(frozen=True, slots=True)
class _Ranged:
    """One item to cut out of a ranged GET of its archive."""

    position: int
    member: IndexedMember
    start: int
    stop: int


class S3ExchangeMapDataset(Dataset[Any]):
    """Map-style access to the files of a manifest: ``len(ds)``, ``ds[i]``, batched fetches.

    Args:
        store: the store holding the manifest and its data.
        manifest: the manifest key (a template, like every store key).
        transform: ``transform(data, entry)`` turns each item into what ``ds[i]`` returns;
            without it an item is a :class:`~s3exchange_torch.Sample` ``(data, entry)``. With
            ``spawn`` workers it must be picklable.
        verify: check each item against its recorded checksum (default: the store's
            ``verify``).
        io_threads: concurrent GETs per :meth:`__getitems__` call (keep the client's
            connection pool at least this large); ``None``: the store's
            ``config.io_threads``, or 16 where that is automatic.
        allow_unfinished: read a manifest a ``pack`` has not finished, with a warning.
    """

    def __init__(
        self,
        store: S3ExchangeStore,
        manifest: str,
        *,
        transform: Callable[[bytes, Any], Any] | None = None,
        verify: bool | None = None,
        io_threads: int | None = None,
        allow_unfinished: bool = False,
    ) -> None:
        self._store = store
        self._transform = transform
        self._verify = store.verify if verify is None else verify
        self._io_threads = store.config.replace(io_threads=io_threads).io_threads or 16
        self._archives: list[_Archive] = []
        self._lines: list[bytes] = []
        self._where = array.array("q")  # archive number per item, -1 for a loose file
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pool_pid = -1
        self._resolve(manifest_to_read(store, manifest, allow_unfinished=allow_unfinished))

    # -- construction ------------------------------------------------------------------------

    def _resolve(self, manifest: str) -> None:
        """Items in manifest order; shard indexes read concurrently, in order. Members listed
        one by one (``compact --expand-shards``: ``archive#member`` file entries) are located
        through their archive's stored index, read once per archive."""
        entries = list(self._store.iter_manifest_entries(LiteralKey(manifest)))
        shards = [entry for entry in entries if entry["kind"] == "shard"]
        listed = list(dict.fromkeys(_archive_of(e) for e in entries if _archive_of(e)))
        with concurrent.futures.ThreadPoolExecutor(_INDEX_THREADS) as pool:
            indexes = iter(list(pool.map(self._read_index, shards)))
            stored = list(pool.map(self._stored_index, listed))
        located: dict[str, tuple[int, dict[str, IndexedMember]]] = {}
        for index in stored:
            if index is not None and index.seekable:
                members = {member["member_path"]: member for member in index.members}
                located[index.archive_key] = (self._add_archive(index), members)
        for entry in entries:
            if entry["kind"] == "file":
                where, member = -1, None
                if (archive := _archive_of(entry)) in located:
                    where, members = located[archive]
                    member = members.get(entry["member_path"])
                self._where.append(where if member is not None else -1)
                self._lines.append(_dumps(entry if member is None else {**member, **entry}))
            elif entry["kind"] == "shard":
                index = next(indexes)
                self._where.extend([self._add_archive(index)] * len(index))
                self._lines.extend(index.lines)  # checked when an item is read

    def _add_archive(self, index: ShardIndex) -> int:
        self._archives.append(
            _Archive(index.archive_key, index.etag, index.compression, index.seekable)
        )
        return len(self._archives) - 1

    def _stored_index(self, archive_key: str) -> ShardIndex | None:
        index = self._store.stored_shard_index({"kind": "shard", "archive_key": archive_key})
        if index is None:
            log.warning(
                "members of %r are listed one by one and it has no index: each streams from "
                "the archive's start (`s3exchange index` stores one)",
                archive_key,
            )
        return index

    def _read_index(self, entry: ShardEntry) -> ShardIndex:
        index = self._store.read_shard_index(entry)
        if not index.seekable:
            log.warning(
                "shard %r is a whole-stream .tar.gz: each of its items streams from the archive's "
                "start (write it again with this version for ranged reads)",
                entry["archive_key"],
            )
        return index

    # -- access ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> Any:
        return self._fetch([self._position(index)])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """The items at ``indices``, in that order, fetched concurrently with neighbouring
        members of one archive coalesced into one GET."""
        return self._fetch([self._position(i) for i in indices])

    def entry(self, index: int) -> FileEntry:
        """Item ``index``'s manifest entry (a member's names its archive), without a request."""
        return self._entry(self._position(index))

    def _position(self, index: int) -> int:
        count = len(self._lines)
        position = index + count if index < 0 else index
        if not 0 <= position < count:
            raise IndexError(f"index {index} out of range for {count} items")
        return position

    def _parsed(self, position: int) -> IndexedMember:
        """Item ``position``'s line: a loose file's entry, or a member checked."""
        where = self._where[position]
        if where < 0:
            entry: IndexedMember = json.loads(self._lines[position])
            return entry
        return self._archives[where].member(self._lines[position])

    def _entry(self, position: int) -> FileEntry:
        entry: dict[str, Any] = dict(self._parsed(position))
        where = self._where[position]
        if where < 0:
            return entry  # type: ignore[return-value]
        for name in _LOCATION_FIELDS:
            entry.pop(name, None)
        archive = self._archives[where].key
        entry["key"] = virtual_key(archive, entry["member_path"])
        entry["archive_key"] = archive
        return entry  # type: ignore[return-value]

    def _fetch(self, positions: list[int]) -> list[Any]:
        data: dict[int, bytes] = {}
        jobs = list(self._jobs(positions))
        if len(jobs) == 1:
            data.update(jobs[0]())
        else:
            for part in self._threads().map(_call, jobs):
                data.update(part)
        out = []
        for position in positions:
            entry = self._entry(position)
            item = data[position]
            out.append(
                self._transform(item, entry) if self._transform is not None else Sample(item, entry)
            )
        return out

    def _jobs(self, positions: list[int]) -> Iterator[Callable[[], dict[int, bytes]]]:
        """One callable per request: loose files and unseekable members alone, members of a
        seekable archive in runs of close neighbours."""
        ranged: dict[int, list[_Ranged]] = {}
        for position in dict.fromkeys(positions):
            where = self._where[position]
            line = self._parsed(position)
            if where < 0:
                yield functools.partial(self._read_loose, position, line)
            elif not self._archives[where].seekable:
                yield functools.partial(self._stream_member, position, self._archives[where], line)
            else:
                start, stop = byte_range(line)
                ranged.setdefault(where, []).append(_Ranged(position, line, start, stop))
        for where, items in ranged.items():
            archive = self._archives[where]
            for run in _runs(items):
                yield functools.partial(self._read_run, archive, run)

    def _read_loose(self, position: int, entry: FileEntry) -> dict[int, bytes]:
        return {position: self._store.read_file_entry(entry, verify=self._verify)}

    def _stream_member(
        self, position: int, archive: _Archive, member: IndexedMember
    ) -> dict[int, bytes]:
        index = archive.index()
        return {position: self._store.read_indexed_member(index, member, verify=self._verify)}

    def _read_run(self, archive: _Archive, run: list[_Ranged]) -> dict[int, bytes]:
        start = run[0].start
        stop = max(item.stop for item in run)
        raw = (
            b""
            if start == stop
            else self._store.read_range(archive.key, start, stop, etag=archive.etag)
        )
        view = memoryview(raw)
        out = {}
        for item in run:
            data = extract(
                item.member, view[item.start - start : item.stop - start], archive_key=archive.key
            )
            if self._verify:
                check_member(item.member, data, archive_key=archive.key)
            out[item.position] = data
        return out

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """This process's I/O threads (a forked worker makes its own)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._io_threads, thread_name_prefix="s3exchange-map"
            )
            self._pool_pid = os.getpid()
        return self._pool

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"], state["_pool_pid"] = None, -1
        return state

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None and self._pool_pid == os.getpid():
            pool.shutdown(wait=False)


def _runs(items: list[_Ranged]) -> Iterator[list[_Ranged]]:
    """Members of one archive in offset order, cut into runs read by one GET each."""
    items.sort(key=lambda item: item.start)
    run = [items[0]]
    end = items[0].stop
    for item in items[1:]:
        if item.start - end <= COALESCE_GAP and max(end, item.stop) - run[0].start <= COALESCE_MAX:
            run.append(item)
            end = max(end, item.stop)
        else:
            yield run
            run, end = [item], item.stop
    yield run


def _archive_of(entry: Any) -> str | None:
    """The archive of a shard member listed as a file entry, else None."""
    if entry["kind"] == "file" and "archive_key" in entry and "member_path" in entry:
        return str(entry["archive_key"])
    return None


def _call(job: Callable[[], dict[int, bytes]]) -> dict[int, bytes]:
    return job()


def _dumps(entry: Any) -> bytes:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode()
