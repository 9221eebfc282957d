"""The finished mark of a pack: its side manifest ``<manifest>.unfinished.jsonl``, the manifest a
reader opens while one exists, and moving its entries into the manifest when the run completes
(the rule is in :mod:`s3exchange.packing`'s docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import InvalidManifestError, ManifestNotFoundError
from .keys import LiteralKey
from .pack_plan import PlannedShard
from .types import ShardEntry

if TYPE_CHECKING:
    from .store import S3ExchangeStore

log = logging.getLogger(__name__)

__all__ = [
    "UNFINISHED_HINT",
    "UNFINISHED_SUFFIX",
    "finish",
    "listed_shards",
    "manifest_to_read",
    "unfinished_key",
    "unfinished_pack",
]

UNFINISHED_SUFFIX = ".unfinished.jsonl"
"""Appended to a manifest key for the checkpoints of a pack that has not finished."""


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


def listed_shards(store: S3ExchangeStore, manifest_key: str) -> dict[str, list[ShardEntry]]:
    listed: dict[str, list[ShardEntry]] = {}
    try:
        for entry in store.iter_manifest_entries(manifest_key):
            if entry["kind"] == "shard":
                listed.setdefault(entry["archive_key"], []).append(entry)
    except ManifestNotFoundError as exc:
        if exc.key != manifest_key:
            raise  # a part the root references is gone: not a first run
    return listed


def finish(store: S3ExchangeStore, manifest_key: str, plan: Sequence[PlannedShard]) -> str | None:
    """Move the side manifest's entries the manifest lacks into it (one part), then delete it.

    Returns the part written, if any. A crash in between leaves both; the next run finds every
    entry listed already and only deletes the side manifest.
    """
    side = unfinished_key(manifest_key)
    order = {shard.archive_key: shard.index for shard in plan}
    listed = listed_shards(store, manifest_key)
    pending = {
        key: entries[0]
        for key, entries in listed_shards(store, side).items()
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
