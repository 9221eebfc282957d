"""``verify``: every object a manifest references exists and matches what the manifest records.

With data (the default) loose files are streamed through :meth:`S3ExchangeStore.open_file_entry`
(size, ETag, sha256) and shards through :meth:`S3ExchangeStore.iter_shard_members` (structure,
internal manifest against the entry's count, per-member checksums), and the members' byte total is
compared with ``members_size_bytes``. ``--no-data`` checks existence, size and ETag with HEAD
requests only. Every problem is recorded and the walk goes on.

A manifest a ``pack`` has not finished writing (its side manifest
:func:`~s3exchange.packing.unfinished_key` exists, or it is that side manifest) is a problem
unless ``--allow-unfinished``, which turns it into a warning on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, TypedDict

from ..errors import (
    IntegrityError,
    InvalidManifestError,
    ObjectChangedError,
    ObjectNotFoundError,
    ReadInterruptedError,
    S3ExchangeError,
    ShardReadError,
)
from ..keys import split_virtual_key
from ..packing import UNFINISHED_HINT, unfinished_pack
from ..types import FileEntry, ShardEntry
from ._common import (
    CHUNK,
    CliError,
    ExitCode,
    Progress,
    emit,
    emit_json,
    human_size,
    open_store,
    plural,
)
from ._read import archive_compression, manifest_stats
from ._walk import walk_manifest

if TYPE_CHECKING:
    from ..store import S3ExchangeStore

DATA_ERRORS = (
    IntegrityError,
    ObjectChangedError,
    ObjectNotFoundError,
    ReadInterruptedError,
    ShardReadError,
)
"""Failures that make one object bad without stopping the run (access errors still stop it)."""


class Problem(TypedDict):
    """One thing wrong: the object (or manifest), the manifest listing it, and what is wrong."""

    key: str
    manifest: str
    problem: str


class VerifyReport(TypedDict):
    """What ``verify`` checked and found."""

    manifest_key: str
    ok: bool
    data: bool
    manifests: int
    files: int
    shards: int
    members: int
    bytes_checked: int
    unfinished: str | None
    problems: list[Problem]


def _unquote(etag: str | None) -> str | None:
    return etag.strip('"') if etag else None


def _head_problems(entry: FileEntry | ShardEntry, head: dict[str, Any]) -> list[str]:
    found: list[str] = []
    size, stored = entry.get("size_bytes"), head.get("ContentLength")
    if size is not None and stored is not None and size != stored:
        found.append(f"size is {stored} bytes, manifest says {size}")
    etag, stored_etag = _unquote(entry.get("etag")), _unquote(head.get("ETag"))
    if etag and stored_etag and etag != stored_etag:
        found.append(f"ETag is {stored_etag}, manifest says {etag}")
    return found


class Verifier:
    """One verification run over a manifest graph."""

    def __init__(self, store: S3ExchangeStore, root: str, *, data: bool, bar: Progress) -> None:
        self.store = store
        self.root = store.resolve(root)
        self.data = data
        self.bar = bar
        self.report: VerifyReport = {
            "manifest_key": self.root,
            "ok": True,
            "data": data,
            "manifests": 1,
            "files": 0,
            "shards": 0,
            "members": 0,
            "bytes_checked": 0,
            "unfinished": None,
            "problems": [],
        }
        # members listed one by one (compact --expand-shards): a run of consecutive members of
        # one archive is checked with one pass over it, so memory stays within one archive
        self.group_archive: str | None = None
        self.group: dict[str, tuple[str, FileEntry]] = {}

    def problem(self, manifest: str, key: str, text: str) -> None:
        self.report["problems"].append({"key": key, "manifest": manifest, "problem": text})
        self.report["ok"] = False

    def _manifest_error(self, key: str, error: S3ExchangeError) -> None:
        if key == self.root and isinstance(error, ObjectNotFoundError):
            raise error  # nothing to verify: exit "not found", not "problems"
        self.problem(key, key, str(error))

    def _read(self, n: int) -> None:
        self.report["bytes_checked"] += n
        self.bar.advance(n)

    def run(self) -> VerifyReport:
        manifests = {self.root}
        for manifest, entry in walk_manifest(self.store, self.root, self._manifest_error):
            if entry["kind"] == "manifest_ref":
                manifests.add(entry["key"])  # one referenced twice is read (and counted) once
                self.report["manifests"] = len(manifests)
            elif entry["kind"] == "shard":
                self.report["shards"] += 1
                self.check_shard(manifest, entry)
            elif "archive_key" in entry:
                archive, member = entry["archive_key"], entry.get("member_path")
                if member is None:
                    member = split_virtual_key(entry["key"])[1] or entry["key"]
                if archive != self.group_archive:
                    self.check_group()
                    self.group_archive = archive
                self.group[member] = (manifest, entry)
            else:
                self.report["files"] += 1
                self.check_file(manifest, entry)
        self.check_group()
        return self.report

    def check_group(self) -> None:
        if self.group_archive is not None and self.group:
            self.check_members(self.group_archive, self.group)
        self.group_archive, self.group = None, {}

    def check_file(self, manifest: str, entry: FileEntry) -> None:
        key = entry["key"]
        try:
            if not self.data:
                found = _head_problems(entry, self.store.head_object(key))
                if found:
                    self.problem(manifest, key, "; ".join(found))
                self.bar.advance(1)
                return
            stream = self.store.open_file_entry(entry, verify=True)
            try:
                while chunk := stream.read(CHUNK):
                    self._read(len(chunk))
            finally:
                stream.close()
        except ObjectNotFoundError:
            self.problem(manifest, key, "missing")
        except DATA_ERRORS as exc:
            self.problem(manifest, key, str(exc))

    def check_shard(self, manifest: str, entry: ShardEntry) -> None:
        key = entry["archive_key"]
        self.report["members"] += entry.get("count", 0)
        try:
            found = _head_problems(entry, self.store.head_object(key))
        except ObjectNotFoundError:
            self.problem(manifest, key, "missing")
            return
        if found or not self.data:
            if found:
                self.problem(manifest, key, "; ".join(found))
            self.bar.advance(1 if not self.data else entry.get("members_size_bytes", 0))
            return
        total = 0
        try:
            for member in self.store.iter_shard_members(entry, verify=True):
                while chunk := member.stream.read(CHUNK):
                    total += len(chunk)
                    self._read(len(chunk))
        except DATA_ERRORS as exc:
            self.problem(manifest, key, str(exc))
            return
        expected = entry.get("members_size_bytes")
        if expected is not None and expected != total:
            self.problem(manifest, key, f"members hold {total} bytes, manifest says {expected}")

    def check_members(self, archive: str, members: dict[str, tuple[str, FileEntry]]) -> None:
        """Members listed one by one: the archive exists and holds them, unchanged."""
        self.report["members"] += len(members)
        first_manifest = next(iter(members.values()))[0]
        try:
            self.store.head_object(archive)
        except ObjectNotFoundError:
            self.problem(first_manifest, archive, f"missing ({len(members)} members listed)")
            return
        if not self.data:
            self.bar.advance(len(members))
            return
        shard: ShardEntry = {
            "kind": "shard",
            "archive_key": archive,
            "compression": archive_compression(archive),
        }
        seen: set[str] = set()
        try:
            for member in self.store.iter_shard_members(
                shard, verify=True, select=lambda _, e: e["member_path"] in members
            ):
                path = member.entry["member_path"]
                seen.add(path)
                manifest, listed = members[path]
                while chunk := member.stream.read(CHUNK):
                    self._read(len(chunk))
                for field in ("size_bytes", "crc32c", "sha256"):
                    want, got = listed.get(field), member.entry.get(field)
                    if want is not None and want != got:
                        self.problem(
                            manifest, listed["key"], f"{field} is {got}, manifest says {want}"
                        )
        except DATA_ERRORS as exc:
            self.problem(first_manifest, archive, str(exc))
            return
        for path in members.keys() - seen:
            manifest, listed = members[path]
            self.problem(manifest, listed["key"], "not in the archive")


def verify_manifest(
    store: S3ExchangeStore, key: str, *, data: bool = True, bar: Progress | None = None
) -> VerifyReport:
    """Check everything ``key`` references; the report lists every problem found."""
    return Verifier(store, key, data=data, bar=bar or Progress("", enabled=False)).run()


def _check_finished(
    store: S3ExchangeStore, args: argparse.Namespace
) -> tuple[str, str | None, Problem | None]:
    """The manifest to verify, the unfinished pack's side manifest, and its problem if any."""
    root = store.resolve(args.key)
    side = unfinished_pack(store, root)
    if side is None:
        return args.key, None, None
    missing = side != root and not store.exists(root)
    what = f"a pack into {root!r} has not finished ({side!r} lists its shards so far)"
    if args.allow_unfinished:
        sys.stderr.write(f"s3exchange: warning: {what}; verifying what it wrote\n")
        return (side if missing else args.key), side, None
    if missing:
        raise CliError(
            ExitCode.NOT_FOUND,
            f"manifest not found: {root!r}: {what}; {UNFINISHED_HINT}, or verify "
            "--allow-unfinished to check what it wrote",
        )
    problem = f"{what}; {UNFINISHED_HINT} (--allow-unfinished to accept)"
    return args.key, side, {"key": root, "manifest": root, "problem": problem}


