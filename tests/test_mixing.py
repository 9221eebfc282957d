"""Weighted mixing over the pure plan: quotas, the stratified order, partitioning, resume."""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3exchange_torch.mixing import MixPlan, Source, quotas, source_segments
from s3exchange_torch.resume import Remainder, Run, worker_rng
from s3exchange_torch.shuffle import shuffled


def sources(*weights: float, repeat: float | None = None) -> list[Source]:
    return [Source(f"m{j}", weight=w, repeat=repeat) for j, w in enumerate(weights)]


def test_quotas_follow_the_stop_rule() -> None:
    sizes = [100_000, 50_000, 200_000]
    mix = sources(0.7, 0.2, 0.1)
    first = quotas(sizes, mix, "first_exhausted")
    assert first == [100_000, 28_571, 14_286]  # the 70 % source runs out first
    assert all(q <= n for q, n in zip(first, sizes, strict=True))  # nothing repeats
    every = quotas(sizes, mix, "all_exhausted")
    assert all(q >= n for q, n in zip(every, sizes, strict=True))
    assert every[2] == 200_000
    assert abs(every[0] / sum(every) - 0.7) < 1e-4
    assert quotas(sizes, mix, 1000) == [700, 200, 100]
    # repeat sets how many passes a source owes
    assert quotas([10, 5], sources(1, 1), "first_exhausted") == [5, 5]
    twice = [Source("a"), Source("b", repeat=2.0)]
    assert quotas([10, 5], twice, "first_exhausted") == [10, 10]


def test_quotas_refuse_what_cannot_be_mixed() -> None:
    with pytest.raises(ValueError, match="weight must be > 0"):
        Source("a", weight=0)
    with pytest.raises(ValueError, match="leave repeat unset"):
        quotas([5, 5], sources(1, 1, repeat=2.0), 10)
    with pytest.raises(ValueError, match=r"source 1 .* has no samples"):
        quotas([5, 0], sources(1, 1), "first_exhausted")
    with pytest.raises(ValueError, match="stop must be"):
        quotas([5], sources(1), "forever")  # type: ignore[arg-type]


def test_proportions_within_one_percent_and_smooth_within_a_batch_window() -> None:
    plan = MixPlan([70_000, 20_000, 10_000], seed=3, epoch=1)
    order = list(plan.order([(0, plan.num_samples)]))
    counts = Counter(order)
    assert [counts[j] / len(order) for j in range(3)] == [0.7, 0.2, 0.1]
    window = 64
    running = [0, 0, 0]
    for position, source in enumerate(order):  # sliding window of 64: within 2 of 64 * p
        running[source] += 1
        if position >= window:
            running[order[position - window]] -= 1
        if position >= window - 1:
            for j, share in enumerate((0.7, 0.2, 0.1)):
                assert abs(running[j] - window * share) <= 2
    assert not any(a == b != 0 for a, b in pairwise(order))  # 20 % or 10 %: never twice in a row


def test_the_order_is_deterministic_per_seed_and_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        plan = MixPlan([50, 30, 20], seed=seed, epoch=epoch)
        return list(plan.order([(0, 100)]))

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)


@settings(max_examples=200, deadline=None)
@given(
    quota_list=st.lists(st.integers(0, 40), min_size=1, max_size=4).filter(lambda q: sum(q) > 0),
    seed=st.integers(0, 2**40),
    cuts=st.lists(st.integers(0, 160), max_size=6),
)
def test_prefix_counts_agree_with_the_order(
    quota_list: list[int], seed: int, cuts: list[int]
) -> None:
    plan = MixPlan(quota_list, seed=seed, epoch=0)
    order = list(plan.order([(0, plan.num_samples)]))
    assert Counter(order) == {j: q for j, q in enumerate(quota_list) if q}
    for position in [0, plan.num_samples, *(c % (plan.num_samples + 1) for c in cuts)]:
        assert plan.prefix(position) == [order[:position].count(j) for j in range(len(quota_list))]
    # any cut into ranges gives the same order piecewise
    bounds = sorted({0, plan.num_samples, *(c % (plan.num_samples + 1) for c in cuts)})
    pieces = list(pairwise(bounds))
    assert list(plan.order(pieces)) == order


def test_ranks_and_workers_partition_each_sources_quota_with_balance() -> None:
    plan = MixPlan([700, 200, 101], seed=0, epoch=0)
    remainder = Remainder(plan.num_samples, [], seed=0, epoch=0, buffer=0)
    seen: list[Counter[int]] = [Counter(), Counter(), Counter()]
    per_rank = []
    for rank in range(3):
        taken = 0
        for worker in range(4):
            ranges = remainder.worker_ranges(3, 4, "pad", rank, worker)
            for j, pieces in enumerate(plan.pieces(ranges)):
                for lo, hi in pieces:
                    seen[j].update(range(lo, hi))
                    taken += hi - lo
        per_rank.append(taken)
    assert per_rank == [334, 334, 334]  # 1001 samples padded to 3 x 334
    for j, quota in enumerate(plan.quotas):
        assert set(seen[j]) == set(range(quota))
    assert sum(sum(c.values()) for c in seen) - plan.num_samples == 1


def test_a_repeat_one_source_never_repeats_and_an_upsampled_one_cycles_evenly() -> None:
    counts = [5, 1, 0, 7, 3, 1, 1]  # shards and loose files
    size = sum(counts)
    plans: dict[int, object] = {}
    once = source_segments(
        counts,
        [(0, 12)],
        source=0,
        seed=4,
        epoch=2,
        shuffle=True,
        plans=plans,  # type: ignore[arg-type]
    )
    samples = [(s.unit, m) for s in once for m in range(s.start, s.stop)]
    assert len(samples) == len(set(samples)) == 12
    thrice = source_segments(
        counts, [(0, 3 * size + 4)], source=0, seed=4, epoch=2, shuffle=True, plans={}
    )
    tally = Counter((s.unit, m) for s in thrice for m in range(s.start, s.stop))
    assert sorted(set(tally.values())) == [3, 4]
    assert sum(1 for v in tally.values() if v == 4) == 4


def test_a_mixed_epoch_resumed_on_other_topologies_delivers_each_quota_exactly() -> None:
    plan = MixPlan([300, 120, 57], seed=9, epoch=0)
    n = plan.num_samples
    rnd = random.Random(2)
    runs: list[Run] = []
    delivered: list[int] = []
    for topology in [(2, 2, None), (3, 1, None), (1, 3, None), (4, 2, None)]:
        remainder = Remainder(n, runs, seed=9, epoch=0, buffer=16)
        emitted = []
        for rank in range(topology[0]):
            for worker in range(topology[1]):
                ranges = remainder.worker_ranges(*topology, rank, worker)
                positions = [p for a, b in ranges for p in range(a, b)]
                rng = worker_rng(9, 0, len(runs), rank, worker, topology[1])
                out = list(shuffled(positions, 16, rng))
                stop = len(out) if len(runs) == 3 else rnd.randrange(len(out) + 1)
                delivered += out[:stop]
                emitted.append(stop)
        runs.append(Run(*topology, tuple(emitted)))
    assert Counter(delivered) == Counter(range(n))
    order = list(plan.order([(0, n)]))
    assert Counter(order[p] for p in delivered) == {0: 300, 1: 120, 2: 57}
