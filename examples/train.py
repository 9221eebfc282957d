"""Train a small classifier from a manifest through S3ExchangeIterableDataset and S3ExchangeLoader.

Runs as plain ``python examples/train.py`` or under ``torchrun --nproc-per-node 2`` (gloo on
CPU): each rank reads its own part of every epoch, and gradients are averaged with DDP. The
loader stacks each batch's decoded features in its workers' shared-memory rings; pass
``device="cuda"`` to have it copy batches to the GPU on a side stream.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from s3exchange import FileEntry, S3ExchangeStore
from s3exchange_torch import S3ExchangeIterableDataset, S3ExchangeLoader

FEATURES = 32
CLASSES = 4


def decode(data: bytes, entry: FileEntry) -> tuple[torch.Tensor, int]:
    """Raw float32 bytes + label from the entry's meta → (features, label)."""
    features = torch.tensor(struct.unpack(f"<{FEATURES}f", data))
    return features, int(entry["meta"]["label"])


def train(
    store: S3ExchangeStore,
    manifest_key: str,
    *,
    epochs: int = 2,
    batch_size: int = 64,
    num_workers: int = 2,
    log: Any = print,
) -> dict[str, Any]:
    """Train for ``epochs``; returns samples seen, samples/s and the last epoch's accuracy."""
    distributed = dist.is_available() and dist.is_initialized()
    dataset = S3ExchangeIterableDataset(store, manifest_key, shuffle=True, seed=0, transform=decode)
    loader = S3ExchangeLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    model: nn.Module = nn.Sequential(nn.Linear(FEATURES, 64), nn.ReLU(), nn.Linear(64, CLASSES))
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    seen, started, accuracy = 0, time.perf_counter(), 0.0
    for epoch in range(epochs):
        loader.set_epoch(epoch)  # workers persist across epochs
        correct = total = 0
        for features, labels in loader:
            optimiser.zero_grad()
            logits = model(features)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimiser.step()
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
        seen += total
        accuracy = correct / max(total, 1)
        log(
            f"epoch {epoch}: {total} samples on this rank, loss {loss.item():.3f}, "
            f"accuracy {accuracy:.2%}"
        )
    elapsed = time.perf_counter() - started
    loader.close()
    return {
        "samples": seen,
        "samples_per_s": round(seen / elapsed, 1),
        "accuracy": round(accuracy, 4),
        "rank_len": len(dataset),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", default="demo/train/manifest.jsonl")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group("gloo")
    store = S3ExchangeStore.from_settings()
    rank = dist.get_rank() if dist.is_initialized() else 0
    result = train(
        store,
        args.manifest,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_workers=args.workers,
        log=lambda msg: print(f"[rank {rank}] {msg}", flush=True),
    )
    print(f"[rank {rank}] {result}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
