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
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import hashlib
import logging
import os
import posixpath
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Protocol, TypedDict, cast

from .errors import (
    InvalidManifestError,
    ManifestNotFoundError,
    PackConflictError,
    PackError,
    ShardReadError,
)
from .keys import LiteralKey
from .samples import entry_id, sample_key, split_items
from .shard_format import CHECKSUM_FIELDS, hexdigest, new_digest
from .shard_writer import shard_compression
from .store import STALE_UPLOAD_SECONDS
from .types import Compression, FileEntry, ShardEntry, ShardItem

if TYPE_CHECKING:
    from .store import S3ExchangeStore

log = logging.getLogger(__name__)

__all__ = [
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
]

Action = Literal["skip", "upload", "replace", "restore"]
"""What a run does with one planned shard (see the module docstring)."""


UNFINISHED_SUFFIX = ".unfinished.jsonl"
"""Appended to a manifest key for the checkpoints of a pack that has not finished."""

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


# -- planning (pure) ---------------------------------------------------------------------------


def default_prefix(manifest_key: str) -> str:
    """Where shards go by default: ``<manifest directory>/shards``."""
    directory = posixpath.dirname(manifest_key)
    return f"{directory}/shards" if directory else "shards"


def unfinished_key(manifest_key: str) -> str:
    """The side manifest listing the shards of a pack into ``manifest_key`` not yet finished."""
    return LiteralKey(f"{manifest_key}{UNFINISHED_SUFFIX}")


def unfinished_pack(store: S3ExchangeStore, root: str) -> str | None:
    """The side manifest of a pack into ``root`` (a resolved key) that has not finished, if any:
    what ``verify`` and the dataset refuse unless told to accept it."""
    if root.endswith(UNFINISHED_SUFFIX):
        return root
    side = unfinished_key(root)
    return side if store.exists(side) else None


UNFINISHED_HINT = "run the same pack command again to finish it"


def manifest_to_read(store: S3ExchangeStore, key: str, *, allow_unfinished: bool) -> str:
    """The manifest a reader opens for ``key`` (a template): ``key`` resolved, unless a pack
    into it has not finished. Then InvalidManifestError saying so, or, ``allow_unfinished``, a
    warning and what it wrote: the side manifest while ``key`` itself does not exist yet. The one
    rule of the PyTorch datasets and ``s3exchange.ray``'s source (``verify`` reports it)."""
    root = LiteralKey(store.resolve(key))
    side = unfinished_pack(store, root)
    if side is None:
        return root
    what = f"a pack into {root!r} has not finished ({side!r} lists its shards so far)"
    if not allow_unfinished:
        raise InvalidManifestError(
            key=root,
            reason=f"{what}; {UNFINISHED_HINT}, or pass allow_unfinished=True to read it",
        )
    log.warning("%s; reading what it wrote", what)
    return LiteralKey(side) if side != root and not store.exists(root) else root


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


# -- local files -------------------------------------------------------------------------------


def _raise(error: OSError) -> None:
    raise error


def _unreadable(error: OSError) -> PackError:
    """One line naming the path, for any file-system error on the source side."""
    where = error.filename if error.filename is not None else "the source directory"
    return PackError(f"cannot read {os.fspath(where)!r}: {error.strerror or error}")


class Skipped(TypedDict):
    """What a scan left out, by reason (a skipped directory counts once)."""

    hidden: int
    symlinks: int
    excluded: int


@dataclass
class _Scan:
    """One walk of a source directory: the rules, what was found and what was left out."""

    root: Path
    exclude: Sequence[str]
    hidden: bool
    follow_symlinks: bool

    def __post_init__(self) -> None:
        self.real_root = os.path.realpath(self.root)
        self.found: list[SourceFile] = []
        self.skipped: Skipped = {"hidden": 0, "symlinks": 0, "excluded": 0}

    def keep(self, path: str, member: str, *, directory: bool) -> bool:
        """Whether to pack (or walk into) ``path``; counts what it leaves out."""
        name = posixpath.basename(member)
        if name.startswith(".") and not self.hidden:
            self.skipped["hidden"] += 1
            return False
        if any(fnmatch.fnmatchcase(p, g) for g in self.exclude for p in (member, name)):
            self.skipped["excluded"] += 1
            return False
        if not os.path.islink(path):
            return directory or os.path.isfile(path)  # no FIFOs, sockets or devices
        if not self.follow_symlinks:
            self.skipped["symlinks"] += 1
            return False
        target = os.path.realpath(path)
        if os.path.commonpath([self.real_root, target]) != self.real_root:
            raise PackError(
                f"{path!r} is a symlink to {target!r}, outside the source directory "
                f"{os.fspath(self.root)!r}: it is never followed there (--exclude it)"
            )
        if directory:
            parent = os.path.realpath(os.path.dirname(path))
            if os.path.commonpath([parent, target]) == target:  # a loop: it points up
                self.skipped["symlinks"] += 1
                return False
            return True
        return os.path.isfile(path)

    def run(self) -> None:
        walk = os.walk(self.root, onerror=_raise, followlinks=self.follow_symlinks)
        for dirpath, dirnames, filenames in walk:
            base = Path(dirpath).relative_to(self.root).as_posix()
            prefix = "" if base == "." else f"{base}/"
            dirnames[:] = [
                d
                for d in sorted(dirnames)
                if self.keep(os.path.join(dirpath, d), prefix + d, directory=True)
            ]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if self.keep(path, prefix + name, directory=False):
                    self.found.append(SourceFile(path, prefix + name, os.path.getsize(path)))
        self.found.sort(key=lambda f: f.member_path)


