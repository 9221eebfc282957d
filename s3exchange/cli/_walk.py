"""Walking a manifest graph entry by entry, with the manifest each entry came from."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from ..manifest import GraphErrorHandler, walk_graph

if TYPE_CHECKING:
    from ..store import S3ExchangeStore
    from ..types import ManifestEntry

ErrorHandler = GraphErrorHandler
"""``on_error(manifest_key, error)``: record a missing or invalid manifest, or re-raise."""


def walk_manifest(
    store: S3ExchangeStore, root: str, on_error: ErrorHandler | None = None
) -> Iterator[tuple[str, ManifestEntry]]:
    """``(manifest key, entry)`` for the root and every manifest it references, depth-first.

    :func:`s3exchange.manifest.walk_graph` over the store, the traversal the library uses:
    ``manifest_ref`` entries are yielded, then followed, each manifest once. Without
    ``on_error`` a missing or invalid manifest (or a reference cycle) raises; with it, the
    walk reports it and goes on with the next entry of the referencing manifest.
    """

    # keys read from manifests are literal: never resolved as templates
    for key, entry in walk_graph(store._read_manifest, store.resolve(root), on_error=on_error):
        yield cast(str, key), entry
