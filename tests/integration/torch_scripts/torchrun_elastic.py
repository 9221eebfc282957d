"""Run under torchrun: read part of an epoch and save the loader state, or resume from one.

Usage: ``torchrun --nproc-per-node N torchrun_elastic.py OUT_DIR MANIFEST_KEY save|resume``,
with the store configured by ``S3EXCHANGE_*`` variables. ``save``: each rank reads 3 batches
and writes ``OUT_DIR/save<r>.json`` (ids) and ``OUT_DIR/state<r>.pt``. ``resume``: each rank
loads rank 0's state (the synchronous case), reads the rest and writes ``resume<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from s3exchange import S3ExchangeStore
from s3exchange_torch import S3ExchangeIterableDataset, S3ExchangeLoader


def main(out_dir: str, manifest: str, mode: str) -> int:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    store = S3ExchangeStore.from_settings()
    dataset = S3ExchangeIterableDataset(
        store, manifest, shuffle=True, seed=3, balance=None, shuffle_buffer=8
    )
    loader = S3ExchangeLoader(dataset, batch_size=2)
    ids: list[str] = []
    if mode == "save":
        batches = iter(loader)
        for _ in range(3):
            ids += [str(entry["id"]) for entry in next(batches).extras]
        torch.save(loader.state_dict(), Path(out_dir, f"state{rank}.pt"))
    else:
        loader.load_state_dict(torch.load(Path(out_dir, "state0.pt")))
        ids = [str(entry["id"]) for batch in loader for entry in batch.extras]
    Path(out_dir, f"{mode}{rank}.json").write_text(json.dumps(ids))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
