"""Packing a local directory into tar shards plus manifest entries, resumably.

The work is a pure plan (:func:`plan_shards`: sorted files cut by :func:`~s3exchange.samples.
split_items` into ``{prefix}/shard-{i:05d}.tar[.gz]``) reconciled (:func:`reconcile`) with what
the manifest already lists and what the bucket already holds, then executed by :func:`pack`.
Because the plan is deterministic, shard ``i`` of a rerun has the same members, so a rerun
uploads only what is missing:

- listed in the manifest and stored: skipped;
- stored but not listed (a run stopped between upload and manifest update): uploaded again and
  listed, after checking that the stored archive holds this plan's members, byte for byte by
  their recorded checksums (so another dataset's shards under the same prefix are never
  overwritten, even when its files have the same names and sizes);
- listed but not stored (deleted later): uploaded again and, since shards are byte-for-byte
  deterministic, checked to match the listed entry (not listed twice);
- a listed entry whose count or member bytes disagree with the plan, or a listed shard key the
  plan does not produce, means the source directory or the split options changed: the run
  fails with :class:`PackConflictError` before uploading anything.

Finished mark: while a run is under way its shard entries are checkpointed (``append_parts``,
every ``checkpoint_every`` shards or ``checkpoint_seconds``, and once more when the run ends or
fails) into a side manifest, :func:`unfinished_key` (``<manifest>.unfinished.jsonl``), so an
interrupted run keeps what it finished. Only a run that completes appends its entries to the
manifest key (one part, in shard order) and then deletes the side manifest. So a manifest is
whole unless its side manifest exists beside it; readers (``verify``) refuse it then, and a
rerun of the same command finishes the job.

The pieces: :mod:`~s3exchange.pack_plan` (the plan and :func:`reconcile`, no I/O),
:mod:`~s3exchange.pack_scan` (finding the local files), :mod:`~s3exchange.pack_unfinished` (the
finished mark), :mod:`~s3exchange.pack_checks` (may a stored shard be replaced); this module runs
them and re-exports their public names.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Literal, Protocol, TypedDict, cast

from .errors import PackConflictError, PackError
from .keys import LiteralKey
from .pack_checks import check_all_replaceable, restore_problem
from .pack_plan import (
    CHANGED_HINT,
    PATHS_FIELD,
    Action,
    PlannedShard,
    ShardTask,
    SourceFile,
    default_prefix,
    plan_shards,
    reconcile,
    shard_key,
    shuffled,
)
from .pack_scan import Skipped, describe_skipped, scan_directory
from .pack_unfinished import (
    UNFINISHED_HINT,
    finish,
    listed_shards,
    manifest_to_read,
    unfinished_key,
    unfinished_pack,
)
from .shard_writer import shard_compression
from .store import STALE_UPLOAD_SECONDS
from .types import Compression, ShardEntry

if TYPE_CHECKING:
    from .store import S3ExchangeStore

__all__ = [
    "PATHS_FIELD",
    "UNFINISHED_HINT",
    "PackConflictError",
    "PackError",
    "PackProgress",
    "PackReport",
    "PlannedShard",
    "ShardBuilder",
    "ShardTask",
    "Skipped",
    "SourceFile",
    "ThreadBuilder",
    "default_prefix",
    "describe_skipped",
    "manifest_to_read",
    "pack",
    "pack_files",
    "plan_shards",
    "reconcile",
    "scan_directory",
    "shard_key",
    "shuffled",
    "unfinished_key",
    "unfinished_pack",
]


class PackReport(TypedDict):
    """What :func:`pack` did (or, with ``dry_run``, would do)."""

    manifest_key: str
    prefix: str
    files: int
    member_bytes: int
    shards: int
    uploaded: int
    replaced: int
    restored: int
    skipped: int
    uploaded_bytes: int
    parts: list[str]
    aborted_uploads: int
    skipped_files: Skipped
    shuffle: int | None
    dry_run: bool
    seconds: float


class PackProgress(Protocol):
    """Receives progress from the main thread: the bytes to upload, then each shard done."""

    def start(self, total_bytes: int, total_shards: int) -> None: ...

    def advance(self, member_bytes: int) -> None: ...


class ShardBuilder(Protocol):
    """Where :func:`pack_files` builds and uploads shards: threads of this process
    (:class:`ThreadBuilder`, :func:`pack`) or Ray tasks (:func:`s3exchange.ray.pack_objects`)."""

    jobs: int
    """Shards built at once (and threads checking the checksums of stored, unlisted shards)."""

    def open(self, source: SourceFile) -> IO[bytes]:
        """A source's bytes, to compare with the checksums a stored shard records."""
        ...

    def build(
        self,
        shards: Sequence[tuple[int, PlannedShard]],
        compression: Compression,
        done: Callable[[int, ShardEntry], None],
    ) -> None:
        """Upload every ``(position, shard)``, calling ``done(position, entry)`` from this thread
        as each completes; after a failure (Ctrl-C included), let the shards in flight end,
        report those that completed, and raise the first error."""
        ...


