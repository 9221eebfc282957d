"""A real ``torchrun --nproc-per-node 2`` run (gloo on 127.0.0.1) over a moto-served manifest."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from s3exchange import S3ExchangeStore
from s3exchange.testing import LOOPBACK, RunningServer

SCRIPT = Path(__file__).parent / "torch_scripts" / "torchrun_ids.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@pytest.mark.multiprocess
def test_torchrun_ranks_cover_the_manifest_with_equal_padded_counts(
    moto_server: RunningServer, store: S3ExchangeStore, tmp_path: Path
) -> None:
    ids: list[str] = []
    entries = []
    for s, count in enumerate((6, 5)):
        members = [f"s{s}-{m}" for m in range(count)]
        items = [{"source": m.encode(), "member_path": f"{m}.bin", "id": m} for m in members]
        entries.append(store.put_shard_archive(f"shards/{s}.tar", items).entry)  # type: ignore[arg-type]
        ids += members
    for i in range(4):
        entries.append(store.put_object(f"loose/{i}.bin", b"x", id=f"loose-{i}"))  # type: ignore[arg-type]
        ids.append(f"loose-{i}")
    store.write_manifest("train/manifest.jsonl", entries)  # 15 samples: rank 1 pads one

    env = {
        **os.environ,
        **moto_server.s3.env(),
        "S3EXCHANGE_BUCKET": store.bucket,
        "NO_PROXY": LOOPBACK,
        "OMP_NUM_THREADS": "1",
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        LOOPBACK,
        "--master-port",
        str(free_port()),
        str(SCRIPT),
        str(tmp_path),
        "train/manifest.jsonl",
    ]
    result = subprocess.run(
        command, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    per_rank = math.ceil(len(ids) / 2)
    for rank, record in enumerate(records):
        assert (record["rank"], record["world_size"]) == (rank, 2)
        assert (record["dataset_rank"], record["dataset_world_size"]) == (rank, 2)
        assert record["len"] == len(record["ids"]) == per_rank
        assert record["all_counts"] == [per_rank, per_rank]
    seen = records[0]["ids"] + records[1]["ids"]
    assert set(seen) == set(ids)
    assert len(seen) - len(set(seen)) == 1  # "pad" repeats one sample to even out 15 over 2
