"""Pure helpers of s3exchange_torch on plain lists: shuffle buffer replay, sample keys, jobs.

No server and no process: these pin the properties the dataset's resumption and grouping rely on.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from webdataset.tariterators import base_plus_ext

from s3exchange import ShardReadError
from s3exchange.samples import key_and_field
from s3exchange.types import FileEntry
from s3exchange_torch.plan import EpochPlan, Segment
from s3exchange_torch.prefetch import Job, Wanted, plan_jobs
from s3exchange_torch.shuffle import ResumePoint, buffer_rng, replay, shuffled
from s3exchange_torch.units import Unit, count_groups


def rng() -> random.Random:
    return buffer_rng(seed=3, epoch=1, rank=0, worker_id=0, num_workers=1)


@given(
    total=st.integers(0, 60),
    size=st.integers(0, 80),
    initial=st.integers(0, 30),
    data=st.data(),
)
@settings(max_examples=300, deadline=None)
def test_replay_then_shuffled_continues_the_exact_sequence(
    total: int, size: int, initial: int, data: st.DataObject
) -> None:
    full = list(shuffled(range(total), size, rng(), initial=initial))
    emitted = data.draw(st.integers(0, total))
    resumed_rng = rng()
    point = replay(total, size, resumed_rng, emitted, initial=initial)
    delivered = set(range(point.arrived)) - set(point.pending)
    assert delivered == set(full[:emitted])
    assert len(point.pending) <= max(size, 1)
    rest = shuffled(
        range(point.arrived, total),
        size,
        resumed_rng,
        list(point.pending),
        arrived=point.arrived,
        initial=initial,
    )
    assert full[:emitted] + list(rest) == full


def test_the_buffer_starts_emitting_at_initial_and_fills_up_to_size() -> None:
    arrivals: list[int] = []

    def source() -> Iterator[int]:
        for i in range(3000):
            arrivals.append(i)
            yield i

    stream = shuffled(source(), 1000, rng(), initial=100)
    first = next(stream)
    assert len(arrivals) == 100  # not 1000: the first sample waits for 100 arrivals only
    assert first < 100
    for _ in range(1500):
        next(stream)
    # one emission per two arrivals while filling (100 -> 1000 takes 1800 arrivals), then one
    # per arrival: 1501 emissions need 100 + 1800 + (1501 - 1 - 900) arrivals
    assert len(arrivals) == 100 + 1800 + 600


def test_shuffled_is_a_permutation_that_depends_only_on_the_rng() -> None:
    items = [f"sample-{i}" for i in range(500)]
    first = list(shuffled(items, 64, rng()))
    assert sorted(first) == sorted(items)
    assert first != items
    assert list(shuffled(items, 64, rng())) == first
    assert list(shuffled(items, 64, buffer_rng(3, 2, 0, 0, 1))) != first  # another epoch


def test_buffer_rng_differs_per_worker_and_rank() -> None:
    draws = {
        (rank, worker): buffer_rng(0, 0, rank, worker, 2).random()
        for rank in range(2)
        for worker in range(2)
    }
    assert len(set(draws.values())) == 4


def test_replay_rejects_more_emitted_than_total() -> None:
    with pytest.raises(ValueError, match="emitted"):
        replay(3, 2, rng(), 4)


@pytest.mark.parametrize(
    "path",
    [
        "a.jpg",
        "dir/x.seg.PNG",
        "d.v/x.cls",
        "noext",
        "dir/.hidden",
        "a.b/c",
        "/abs.x",
        "dir.d/noext",
        "x.",
        "a/b/c.d.e",
        "__manifest__.jsonl",
    ],
)
def test_key_and_field_splits_paths_like_webdataset(path: str) -> None:
    key, field = base_plus_ext(path)
    expected = None if key is None else (key, field.lower())
    assert key_and_field(path) == expected


def test_count_groups_counts_runs_of_keys_and_skips_paths_without_extension() -> None:
    paths = ["a.jpg", "a.cls", "b.jpg", "README", "b.cls", "a.jpg", "c.txt"]
    assert count_groups(paths, "s.tar") == 4  # a, b, a again (a new run), c


def test_count_groups_rejects_a_repeated_field() -> None:
    with pytest.raises(ShardReadError, match=r"s\.tar.*repeats field 'jpg'"):
        count_groups(["a.jpg", "a.JPG"], "s.tar")


def test_wanted_holds_explicit_indices_and_the_tail() -> None:
    wanted = Wanted(frozenset({1, 3}), tail=6)
    assert [i for i in range(9) if i in wanted] == [1, 3, 6, 7, 8]


def units_for(counts: list[int]) -> list[Unit]:
    units: list[Unit] = []
    for n, count in enumerate(counts):
        if count == 1:
            entry: FileEntry = {"kind": "file", "key": f"f{n}"}
            units.append(entry)
        else:
            units.append({"kind": "shard", "archive_key": f"s{n}.tar", "count": count})
    return units


def positions(jobs: list[Job], units: list[Unit], segments: list[Segment]) -> list[int]:
    """The worker positions the jobs fetch; jobs come in segment order, empty ones left out."""
    out: list[int] = []
    pending = iter(jobs)
    job = next(pending, None)
    base = 0
    for segment in segments:
        if job is not None and (job.unit, job.start, job.stop) == (
            units[segment.unit],
            segment.start,
            segment.stop,
        ):
            out += [base + i - job.start for i in range(job.start, job.stop) if i in job.wanted]
            job = next(pending, None)
        base += segment.size
    assert job is None
    return out


@given(
    counts=st.lists(st.sampled_from([1, 1, 3, 5]), min_size=1, max_size=12),
    size=st.integers(2, 9),
    data=st.data(),
)
@settings(max_examples=100, deadline=None)
def test_plan_jobs_fetch_exactly_the_buffered_and_unarrived_positions(
    counts: list[int], size: int, data: st.DataObject
) -> None:
    plan = EpochPlan(counts, seed=1, shuffle=True)
    segments = plan.segments(0)
    total = sum(s.size for s in segments)
    emitted = data.draw(st.integers(0, total))
    point = replay(total, size, rng(), emitted)
    units = units_for(counts)
    jobs = list(plan_jobs(units, segments, point))
    fetched = positions(jobs, units, segments)
    assert fetched == sorted(set(point.pending) | set(range(point.arrived, total)))
    assert sum(job.expected for job in jobs) == len(fetched)
    assert all(job.expected for job in jobs)


def test_plan_jobs_without_resume_fetches_every_segment_whole() -> None:
    segments = [Segment(0, 0, 3), Segment(1, 0, 1), Segment(0, 3, 5)]
    jobs = list(plan_jobs(units_for([5, 1]), segments, ResumePoint(0)))
    assert [(j.start, j.stop, j.expected) for j in jobs] == [(0, 3, 3), (0, 1, 1), (3, 5, 2)]
