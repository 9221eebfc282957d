"""Flattening a manifest and its parts into one manifest, streamed (any size)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from . import manifest
from .multipart import MultipartWriter
from .transport import Transport
from .types import MANIFEST_CONTENT_TYPE, CompactReport, FileEntry, ManifestEntry, ShardEntry

ShardExpander = Callable[[ShardEntry], Iterable[FileEntry]]


def compact(
    bucket: Transport,
    src: str,
    dst: str,
    *,
    entries: Iterator[ManifestEntry],
    expand: ShardExpander | None,
    part_size: int,
) -> CompactReport:
    """Write ``entries`` (shards expanded into member entries when ``expand`` is given) to ``dst``.

    The source is read to the end before ``dst`` appears, so ``dst == src`` survives a crash
    midway. It is not safe against a concurrent ``append_parts`` on ``src`` (its reference would
    be overwritten): stop the writers first. Part files are left in place.
    """
    report: CompactReport = {
        "src_manifest_key": src,
        "dst_manifest_key": dst,
        "total_entries": 0,
        "file_entries": 0,
        "shard_entries": 0,
        "manifest_ref_entries": 0,
    }
    counters = {
        "file": "file_entries",
        "shard": "shard_entries",
        "manifest_ref": "manifest_ref_entries",
    }
    writer = MultipartWriter(bucket, dst, part_size=part_size, content_type=MANIFEST_CONTENT_TYPE)
    with writer:
        for entry in _expanded(entries, expand):
            writer.write(manifest.dumps_entry(entry))
            report["total_entries"] += 1
            field = counters[entry["kind"]]
            report[field] += 1  # type: ignore[literal-required]
    return report


def _expanded(
    entries: Iterator[ManifestEntry], expand: ShardExpander | None
) -> Iterator[ManifestEntry]:
    for entry in entries:
        if expand is not None and entry["kind"] == "shard":
            yield from expand(entry)
        else:
            yield entry
