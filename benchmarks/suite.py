"""The benchmark suite: start SeaweedFS, generate data, run every reader in rounds, report.

Readers of one scenario run alternately (A B C, A B C, ...) so that drift on a noisy machine
hits all of them alike; each run is a fresh interpreter (:func:`benchmarks.common.run_reader`).
Only ratios of medians measured in the same run are compared with the targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import datagen, report
from benchmarks.common import (
    BUCKET,
    FULL,
    MIB,
    NODE,
    QUICK,
    ROOT,
    Sizes,
    machine_info,
    median,
    ratio,
    run_reader,
    sizes_dict,
)
from benchmarks.targets import evaluate
from s3exchange import S3ExchangeStore
from s3exchange.testing import FaultProxy, RunningServer, start_seaweedfs

SCENARIOS = (
    "shards",
    "shards_ttfb",
    "loose",
    "loose_ttfb",
    "random",
    "random_ttfb",
    "memory",
    "write",
    "manifest",
    "plan",
)

Spec = dict[str, Any]


@dataclass
class Context:
    """The running server, sizes, and data generated on first use."""

    sizes: Sizes
    ttfb_ms: float
    server: RunningServer
    store: S3ExchangeStore
    device: str = "cpu"
    """Where the readers copy every batch: ``cuda`` in GPU mode."""
    began: float = field(default_factory=time.monotonic)
    raw_get_mb_per_s: dict[bool, float | None] = field(default_factory=dict)
    """The raw whole-shard GET ceiling of this run, without and with latency (by ``latency``)."""
    _shards: datagen.ShardSet | None = None
    _loose: datagen.LooseSet | None = None
    _random: tuple[datagen.ShardSet, datagen.LooseSet] | None = None
    _proxy: FaultProxy | None = None

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f}s] {message}", file=sys.stderr, flush=True)

    def shards(self) -> datagen.ShardSet:
        if self._shards is None:
            s = self.sizes
            self.log(f"writing {s.shards} shards x {s.shard_members} x {s.member_bytes} B")
            self._shards = datagen.write_shards(
                self.store, "shards", s.shards, s.shard_members, s.member_bytes
            )
        return self._shards

    def loose(self) -> datagen.LooseSet:
        if self._loose is None:
            s = self.sizes
            self.log(f"writing {s.loose_objects} loose objects of {s.loose_bytes} B")
            self._loose = datagen.write_loose(self.store, "loose", s.loose_objects, s.loose_bytes)
        return self._loose

    def random_access(self) -> tuple[datagen.ShardSet, datagen.LooseSet]:
        if self._random is None:
            s = self.sizes
            self.log(
                f"writing {s.shards} shards x {s.shard_members} x {s.member_bytes} B, loose too"
            )
            self._random = datagen.write_random_access(
                self.store, "random", s.shards, s.shard_members, s.member_bytes
            )
        return self._random

    def base(self, latency: bool = False) -> Spec:
        """What every reader spec carries: where the server is, bucket, DataLoader layout."""
        s3 = asdict(self.server.s3)
        if latency:
            if self._proxy is None:
                port = int(self.server.endpoint_url.rsplit(":", 1)[1])
                self._proxy = FaultProxy(upstream_port=port).start()
                self._proxy.ttfb_ms = self.ttfb_ms
            s3["endpoint_url"] = self._proxy.endpoint_url
        return {
            "s3": s3,
            "bucket": BUCKET,
            "workers": self.sizes.workers,
            "batch_size": self.sizes.batch_size,
            "device": self.device,
        }

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        self.server.stop()


def alternate(ctx: Context, name: str, readers: dict[str, Spec], rounds: int) -> dict[str, Any]:
    """Run each reader ``rounds`` times, interleaved; per reader: every round and the medians."""
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in readers}
    for round_ in range(1, rounds + 1):
        for label, spec in readers.items():
            result = run_reader(spec)
            runs[label].append(result)
            ctx.log(f"{name} round {round_}/{rounds} {label}: {_brief(result)}")
    summary: dict[str, Any] = {}
    for label, results in runs.items():
        ok = [r for r in results if "error" not in r and "skipped" not in r]
        summary[label] = {
            "reader": readers[label]["reader"],
            "options": {k: v for k, v in readers[label].items() if k in _OPTION_KEYS},
            "rounds": results,
            "ok_rounds": len(ok),
            "samples_per_s": median([r["samples_per_s"] for r in ok if "samples_per_s" in r]),
            "mb_per_s": median([r["mb_per_s"] for r in ok if "mb_per_s" in r]),
            "first_batch_s": median([r["first_batch_s"] for r in ok if r.get("first_batch_s")]),
            "steady_samples_per_s": median(
                [r["steady_samples_per_s"] for r in ok if "steady_samples_per_s" in r]
            ),
            "device": next((r["device"] for r in ok if "device" in r), None),
            "error": next((r["error"] for r in results if "error" in r), None),
            "skipped": next((r["skipped"] for r in results if "skipped" in r), None),
        }
    return summary


def _brief(result: dict[str, Any]) -> str:
    """One run's headline figure for the progress log."""
    if "error" in result:
        return "error: " + str(result["error"]).strip().splitlines()[-1]
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "entries_per_s" in result:
        return f"{result['entries_per_s']:,.0f} entries/s"
    if "samples_per_s" not in result:
        return f"{result.get('elapsed_s', 0):.3f} s"
    shown = f"{result['samples_per_s']:,.0f} samples/s, {result['mb_per_s']:,.1f} MB/s"
    if "steady_samples_per_s" in result:
        shown += f" ({result['steady_samples_per_s']:,.0f} after the 1st batch)"
    if "cores" in result:
        shown += f", {result['cores']:.1f} cores"
    if result.get("node_cores"):
        shown += f" ({result['node_cores']:.1f} on the machine)"
    if "rss_growth" in result:
        shown += f", RSS +{result['rss_growth'] / MIB:.1f} MiB"
    if "waits" in result:
        shown += "; waits " + json.dumps(result["waits"], separators=(",", ":"))
    return shown


