"""Elastic resume over the pure plan: the rest of an epoch on any number of ranks and workers.

A job is simulated exactly as the dataset runs it (the same :mod:`s3exchange_torch.resume`
ranges, the same shuffle buffer and RNG per worker), over global sample positions, no S3.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3exchange_torch.plan import Balance, EpochPlan, Segment
from s3exchange_torch.prefetch import plan_jobs
from s3exchange_torch.resume import Remainder, Run, batches_delivered, worker_rng
from s3exchange_torch.shuffle import replay, shuffled

SEED, EPOCH = 7, 3
Topology = tuple[int, int, Balance]


def worker_orders(
    num_samples: int, runs: Sequence[Run], topology: Topology, buffer: int
) -> list[list[int]]:
    """Each worker's full emission order (global positions) in the next run, rank-major."""
    remainder = Remainder(num_samples, runs, seed=SEED, epoch=EPOCH, buffer=buffer)
    world_size, num_workers, balance = topology
    orders = []
    for rank in range(world_size):
        for worker in range(num_workers):
            ranges = remainder.worker_ranges(world_size, num_workers, balance, rank, worker)
            positions = [p for start, stop in ranges for p in range(start, stop)]
            if buffer > 1:
                rng = worker_rng(SEED, EPOCH, len(runs), rank, worker, num_workers)
                positions = list(shuffled(positions, buffer, rng))
            orders.append(positions)
    return orders


def interrupt(
    num_samples: int,
    runs: list[Run],
    topology: Topology,
    buffer: int,
    rnd: random.Random,
    fraction: float,
) -> list[int]:
    """Run the next run on ``topology``, stop each worker at a random point: delivered."""
    orders = worker_orders(num_samples, runs, topology, buffer)
    emitted = [min(len(o), int(len(o) * fraction * rnd.uniform(0.5, 1.5))) for o in orders]
    runs.append(Run(*topology, tuple(emitted)))
    return [p for order, e in zip(orders, emitted, strict=True) for p in order[:e]]


def finish(num_samples: int, runs: list[Run], topology: Topology, buffer: int) -> list[list[int]]:
    return worker_orders(num_samples, runs, topology, buffer)


topology_st = st.tuples(st.integers(1, 6), st.integers(1, 4), st.just(None))


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.one_of(st.just(1), st.integers(0, 40)), max_size=30),
    shuffle=st.booleans(),
    topologies=st.lists(topology_st, min_size=2, max_size=7),
    buffer=st.sampled_from([1, 4, 37]),
    fractions=st.lists(st.floats(0, 1), min_size=7, max_size=7),
    seed=st.integers(0, 2**32),
)
def test_any_chain_of_resumes_delivers_the_epoch_exactly_once(
    counts: list[int],
    shuffle: bool,
    topologies: list[Topology],
    buffer: int,
    fractions: list[float],
    seed: int,
) -> None:
    """Uneven shards and loose files (count 1), unit order and shuffle buffer on or off."""
    plan = EpochPlan(counts, seed=SEED, epoch=EPOCH, shuffle=shuffle)
    num_samples = plan.num_samples
    buffer = buffer if shuffle else 0
    rnd = random.Random(seed)
    runs: list[Run] = []
    delivered: list[int] = []
    for topology, fraction in zip(topologies[:-1], fractions, strict=False):
        delivered += interrupt(num_samples, runs, topology, buffer, rnd, fraction)
    last = finish(num_samples, runs, topologies[-1], buffer)
    delivered += [p for order in last for p in order]
    assert Counter(delivered) == Counter(range(num_samples))
    samples = Counter(
        (segment.unit, member)
        for position in delivered
        for segment in plan.segments_at([(position, position + 1)])
        for member in range(segment.start, segment.stop)
    )
    assert samples == Counter((u, m) for u, count in enumerate(counts) for m in range(count))


def test_five_successive_resumes_on_random_topologies_still_one_epoch() -> None:
    rnd = random.Random(11)
    for _ in range(20):
        num_samples = rnd.randrange(500, 3000)
        runs: list[Run] = []
        delivered: list[int] = []
        for _ in range(6):
            topology = (rnd.randint(1, 9), rnd.randint(1, 5), None)
            delivered += interrupt(num_samples, runs, topology, 50, rnd, rnd.random() * 0.3)
        assert len(runs) == 6
        last = finish(num_samples, runs, (rnd.randint(1, 9), rnd.randint(1, 5), None), 50)
        delivered += [p for order in last for p in order]
        assert Counter(delivered) == Counter(range(num_samples))


@settings(max_examples=100, deadline=None)
@given(
    num_samples=st.integers(1, 200),
    before=st.tuples(st.integers(1, 5), st.integers(1, 3), st.sampled_from(["pad", "drop"])),
    after=st.tuples(st.integers(1, 5), st.integers(1, 3), st.sampled_from(["pad", "drop"])),
    buffer=st.sampled_from([0, 8]),
    fraction=st.floats(0, 1),
)
def test_pad_and_drop_even_out_the_new_ranks_over_what_remains(
    num_samples: int, before: Topology, after: Topology, buffer: int, fraction: float
) -> None:
    rnd = random.Random(num_samples)
    runs: list[Run] = []
    delivered = interrupt(num_samples, runs, before, buffer, rnd, fraction)
    remainder = Remainder(num_samples, runs, seed=SEED, epoch=EPOCH, buffer=buffer)
    left = remainder.num_samples
    orders = finish(num_samples, runs, after, buffer)
    world_size, num_workers, balance = after
    per_rank = [
        sum(len(o) for o in orders[r * num_workers : (r + 1) * num_workers])
        for r in range(world_size)
    ]
    expected = left // world_size if balance == "drop" else -(-left // world_size)
    assert per_rank == [expected] * world_size
    # What the first run owed (its plan, pads included) is covered: "pad" repeats fewer than
    # a rank's worth of each run, "drop" leaves out fewer.
    owed = Counter(p % num_samples for p in range(_planned(num_samples, before)))
    got = Counter(delivered + [p for order in orders for p in order])
    if balance == "pad":
        assert not owed - got
        assert sum((got - owed).values()) < world_size
    else:
        assert not got - owed
        assert sum((owed - got).values()) < world_size