def _count(report: PackReport, action: Action) -> None:
    if action == "upload":
        report["uploaded"] += 1
    elif action == "replace":
        report["replaced"] += 1
    elif action == "restore":
        report["restored"] += 1


@dataclass
class _Run:
    """The state of the upload phase, touched by the main thread only."""

    store: S3ExchangeStore
    manifest_key: str
    tasks: list[ShardTask]
    checkpoint_every: int
    checkpoint_seconds: float
    progress: PackProgress | None
    report: PackReport

    def __post_init__(self) -> None:
        self.finished: dict[int, ShardEntry | None] = {}  # task position -> entry to list
        self.next_position = 0
        self.ready: list[ShardEntry] = []
        self.last_flush = time.monotonic()
        self.problems: list[str] = []

    def done(self, position: int, entry: ShardEntry | None) -> None:
        task = self.tasks[position]
        if task.action != "skip":
            assert entry is not None
            self.report["uploaded_bytes"] += entry.get("size_bytes", 0)
            _count(self.report, task.action)
            if self.progress is not None:
                self.progress.advance(task.shard.members_size_bytes)
        if task.action == "restore":
            assert entry is not None
            assert task.listed is not None
            problem = restore_problem(entry, task.listed)
            if problem:
                self.problems.append(problem)
            entry = None
        elif task.action == "skip":
            entry = None
        self.finished[position] = entry
        while self.next_position in self.finished:
            listed = self.finished.pop(self.next_position)
            if listed is not None:
                self.ready.append(listed)
            self.next_position += 1
        due = time.monotonic() - self.last_flush >= self.checkpoint_seconds
        if len(self.ready) >= self.checkpoint_every or (self.ready and due):
            self.flush()

    def flush(self, *, everything: bool = False) -> None:
        """Append the ready entries (with ``everything``, also those finished out of order)."""
        if everything:
            self.ready += [e for _, e in sorted(self.finished.items()) if e is not None]
            self.finished = {k: v for k, v in self.finished.items() if v is None}
        if self.ready:  # a checkpoint, into the side manifest (see the module docstring)
            self.store.put_sharded(unfinished_key(self.manifest_key), self.ready, "append_parts")
            self.ready = []
        self.last_flush = time.monotonic()


def _execute(run: _Run, builder: ShardBuilder, compression: Compression) -> None:
    """Build the shards the plan lacks with ``builder``; entries are checkpointed as they arrive
    and, whatever happens, once more at the end (see the module docstring)."""
    todo: list[tuple[int, PlannedShard]] = []
    for position, task in enumerate(run.tasks):
        if task.action == "skip":
            run.done(position, None)
        else:
            todo.append((position, task.shard))

    def done(position: int, built: ShardEntry) -> None:
        entry = dict(built)
        # an unknown field: preserved by every reader
        entry[PATHS_FIELD] = run.tasks[position].shard.paths_digest
        run.done(position, cast(ShardEntry, entry))

    try:
        builder.build(todo, compression, done)
    finally:
        run.flush(everything=True)


