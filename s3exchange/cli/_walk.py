"""Walking a manifest graph entry by entry, with the manifest each entry came from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ..errors import InvalidManifestError, ManifestNotFoundError, S3ExchangeError

if TYPE_CHECKING:
    from ..store import S3ExchangeStore
    from ..types import ManifestEntry

ErrorHandler = Callable[[str, S3ExchangeError], None]
"""``on_error(manifest_key, error)``: record a missing or invalid manifest, or re-raise."""


def walk_manifest(
    store: S3ExchangeStore, root: str, on_error: ErrorHandler | None = None
) -> Iterator[tuple[str, ManifestEntry]]:
    """``(manifest key, entry)`` for the root and every manifest it references, depth-first.

    ``manifest_ref`` entries are yielded, then followed. Without ``on_error`` a missing or
    invalid manifest (or a reference cycle) raises; with it, the walk reports it and goes on
    with the next entry of the referencing manifest.
    """
    return _visit(store, store.resolve(root), (), on_error)


def _visit(
    store: S3ExchangeStore, key: str, path: tuple[str, ...], on_error: ErrorHandler | None
) -> Iterator[tuple[str, ManifestEntry]]:
    if key in path:
        cycle = InvalidManifestError(key, "manifest_ref cycle: " + " -> ".join((*path, key)))
        if on_error is None:
            raise cycle
        on_error(key, cycle)
        return
    try:
        for entry in store.iter_manifest_entries(key, resolve_refs=False):
            yield key, entry
            if entry["kind"] == "manifest_ref":
                yield from _visit(store, entry["key"], (*path, key), on_error)
    except (ManifestNotFoundError, InvalidManifestError) as exc:
        if on_error is None:
            raise
        on_error(key, exc)
