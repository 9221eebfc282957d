"""Run under torchrun: each rank reads its part of a manifest and records the ids it saw.

Usage: ``torchrun --nproc-per-node N torchrun_ids.py OUT_DIR MANIFEST_KEY``, with the store
configured by ``S3EXCHANGE_*`` variables. Rank and world size come from the initialised gloo
process group (the dataset's default), and each rank writes ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from s3exchange import S3ExchangeStore
from s3exchange_torch import S3ExchangeIterableDataset


def main(out_dir: str, manifest: str) -> int:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    store = S3ExchangeStore.from_settings()
    dataset = S3ExchangeIterableDataset(store, manifest, shuffle=True, seed=3, balance="pad")
    dataset.resolve()  # once, here: the forked workers inherit the units
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context="fork")
    ids = [str(entry["id"]) for _, entry in loader]
    counts = torch.tensor([len(ids)])
    gathered = [torch.zeros_like(counts) for _ in range(world_size)]
    dist.all_gather(gathered, counts)  # every rank must agree on the per-rank counts
    record = {
        "rank": rank,
        "world_size": world_size,
        "dataset_rank": dataset.rank,
        "dataset_world_size": dataset.world_size,
        "len": len(dataset),
        "ids": ids,
        "all_counts": [int(c) for c in gathered],
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
