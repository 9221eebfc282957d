"""Readers with options varied, in interleaved rounds: which setting moves a figure, how much.

``python -m benchmarks.sweep --scenario shards --workers 12 --node raw_get loader
'loader prefetch_shards=0' 'loader switch_interval=0.02'``

Each variant is a reader of the scenario, labelled as in the suite (shards: ours,
ours_default, loader, webdataset, raw_get, ...; loose: ours, ours_default, loader, sequential,
s3torchconnector; random: map_ours, map_s3torchconnector, their ``_8w``, stream_ours, ...)
followed by ``key=value`` spec overrides (values parsed as JSON where they parse). Prints one
line per round and a table of medians (samples/s, MB/s, CPU cores busy, time to first batch);
writes ``sweep.json`` to ``--out``. ``--ttfb-ms`` puts the suite's latency proxy in front of
the server, as its ``*_ttfb`` scenarios do (readers that touch no S3 are left out there).
Made to diagnose the GPU node's figures in one short device call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import datagen
from benchmarks.common import (
    BUCKET,
    FULL,
    NODE,
    QUICK,
    ROOT,
    Sizes,
    median,
    sizes_dict,
    spec_overrides,
)
from benchmarks.suite import (
    Context,
    Spec,
    alternate,
    loose_readers,
    random_readers,
    shard_readers,
)
from s3exchange import S3ExchangeStore
from s3exchange.testing import start_seaweedfs


def variants(readers: dict[str, Spec], wanted: list[str]) -> dict[str, Spec]:
    """``"reader key=value ..."`` -> that reader's spec with the overrides, labelled as given."""
    out: dict[str, Spec] = {}
    for text in wanted:
        name, *settings = text.split()
        if name not in readers:
            raise SystemExit(f"unknown reader {name!r}; choose from {', '.join(readers)}")
        out[text] = {**readers[name], **spec_overrides(settings)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__)
    parser.add_argument("variants", nargs="+", help="'reader key=value ...'")
    parser.add_argument("--scenario", choices=("shards", "loose", "random"), default="shards")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--ttfb-ms", type=float, default=0.0, help="first-byte latency added by a proxy [0: none]"
    )
    sizes_group = parser.add_mutually_exclusive_group()
    sizes_group.add_argument("--quick", action="store_true")
    sizes_group.add_argument("--node", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    chosen = QUICK if args.quick else NODE if args.node else FULL
    sizes = Sizes(**{**sizes_dict(chosen), "workers": args.workers})
    began = time.monotonic()
    server = start_seaweedfs()
    client = server.s3.client(max_pool_connections=32)
    datagen.ensure_bucket(client, BUCKET)
    import torch  # here only: where batches go

    device = "cuda" if torch.cuda.is_available() else "cpu"
    store = S3ExchangeStore(client, BUCKET)
    ctx = Context(sizes, args.ttfb_ms, server, store, device, began=began)
    ctx.log(f"{sizes.workers} workers per reader; batches copied to: {device}")
    try:
        readers = {"shards": shard_readers, "loose": loose_readers, "random": random_readers}[
            args.scenario
        ]
        specs = variants(readers(ctx, args.ttfb_ms > 0), args.variants)
        result = alternate(ctx, args.scenario, specs, args.rounds)
    finally:
        ctx.close()
    print(
        f"{'variant':44s} {'samples/s':>10s} {'steady/s':>9s} {'MB/s':>8s} {'cores':>6s} "
        f"{'machine':>7s} {'faults/MB':>9s} {'1st batch s':>11s} {'setup s':>7s}"
    )
    for label, reader in result.items():
        ok = [r for r in reader["rounds"] if "cores" in r]
        cores = median([r["cores"] for r in ok])
        machine = median([r["node_cores"] for r in ok if "node_cores" in r])
        faults = median([r["minor_faults"] / (r["bytes"] / 1e6) for r in ok if r["bytes"]])
        setup = median([r["setup_s"] for r in ok if "setup_s" in r])
        print(
            f"{label:44s} {reader['samples_per_s'] or 0:10,.0f} "
            f"{reader['steady_samples_per_s'] or 0:9,.0f} {reader['mb_per_s'] or 0:8,.1f} "
            f"{cores or 0:6.1f} {machine or 0:7.1f} {faults or 0:9.1f} "
            f"{reader['first_batch_s'] or 0:11.3f} {setup or 0:7.3f}"
            + (f"  error: {reader['error'].splitlines()[-1]}" if reader.get("error") else "")
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
