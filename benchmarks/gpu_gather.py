"""How should the main process gather a batch's samples onto the GPU? A probe for the GPU node.

The loader's workers spend ~14 % of their CPU on the collate's cold copy: the shuffle buffer's
samples (100 MB of them) copied into the ring (benchmarks/README, *Fourth session*). If the
samples sat in page-locked shared memory as they arrived, the main process could gather each
batch on the GPU instead. This times, for batches of ``--samples`` samples at random places in
a page-locked arena (``cudaHostRegister``, mapped, as a worker's shared memory would be):

- ``one_copy``: one contiguous region copied to the device (what the loader does today);
- ``per_sample``: one non-blocking ``copy_`` a sample into a device batch;
- ``mapped_cat``: ``torch.cat`` of slices of the arena seen from the device (registered
  memory's device pointer through ``__cuda_array_interface__``): one launch, the kernel
  reading host memory over PCIe.

For each: the main thread's CPU microseconds per batch and GB/s to the device, with the
gathered bytes checked against a CPU gather. ``python -m benchmarks.gpu_gather [--out DIR]``;
without CUDA it says so, runs ``per_sample`` on the CPU to check itself, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from s3exchange_torch.shm import SharedBytes

_ALIGN = 64
_MAPPED = 2  # cudaHostRegisterMapped
_Gather = Callable[[list[tuple[int, int]]], torch.Tensor]


class _DeviceView:
    """``__cuda_array_interface__`` of ``nbytes`` at a device pointer, for ``torch.as_tensor``."""

    def __init__(self, pointer: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (pointer, False),
            "strides": None,
            "version": 2,
        }


def _spans(rng: random.Random, arena: int, samples: int, size: int) -> list[tuple[int, int]]:
    """``samples`` random, aligned, non-overlapping ``(offset, size)`` places in the arena."""
    slots = arena // (-(-size // _ALIGN) * _ALIGN)
    picked = rng.sample(range(slots), samples)
    step = -(-size // _ALIGN) * _ALIGN
    return [(slot * step, size) for slot in picked]


def _gathers(host: torch.Tensor, device: torch.device) -> dict[str, _Gather]:
    """Each way to put a batch's spans of ``host`` on ``device``, by name."""

    def one_copy(spans: list[tuple[int, int]]) -> torch.Tensor:
        region = host[: sum(n for _, n in spans)]
        return region.to(device, non_blocking=True) if device.type == "cuda" else region.clone()

    def per_sample(spans: list[tuple[int, int]]) -> torch.Tensor:
        out = torch.empty(sum(n for _, n in spans), dtype=torch.uint8, device=device)
        position = 0
        for offset, n in spans:
            out[position : position + n].copy_(host[offset : offset + n], non_blocking=True)
            position += n
        return out

    ways: dict[str, _Gather] = {"one_copy": one_copy, "per_sample": per_sample}
    if device.type == "cuda":
        mapped = torch.as_tensor(_DeviceView(host.data_ptr(), host.numel()), device=device)

        def mapped_cat(spans: list[tuple[int, int]]) -> torch.Tensor:
            return torch.cat([mapped[offset : offset + n] for offset, n in spans])

        ways["mapped_cat"] = mapped_cat
    return ways


def _time(
    gather: _Gather, batches: list[list[tuple[int, int]]], device: torch.device
) -> dict[str, float]:
    """Main-thread CPU per batch and bytes per second over ``batches`` (after a warm-up)."""
    gather(batches[0])
    _sync(device)
    cpu, wall = time.thread_time(), time.perf_counter()
    nbytes = 0
    for spans in batches:
        gather(spans)
        nbytes += sum(n for _, n in spans)
    cpu_s = time.thread_time() - cpu
    _sync(device)
    wall_s = time.perf_counter() - wall
    return {"cpu_us_per_batch": cpu_s / len(batches) * 1e6, "gb_per_s": nbytes / wall_s / 1e9}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _checked(gather: _Gather, host: torch.Tensor, spans: list[tuple[int, int]]) -> bool:
    want = torch.cat([host[offset : offset + n] for offset, n in spans])
    return bool(torch.equal(gather(spans).cpu(), want))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--sample-bytes", type=int, default=100 * 1024)
    parser.add_argument("--arena-mib", type=int, default=256)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    arena = SharedBytes(args.arena_mib << 20)
    host = arena.data
    host.copy_(torch.randint(0, 256, (host.numel(),), dtype=torch.uint8))
    registered = False
    if cuda:
        torch.ones(1, device=device)
        began = time.perf_counter()
        code = int(torch.cuda.cudart().cudaHostRegister(host.data_ptr(), host.numel(), _MAPPED))
        registered = code == 0
        print(
            f"cudaHostRegister {args.arena_mib} MiB mapped: code {code}, "
            f"{(time.perf_counter() - began) * 1e3:.1f} ms"
        )
    else:
        print("no CUDA here: per_sample and one_copy run on the CPU, to check this script")
    rng = random.Random(0)
    batches = [
        _spans(rng, host.numel(), args.samples, args.sample_bytes) for _ in range(args.batches)
    ]
    results: dict[str, Any] = {
        "device": str(device),
        "samples": args.samples,
        "sample_bytes": args.sample_bytes,
        "registered": registered,
    }
    for name, gather in _gathers(host, device).items():
        try:
            ok = name == "one_copy" or _checked(gather, host, batches[0])
            results[name] = {**_time(gather, batches, device), "bytes_match": ok}
        except Exception as exc:  # a way the node refuses is a finding, not the end of the probe
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(results[name]))
    if registered:
        _sync(device)
        torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_gather.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