def describe_skipped(skipped: Skipped) -> str:
    """``"skipped 2 hidden, 1 symlink, 3 excluded"``, or ``""`` when nothing was left out."""
    parts = [
        f"{n} {what}" + ("s" if n != 1 and what == "symlink" else "")
        for n, what in (
            (skipped["hidden"], "hidden"),
            (skipped["symlinks"], "symlink"),
            (skipped["excluded"], "excluded"),
        )
        if n
    ]
    return "skipped " + ", ".join(parts) if parts else ""


def scan_directory(
    src_dir: str | os.PathLike[str],
    *,
    exclude: Sequence[str] = (),
    hidden: bool = False,
    follow_symlinks: bool = False,
    skipped: Skipped | None = None,
) -> list[SourceFile]:
    """The regular files under ``src_dir`` to pack, sorted by member path.

    Left out: names starting with ``.`` (unless ``hidden``), paths or names matching an
    ``exclude`` glob (fnmatch; ``*`` crosses ``/``), and symlinks unless ``follow_symlinks``;
    a followed symlink leading outside ``src_dir`` raises PackError naming it, one pointing up
    to its own directory (a loop) is left out. The counts go into ``skipped``. Unreadable
    directories raise PackError naming them instead of being skipped.
    """
    root = Path(src_dir)
    if not root.is_dir():
        raise PackError(f"{os.fspath(src_dir)!r} is not a directory")
    scan = _Scan(root, exclude, hidden, follow_symlinks)
    try:
        scan.run()
    except OSError as exc:
        raise _unreadable(exc) from None
    if skipped is not None:
        skipped.update(scan.skipped)
    return scan.found


# -- the run -----------------------------------------------------------------------------------


def _listed_shards(store: S3ExchangeStore, manifest_key: str) -> dict[str, list[ShardEntry]]:
    listed: dict[str, list[ShardEntry]] = {}
    try:
        for entry in store.iter_manifest_entries(manifest_key):
            if entry["kind"] == "shard":
                listed.setdefault(entry["archive_key"], []).append(entry)
    except ManifestNotFoundError as exc:
        if exc.key != manifest_key:
            raise  # a part the root references is gone: not a first run
    return listed


def _finish(store: S3ExchangeStore, manifest_key: str, plan: Sequence[PlannedShard]) -> str | None:
    """Move the side manifest's entries the manifest lacks into it (one part), then delete it.

    Returns the part written, if any. A crash in between leaves both; the next run finds every
    entry listed already and only deletes the side manifest.
    """
    side = unfinished_key(manifest_key)
    order = {shard.archive_key: shard.index for shard in plan}
    listed = _listed_shards(store, manifest_key)
    pending = {
        key: entries[0]
        for key, entries in _listed_shards(store, side).items()
        if key not in listed and key in order
    }
    part = None
    if pending:
        entries = [pending[key] for key in sorted(pending, key=order.__getitem__)]
        part = store.put_sharded(manifest_key, entries, "append_parts")
    try:
        refs = [
            LiteralKey(e["key"])
            for e in store.iter_manifest_entries(side, resolve_refs=False)
            if e["kind"] == "manifest_ref"
        ]
    except ManifestNotFoundError:
        return part
    store.delete_key(side)  # first the root, so no reader meets a dangling reference
    for ref in refs:
        store.delete_key(ref)
    return part


def _check_replaceable(
    store: S3ExchangeStore, task: ShardTask, compression: Compression, builder: ShardBuilder
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
        problem = _content_problem(member, source, builder)
        if problem is not None:
            raise PackConflictError(
                f"{key} exists and is not listed in the manifest, but its member "
                f"{source.member_path!r} {problem}; another dataset may use this prefix: "
                "pack under another --prefix"
            )


def _content_problem(member: FileEntry, source: SourceFile, builder: ShardBuilder) -> str | None:
    """Why the stored member is not ``source``'s bytes, or None when its checksum matches."""
    for field in CHECKSUM_FIELDS:
        recorded = member.get(field)
        if isinstance(recorded, str):
            digest = new_digest(field)
            try:
                with builder.open(source) as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
            except OSError as exc:
                raise _unreadable(exc) from None
            if hexdigest(digest) == recorded:
                return None
            return f"holds other bytes than {source.path} ({field} differs)"
    return "records no checksum, so it cannot be shown to hold the same bytes"


def _restore_problem(new: ShardEntry, listed: ShardEntry) -> str | None:
    for field in ("size_bytes", "etag"):
        old, now = listed.get(field), new.get(field)
        if old is not None and now is not None and old != now:
            return (
                f"{new['archive_key']} was missing and has been uploaded again, but its "
                f"{field} is now {now} while the manifest lists {old}: the source files changed"
            )
    return None


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
            problem = _restore_problem(entry, task.listed)
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
    listed = _listed_shards(store, manifest_key)
    for key, entries in _listed_shards(store, unfinished_key(manifest_key)).items():
        listed.setdefault(key, entries)
    shards = LiteralKey(f"{prefix}/shard-")
    stored = {obj["key"]: obj["size"] for obj in store.list_objects(shards)}
    tasks = reconcile(plan, listed, stored, prefix=prefix)
    _check_all_replaceable(store, tasks, codec, builder)
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
        part = _finish(store, manifest_key, plan)
        if part is not None:
            report["parts"].append(part)
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _check_all_replaceable(
    store: S3ExchangeStore,
    tasks: Iterable[ShardTask],
    compression: Compression,
    builder: ShardBuilder,
) -> None:
    replace = [task for task in tasks if task.action == "replace"]
    if not replace:
        return

    def check(task: ShardTask) -> None:
        _check_replaceable(store, task, compression, builder)

    threads = max(1, builder.jobs)
    with concurrent.futures.ThreadPoolExecutor(threads, "s3exchange-pack-check") as pool:
        for _ in pool.map(check, replace):
            pass
