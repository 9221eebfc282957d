"""The examples run as a user runs them: the demo (main job) and train.py under torchrun."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("S3EXCHANGE_", "AWS_"))}


@pytest.mark.multiprocess
def test_demo_runs_end_to_end_on_an_embedded_server() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "demo.py"),
            "--samples",
            "1024",
            "--epochs",
            "2",
            "--workers",
            "1",
            "--server",
            "moto",
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "embedded moto S3 server at http://127.0.0.1:" in out
    assert "wrote 1024 samples: 64 loose objects, 2 tar shards" in out
    assert "1024 files once parts and shards are expanded" in out
    assert re.search(r"trained 2 epochs .* 2048 samples", out), out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.multiprocess
def test_train_example_under_torchrun_splits_the_epoch_between_ranks(
    s3_server: Any, bucket: str, store: Any
) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import write_shards
    finally:
        sys.path.remove(str(EXAMPLES))
    write_shards.write_dataset(store, "d/manifest.jsonl", samples=600, loose=25, shard_entries=100)
    env = {**_clean_env(), **s3_server.s3.env(), "S3EXCHANGE_BUCKET": bucket}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(_free_port()),
            str(EXAMPLES / "train.py"),
            "--manifest",
            "d/manifest.jsonl",
            "--epochs",
            "1",
            "--workers",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"[rank {rank}] epoch 0: 300 samples on this rank" in done.stdout, done.stdout