@dataclass
class ThreadBuilder:
    """Builds shards from local files on ``jobs`` threads of this process (:func:`pack`)."""

    store: S3ExchangeStore
    jobs: int = 1

    def open(self, source: SourceFile) -> IO[bytes]:
        return open(source.path, "rb")

    def build(
        self,
        shards: Sequence[tuple[int, PlannedShard]],
        compression: Compression,
        done: Callable[[int, ShardEntry], None],
    ) -> None:
        def upload(shard: PlannedShard) -> ShardEntry:
            items = shard.items()
            return self.store.put_shard_archive(
                shard.archive_key, items, compression=compression
            ).entry

        queue = iter(shards)
        pending: dict[concurrent.futures.Future[ShardEntry], int] = {}
        failure: BaseException | None = None

        def submit_more(pool: concurrent.futures.ThreadPoolExecutor) -> None:
            # at most ``jobs`` shards in flight, so a failure stops the run promptly
            while failure is None and len(pending) < self.jobs:
                position, shard = next(queue, (-1, None))
                if shard is None:
                    return
                pending[pool.submit(upload, shard)] = position

        with concurrent.futures.ThreadPoolExecutor(self.jobs, "s3exchange-pack") as pool:
            try:
                submit_more(pool)
                while pending:
                    finished, _ = concurrent.futures.wait(
                        pending, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in finished:
                        position = pending.pop(future)
                        error = future.exception()
                        if error is None:
                            done(position, future.result())
                        elif failure is None:
                            failure = error
                    submit_more(pool)
            except BaseException as exc:  # e.g. Ctrl-C: let running uploads end, keep what finished
                failure = failure or exc
                pool.shutdown(wait=True)
                for future, position in pending.items():
                    if future.exception() is None:
                        done(position, future.result())
        if failure is not None:
            raise failure


def pack(
    store: S3ExchangeStore,
    src_dir: str | os.PathLike[str],
    manifest_key: str,
    *,
    max_entries: int | None = None,
    max_bytes: int | None = None,
    compression: Compression | Literal["none"] = None,
    prefix: str | None = None,
    jobs: int = 1,
    dry_run: bool = False,
    shuffle: int | None = None,
    exclude: Sequence[str] = (),
    hidden: bool = False,
    follow_symlinks: bool = False,
    progress: PackProgress | None = None,
    checkpoint_every: int = 64,
    checkpoint_seconds: float = 30.0,
    stale_uploads_after: float = STALE_UPLOAD_SECONDS,
) -> PackReport:
    """Pack every file under ``src_dir`` into shards listed in ``manifest_key``; resumable.

    ``prefix`` defaults to :func:`default_prefix` of the manifest key. ``jobs`` shards are
    built and uploaded at once (threads). Entries reach ``manifest_key`` only when the run
    completes; until then they are kept in :func:`unfinished_key` (see the module docstring).
    ``exclude``, ``hidden`` and ``follow_symlinks`` choose the files (:func:`scan_directory`);
    ``shuffle`` (a seed) packs the samples in a random order instead of sorted, the same for
    the same seed, so a rerun resumes (:func:`shuffled`). Shard uploads under the prefix
    pending for more than ``stale_uploads_after`` seconds (a killed run's) are aborted first.
    With ``dry_run`` nothing is written and the report counts what a real run would do.
    """
    if jobs < 1:
        raise PackError("jobs must be at least 1")
    skipped: Skipped = {"hidden": 0, "symlinks": 0, "excluded": 0}
    files = scan_directory(
        src_dir,
        exclude=exclude,
        hidden=hidden,
        follow_symlinks=follow_symlinks,
        skipped=skipped,
    )
    if not files:
        left_out = describe_skipped(skipped)
        raise PackError(
            f"no files under {os.fspath(src_dir)!r}" + (f" ({left_out})" if left_out else "")
        )
    return pack_files(
        store,
        files,
        manifest_key,
        ThreadBuilder(store, jobs),
        max_entries=max_entries,
        max_bytes=max_bytes,
        compression=compression,
        prefix=prefix,
        dry_run=dry_run,
        shuffle=shuffle,
        progress=progress,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
        stale_uploads_after=stale_uploads_after,
        skipped=skipped,
    )


def pack_files(
    store: S3ExchangeStore,
    files: Sequence[SourceFile],
    manifest_key: str,
    builder: ShardBuilder,
    *,
    max_entries: int | None = None,
    max_bytes: int | None = None,
    compression: Compression | Literal["none"] = None,
    prefix: str | None = None,
    dry_run: bool = False,
    shuffle: int | None = None,
    progress: PackProgress | None = None,
    checkpoint_every: int = 64,
    checkpoint_seconds: float = 30.0,
    stale_uploads_after: float = STALE_UPLOAD_SECONDS,
    skipped: Skipped | None = None,
) -> PackReport:
    """:func:`pack` once its files are found: plan, reconcile with the manifest and the bucket,
    build what is missing with ``builder``, list it. ``files`` come sorted by member path (the
    plan's order unless ``shuffle``); ``skipped`` is what finding them left out, for the report.
    """
    started = time.monotonic()
    try:
        codec = shard_compression(compression)
    except ValueError as exc:
        raise PackError(str(exc)) from None
    if builder.jobs < 1 or checkpoint_every < 1:
        raise PackError("jobs and checkpoint_every must be at least 1")
    # resolved once; from here on every key is literal (a brace in it is a brace)
    manifest_key = LiteralKey(store.resolve(manifest_key))
    prefix = store.resolve(prefix).strip("/") if prefix is not None else ""
    prefix = LiteralKey(prefix or default_prefix(manifest_key))
    if skipped is None:
        skipped = {"hidden": 0, "symlinks": 0, "excluded": 0}
    if shuffle is not None:
        files = shuffled(files, shuffle)
    try:
        plan = plan_shards(
            files,
            prefix=prefix,
            max_entries=max_entries,
            max_bytes=max_bytes,
            compression=codec,
        )
    except ValueError as exc:
        raise PackError(str(exc)) from None
    listed = listed_shards(store, manifest_key)
    for key, entries in listed_shards(store, unfinished_key(manifest_key)).items():
        listed.setdefault(key, entries)
    shards = LiteralKey(f"{prefix}/shard-")
    stored = {obj["key"]: obj["size"] for obj in store.list_objects(shards)}
    tasks = reconcile(plan, listed, stored, prefix=prefix)
    check_all_replaceable(store, tasks, codec, builder.open, builder.jobs)
    stale = store.abort_stale_uploads(shards, stale_uploads_after, dry_run=dry_run)
    report: PackReport = {
        "manifest_key": manifest_key,
        "prefix": prefix,
        "files": len(files),
        "member_bytes": sum(f.size for f in files),
        "shards": len(plan),
        "uploaded": 0,
        "replaced": 0,
        "restored": 0,
        "skipped": sum(task.action == "skip" for task in tasks),
        "uploaded_bytes": 0,
        "parts": [],
        "aborted_uploads": len(stale),
        "skipped_files": skipped,
        "shuffle": shuffle,
        "dry_run": dry_run,
        "seconds": 0.0,
    }
    if dry_run:
        for task in tasks:
            if task.action != "skip":
                _count(report, task.action)
    else:
        if progress is not None:
            todo = [t.shard for t in tasks if t.action != "skip"]
            progress.start(sum(s.members_size_bytes for s in todo), len(todo))
        run = _Run(
            store, manifest_key, tasks, checkpoint_every, checkpoint_seconds, progress, report
        )
        _execute(run, builder, codec)
        if run.problems:
            raise PackConflictError(problems=run.problems, hint=CHANGED_HINT)
        part = finish(store, manifest_key, plan)
        if part is not None:
            report["parts"].append(part)
    report["seconds"] = round(time.monotonic() - started, 3)
    return report
