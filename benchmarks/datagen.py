"""Synthetic data for the benchmarks, written to the server through the library under test.

Bytes are random (incompressible) and seeded, so every run moves the same data.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s3exchange import S3ExchangeStore
from s3exchange.types import FileEntry, ShardEntry, ShardItem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class ShardSet:
    """Shards written under one prefix and the manifest that lists them."""

    manifest: str
    archive_keys: list[str]
    members: int
    member_bytes: int
    archive_bytes: int

    @property
    def samples(self) -> int:
        return len(self.archive_keys) * self.members


@dataclass(frozen=True)
class LooseSet:
    """Loose objects ``{prefix}/{i:06d}.bin`` and the manifest of their file entries."""

    manifest: str
    prefix: str
    count: int
    object_bytes: int

    def keys(self) -> list[str]:
        return loose_keys(self.prefix, self.count)


def loose_keys(prefix: str, count: int) -> list[str]:
    return [f"{prefix}/{index:06d}.bin" for index in range(count)]


def ensure_bucket(client: S3Client, bucket: str) -> None:
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def write_shards(
    store: S3ExchangeStore,
    prefix: str,
    shards: int,
    members: int,
    member_bytes: int,
    seed: int = 0,
) -> ShardSet:
    """``shards`` uncompressed tar shards of ``members`` random members each, plus a manifest."""
    rng = random.Random(seed)
    entries: list[ShardEntry] = []
    for shard in range(shards):
        items: list[ShardItem] = [
            {"member_path": f"{shard:04d}/{index:06d}.bin", "source": rng.randbytes(member_bytes)}
            for index in range(members)
        ]
        entries.append(store.put_shard_archive(f"{prefix}/shard-{shard:05d}.tar", items).entry)
    manifest = store.write_manifest(f"{prefix}/manifest.jsonl", entries)
    return ShardSet(
        manifest=manifest,
        archive_keys=[entry["archive_key"] for entry in entries],
        members=members,
        member_bytes=member_bytes,
        archive_bytes=sum(entry.get("size_bytes", 0) for entry in entries),
    )


def write_random_access(
    store: S3ExchangeStore, prefix: str, shards: int, members: int, member_bytes: int
) -> tuple[ShardSet, LooseSet]:
    """The same samples twice: as tar shards (with their indexes) under ``{prefix}/`` and as
    loose objects under ``{prefix}-loose/``, in the same order, for map-style readers."""
    shard_set = write_shards(store, prefix, shards, members, member_bytes, seed=1)
    rng = random.Random(1)
    payloads = [rng.randbytes(member_bytes) for _ in range(shards * members)]
    keys = loose_keys(f"{prefix}-loose", len(payloads))
    with ThreadPoolExecutor(16) as pool:
        entries: list[FileEntry] = list(pool.map(store.put_object, keys, payloads))
    manifest = store.write_manifest(f"{prefix}-loose/manifest.jsonl", entries)
    loose = LooseSet(manifest, f"{prefix}-loose", len(payloads), member_bytes)
    return shard_set, loose


def write_big_shard(
    store: S3ExchangeStore, key: str, total_bytes: int, member_bytes: int, seed: int = 0
) -> ShardEntry:
    """One shard of ``total_bytes`` of members (all sharing one random block, to save memory)."""
    block = random.Random(seed).randbytes(member_bytes)
    count = max(1, total_bytes // member_bytes)
    items: list[ShardItem] = [
        {"member_path": f"{index:07d}.bin", "source": block} for index in range(count)
    ]
    return store.put_shard_archive(key, items).entry


def write_loose(
    store: S3ExchangeStore, prefix: str, count: int, object_bytes: int, seed: int = 0
) -> LooseSet:
    """``count`` loose objects written 16 at a time, and a manifest of their entries."""
    rng = random.Random(seed)
    payloads = [rng.randbytes(object_bytes) for _ in range(count)]
    keys = loose_keys(prefix, count)
    with ThreadPoolExecutor(16) as pool:
        entries: list[FileEntry] = list(pool.map(store.put_object, keys, payloads))
    manifest = store.write_manifest(f"{prefix}/manifest.jsonl", entries)
    return LooseSet(manifest=manifest, prefix=prefix, count=count, object_bytes=object_bytes)


def _manifest_lines(count: int, prefix: str) -> Iterator[bytes]:
    digest = hashlib.sha256(b"bench").hexdigest()
    for index in range(count):
        entry = {
            "kind": "file",
            "key": f"{prefix}/{index:09d}.bin",
            "id": f"{index:09d}",
            "size_bytes": 16384,
            "sha256": digest,
        }
        yield json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def write_big_manifest(store: S3ExchangeStore, key: str, count: int) -> int:
    """A manifest of ``count`` file entries (with sha256, as real manifests carry); its size."""
    body = b"".join(_manifest_lines(count, "scale"))
    store.put_object(key, io.BytesIO(body), content_type="application/x-ndjson")
    return len(body)