_OPTION_KEYS = {
    "shuffle",
    "workers",
    "batch_size",
    "verify",
    "io_threads",
    "data_only",
    "pack",
    "device",
}


def _metric(readers: dict[str, Any], label: str, metric: str) -> float | None:
    value = readers.get(label, {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------


def _raw_fractions(result: dict[str, Any], ceiling: float | None) -> None:
    """Each reader's MB/s as a fraction of the raw whole-shard GET ceiling (None without one)."""
    for reader in result.values():
        reader["raw_get_fraction"] = ratio(reader.get("mb_per_s"), ceiling)


def _ratios(result: dict[str, Any], pairs: dict[str, tuple[str, str, str]]) -> dict[str, Any]:
    """``{name: (reader, baseline, metric)}`` -> ``{name: reader's / baseline's median}``."""
    return {
        name: ratio(_metric(result, reader, metric), _metric(result, baseline, metric))
        for name, (reader, baseline, metric) in pairs.items()
    }


def shard_readers(ctx: Context, latency: bool) -> dict[str, Spec]:
    """The shards scenario's readers by label (also what ``benchmarks.sweep`` varies)."""
    shards = ctx.shards()
    base = ctx.base(latency)
    ours = {**base, "reader": "ours", "manifest": shards.manifest}
    in_memory = {
        **base,
        "reader": "dataloader_only",
        "samples": shards.samples,
        "sample_bytes": shards.member_bytes,
    }
    readers = {
        "ours": ours,
        "ours_no_shuffle": {**ours, "shuffle": False},
        "ours_default": {**ours, "collate": "default"},
        "loader": {**ours, "reader": "loader"},
        "webdataset": {**base, "reader": "webdataset", "archive_keys": shards.archive_keys},
        "webdataset_shuffled": {
            **base,
            "reader": "webdataset",
            "archive_keys": shards.archive_keys,
            "wds_shuffle": 1000,
        },
        "raw_get": {
            **base,
            "reader": "raw_shards",
            "archive_keys": shards.archive_keys,
            "members": shards.members,
        },
        # the DataLoader's own ceilings: no S3, so the same with or without latency
        "dataloader_only": in_memory,
        "dataloader_only_packed": {**in_memory, "pack": True},
    }
    if latency:
        for label in (
            "ours_no_shuffle",
            "webdataset_shuffled",
            "dataloader_only",
            "dataloader_only_packed",
        ):
            del readers[label]
    return readers


def scenario_shards(ctx: Context, latency: bool) -> dict[str, Any]:
    shards = ctx.shards()
    readers = shard_readers(ctx, latency)
    name = "shards_ttfb" if latency else "shards"
    result = alternate(ctx, name, readers, ctx.sizes.rounds)
    ctx.raw_get_mb_per_s[latency] = _metric(result, "raw_get", "mb_per_s")
    _raw_fractions(result, ctx.raw_get_mb_per_s[latency])
    pairs: dict[str, tuple[str, str, str]] = {}
    for reader in ("ours", "ours_no_shuffle", "ours_default", "loader"):
        if reader in readers:
            pairs[f"{reader}_vs_webdataset_samples"] = (reader, "webdataset", "samples_per_s")
            pairs[f"{reader}_vs_raw_bytes"] = (reader, "raw_get", "mb_per_s")
    if not latency:
        for reader in ("ours", "ours_default", "loader", "webdataset"):
            pairs[f"{reader}_vs_dataloader_only_samples"] = (
                reader,
                "dataloader_only",
                "samples_per_s",
            )
        pairs["loader_vs_dataloader_only_packed_samples"] = (
            "loader",
            "dataloader_only_packed",
            "samples_per_s",
        )
    for reader in ("ours", "ours_default", "loader"):
        pairs[f"{reader}_vs_webdataset_first_batch"] = (reader, "webdataset", "first_batch_s")
    if "webdataset_shuffled" in readers:  # both shuffling samples through a 1,000 buffer
        for label, metric in (("samples", "samples_per_s"), ("first_batch", "first_batch_s")):
            pairs[f"ours_default_vs_webdataset_shuffled_{label}"] = (
                "ours_default",
                "webdataset_shuffled",
                metric,
            )
    return {
        "params": {
            "shards": len(shards.archive_keys),
            "members": shards.members,
            "member_bytes": shards.member_bytes,
            "archive_bytes": shards.archive_bytes,
            "ttfb_ms": ctx.ttfb_ms if latency else 0,
        },
        "readers": result,
        "ratios": _ratios(result, pairs),
        "baseline": "webdataset",
        "notes": [
            f"DataLoader readers: {ctx.sizes.workers} workers (fork), batch_size "
            f"{ctx.sizes.batch_size}, a collate that lists the samples; device {ctx.device}",
            "ours: S3ExchangeIterableDataset defaults (shuffle=True, shuffle_buffer=1000, "
            "members verified against their crc32c) in a DataLoader with a list collate; "
            "ours_no_shuffle: the same, shuffle=False; ours_default: a plain "
            "DataLoader(dataset, batch_size, num_workers), no collate_fn (default_collate "
            "packs our Sample batches into reused shared-memory slabs)",
            "loader: S3ExchangeLoader(dataset, batch_size, num_workers, device, "
            "prefetch_batches=2) over the same dataset; batches are PackedBatch",
            "webdataset 1.0.2: WebDataset(s3:// URLs, shardshuffle=False) with a gopen_schemes "
            "handler returning the boto3 StreamingBody; no shuffle, no checksum; "
            "webdataset_shuffled adds .shuffle(1000) (initial 100), as its training examples "
            "do and as ours shuffles by default",
            "raw_get: each worker GETs whole shards and reads them to the end; MB/s counts "
            "archive bytes (tar headers included), the others count member bytes; "
            "raw_get_fraction is each reader's MB/s over raw_get's",
            "dataloader_only(_packed): no S3 at all; the workers yield ready-made samples of "
            "the same size, listed (or pack_bytes) by the collate: the DataLoader's own "
            "ceilings for handing bytes to the main process (run without latency only)",
            "first_batch_s: from the reader's start (after imports) to the first batch in hand",
        ],
    }


def loose_readers(ctx: Context, latency: bool) -> dict[str, Spec]:
    """The loose scenario's readers by label (also what ``benchmarks.sweep`` varies)."""
    loose = ctx.loose()
    base = ctx.base(latency)
    where = {"prefix": loose.prefix, "count": loose.count}
    ours = {**base, "reader": "ours", "manifest": loose.manifest}
    return {
        "ours": ours,
        "ours_default": {**ours, "collate": "default"},
        "loader": {**ours, "reader": "loader"},
        "sequential": {**base, "reader": "sequential_gets", **where},
        "s3torchconnector": {**base, "reader": "s3torchconnector", **where},
    }


def scenario_loose(ctx: Context, latency: bool) -> dict[str, Any]:
    loose = ctx.loose()
    readers = loose_readers(ctx, latency)
    name = "loose_ttfb" if latency else "loose"
    rounds = ctx.sizes.slow_rounds if latency else ctx.sizes.rounds
    result = alternate(ctx, name, readers, rounds)
    _raw_fractions(result, ctx.raw_get_mb_per_s.get(latency))
    pairs: dict[str, tuple[str, str, str]] = {}
    for reader in ("ours", "ours_default", "loader"):
        for baseline in ("sequential", "s3torchconnector"):
            pairs[f"{reader}_vs_{baseline}_samples"] = (reader, baseline, "samples_per_s")
        pairs[f"{reader}_vs_s3torchconnector_first_batch"] = (
            reader,
            "s3torchconnector",
            "first_batch_s",
        )
    ratios = _ratios(result, pairs)
    return {
        "params": {
            "objects": loose.count,
            "object_bytes": loose.object_bytes,
            "ttfb_ms": ctx.ttfb_ms if latency else 0,
        },
        "readers": result,
        "ratios": ratios,
        "baseline": "sequential",
        "notes": [
            f"DataLoader readers: {ctx.sizes.workers} workers (fork), batch_size "
            f"{ctx.sizes.batch_size}; device {ctx.device}",
            "ours: defaults (shuffle=True, which for loose files only is the plan's file order "
            "without a sample buffer; io_threads=16; sha256 verified against the manifest) "
            "with a list collate; ours_default: a plain DataLoader (default_collate packs the "
            "samples, what the README teaches); loader: S3ExchangeLoader over the same dataset",
            "sequential: each worker GETs its keys one by one with boto3 (keys known up front)",
            "s3torchconnector: S3IterableDataset.from_objects(endpoint=..., "
            "S3ClientConfig(force_path_style=True), enable_sharding=True), dummy credentials "
            "from AWS_* variables",
            "raw_get_fraction: MB/s over the raw whole-shard GET ceiling of the shards scenario "
            "of the same run (with the same latency), when it ran",
        ],
    }


def random_readers(ctx: Context, latency: bool) -> dict[str, Spec]:
    """The random scenario's readers by label (also what ``benchmarks.sweep`` varies)."""
    shards, loose = ctx.random_access()
    base = ctx.base(latency)
    ours = {**base, "reader": "map_ours", "manifest": shards.manifest}
    peer = {**base, "reader": "map_s3torchconnector", "prefix": loose.prefix, "count": loose.count}
    return {
        "map_ours": ours,
        "map_s3torchconnector": peer,
        "map_ours_8w": {**ours, "workers": 8},
        "map_s3torchconnector_8w": {**peer, "workers": 8},
        "stream_ours": {**base, "reader": "ours", "manifest": shards.manifest},
        "whole_shards": {
            **base,
            "reader": "raw_shards",
            "archive_keys": shards.archive_keys,
            "members": shards.members,
        },
    }


def scenario_random(ctx: Context, latency: bool) -> dict[str, Any]:
    """Every sample once, in a random order, through map-style datasets (issue 15)."""
    shards, _ = ctx.random_access()
    readers = random_readers(ctx, latency)
    name = "random_ttfb" if latency else "random"
    rounds = ctx.sizes.slow_rounds if latency else ctx.sizes.rounds
    result = alternate(ctx, name, readers, rounds)
    pairs = {
        "map_ours_vs_s3torchconnector_samples": (
            "map_ours",
            "map_s3torchconnector",
            "samples_per_s",
        ),
        "map_ours_vs_s3torchconnector_8w_samples": (
            "map_ours_8w",
            "map_s3torchconnector_8w",
            "samples_per_s",
        ),
        "map_ours_vs_stream_ours_samples": ("map_ours", "stream_ours", "samples_per_s"),
        "map_ours_8w_vs_stream_ours_samples": ("map_ours_8w", "stream_ours", "samples_per_s"),
        "map_ours_vs_whole_shards_samples": ("map_ours", "whole_shards", "samples_per_s"),
    }
    return {
        "params": {
            "shards": len(shards.archive_keys),
            "members": shards.members,
            "member_bytes": shards.member_bytes,
            "ttfb_ms": ctx.ttfb_ms if latency else 0,
        },
        "readers": result,
        "ratios": _ratios(result, pairs),
        "baseline": "map_s3torchconnector",
        "notes": [
            f"every sample once in a seeded random order (DataLoader shuffle=True), batch_size "
            f"{ctx.sizes.batch_size}, {ctx.sizes.workers} workers (fork) or 8 (_8w), a list "
            f"collate; device {ctx.device}",
            "map_ours: S3ExchangeMapDataset over the shards (index read at construction, one "
            "ranged GET per member or per run of close members, a batch's GETs on 16 threads, "
            "crc32c checked)",
            "map_s3torchconnector: S3MapDataset.from_objects over the same samples stored as "
            "loose objects (AWS CRT client, one GET per item, a batch fetched item by item)",
            "stream_ours: S3ExchangeIterableDataset over the same shards (sequential streaming, "
            "shuffle buffer); whole_shards: each worker GETs whole shards (the cost of reading "
            "a sample by downloading its shard, as litData's chunks do)",
        ],
    }


def scenario_memory(ctx: Context) -> dict[str, Any]:
    base = ctx.base()
    sizes: dict[str, Any] = {}
    growth: dict[int, float | None] = {}
    member = ctx.sizes.memory_member_bytes
    for total in ctx.sizes.memory_shard_bytes:
        label = f"{total // MIB}MiB"
        ctx.log(f"writing one {label} shard of {member} B members")
        key = f"memory/{label}.tar"
        entry = datagen.write_big_shard(ctx.store, key, total, member)
        manifest = ctx.store.write_manifest(f"memory/{label}.jsonl", [entry])
        readers = {
            "ours": {**base, "reader": "memory_ours", "manifest": manifest},
            "webdataset": {**base, "reader": "memory_webdataset", "archive_keys": [key]},
        }
        result = alternate(ctx, f"memory {label}", readers, 1)
        for reader in result.values():
            ok = [r for r in reader["rounds"] if "rss_growth" in r]
            reader["rss_growth"] = max((r["rss_growth"] for r in ok), default=None)
        sizes[label] = {"shard_bytes": entry.get("size_bytes"), "readers": result}
        growth[total] = result["ours"]["rss_growth"]
        ctx.store.delete_key(key)
    small, large = min(growth), max(growth)
    return {
        "params": {"member_bytes": member, "shard_bytes": list(growth)},
        "sizes": sizes,
        "rss_growth_small": growth[small],
        "rss_growth_large": growth[large],
        "notes": [
            "one process, no DataLoader workers, shuffle=False (the shuffle buffer holds "
            "shuffle_buffer samples by design); RSS sampled every 2 ms plus ru_maxrss",
        ],
    }


def scenario_write(ctx: Context) -> dict[str, Any]:
    base = ctx.base()
    spec = {"total_bytes": ctx.sizes.write_bytes, "member_bytes": ctx.sizes.write_member_bytes}
    readers = {
        "ours": {**base, "reader": "write_ours", **spec},
        "raw_multipart": {**base, "reader": "write_raw", **spec},
    }
    result = alternate(ctx, "write", readers, ctx.sizes.rounds)
    return {
        "params": spec,
        "readers": result,
        "ratios": {
            "ours_vs_raw_bytes": ratio(
                _metric(result, "ours", "mb_per_s"), _metric(result, "raw_multipart", "mb_per_s")
            )
        },
        "baseline": "raw_multipart",
        "notes": [
            "ours: store.put_shard_archive of in-memory members (checksum pre-pass, tar, "
            "multipart with the store's part size and 2 parts in flight)",
            "raw_multipart: the same archive bytes, built before timing, uploaded with "
            "create/upload_part x N (2 threads)/complete",
        ],
    }


def scenario_manifest(ctx: Context) -> dict[str, Any]:
    count = ctx.sizes.manifest_entries
    ctx.log(f"writing a manifest of {count:,} file entries")
    size = datagen.write_big_manifest(ctx.store, "scale/manifest.jsonl", count)
    spec = {**ctx.base(), "reader": "manifest_iter", "manifest": "scale/manifest.jsonl"}
    result = alternate(ctx, "manifest", {"iter_manifest_entries": spec}, ctx.sizes.slow_rounds)
    runs = [r for r in result["iter_manifest_entries"]["rounds"] if "entries_per_s" in r]
    return {
        "params": {"entries": count, "manifest_bytes": size},
        "readers": result,
        "entries_per_s": median([r["entries_per_s"] for r in runs]),
        "rss_growth": max((r["rss_growth"] for r in runs), default=None),
    }


def scenario_plan(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    spec = {
        "reader": "plan",
        "shards": s.plan_shards,
        "ranks": s.plan_ranks,
        "workers": s.plan_workers,
    }
    result = alternate(ctx, "plan", {"epoch_plan": spec}, ctx.sizes.slow_rounds)
    runs = [r for r in result["epoch_plan"]["rounds"] if "elapsed_s" in r]
    return {
        "params": {"shards": s.plan_shards, "ranks": s.plan_ranks, "workers": s.plan_workers},
        "readers": result,
        "elapsed_s": median([r["elapsed_s"] for r in runs]),
        "build_s": median([r["build_s"] for r in runs]),
        "notes": ["shuffle=True, balance='pad'; segments() of every (rank, worker) pair"],
    }


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "shards": lambda ctx: scenario_shards(ctx, latency=False),
    "shards_ttfb": lambda ctx: scenario_shards(ctx, latency=True),
    "loose": lambda ctx: scenario_loose(ctx, latency=False),
    "loose_ttfb": lambda ctx: scenario_loose(ctx, latency=True),
    "random": lambda ctx: scenario_random(ctx, latency=False),
    "random_ttfb": lambda ctx: scenario_random(ctx, latency=True),
    "memory": scenario_memory,
    "write": scenario_write,
    "manifest": scenario_manifest,
    "plan": scenario_plan,
}


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="s3exchange vs webdataset, raw boto3 and s3torchconnector on SeaweedFS",
    )
    size_group = parser.add_mutually_exclusive_group()
    size_group.add_argument("--quick", action="store_true", help="tiny sizes, one round (< 90 s)")
    size_group.add_argument(
        "--node",
        action="store_true",
        help="sizes for a 16-core GPU node at 12 workers: 96 shards, batch 64, 3 rounds",
    )
    parser.add_argument(
        "--ttfb-ms", type=float, default=30.0, help="latency added by the proxy (_ttfb scenarios)"
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated scenarios to run, of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="worker processes of every DataLoader / loader reader (default 2); the GPU-node "
        "targets are judged from 12",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="GPU mode: copy every batch to this device in the main process; auto: cuda when "
        "torch.cuda.is_available(), else cpu",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = [name for name in SCENARIOS if not chosen or name in chosen]
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    cuda = _cuda_available()
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine")
    args.device_used = "cuda" if cuda and args.device != "cpu" else "cpu"
    return args


def _cuda_available() -> bool:
    import torch  # here only: the suite itself needs torch for nothing else

    return bool(torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = QUICK if args.quick else NODE if args.node else FULL
    sizes = Sizes(**{**sizes_dict(chosen), "workers": args.workers})
    if args.rounds:
        sizes = Sizes(**{**sizes_dict(sizes), "rounds": args.rounds, "slow_rounds": args.rounds})
    began = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    server = start_seaweedfs()
    client = server.s3.client(max_pool_connections=32)
    datagen.ensure_bucket(client, BUCKET)
    store = S3ExchangeStore(client, BUCKET)
    ctx = Context(sizes, args.ttfb_ms, server, store, device=args.device_used, began=began)
    ctx.log(f"SeaweedFS up at {server.endpoint_url} in {server.started_in_s:.1f} s")
    ctx.log(f"{sizes.workers} workers per reader; batches copied to: {ctx.device}")
    scenarios: dict[str, Any] = {}
    try:
        for name in args.scenarios:
            scenario_began = time.monotonic()
            scenarios[name] = RUNNERS[name](ctx)
            scenarios[name]["duration_s"] = round(time.monotonic() - scenario_began, 1)
    finally:
        ctx.close()
    results = {
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "node": args.node,
        "ttfb_ms": args.ttfb_ms,
        "workers": sizes.workers,
        "device": {"requested": args.device, "used": args.device_used},
        "started_at": started_at,
        "duration_s": round(time.monotonic() - began, 1),
        "machine": machine_info(),
        "server": {"kind": "seaweedfs", "started_in_s": round(server.started_in_s, 2)},
        "sizes": sizes_dict(sizes),
        "scenarios": scenarios,
        "targets": evaluate(scenarios, workers=sizes.workers),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(report.table(results))
    try:
        report.chart(results, args.out / "latest.png")
    except ImportError:  # a GPU node's offline bundle has no matplotlib: the table suffices
        ctx.log(f"wrote {args.out / 'latest.json'} (no matplotlib: no chart)")
    else:
        ctx.log(f"wrote {args.out / 'latest.json'} and {args.out / 'latest.png'}")
    return 0
