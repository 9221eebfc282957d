"""The suite's targets: what each measured figure is compared with, and PASS/FAIL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from benchmarks.common import MIB


@dataclass(frozen=True)
class Target:
    """``measured op threshold`` must hold, e.g. ``ours/webdataset samples/s >= 1.5``."""

    name: str
    scenario: str
    op: Literal[">=", "<", ">"]
    threshold: float
    unit: str
    description: str

    def check(self, measured: float | None) -> bool | None:
        if measured is None:
            return None
        if self.op == ">=":
            return measured >= self.threshold
        if self.op == ">":
            return measured > self.threshold
        return measured < self.threshold

    def margin(self, measured: float | None) -> float | None:
        """How far past the threshold, as a factor: > 1 passes, whatever the direction."""
        if measured is None or measured <= 0:
            return None
        if self.op == "<":
            return self.threshold / measured
        return measured / self.threshold


TARGETS = (
    Target(
        "shards_vs_webdataset", "shards", ">=", 1.5, "x",
        "tar shards: ours (defaults) / webdataset, samples/s",
    ),
    Target(
        "shards_vs_raw_get", "shards", ">=", 0.6, "x",
        "tar shards: ours (defaults) / raw whole-shard GETs, MB/s",
    ),
    Target(
        "shards_ttfb_vs_webdataset", "shards_ttfb", ">=", 1.5, "x",
        "tar shards, +TTFB: ours (defaults) / webdataset, samples/s",
    ),
    Target(
        "loose_ttfb_vs_sequential", "loose_ttfb", ">=", 10.0, "x",
        "16 KiB objects, +TTFB: ours / sequential GET loop, samples/s",
    ),
    Target(
        "loose_vs_sequential", "loose", ">=", 1.5, "x",
        "16 KiB objects: ours / sequential GET loop, samples/s",
    ),
    Target(
        "loose_vs_s3torchconnector", "loose", ">", 1.0, "x",
        "16 KiB objects: ours / s3torchconnector, samples/s",
    ),
    Target(
        "loose_ttfb_vs_s3torchconnector", "loose_ttfb", ">", 1.0, "x",
        "16 KiB objects, +TTFB: ours / s3torchconnector, samples/s",
    ),
    Target(
        "memory_1gib_rss", "memory", "<", 64.0, "MiB",
        "peak RSS growth streaming a 1 GiB shard through ours",
    ),
    Target(
        "write_vs_raw_multipart", "write", ">=", 0.8, "x",
        "put_shard_archive / raw boto3 multipart, MB/s",
    ),
    Target(
        "manifest_entries_per_s", "manifest", ">=", 300_000.0, "entries/s",
        "iter_manifest_entries over a 1M-entry manifest from the server",
    ),
    Target(
        "plan_seconds", "plan", "<", 2.0, "s",
        "EpochPlan for 100k shards, all 4096 ranks x 16 workers' segments",
    ),
)  # fmt: skip


def measured_values(scenarios: dict[str, Any]) -> dict[str, float | None]:
    """The figure each target is judged on, from the scenarios' results (None if not run)."""

    def pick(scenario: str, *path: str) -> float | None:
        node: Any = scenarios.get(scenario)
        for part in path:
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return float(node) if isinstance(node, int | float) else None

    memory = pick("memory", "rss_growth_large")
    return {
        "shards_vs_webdataset": pick("shards", "ratios", "ours_vs_webdataset_samples"),
        "shards_vs_raw_get": pick("shards", "ratios", "ours_vs_raw_bytes"),
        "shards_ttfb_vs_webdataset": pick("shards_ttfb", "ratios", "ours_vs_webdataset_samples"),
        "loose_ttfb_vs_sequential": pick("loose_ttfb", "ratios", "ours_vs_sequential_samples"),
        "loose_vs_sequential": pick("loose", "ratios", "ours_vs_sequential_samples"),
        "loose_vs_s3torchconnector": pick("loose", "ratios", "ours_vs_s3torchconnector_samples"),
        "loose_ttfb_vs_s3torchconnector": pick(
            "loose_ttfb", "ratios", "ours_vs_s3torchconnector_samples"
        ),
        "memory_1gib_rss": None if memory is None else memory / MIB,
        "write_vs_raw_multipart": pick("write", "ratios", "ours_vs_raw_bytes"),
        "manifest_entries_per_s": pick("manifest", "entries_per_s"),
        "plan_seconds": pick("plan", "elapsed_s"),
    }


def evaluate(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: measured value, threshold, PASS/FAIL (None when not measured)."""
    values = measured_values(scenarios)
    rows = []
    for target in TARGETS:
        measured = values[target.name]
        passed = target.check(measured)
        rows.append(
            {
                "name": target.name,
                "scenario": target.scenario,
                "description": target.description,
                "measured": measured,
                "op": target.op,
                "threshold": target.threshold,
                "unit": target.unit,
                "margin": target.margin(measured),
                "status": "n/a" if passed is None else ("PASS" if passed else "FAIL"),
            }
        )
    return rows
