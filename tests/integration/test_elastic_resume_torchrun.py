"""A real ``torchrun`` job of 2 ranks (gloo on 127.0.0.1) saves mid-epoch; 3 ranks resume it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from s3exchange import S3ExchangeStore
from s3exchange.testing import LOOPBACK, RunningServer

SCRIPT = Path(__file__).parent / "torch_scripts" / "torchrun_elastic.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def torchrun(env: dict[str, str], ranks: int, out: Path, mode: str) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(ranks),
        "--master-addr",
        LOOPBACK,
        "--master-port",
        str(free_port()),
        str(SCRIPT),
        str(out),
        "elastic/manifest.jsonl",
        mode,
    ]
    result = subprocess.run(
        command, check=False, env=env, cwd=out, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.multiprocess
def test_two_ranks_save_and_three_ranks_resume_the_rest_of_the_epoch(
    moto_server: RunningServer, store: S3ExchangeStore, tmp_path: Path
) -> None:
    ids: list[str] = []
    entries = []
    for s, count in enumerate((9, 4, 12)):
        members = [f"s{s}-{m}" for m in range(count)]
        items = [{"source": m.encode(), "member_path": f"{m}.bin", "id": m} for m in members]
        entries.append(store.put_shard_archive(f"elastic/{s}.tar", items).entry)  # type: ignore[arg-type]
        ids += members
    for i in range(5):
        entries.append(store.put_object(f"elastic/loose/{i}.bin", b"x", id=f"loose-{i}"))  # type: ignore[arg-type]
        ids.append(f"loose-{i}")
    store.write_manifest("elastic/manifest.jsonl", entries)  # 30 samples

    env = {
        **os.environ,
        **moto_server.s3.env(),
        "S3EXCHANGE_BUCKET": store.bucket,
        "NO_PROXY": LOOPBACK,
        "OMP_NUM_THREADS": "1",
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    torchrun(env, 2, tmp_path, "save")
    torchrun(env, 3, tmp_path, "resume")

    before = [json.loads((tmp_path / f"save{r}.json").read_text()) for r in range(2)]
    after = [json.loads((tmp_path / f"resume{r}.json").read_text()) for r in range(3)]
    assert [len(b) for b in before] == [6, 6]  # 3 batches of 2 on each rank
    assert sum(len(a) for a in after) == len(ids) - 12
    assert max(len(a) for a in after) - min(len(a) for a in after) <= 1
    assert Counter([i for b in before for i in b] + [i for a in after for i in a]) == Counter(ids)
