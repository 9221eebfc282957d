"""Reading one fetch job's samples: a loose file whole, or a shard's wanted members (or groups of
members sharing a key) in lists bounded by the chunk sizes, each sample held to
``max_sample_bytes``.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any, TypeAlias

from s3exchange import S3ExchangeError, S3ExchangeStore, ShardReadError, TransferConfig
from s3exchange.samples import key_and_field
from s3exchange.shard import ShardMember
from s3exchange.types import FileEntry, Readable, ShardEntry

from .collate import Sample
from .prefetch_jobs import Job
from .units import member_path

__all__ = ["Item", "SampleTooLargeError", "read_file", "shard_groups", "shard_members"]

Item: TypeAlias = tuple[Any, Any]
"""A :class:`~s3exchange_torch.collate.Sample` per file, or ``(sample dict, entries)`` when
grouping by key."""


class SampleTooLargeError(S3ExchangeError):
    """A shard member or loose file larger than the dataset's ``max_sample_bytes``."""

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | None = None,
        size: int | None = None,
        limit: int | None = None,
        member_path: str | None = None,
    ) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        self.member_path = member_path
        if message is None:
            where = f"shard {key!r} member {member_path!r}" if member_path else f"{key!r}"
            message = (
                f"{where}: {size} bytes exceed max_sample_bytes={limit} "
                "(a sample is held whole in memory; raise the limit to read it)"
            )
        super().__init__(message)


def read_file(store: S3ExchangeStore, entry: FileEntry, verify: bool | None, limit: int) -> bytes:
    """One loose file, whole, in one GET (the store's fast path: ~10x less CPU than botocore)
    when its manifest size is within ``limit``; otherwise a stream whose size is checked first
    (a file without ``size_bytes``, a shard member listed as a file)."""
    size = entry.get("size_bytes")
    member = entry.get("member_path") if "archive_key" in entry else None
    key = entry["archive_key"] if member else entry["key"]
    if size is not None and size > limit:
        raise SampleTooLargeError(key=key, size=size, limit=limit, member_path=member)
    if size is not None and member is None:
        return store.read_file_entry(entry, verify=verify)
    with store.open_file_entry(entry, verify=verify) as stream:
        size = getattr(stream, "size", None)
        if size is not None and size > limit:
            raise SampleTooLargeError(key=key, size=size, limit=limit, member_path=member)
        return stream.read()


def _member_data(member: ShardMember, archive_key: str, limit: int) -> bytes:
    """A member's data, refused from its header size (checked against the internal manifest)
    before any of it is read when it exceeds ``limit``."""
    size = member.size
    if size > limit:
        raise SampleTooLargeError(
            key=archive_key, size=size, limit=limit, member_path=member.member_path
        )
    return member.read()


def shard_members(
    store: S3ExchangeStore,
    job: Job,
    verify: bool | None,
    stop: threading.Event,
    config: TransferConfig,
    stream: Readable,
) -> Generator[list[Item], None, None]:
    """A shard job's ``(data, entry)`` samples, in lists; stops reading after the last one."""
    entry: ShardEntry = job.unit  # type: ignore[assignment]
    start, end, wanted = job.start, job.stop, job.wanted
    remaining = job.expected
    members = store.iter_shard_members(
        entry, select=lambda i, _: start <= i < end and i in wanted, verify=verify, stream=stream
    )
    chunk: list[Item] = []
    size = 0
    try:
        for member in members:
            data = _member_data(member, entry["archive_key"], config.max_sample_bytes)
            chunk.append(Sample(data, member.entry))
            size += len(data)
            remaining -= 1
            if not remaining or stop.is_set():
                break
            if len(chunk) >= config.chunk_samples or size >= config.chunk_bytes:
                yield chunk
                chunk, size = [], 0
    finally:
        members.close()  # then its ShardRead closes the GET without reading the archive's rest
    if remaining and not stop.is_set():
        raise ShardReadError(
            archive_key=entry["archive_key"], reason=f"ended {remaining} members short of the plan"
        )
    if chunk:
        yield chunk


class _GroupSelector:
    """``select`` for a grouped shard job: numbers groups of consecutive equal keys.

    ``iter_shard`` calls ``select`` for member ``i`` right before it yields it, so ``group``
    is the group of the member just yielded. The first member past the job's last group is
    selected too (``sentinel``): seeing it tells the reader its last group is complete
    without reading on to the end of the archive.
    """

    def __init__(self, job: Job) -> None:
        self._job = job
        self._key: str | None = None
        self.group = -1
        self.field = ""
        self.sentinel = -1

    def __call__(self, index: int, entry: FileEntry) -> bool:
        split = key_and_field(member_path(entry))
        if split is None:
            return False  # no extension: part of no sample, as webdataset skips it
        key, self.field = split
        if key != self._key:
            self._key = key
            self.group += 1
        job = self._job
        if self.group >= job.stop:
            self.sentinel = index
            return True
        return self.group >= job.start and self.group in job.wanted


def shard_groups(
    store: S3ExchangeStore,
    job: Job,
    verify: bool | None,
    stop: threading.Event,
    config: TransferConfig,
    stream: Readable,
) -> Generator[list[Item], None, None]:
    """A grouped shard job's ``(sample, entries)`` samples, in lists."""
    entry: ShardEntry = job.unit  # type: ignore[assignment]
    archive = entry["archive_key"]
    selector = _GroupSelector(job)
    remaining = job.expected
    members = store.iter_shard_members(entry, select=selector, verify=verify, stream=stream)
    chunk: list[Item] = []
    size = 0
    group = -1
    sample: dict[str, Any] = {}
    entries: list[FileEntry] = []
    try:
        for member in members:
            if member.index == selector.sentinel or stop.is_set():
                break
            if selector.group != group:
                if entries:
                    chunk.append((sample, entries))
                    remaining -= 1
                    if len(chunk) >= config.chunk_samples or size >= config.chunk_bytes:
                        yield chunk
                        chunk, size = [], 0
                group = selector.group
                key = key_and_field(member_path(member.entry))
                sample = {"__key__": key[0] if key else "", "__url__": archive}
                entries = []
            data = _member_data(member, archive, config.max_sample_bytes)
            sample[selector.field] = data
            entries.append(member.entry)
            size += len(data)
    finally:
        members.close()
    if entries:
        chunk.append((sample, entries))
        remaining -= 1
    if remaining and not stop.is_set():
        raise ShardReadError(
            archive_key=archive, reason=f"ended {remaining} samples short of the plan"
        )
    if chunk:
        yield chunk