def cmd_verify(args: argparse.Namespace) -> int:
    """Print the problems (or the report as one JSON object); exit 1 if there are any."""
    store = open_store(args)
    key, side, unfinished = _check_finished(store, args)
    with Progress(f"verify {key}", unit="B" if args.data else "obj") as bar:
        if bar.enabled:  # a first, cheap pass over the manifests gives the bar its total
            try:
                stats = manifest_stats(store, key)
            except (ObjectNotFoundError, InvalidManifestError):
                pass  # the bar runs without a total; the verify pass reports the problem
            else:
                objects = stats["files"] + stats["shards"] + stats["expanded_members"]
                bar.start(stats["file_bytes"] + stats["member_bytes"] if args.data else objects)
        report = verify_manifest(store, key, data=args.data, bar=bar)
    report["unfinished"] = side
    if unfinished is not None:
        report["problems"].insert(0, unfinished)
        report["ok"] = False
    if args.json:
        emit_json(report)
    else:
        for problem in report["problems"]:
            emit(f"{problem['key']}: {problem['problem']}  [listed in {problem['manifest']}]")
        what = f"{human_size(report['bytes_checked'])} read" if args.data else "HEAD only"
        count = len(report["problems"])
        emit(
            f"{'OK' if report['ok'] else 'FAILED'}: {report['manifest_key']}: "
            f"{plural(report['manifests'], 'manifest')}, {plural(report['files'], 'file')}, "
            f"{plural(report['shards'], 'shard')} ({plural(report['members'], 'member')}), "
            f"{what}; {plural(count, 'problem')}"
        )
    return ExitCode.OK if report["ok"] else ExitCode.PROBLEMS