def _planned(num_samples: int, topology: Topology) -> int:
    world_size, _, balance = topology
    plan = EpochPlan([1] * num_samples, world_size=world_size, balance=balance)
    return sum(plan.rank_size(r) for r in range(world_size))


def test_a_first_run_reads_what_the_epoch_plan_gives() -> None:
    counts = [3, 0, 5, 1, 1, 7, 2]
    for world_size, num_workers, balance in [(1, 1, None), (3, 2, "pad"), (4, 3, "drop")]:
        plan = EpochPlan(counts, seed=1, shuffle=True, world_size=world_size, balance=balance)
        remainder = Remainder(plan.num_samples, [], seed=1, epoch=0, buffer=10)
        for rank in range(world_size):
            for worker in range(num_workers):
                ranges = remainder.worker_ranges(world_size, num_workers, balance, rank, worker)
                assert plan.segments_at(ranges) == plan.segments(rank, worker, num_workers)


def test_the_remainder_is_a_few_ranges_per_worker_plus_the_buffered_samples() -> None:
    runs: list[Run] = []
    rnd = random.Random(3)
    interrupt(100_000, runs, (8, 4, None), 100, rnd, 0.5)
    remainder = Remainder(100_000, runs, seed=SEED, epoch=EPOCH, buffer=100)
    pieces = remainder.ranges(0, remainder.num_samples)
    # each of the 32 workers: its unread tail and at most 100 buffered singletons
    assert len(pieces) <= 32 * (1 + 100)
    assert sum(stop - start for start, stop in pieces) == remainder.num_samples


def test_a_run_record_refuses_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="needs 6 emitted counts"):
        Run(2, 3, None, (0, 0))
    with pytest.raises(ValueError, match="emitting 9 of its 5"):
        Remainder(10, [Run(2, 1, None, (9, 0))], seed=0, epoch=0, buffer=0)
    assert Run.from_state(Run(2, 1, "pad", (1, 2)).to_state()) == Run(2, 1, "pad", (1, 2))


@pytest.mark.parametrize(
    ("counts", "batches", "expected"),
    [
        ([3, 3, 3], 4, [2, 1, 1]),
        ([1, 3, 3], 5, [1, 2, 2]),
        ([1, 3, 3], 6, [1, 3, 2]),
        ([0, 2], 2, [0, 2]),
        ([2, 2], 9, [2, 2]),
    ],
)
def test_batches_delivered_follows_the_dataloaders_round_robin(
    counts: list[int], batches: int, expected: list[int]
) -> None:
    assert batches_delivered(counts, batches) == expected


def test_batches_delivered_matches_a_step_by_step_round_robin() -> None:
    rnd = random.Random(5)
    for _ in range(200):
        counts = [rnd.randrange(0, 6) for _ in range(rnd.randint(1, 5))]
        batches = rnd.randrange(0, sum(counts) + 2)
        delivered = [0] * len(counts)
        worker = 0
        for _ in range(min(batches, sum(counts))):
            while delivered[worker] == counts[worker]:
                worker = (worker + 1) % len(counts)
            delivered[worker] += 1
            worker = (worker + 1) % len(counts)
        assert batches_delivered(counts, batches) == delivered


def test_plan_jobs_reads_a_unit_once_for_its_scattered_buffered_members() -> None:
    segments = [
        Segment(0, 3, 4),
        Segment(0, 7, 8),
        Segment(0, 9, 12),
        Segment(1, 0, 2),
        Segment(0, 0, 1),  # the unit again, behind: a job of its own
    ]
    jobs = list(plan_jobs(["a", "b"], segments))  # type: ignore[arg-type]
    assert [(j.unit, j.start, j.stop, j.expected) for j in jobs] == [
        ("a", 3, 12, 5),
        ("b", 0, 2, 2),
        ("a", 0, 1, 1),
    ]
    assert [m for m in range(3, 12) if m in jobs[0].wanted] == [3, 7, 9, 10, 11]


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 60), min_size=2, max_size=12, unique=True),
    buffer=st.integers(0, 9),
    data=st.data(),
)
def test_coalesced_jobs_fetch_exactly_the_needed_members_in_order(
    cuts: list[int], buffer: int, data: st.DataObject
) -> None:
    bounds = sorted(cuts)
    keep = data.draw(st.lists(st.booleans(), min_size=len(bounds) - 1, max_size=len(bounds) - 1))
    segments = [Segment(0, a, b) for (a, b), k in zip(pairwise(bounds), keep, strict=True) if k]
    members = [m for s in segments for m in range(s.start, s.stop)]  # by local position
    emitted = data.draw(st.integers(0, len(members)))
    point = replay(len(members), buffer, random.Random(1), emitted)
    needed = sorted(set(point.pending) | set(range(point.arrived, len(members))))
    jobs = list(plan_jobs(["unit"], segments, point))  # type: ignore[arg-type]
    assert len(jobs) <= 1
    fetched = [m for j in jobs for m in range(j.start, j.stop) if m in j.wanted]
    assert fetched == [members[p] for p in needed]
    assert sum(j.expected for j in jobs) == len(needed)
