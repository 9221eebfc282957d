"""The epoch plan: which (unit, member) samples each rank and worker reads, and in what order."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import s3exchange_torch.plan as plan_module
from s3exchange_torch.plan import Balance, EpochPlan, Segment, plan_worker, rank_size

Sample = tuple[int, int]  # (unit, member)

counts_st = st.lists(st.integers(0, 12), max_size=24)
balance_st = st.sampled_from([None, "pad", "drop"])
seed_st = st.integers(-(2**70), 2**70)


def expand(segments: Sequence[Segment]) -> list[Sample]:
    return [(s.unit, m) for s in segments for m in range(s.start, s.stop)]


def reference_rank_samples(
    counts: Sequence[int], order: Sequence[int], world_size: int, rank: int, balance: Balance
) -> list[Sample]:
    """The contract, written out naively over the explicit global sample sequence."""
    sequence = [(unit, m) for unit in order for m in range(counts[unit])]
    n = len(sequence)
    if n == 0:
        return []
    if balance is None:
        positions = range(rank * n // world_size, (rank + 1) * n // world_size)
    elif balance == "drop":
        q = n // world_size
        positions = range(rank * q, (rank + 1) * q)
    else:
        q = -(-n // world_size)
        positions = range(rank * q, (rank + 1) * q)
    return [sequence[p % n] for p in positions]


def all_worker_samples(plan: EpochPlan, num_workers: int) -> dict[tuple[int, int], list[Sample]]:
    return {
        (rank, worker): expand(plan.segments(rank, worker, num_workers))
        for rank in range(plan.world_size)
        for worker in range(num_workers)
    }


# --- worked examples ----------------------------------------------------------------------------


def test_ranks_get_contiguous_runs_and_empty_units_are_skipped() -> None:
    plan = EpochPlan([3, 0, 2, 4], world_size=2)
    assert plan.num_samples == 9
    assert plan.rank_slice(0) == (0, 4)
    assert plan.rank_slice(1) == (4, 9)
    assert plan.segments(0) == [Segment(0, 0, 3), Segment(2, 0, 1)]
    assert plan.segments(1) == [Segment(2, 1, 2), Segment(3, 0, 4)]


def test_workers_split_their_rank_contiguously() -> None:
    plan = EpochPlan([10], world_size=1)
    assert [plan.segments(0, w, 3) for w in range(3)] == [
        [Segment(0, 0, 3)],
        [Segment(0, 3, 6)],
        [Segment(0, 6, 10)],
    ]
    assert [plan.worker_size(0, w, 3) for w in range(3)] == [3, 3, 4]


def test_pad_wraps_to_the_start_and_may_repeat_a_unit() -> None:
    plan = EpochPlan([5], world_size=2, balance="pad")
    assert plan.segments(0) == [Segment(0, 0, 3)]
    assert plan.segments(1) == [Segment(0, 3, 5), Segment(0, 0, 1)]


def test_pad_with_fewer_samples_than_ranks_repeats_modulo_n() -> None:
    plan = EpochPlan([2], world_size=5, balance="pad")
    assert [expand(plan.segments(r)) for r in range(5)] == [[(0, 0)], [(0, 1)]] * 2 + [[(0, 0)]]


def test_drop_gives_every_rank_floor_n_over_w() -> None:
    plan = EpochPlan([4, 3], world_size=3, balance="drop")
    assert [plan.segments(r) for r in range(3)] == [
        [Segment(0, 0, 2)],
        [Segment(0, 2, 4)],
        [Segment(1, 0, 2)],
    ]


@pytest.mark.parametrize("balance", [None, "pad", "drop"])
def test_no_samples_means_empty_work_for_everyone(balance: Balance) -> None:
    for counts in ([], [0, 0, 0]):
        plan = EpochPlan(counts, world_size=4, balance=balance, shuffle=True)
        assert plan.num_samples == 0
        for rank in range(4):
            assert plan.rank_size(rank) == 0
            assert plan.segments(rank, 1, 2) == []


def test_plan_worker_returns_segments_and_their_sample_count() -> None:
    counts = [3, 0, 2, 4]
    kwargs = {"seed": 7, "epoch": 2, "shuffle": True, "world_size": 3, "balance": "pad"}
    plan = EpochPlan(counts, **kwargs)  # type: ignore[arg-type]
    for rank in range(3):
        segments, size = plan_worker(counts, rank=rank, worker_id=1, num_workers=2, **kwargs)  # type: ignore[arg-type]
        assert segments == plan.segments(rank, 1, 2)
        assert size == plan.worker_size(rank, 1, 2) == sum(s.size for s in segments)


# --- the contract as properties ------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(
    counts=counts_st,
    world_size=st.integers(1, 8),
    num_workers=st.integers(1, 4),
    shuffle=st.booleans(),
    balance=balance_st,
    seed=seed_st,
    epoch=st.integers(0, 1000),
)
def test_segments_match_the_contract(
    counts: list[int],
    world_size: int,
    num_workers: int,
    shuffle: bool,
    balance: Balance,
    seed: int,
    epoch: int,
) -> None:
    plan = EpochPlan(
        counts, seed=seed, epoch=epoch, shuffle=shuffle, world_size=world_size, balance=balance
    )
    n = sum(counts)
    w = world_size
    assert sorted(plan.order) == list(range(len(counts)))
    if not shuffle:
        assert list(plan.order) == list(range(len(counts)))
    samples = all_worker_samples(plan, num_workers)
    everything: Counter[Sample] = Counter()
    for rank in range(w):
        rank_samples = [s for wid in range(num_workers) for s in samples[rank, wid]]
        # Contiguous slice of the global sequence, split contiguously among the workers.
        assert rank_samples == reference_rank_samples(counts, plan.order, w, rank, balance)
        assert len(rank_samples) == plan.rank_size(rank) == rank_size(n, w, rank, balance)
        sizes = [len(samples[rank, wid]) for wid in range(num_workers)]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == [plan.worker_size(rank, wid, num_workers) for wid in range(num_workers)]
        everything.update(rank_samples)

    universe = Counter((u, m) for u, c in enumerate(counts) for m in range(c))
    if balance is None:
        assert everything == universe
    elif balance == "drop":
        assert all(plan.rank_size(r) == n // w for r in range(w))
        assert max(everything.values(), default=1) == 1
        assert not everything - universe
        assert len(universe - everything) < w
    else:
        assert all(plan.rank_size(r) == -(-n // w) for r in range(w))
        assert set(everything) == set(universe)
        assert everything.total() - n < w


@settings(deadline=None, max_examples=200)
@given(
    counts=counts_st,
    world_size=st.integers(1, 8),
    num_workers=st.integers(1, 4),
    shuffle=st.booleans(),
    balance=balance_st,
    seed=seed_st,
)
def test_segments_are_well_formed_and_merged(
    counts: list[int],
    world_size: int,
    num_workers: int,
    shuffle: bool,
    balance: Balance,
    seed: int,
) -> None:
    plan = EpochPlan(counts, seed=seed, shuffle=shuffle, world_size=world_size, balance=balance)
    for rank in range(world_size):
        for wid in range(num_workers):
            segments = plan.segments(rank, wid, num_workers)
            for seg in segments:
                assert 0 <= seg.start < seg.stop <= counts[seg.unit]
            for prev, seg in pairwise(segments):
                assert not (prev.unit == seg.unit and prev.stop == seg.start)
            units = [seg.unit for seg in segments]
            if balance != "pad":
                assert len(units) == len(set(units))


@settings(deadline=None, max_examples=100)
@given(counts=counts_st, world_size=st.integers(1, 8), seed=seed_st, epoch=st.integers(0, 50))
def test_order_does_not_depend_on_world_or_workers(
    counts: list[int], world_size: int, seed: int, epoch: int
) -> None:
    base = EpochPlan(counts, seed=seed, epoch=epoch, shuffle=True)
    other = EpochPlan(counts, seed=seed, epoch=epoch, shuffle=True, world_size=world_size)
    assert list(other.order) == list(base.order)
    for rank in range(world_size):
        whole = expand(other.segments(rank))
        for num_workers in (2, 3):
            split = [
                s
                for wid in range(num_workers)
                for s in expand(other.segments(rank, wid, num_workers))
            ]
            assert split == whole


# --- determinism ---------------------------------------------------------------------------------

_FIXED = {"seed": 1234, "epoch": 3, "shuffle": True, "world_size": 3, "balance": "pad"}
_FIXED_COUNTS = [random.Random(5).randint(0, 40) for _ in range(60)]


def _fixed_segments() -> list[list[list[int]]]:
    plan = EpochPlan(_FIXED_COUNTS, **_FIXED)  # type: ignore[arg-type]
    return [
        [[s.unit, s.start, s.stop] for s in plan.segments(r, w, 2)]
        for r in range(3)
        for w in range(2)
    ]


def test_same_arguments_give_the_same_segments() -> None:
    assert _fixed_segments() == _fixed_segments()


@pytest.mark.parametrize("hash_seed", ["0", "1", "4242"])
def test_order_is_the_same_in_a_fresh_process_with_another_hash_seed(hash_seed: str) -> None:
    script = (
        "import json, sys\n"
        "from s3exchange_torch.plan import EpochPlan\n"
        "counts, kw = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "plan = EpochPlan(counts, **kw)\n"
        "print(json.dumps([[[s.unit, s.start, s.stop] for s in plan.segments(r, w, 2)]"
        " for r in range(3) for w in range(2)]))\n"
    )
    root = str(Path(plan_module.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(_FIXED_COUNTS), json.dumps(_FIXED)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == _fixed_segments()


def test_shuffled_order_is_pinned() -> None:
    # Changing the seed mixing or the shuffle would silently change every resumed run's data order.
    order = EpochPlan([1] * 10, seed=0, epoch=0, shuffle=True).order
    assert list(order) == [0, 4, 7, 3, 8, 6, 5, 1, 2, 9]


def test_each_epoch_and_seed_draws_a_different_order() -> None:
    counts = [1] * 50
    orders = {
        tuple(EpochPlan(counts, seed=seed, epoch=epoch, shuffle=True).order)
        for seed in range(3)
        for epoch in range(5)
    }
    assert len(orders) == 15


def test_unshuffled_order_is_manifest_order_for_any_seed() -> None:
    for seed, epoch in [(0, 0), (9, 4)]:
        assert list(EpochPlan([2, 0, 1], seed=seed, epoch=epoch).order) == [0, 1, 2]


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"world_size": 0}, "world_size"),
        ({"balance": "even"}, "balance"),
        ({"counts": [1, -1]}, "counts"),
    ],
)
def test_plan_rejects_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"counts": [1, 2], **kwargs}
    with pytest.raises(ValueError, match=name):
        EpochPlan(**args)  # type: ignore[arg-type]


def test_plan_rejects_non_integer_counts() -> None:
    with pytest.raises(TypeError, match="counts"):
        EpochPlan([1.5])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("rank", "worker_id", "num_workers", "name"),
    [
        (-1, 0, 1, "rank"),
        (2, 0, 1, "rank"),
        (0, 2, 2, "worker_id"),
        (0, -1, 2, "worker_id"),
        (0, 0, 0, "num_workers"),
    ],
)
def test_segments_reject_bad_rank_or_worker(
    rank: int, worker_id: int, num_workers: int, name: str
) -> None:
    plan = EpochPlan([3, 4], world_size=2)
    with pytest.raises(ValueError, match=name):
        plan.segments(rank, worker_id, num_workers)


@pytest.mark.parametrize(
    ("args", "name"),
    [((10, 0, 0), "world_size"), ((10, 2, 2), "rank"), ((-1, 2, 0), "num_samples")],
)
def test_rank_size_rejects_bad_arguments(args: tuple[int, int, int], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        rank_size(*args)
    with pytest.raises(ValueError, match="balance"):
        rank_size(10, 2, 0, "even")  # type: ignore[arg-type]


# --- scale ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("balance", [None, "pad", "drop"])
def test_4096_ranks_by_16_workers_over_100k_shards_cover_the_contract(balance: Balance) -> None:
    rng = random.Random(11)
    counts = [
        rng.choice((0, rng.randint(900, 1100))) if i % 97 == 0 else rng.randint(900, 1100)
        for i in range(100_000)
    ]
    world, workers = 4096, 16
    plan = EpochPlan(counts, seed=3, epoch=1, shuffle=True, world_size=world, balance=balance)
    n = sum(counts)
    assert plan.num_samples == n
    order = plan.order
    assert sorted(order) == list(range(len(counts)))
    offset = [0] * len(counts)  # global position of each unit's first member
    position = 0
    for unit in order:
        offset[unit] = position
        position += counts[unit]

    intervals: list[tuple[int, int]] = []
    for rank in range(world):
        expected_pos = plan.rank_slice(rank)[0]
        sizes = []
        for wid in range(workers):
            size = 0
            for seg in plan.segments(rank, wid, workers):
                assert 0 <= seg.start < seg.stop <= counts[seg.unit]
                start = offset[seg.unit] + seg.start
                assert start == expected_pos % n  # reads on exactly where the previous piece ended
                intervals.append((start, start + seg.size))
                expected_pos += seg.size
                size += seg.size
            sizes.append(size)
        assert max(sizes) - min(sizes) <= 1
        assert sum(sizes) == plan.rank_size(rank)

    intervals.sort()
    total = sum(stop - start for start, stop in intervals)
    covered = 0  # union of the intervals, which start at or after `covered` unless overlapping
    overlap = 0
    reach = 0
    for start, stop in intervals:
        overlap += max(0, min(stop, reach) - start)
        covered += max(0, stop - max(start, reach))
        reach = max(reach, stop)
    if balance is None:
        assert (total, covered, overlap) == (n, n, 0)
    elif balance == "drop":
        assert total == world * (n // world)
        assert overlap == 0
        assert n - covered < world
    else:
        assert total == world * -(-n // world)
        assert covered == n
        assert overlap < world
