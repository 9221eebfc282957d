"""A/B experiments behind the profiling suggestions: variants of our reader, run alternately.

``python benchmarks/experiments.py NAME [--rounds 5] [--epochs 3] [--quick] [--ttfb-ms 30]``

Every variant of a set is a reader spec (an option of the dataset, a proposed patch from
:mod:`benchmarks.patches`, or a reference reader); all run in rounds A B C ..., each in a fresh
process, and the table gives the median samples/s and its ratio to the set's first variant.
Results go to ``<out>/experiments-NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from benchmarks import datagen  # noqa: E402
from benchmarks.common import BUCKET, FULL, QUICK, ROOT, median, run_reader  # noqa: E402
from s3exchange import S3ExchangeStore  # noqa: E402
from s3exchange.testing import FaultProxy, start_seaweedfs  # noqa: E402

Variants = dict[str, dict[str, Any]]

SHARDS: Variants = {
    "default": {},
    "shuffle=False": {"shuffle": False},
    "shuffle_buffer=100": {"shuffle_buffer": 100},
    "verify=False": {"verify": False},
    "transform drops entry": {"data_only": True},
    "transform to uint8 tensor": {"tensor": True},
    "patch warm_session": {"patches": ["warm_session"]},
    "webdataset": {"reader": "webdataset"},
    "DataLoader only (no S3)": {"reader": "dataloader_only"},
}
SHARDS_NO_SHUFFLE: Variants = {
    "shuffle=False": {"shuffle": False},
    "+ verify=False": {"shuffle": False, "verify": False},
    "+ drops entry": {"shuffle": False, "data_only": True},
    "+ warm_session": {"shuffle": False, "patches": ["warm_session"]},
    "+ prefetch_shards=0": {"shuffle": False, "prefetch_shards": 0},
    "+ prefetch_shards=4": {"shuffle": False, "prefetch_shards": 4},
    "+ batch_size=None": {"shuffle": False, "batch_size": None},
    "webdataset": {"reader": "webdataset"},
}
LOOSE: Variants = {
    "default": {},
    "botocore's default pool (10)": {"pool": 10},
    "io_threads=4": {"io_threads": 4},
    "io_threads=8": {"io_threads": 8},
    "io_threads=32": {"io_threads": 32},
    "verify=False": {"verify": False},
    "shuffle=False": {"shuffle": False},
    "patch warm_session": {"patches": ["warm_session"]},
    "patch presigned_get": {"patches": ["presigned_get"]},
    "both patches": {"patches": ["warm_session", "presigned_get"]},
    "sequential": {"reader": "sequential_gets"},
    "s3torchconnector": {"reader": "s3torchconnector"},
}
LOOSE_TTFB: Variants = {
    "default": {},
    "botocore's default pool (10)": {"pool": 10},
    "io_threads=32": {"io_threads": 32},
    "io_threads=64": {"io_threads": 64},
    "patch warm_session": {"patches": ["warm_session"]},
    "patch presigned_get": {"patches": ["presigned_get"]},
    "both patches": {"patches": ["warm_session", "presigned_get"]},
    "both patches, io_threads=64": {"io_threads": 64, "patches": ["warm_session", "presigned_get"]},
}
SHARDS_TTFB: Variants = {
    "default": {},
    "shuffle=False": {"shuffle": False},
    "shuffle=False, prefetch_shards=0": {"shuffle": False, "prefetch_shards": 0},
    "shuffle=False, prefetch_shards=1": {"shuffle": False, "prefetch_shards": 1},
    "shuffle=False, warm_session": {"shuffle": False, "patches": ["warm_session"]},
    "webdataset": {"reader": "webdataset"},
    "raw GET": {"reader": "raw_shards"},
}
SHARDS_PROPOSED: Variants = {
    "default": {},
    "patch warm_session": {"patches": ["warm_session"]},
    "packed batches": {"pack": True},
    "warm_session + packed": {"patches": ["warm_session"], "pack": True},
    "webdataset": {"reader": "webdataset"},
    "raw GET": {"reader": "raw_shards"},
    "DataLoader only (no S3)": {"reader": "dataloader_only"},
    "DataLoader only, packed": {"reader": "dataloader_only", "pack": True},
}
SETS: dict[str, tuple[str, Variants]] = {
    "shards_proposed": ("shards", SHARDS_PROPOSED),
    "shards": ("shards", SHARDS),
    "shards_ttfb": ("shards", SHARDS_TTFB),
    "shards_no_shuffle": ("shards", SHARDS_NO_SHUFFLE),
    "loose": ("loose", LOOSE),
    "loose_ttfb": ("loose", LOOSE_TTFB),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/experiments.py", description=__doc__)
    parser.add_argument("name", choices=sorted(SETS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--epochs", type=int, default=3, help="passes over the data per measurement (>1 s each)"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ttfb-ms", type=float, default=30.0, help="for the *_ttfb sets")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    kind, variants = SETS[args.name]
    sizes = QUICK if args.quick else FULL
    began = time.monotonic()
    server = start_seaweedfs()
    proxy: FaultProxy | None = None
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
    try:
        client = server.s3.client(max_pool_connections=32)
        datagen.ensure_bucket(client, BUCKET)
        store = S3ExchangeStore(client, BUCKET)
        s3 = asdict(server.s3)
        if args.name.endswith("_ttfb"):
            proxy = FaultProxy(upstream_port=int(server.endpoint_url.rsplit(":", 1)[1])).start()
            proxy.ttfb_ms = args.ttfb_ms
            s3["endpoint_url"] = proxy.endpoint_url
        base: dict[str, Any] = {
            "reader": "ours",
            "s3": s3,
            "bucket": BUCKET,
            "workers": sizes.workers,
            "batch_size": sizes.batch_size,
            "epochs": args.epochs,
        }
        if kind == "shards":
            shards = datagen.write_shards(
                store, "shards", sizes.shards, sizes.shard_members, sizes.member_bytes
            )
            base |= {
                "manifest": shards.manifest,
                "archive_keys": shards.archive_keys,
                "samples": shards.samples,
                "sample_bytes": shards.member_bytes,
                "members": shards.members,
            }
        else:
            loose = datagen.write_loose(store, "loose", sizes.loose_objects, sizes.loose_bytes)
            base |= {"manifest": loose.manifest, "prefix": loose.prefix, "count": loose.count}
        for round_ in range(1, args.rounds + 1):
            for label, overrides in variants.items():
                result = run_reader({**base, **overrides})
                runs[label].append(result)
                shown = result.get("error") or f"{result['samples_per_s']:,.0f} samples/s"
                print(f"[{time.monotonic() - began:6.1f}s] round {round_} {label}: {shown}")
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
    medians = {
        label: median([r["samples_per_s"] for r in results if "samples_per_s" in r])
        for label, results in runs.items()
    }
    first = medians[next(iter(variants))]
    print(f"\n{args.name}: median samples/s over {args.rounds} rounds, ratio to the first row")
    for label, value in medians.items():
        shown = "error" if value is None else f"{value:9,.0f}"
        rel = "" if value is None or not first else f"{value / first:6.2f}x"
        print(f"  {label:28s} {shown}  {rel}")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "name": args.name,
        "rounds": args.rounds,
        "quick": args.quick,
        "variants": variants,
        "medians_samples_per_s": medians,
        "ratio_to_first": {
            label: (None if value is None or not first else value / first)
            for label, value in medians.items()
        },
        "runs": runs,
    }
    path = args.out / f"experiments-{args.name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
