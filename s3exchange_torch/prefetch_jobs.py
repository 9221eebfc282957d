"""A worker's plan as fetch jobs: one unit segment each, with the members it still needs.

Pure: :func:`plan_jobs` turns segments and a resume point into :class:`Job` values that
:class:`~s3exchange_torch.prefetch.Prefetcher` runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .plan import Segment
from .shuffle import ResumePoint
from .units import Unit

__all__ = ["Job", "Wanted", "plan_jobs"]


@dataclass(frozen=True, slots=True)
class Wanted:
    """Which member indices of a segment are fetched: ``explicit`` ones and all from ``tail``."""

    explicit: frozenset[int] = frozenset()
    tail: int = 0

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and (index >= self.tail or index in self.explicit)


@dataclass(frozen=True, slots=True)
class Job:
    """Samples ``[start, stop)`` of ``unit`` (members, or groups when grouping), as ``wanted``."""

    unit: Unit
    start: int
    stop: int
    wanted: Wanted = Wanted()

    @property
    def expected(self) -> int:
        """How many samples this job delivers."""
        return len(self.wanted.explicit) + max(0, self.stop - max(self.wanted.tail, self.start))


_START = ResumePoint(0)


def plan_jobs(
    units: Sequence[Unit], segments: Iterable[Segment], point: ResumePoint = _START
) -> Iterator[Job]:
    """Jobs for a worker's segments, fetching only positions ``point`` says are still needed.

    A worker's positions number its segments' samples consecutively. Needed are the buffered
    ``point.pending`` and everything from ``point.arrived`` on; jobs that need nothing are left
    out, so a resumed epoch never downloads what it already delivered. Consecutive segments of
    one unit in increasing member order (what an elastic resume hands a worker: the members an
    old worker's shuffle buffer held, one segment each) become one job, so the shard is read
    once, not once per member.
    """
    pending = sorted(point.pending)
    next_pending = 0
    base = 0
    run: list[tuple[Segment, list[int], int]] = []  # segments of one unit, wanted members
    for segment in segments:
        end = base + segment.size
        explicit: list[int] = []
        while next_pending < len(pending) and pending[next_pending] < end:
            explicit.append(segment.start + pending[next_pending] - base)
            next_pending += 1
        tail = segment.start + max(0, point.arrived - base)
        previous = run[-1][0] if run else None
        if previous is not None and (
            previous.unit != segment.unit or segment.start < previous.stop
        ):
            job = _job(units, run)
            if job.expected:
                yield job
            run = []
        run.append((segment, explicit, tail))
        base = end
    if run:
        job = _job(units, run)
        if job.expected:
            yield job


def _job(units: Sequence[Unit], run: list[tuple[Segment, list[int], int]]) -> Job:
    """One job for segments of one unit: the last one's tail stays a tail, the members wanted
    before it (in earlier segments, or buffered) are listed."""
    explicit: list[int] = []
    for segment, buffered, tail in run[:-1]:
        explicit += buffered
        explicit += range(max(tail, segment.start), segment.stop)
    last, buffered, tail = run[-1]
    explicit += buffered
    first = run[0][0]
    return Job(units[last.unit], first.start, last.stop, Wanted(frozenset(explicit), tail))
