"""Preprocessing job: write a synthetic classification dataset as tar shards plus loose files.

Each sample is a float32 feature vector (raw little-endian bytes) whose label is in ``meta``.
Shards stream straight into S3 multipart uploads; every shard (and the batch of loose files) is
recorded with ``append_parts``, so several of these jobs may write the same manifest at once.

    python examples/write_shards.py --samples 4096 --manifest demo/train/manifest.jsonl
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

from s3exchange import S3ExchangeStore, Shard, ShardItem

FEATURES = 32
CLASSES = 4


def make_sample(rng: random.Random, label: int) -> bytes:
    """Features drawn around a class-dependent centre, so a small model can learn them."""
    centre = [((label * 7 + i) % CLASSES) - 1.5 for i in range(FEATURES)]
    return struct.pack(f"<{FEATURES}f", *(c + rng.gauss(0, 4.0) for c in centre))


def iter_items(count: int, seed: int) -> Iterator[ShardItem]:
    rng = random.Random(seed)
    for i in range(count):
        label = rng.randrange(CLASSES)
        yield {
            "source": make_sample(rng, label),
            "member_path": f"{i:07d}.f32",
            "id": f"{i:07d}",
            "meta": {"label": label},
        }


def write_dataset(
    store: S3ExchangeStore,
    manifest_key: str,
    *,
    samples: int = 4096,
    loose: int = 64,
    shard_entries: int = 512,
    compression: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``samples`` samples (the first ``loose`` as loose objects); returns a summary."""
    started = time.perf_counter()
    items = list(iter_items(samples, seed))
    loose_entries = [
        store.put_object(
            f"{manifest_key.rsplit('/', 1)[0]}/loose/{it['member_path']}",
            it["source"],  # type: ignore[arg-type]
            id=it["id"],
            meta=it["meta"],
        )
        for it in items[:loose]
    ]
    if loose_entries:
        store.write_manifest(manifest_key, loose_entries, mode="append_parts")
    suffix = ".tar.gz" if compression == "gzip" else ".tar"
    shards = []
    for i, batch in enumerate(Shard.split_items(items[loose:], max_entries=shard_entries)):
        key = f"{manifest_key.rsplit('/', 1)[0]}/shards/shard-{i:05d}{suffix}"
        shard = store.put_shard_archive(key, batch, compression=compression)  # type: ignore[arg-type]
        shards.append(shard.entry)
    store.put_sharded(manifest_key, shards, update_mode="append_parts")
    return {
        "manifest": manifest_key,
        "samples": samples,
        "loose_objects": len(loose_entries),
        "shards": len(shards),
        "bytes": sum(s["size_bytes"] for s in shards) + sum(e["size_bytes"] for e in loose_entries),
        "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="demo/train/manifest.jsonl")
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--loose", type=int, default=64)
    parser.add_argument("--shard-entries", type=int, default=512)
    parser.add_argument("--compression", choices=["gzip"], default=None)
    args = parser.parse_args(argv)
    store = S3ExchangeStore.from_settings()
    summary = write_dataset(
        store,
        args.manifest,
        samples=args.samples,
        loose=args.loose,
        shard_entries=args.shard_entries,
        compression=args.compression,
    )
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
