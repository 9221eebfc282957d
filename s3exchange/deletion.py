"""Deleting by prefix and by manifest, in batches, with every per-key failure reported."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from .bucket import Bucket
from .errors import DeleteError, InvalidManifestError
from .types import DeleteFailure, DeleteReport, ManifestEntry

log = logging.getLogger(__name__)

ManifestReader = Callable[[str], Iterable[ManifestEntry]]


def delete_prefix(bucket: Bucket, prefix: str, regex: str | None = None) -> int:
    """Delete keys under ``prefix`` whose logical key matches ``regex`` (``re.search``).

    Raises DeleteError listing the keys the server refused, after deleting all the others.
    """
    pattern = re.compile(regex) if regex is not None else None
    keys = (
        obj["key"]
        for obj in bucket.list_objects(prefix)
        if pattern is None or pattern.search(obj["key"])
    )
    deleted, failures = bucket.delete_many(keys)
    if failures:
        raise DeleteError([(f["key"], f["code"], f["message"]) for f in failures])
    return deleted


class _Targets:
    """Keys a manifest graph references, split by role, optionally deduplicated."""

    def __init__(self, dedupe: bool) -> None:
        self.dedupe = dedupe
        self.objects: list[str] = []
        self.archives: list[str] = []
        self.manifests: list[str] = []
        self._seen: set[str] = set()

    def add(self, bucket: list[str], key: str) -> None:
        if self.dedupe:
            if key in self._seen:
                return
            self._seen.add(key)
        bucket.append(key)


def _walk(read: ManifestReader, key: str, targets: _Targets, path: tuple[str, ...]) -> None:
    if key in path:
        raise InvalidManifestError(key, "manifest_ref cycle: " + " -> ".join((*path, key)))
    targets.add(targets.manifests, key)
    for entry in read(key):
        if entry["kind"] == "manifest_ref":
            _walk(read, entry["key"], targets, (*path, key))
        elif "archive_key" in entry:  # a shard, or a shard member listed as a file
            targets.add(targets.archives, entry["archive_key"])
        else:
            targets.add(targets.objects, entry["key"])


def delete_manifest(
    bucket: Bucket,
    root: str,
    read: ManifestReader,
    *,
    delete_manifests: bool = True,
    dedupe: bool = True,
) -> DeleteReport:
    """Delete every object and archive the manifest graph references, then the manifests.

    A shard member listed as a file entry (``compact_manifest(expand_shards=True)``) references
    its whole archive, so the archive is deleted.

    The whole graph is read before anything is deleted, so a bad manifest deletes nothing.
    Manifests go last, deepest part first, and only if every data key was deleted: a failed
    run leaves the manifests in place to run again, never a manifest whose data is half gone
    without a record of it.
    """
    targets = _Targets(dedupe)
    _walk(read, root, targets, ())
    objects, object_failures = bucket.delete_many(targets.objects)
    archives, archive_failures = bucket.delete_many(targets.archives)
    failures: list[DeleteFailure] = object_failures + archive_failures
    manifests = 0
    if delete_manifests and not failures:
        manifests, manifest_failures = bucket.delete_many(reversed(targets.manifests))
        failures += manifest_failures
    elif failures:
        log.warning("kept the manifests of %r: %d keys could not be deleted", root, len(failures))
    return {
        "deleted_object_count": objects,
        "deleted_archive_count": archives,
        "deleted_manifest_count": manifests,
        "errors": failures,
    }
