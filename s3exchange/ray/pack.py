"""``pack_objects``: pack loose objects already in a bucket into shards on a Ray cluster.

The same run as the local ``pack`` (:func:`s3exchange.packing.pack_files`: one plan, reconciled
with the manifest and the bucket, checkpointed in the side manifest, the manifest written when
the run completes), with two differences: the files are the objects under a source prefix
(member path = key below the prefix, in sorted order), and each missing shard is built by a Ray
task (:class:`RayBuilder`) instead of a thread. So the shards of the same data are the same
(same members, order, sizes and crc32c) whether packed from a directory or from a bucket, and a
rerun of either resumes the other's work; only the tar headers' modification times differ (a
local file's mtime there, 0 for an object).

A task GETs its shard's objects on ``FETCH_THREADS`` threads, holds those up to
``HOLD_BYTES`` in memory (at most ``max_bytes`` a task, 256 MiB by default), and reads a larger
one twice (its checksum first, since the internal manifest leads the archive; then its bytes)
rather than hold it; the archive streams into a multipart upload as ``put_shard_archive`` does.
An object that changed between the two reads is a :class:`~s3exchange.errors.ShardWriteError`.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import ray
from ray.exceptions import RayTaskError

from ..errors import PackError
from ..keys import LiteralKey
from ..packing import (
    PackProgress,
    PackReport,
    PlannedShard,
    Skipped,
    SourceFile,
    default_prefix,
    describe_skipped,
    pack_files,
)
from ..shard_format import member_path_problem
from ..store import STALE_UPLOAD_SECONDS
from ..types import Compression, ShardEntry

if TYPE_CHECKING:
    from ..body import ObjectStream
    from ..store import S3ExchangeStore

__all__ = ["FETCH_THREADS", "HOLD_BYTES", "RayBuilder", "pack_objects", "scan_objects"]

FETCH_THREADS = 16
"""GETs in flight per task: small objects are latency-bound, one at a time would idle the task."""
HOLD_BYTES = 64 << 20
"""Objects up to this size are held in memory between the checksum pass and the data pass."""


def scan_objects(
    store: S3ExchangeStore,
    src_prefix: str,
    *,
    exclude: Sequence[str] = (),
    hidden: bool = False,
    skipped: Skipped | None = None,
) -> list[SourceFile]:
    """The objects under ``src_prefix`` as files to pack, sorted by member path (the key below
    the prefix), with the rules of :func:`~s3exchange.packing.scan_directory`: a name starting
    with ``.`` at any level is left out unless ``hidden``, and so is a key whose path or name,
    or one of whose directories' path or name, matches an ``exclude`` glob. What is left out is
    counted in ``skipped`` (per object: a bucket has no directories to count once)."""
    root = store.resolve(src_prefix).strip("/")
    prefix = f"{root}/" if root else ""
    counts: Skipped = (
        skipped if skipped is not None else {"hidden": 0, "symlinks": 0, "excluded": 0}
    )
    found: list[SourceFile] = []
    for obj in store.list_objects(LiteralKey(prefix)):
        member = obj["key"][len(prefix) :]
        if not member or member.endswith("/"):
            continue  # a "directory" marker object
        parts = member.split("/")
        if not hidden and any(part.startswith(".") for part in parts):
            counts["hidden"] += 1
            continue
        paths = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, g) for g in exclude for p in (*paths, *parts)):
            counts["excluded"] += 1
            continue
        problem = member_path_problem(member)
        if problem is not None:
            raise PackError(f"cannot pack {obj['key']!r} as member {member!r}: {problem}")
        found.append(SourceFile(LiteralKey(obj["key"]), member, obj["size"]))
    found.sort(key=lambda f: f.member_path)
    return found


class _ObjectFile(io.RawIOBase):
    """An object read as a seekable file, so the shard writer can hash it and then stream it:
    rewinding to the start opens a new GET; a read never holds the object whole."""

    def __init__(self, store: S3ExchangeStore, key: str, size: int) -> None:
        super().__init__()
        self._store, self._key, self._size = store, key, size
        self._position = 0
        self._stream: ObjectStream | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset != self._position:
            self._drop()
            self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        if self._stream is None:
            if self._position != 0:
                raise io.UnsupportedOperation(f"{self._key!r} is read from its start only")
            self._stream = self._store.get_object(self._key)
        n = self._stream.readinto(buffer)
        self._position += n
        return n

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def close(self) -> None:
        self._drop()
        super().close()


def _fetch(store: S3ExchangeStore, source: SourceFile) -> bytes | _ObjectFile:
    if source.size > HOLD_BYTES:
        return _ObjectFile(store, source.path, source.size)
    # one GET, its size checked against the listing's (an object replaced since is an error)
    return store.read_file_entry({"kind": "file", "key": source.path, "size_bytes": source.size})


def build_shard(
    store: S3ExchangeStore, shard: PlannedShard, compression: Compression
) -> ShardEntry:
    """One Ray task: GET the shard's objects and upload the archive; its entry (no paths
    digest: :func:`~s3exchange.packing.pack_files` adds it)."""
    items = shard.items()
    with concurrent.futures.ThreadPoolExecutor(FETCH_THREADS, "s3exchange-fetch") as pool:
        sources = list(pool.map(lambda f: _fetch(store, f), shard.files))
    try:
        for item, source in zip(items, sources, strict=True):
            item["source"] = cast(IO[bytes], source) if isinstance(source, _ObjectFile) else source
        return store.put_shard_archive(shard.archive_key, items, compression=compression).entry
    finally:
        for source in sources:
            if isinstance(source, _ObjectFile):
                source.close()


def _cause(error: BaseException) -> BaseException:
    """The exception a task raised, without Ray's wrapper (whose text holds a traceback): the
    CLI prints it as one line and maps it to its exit code."""
    if isinstance(error, RayTaskError) and isinstance(error.cause, BaseException):
        return error.cause
    return error


@dataclass
class RayBuilder:
    """Builds shards in Ray tasks, ``jobs`` at a time (a :class:`~s3exchange.packing.
    ShardBuilder`). The store travels to each task pickled and rebuilds its client there."""

    store: S3ExchangeStore
    jobs: int
    ray_remote_args: dict[str, Any] = field(default_factory=dict)

    def open(self, source: SourceFile) -> IO[bytes]:
        return cast(IO[bytes], self.store.get_object(source.path))

    def build(
        self,
        shards: Sequence[tuple[int, PlannedShard]],
        compression: Compression,
        done: Callable[[int, ShardEntry], None],
    ) -> None:
        # a shard rebuilt after a lost worker overwrites the same key: retries are safe
        task = ray.remote(build_shard).options(
            **{"max_retries": 3, "name": "s3exchange.pack", **self.ray_remote_args}
        )
        store = ray.put(self.store)
        queue = iter(shards)
        pending: dict[ray.ObjectRef[ShardEntry], int] = {}
        failure: BaseException | None = None

        def finish(ref: ray.ObjectRef[ShardEntry]) -> None:
            nonlocal failure
            position = pending.pop(ref)
            try:
                entry = ray.get(ref)
            except Exception as exc:
                failure = failure or _cause(exc)
                return
            done(position, entry)

        try:
            while True:
                while failure is None and len(pending) < self.jobs:
                    position, shard = next(queue, (-1, None))
                    if shard is None:
                        break
                    pending[task.remote(store, shard, compression)] = position
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                finish(ready[0])
        except BaseException as exc:  # e.g. Ctrl-C: let the shards in flight end, keep them
            failure = failure or exc
            while pending:
                finish(next(iter(pending)))
        if failure is not None:
            raise failure


def _cluster_cpus(address: str | None) -> int:
    """The CPUs of the Ray cluster this process is connected to, connecting first if needed
    (``address``, else ``RAY_ADDRESS``, else a local Ray)."""
    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING)
    cpus = ray.cluster_resources().get("CPU", 1)  # type: ignore[no-untyped-call]
    return max(1, int(cpus))


def pack_objects(
    store: S3ExchangeStore,
    src_prefix: str,
    manifest_key: str,
    *,
    max_entries: int | None = None,
    max_bytes: int | None = None,
    compression: Compression | Literal["none"] = None,
    prefix: str | None = None,
    jobs: int | None = None,
    dry_run: bool = False,
    shuffle: int | None = None,
    exclude: Sequence[str] = (),
    hidden: bool = False,
    progress: PackProgress | None = None,
    checkpoint_every: int = 64,
    checkpoint_seconds: float = 30.0,
    stale_uploads_after: float = STALE_UPLOAD_SECONDS,
    address: str | None = None,
    ray_remote_args: dict[str, Any] | None = None,
) -> PackReport:
    """Pack the objects under ``src_prefix`` into shards listed in ``manifest_key`` on Ray.

    The options, the report, resuming and the errors are :func:`s3exchange.packing.pack`'s
    (see the module docstring for what differs). ``jobs`` shards are built at once (default:
    the cluster's CPUs). Ray is joined at ``address`` (``"auto"``, ``"ray://head:10001"``),
    else at ``RAY_ADDRESS``, else started locally, unless this process is connected already.
    ``ray_remote_args`` go to every task (``{"num_cpus": 2, "memory": 2**30}``).
    """
    source_root = store.resolve(src_prefix).strip("/")
    manifest = LiteralKey(store.resolve(manifest_key))
    shards = store.resolve(prefix).strip("/") if prefix is not None else ""
    shards = shards or default_prefix(manifest)
    if not source_root:
        raise PackError("name the source prefix to pack (the whole bucket would hold the shards)")
    for what, key in (("manifest", manifest), ("shard prefix", shards)):
        if f"{key}/".startswith(f"{source_root}/"):
            raise PackError(
                f"the {what} {key!r} lies under the source prefix {source_root + '/'!r}: "
                "its objects would be packed again by a rerun; pack into another prefix"
            )
    skipped: Skipped = {"hidden": 0, "symlinks": 0, "excluded": 0}
    files = scan_objects(store, source_root, exclude=exclude, hidden=hidden, skipped=skipped)
    if not files:
        left_out = describe_skipped(skipped)
        raise PackError(
            f"no objects under {source_root + '/'!r}" + (f" ({left_out})" if left_out else "")
        )
    if jobs is not None and jobs < 1:
        raise PackError("jobs must be at least 1")
    cpus = 1 if dry_run else _cluster_cpus(address)  # a dry run builds nothing: no Ray
    workers = jobs or cpus
    return pack_files(
        store,
        files,
        manifest,
        RayBuilder(store, workers, ray_remote_args or {}),
        max_entries=max_entries,
        max_bytes=max_bytes,
        compression=compression,
        prefix=LiteralKey(shards),
        dry_run=dry_run,
        shuffle=shuffle,
        progress=progress,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        stale_uploads_after=stale_uploads_after,
        skipped=skipped,
    )
