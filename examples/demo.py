"""The main job, end to end: preprocess into S3, inspect, read back, and train from it.

With ``S3EXCHANGE_ENDPOINT_URL`` unset it starts an embedded S3 server on 127.0.0.1 (SeaweedFS
when its binary is installed, else moto's server) and a bucket ``demo``; otherwise it uses the
configured endpoint and ``S3EXCHANGE_BUCKET``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from s3exchange import S3ExchangeStore, S3Settings

MANIFEST = "demo/train/manifest.jsonl"


@contextlib.contextmanager
def s3_endpoint(kind: str) -> Iterator[S3Settings]:
    """Settings for the configured endpoint, or for an embedded server started here."""
    settings = S3Settings()
    if settings.endpoint_url or kind == "configured":
        yield settings
        return
    from s3exchange.testing import start_local_s3

    with start_local_s3(kind) as server:  # type: ignore[arg-type]
        os.environ.update(server.s3.env())
        os.environ.setdefault("S3EXCHANGE_BUCKET", "demo")
        print(f"embedded {server.s3.kind} S3 server at {server.s3.endpoint_url}")
        settings = S3Settings()
        settings.create_client().create_bucket(Bucket=settings.bucket or "demo")
        yield settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server", choices=["auto", "moto", "seaweedfs"], default="auto")
    args = parser.parse_args(argv)

    import train
    import write_shards

    with s3_endpoint(args.server) as settings:
        store = S3ExchangeStore.from_settings(settings)
        started = time.perf_counter()
        summary = write_shards.write_dataset(store, MANIFEST, samples=args.samples, loose=64)
        print(
            f"wrote {summary['samples']} samples: {summary['loose_objects']} loose objects, "
            f"{summary['shards']} tar shards ({summary['bytes'] / 1e6:.1f} MB stored) "
            f"in {summary['seconds']} s -> manifest {MANIFEST}"
        )

        kinds = Counter(
            e["kind"] for e in store.iter_manifest_entries(MANIFEST, resolve_refs=False)
        )
        files = sum(1 for _ in store.list_manifest_files(MANIFEST, include_shards=True))
        print(f"root manifest: {dict(kinds)}; {files} files once parts and shards are expanded")

        read = sum(len(stream.read()) for stream, _ in store.iter_objects(MANIFEST))
        print(f"read back {read / 1e6:.1f} MB through iter_objects (sizes and checksums verified)")

        result = train.train(store, MANIFEST, epochs=args.epochs, num_workers=args.workers)
        print(
            f"trained {args.epochs} epochs through S3ExchangeLoader with {args.workers} workers: "
            f"{result['samples']} samples, {result['samples_per_s']} samples/s, "
            f"final accuracy {result['accuracy']:.1%}"
        )
        report = store.compact_manifest(MANIFEST, "demo/train/manifest-compact.jsonl")
        print(f"compacted the manifest into {report['total_entries']} entries")
        print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
