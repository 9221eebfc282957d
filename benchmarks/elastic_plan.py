"""Planning cost of a mixed epoch and of an elastic resume at scale (issue 13), no I/O.

``python -m benchmarks.elastic_plan [--shards 100000] [--ranks 4096] [--workers 16]``

- ``mix_plan``: three sources sharing ``--shards`` shards (uneven member counts), 70/20/10,
  ``first_exhausted``: the quotas, the mixed order and every rank's every worker's per-source
  segments (what ``iter()`` plans), all in this one process.
- ``mix_rank``: the same for one rank (its ``--workers`` workers): what each rank pays.
- ``restore_rank``: a state saved by ``--ranks`` x ``--workers`` workers halfway through the
  epoch (shuffle buffer 1000), restored on ``--ranks - 1`` ranks: what one rank of the new job
  pays before its first fetch (replaying the buffers of the saved workers its share overlaps).

Targets (issue 13): ``mix_plan`` < 2 s, ``restore_rank`` < 1 s. Prints the best of
``--rounds`` (the 2-core VM it was written on swings 2x under load).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from s3exchange_torch.mixing import MixPlan, Source, quotas, source_segments
from s3exchange_torch.plan import EpochPlan
from s3exchange_torch.resume import Remainder, Run, worker_bounds


def _counts(shards: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.randrange(500, 1500) for _ in range(shards)]


def mix_workers(
    sources: list[list[int]], plan: MixPlan, ranks: range, world: int, workers: int
) -> int:
    """Plan ``ranks``' workers: ranges, per-source pieces and segments; returns segments."""
    remainder = Remainder(plan.num_samples, [], seed=0, epoch=0, buffer=0)
    caches: list[dict[int, EpochPlan]] = [{} for _ in sources]
    planned = 0
    for rank in ranks:
        for worker in range(workers):
            ranges = remainder.worker_ranges(world, workers, "pad", rank, worker)
            for j, pieces in enumerate(plan.pieces(ranges)):
                planned += len(
                    source_segments(
                        sources[j],
                        pieces,
                        source=j,
                        seed=0,
                        epoch=0,
                        shuffle=True,
                        plans=caches[j],
                    )
                )
    return planned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--ranks", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many (noisy VMs)")
    args = parser.parse_args()
    out: dict[str, Any] = {"shards": args.shards, "ranks": args.ranks, "workers": args.workers}

    third = args.shards // 3
    sources = [_counts(third, 1), _counts(third, 2), _counts(args.shards - 2 * third, 3)]
    mix = [Source("a", 0.7), Source("b", 0.2), Source("c", 0.1)]
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        plan = MixPlan(quotas([sum(c) for c in sources], mix, "first_exhausted"), seed=0, epoch=0)
        segments = mix_workers(sources, plan, range(args.ranks), args.ranks, args.workers)
        times.append(time.perf_counter() - start)
    out["mix_plan_s"] = round(min(times), 3)
    out["mix_plan_rounds_s"] = [round(t, 3) for t in times]
    out["mix_samples"] = plan.num_samples
    out["mix_segments"] = segments
    start = time.perf_counter()
    plan = MixPlan(quotas([sum(c) for c in sources], mix, "first_exhausted"), seed=0, epoch=0)
    mix_workers(sources, plan, range(7, 8), args.ranks, args.workers)
    out["mix_rank_s"] = round(time.perf_counter() - start, 3)

    counts = _counts(args.shards, 4)
    epoch = EpochPlan(counts, seed=0, epoch=0, shuffle=True)
    n = epoch.num_samples
    emitted = []
    for rank in range(args.ranks):
        for worker in range(args.workers):
            lo, hi = worker_bounds(n, args.ranks, args.workers, "pad", rank, worker)
            emitted.append((hi - lo) // 2)
    run = Run(args.ranks, args.workers, "pad", tuple(emitted))
    state_ints = len(run.emitted)
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        remainder = Remainder(n, [run], seed=0, epoch=0, buffer=1000)
        pieces = 0
        for worker in range(args.workers):
            ranges = remainder.worker_ranges(args.ranks - 1, args.workers, "pad", 7, worker)
            pieces += len(epoch.segments_at(ranges))
        times.append(time.perf_counter() - start)
    out["restore_rank_s"] = round(min(times), 3)
    out["restore_state_ints"] = state_ints
    out["restore_rank_segments"] = pieces
    print(json.dumps(out))


if __name__ == "__main__":
    main()
