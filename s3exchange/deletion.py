"""Deleting by prefix and by manifest, in batches, with every per-key failure reported."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from .errors import (
    DeleteError,
    InvalidKeyError,
    InvalidManifestError,
    ObjectNotFoundError,
    ShardReadError,
)
from .keys import KeySpace, split_virtual_key
from .manifest import ManifestReader, walk_graph
from .shard_index import index_key_for
from .transport import DELETE_BATCH, Transport
from .types import DeleteFailure, DeleteReport

log = logging.getLogger(__name__)


def delete_prefix(
    bucket: Transport,
    prefix: str,
    regex: str | None = None,
    *,
    allow_all: bool = False,
    batch_size: int = DELETE_BATCH,
) -> int:
    """Delete keys under ``prefix`` whose logical key matches ``regex`` (``re.search``),
    ``batch_size`` keys a request.

    An empty prefix (every key under the base prefix) needs ``allow_all``. Raises DeleteError
    listing the keys the server refused, or that the key rules reject (another tool wrote
    ``/x``), after deleting all the others.
    """
    if not prefix and not allow_all:
        raise InvalidKeyError(
            key=prefix,
            reason="an empty prefix means every key under the base prefix: pass allow_all=True",
        )
    bucket.keyspace.physical_prefix(prefix)  # refuse a bad prefix before listing
    pattern = re.compile(regex) if regex is not None else None
    refused: list[tuple[str, str, str]] = []

    def keys() -> Iterator[str]:
        for obj in bucket.list_objects(prefix):
            key = obj["key"]
            if pattern is not None and not pattern.search(key):
                continue
            try:
                bucket.keyspace.physical(key)
            except InvalidKeyError as exc:
                refused.append((key, "InvalidKey", exc.reason or ""))
                continue
            yield key

    deleted, failures = bucket.delete_many(keys(), batch_size=batch_size)
    refused += [(f["key"], f["code"], f["message"]) for f in failures]
    if refused:
        raise DeleteError(errors=refused)
    return deleted


MemberLister = Callable[[str], list[str]]
"""``members(archive_key)``: the member paths its internal manifest lists."""

Role = Literal["object", "archive", "index", "manifest"]


@dataclass(frozen=True, slots=True)
class DeletePlan:
    """Everything :func:`delete_manifest` deletes, in its order, and the archives it keeps.

    The one computation behind both :meth:`S3ExchangeStore.delete_manifest` and ``s3exchange
    rm --manifest`` (its ``--dry-run`` and prompt), so what is shown is what is deleted.
    """

    root: str
    objects: tuple[str, ...]
    archives: tuple[str, ...]
    manifests: tuple[str, ...]
    """Deepest part first, the root last: the order they are deleted in."""
    kept: tuple[tuple[str, str], ...]
    """``(archive, why)``: archives some of whose members are listed, not deleted."""
    indexes: tuple[str, ...] = ()
    """The :mod:`~s3exchange.shard_index` of each deleted archive (its entry's ``index_key``,
    else the key beside it; deleting one that does not exist is a no-op)."""

    def targets(self) -> Iterator[tuple[Role, str]]:
        """``(role, key)`` of every key to delete, in deletion order."""
        yield from (("object", key) for key in self.objects)
        yield from (("archive", key) for key in self.archives)
        yield from (("index", key) for key in self.indexes)
        yield from (("manifest", key) for key in self.manifests)


class _Targets:
    """Keys a manifest graph references, split by role, optionally deduplicated."""

    def __init__(self, dedupe: bool) -> None:
        self.dedupe = dedupe
        self.objects: list[str] = []
        self.archives: list[str] = []
        self.manifests: list[str] = []
        self.members: dict[str, set[str]] = {}  # archive -> member paths listed one by one
        self.index_keys: dict[str, str] = {}  # archive -> the index_key its shard entry names
        self._seen: set[str] = set()

    def add(self, bucket: list[str], key: str) -> None:
        if self.dedupe:
            if key in self._seen:
                return
            self._seen.add(key)
        bucket.append(key)


def _walk(read: ManifestReader, root: str, targets: _Targets) -> None:
    targets.add(targets.manifests, root)
    for _, entry in walk_graph(read, root):
        if entry["kind"] == "manifest_ref":
            targets.add(targets.manifests, entry["key"])
        elif entry["kind"] == "shard":
            targets.add(targets.archives, entry["archive_key"])
            if "index_key" in entry:
                targets.index_keys.setdefault(entry["archive_key"], entry["index_key"])
        elif "archive_key" in entry:  # a shard member listed as a file: not its archive
            member = entry.get("member_path") or split_virtual_key(entry["key"])[1] or ""
            targets.members.setdefault(entry["archive_key"], set()).add(member)
        else:
            targets.add(targets.objects, entry["key"])


def _covered(archive: str, listed: set[str], members: MemberLister) -> str | None:
    """None when ``listed`` names every member of ``archive``, else why it is kept."""
    try:
        stored = members(archive)
    except ObjectNotFoundError:
        return "not stored"
    except ShardReadError as exc:
        return f"its members cannot be read ({exc.reason})"
    missing = len(set(stored) - listed)
    if missing:
        return f"{len(stored) - missing} of its {len(stored)} members are listed"
    return None


def plan_delete_manifest(
    keyspace: KeySpace,
    root: str,
    read: ManifestReader,
    members: MemberLister,
    *,
    dedupe: bool = True,
) -> DeletePlan:
    """Read the whole manifest graph and decide every key to delete; deletes nothing.

    A shard entry covers its whole archive. Members listed one by one (a manifest from
    ``compact_manifest(expand_shards=True)``) cover it only when they name every member its
    internal manifest lists: otherwise the archive is kept, and ``kept`` says why. Every key
    is checked against the key rules here, so a bad key stops the plan before any delete.
    """
    targets = _Targets(dedupe)
    _walk(read, root, targets)
    kept: list[tuple[str, str]] = []
    whole = set(targets.archives)
    for archive, listed in targets.members.items():
        if archive in whole:
            continue  # a shard entry lists it whole
        why = _covered(archive, listed, members)
        if why is None:
            targets.add(targets.archives, archive)
        else:
            kept.append((archive, why))
    plan = DeletePlan(
        root=root,
        objects=tuple(targets.objects),
        archives=tuple(targets.archives),
        manifests=tuple(reversed(targets.manifests)),
        kept=tuple(kept),
        indexes=tuple(
            dict.fromkeys(targets.index_keys.get(a) or index_key_for(a) for a in targets.archives)
        ),
    )
    for role, key in plan.targets():
        try:
            keyspace.physical(key)
        except InvalidKeyError as exc:
            raise InvalidManifestError(
                key=root,
                reason=f"{role} key {key!r} in the manifest graph is invalid: {exc.reason}",
            ) from None
    return plan


def delete_manifest(
    bucket: Transport,
    plan: DeletePlan,
    *,
    delete_manifests: bool = True,
    batch_size: int = DELETE_BATCH,
) -> DeleteReport:
    """Delete a :func:`plan_delete_manifest` plan: objects, archives, then the manifests
    (``batch_size`` keys a request).

    Manifests go last, deepest part first, and only if every data key was deleted: a failed
    run leaves the manifests in place to run again, never a manifest whose data is half gone
    without a record of it.
    """
    objects, object_failures = bucket.delete_many(plan.objects, batch_size=batch_size)
    archives, archive_failures = bucket.delete_many(plan.archives, batch_size=batch_size)
    _, index_failures = bucket.delete_many(plan.indexes, batch_size=batch_size)
    failures: list[DeleteFailure] = object_failures + archive_failures + index_failures
    manifests = 0
    if delete_manifests and not failures:
        manifests, manifest_failures = bucket.delete_many(plan.manifests, batch_size=batch_size)
        failures += manifest_failures
    elif failures:
        log.warning(
            "kept the manifests of %r: %d keys could not be deleted", plan.root, len(failures)
        )
    for archive, why in plan.kept:
        log.info("kept archive %r: %s", archive, why)
    return {
        "deleted_object_count": objects,
        "deleted_archive_count": archives,
        "deleted_manifest_count": manifests,
        "errors": failures,
    }
