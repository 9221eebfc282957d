"""Weighted mixing of several manifests into one epoch: a pure plan, no I/O.

Each source ``j`` contributes a *quota* ``T_j`` of samples to an epoch of ``T = sum(T_j)``
(:func:`quotas`: from the weights and the stop rule). Source ``j``'s ``k``-th sample is its
``k mod N_j``-th sample in the epoch order of cycle ``k // N_j`` (a fresh permutation of its
units per ``(seed, epoch, source, cycle)``), so a quota below ``N_j`` reads a different subset
each epoch and one above it repeats every sample before any sample a third time.

The mixed order is *stratified*: sample ``k`` of source ``j`` sits at the fraction
``(k + u_j) / T_j`` of the epoch, ``u_j`` a random phase drawn from ``(seed, epoch, j)``, and
samples are sorted by that fraction (ties by source). So any window of ``L`` consecutive
samples holds ``L * T_j / T`` of source ``j`` to within one sample, never long runs of one
source, and the order needs no list: :meth:`MixPlan.prefix` counts how many samples of each
source precede a position in O(sources^2), exact in integer arithmetic (the fractions are
compared over a common denominator), which is how ranks and workers cut contiguous slices.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

from .plan import EpochPlan, Segment
from .shuffle import ResumePoint

T = TypeVar("T")

__all__ = ["MixPlan", "Source", "Stop", "interleave", "quotas", "source_points"]

Stop: TypeAlias = Literal["first_exhausted", "all_exhausted"] | int
"""When a mixed epoch ends: when the first source runs out of its samples, when the last does
(the others repeating to keep the weights), or after a fixed number of samples."""

_PHASE_BITS = 32


@dataclass(frozen=True, slots=True)
class Source:
    """One manifest of a mix.

    ``weight``: its share of the mixed stream (normalised over the sources). ``repeat``: how
    many passes over its samples make its quota under ``"first_exhausted"``/
    ``"all_exhausted"`` (``None``: 1; ``2.0`` upsamples, ``0.5`` reads a different half each
    epoch); a fixed epoch size sets the quotas from the weights alone.
    """

    manifest: Any
    weight: float = 1.0
    repeat: float | None = None

    def __post_init__(self) -> None:
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"a source's weight must be > 0, got {self.weight!r}")
        if self.repeat is not None and not (self.repeat > 0 and math.isfinite(self.repeat)):
            raise ValueError(f"a source's repeat must be > 0, got {self.repeat!r}")


def check_stop(stop: object) -> None:
    """Refuse (ValueError) anything but a :data:`Stop`."""
    if stop in ("first_exhausted", "all_exhausted"):
        return
    if isinstance(stop, int) and not isinstance(stop, bool) and stop >= 0:
        return
    raise ValueError(
        f"stop must be 'first_exhausted', 'all_exhausted' or an int >= 0, got {stop!r}"
    )


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` cut in proportion to ``weights`` (largest remainder; ties to the first)."""
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    parts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda j: (parts[j] - exact[j], j))
    for j in order[: total - sum(parts)]:
        parts[j] += 1
    return parts


def quotas(sizes: Sequence[int], sources: Sequence[Source], stop: Stop) -> list[int]:
    """Samples each source contributes to one epoch; they sum to the epoch's size."""
    check_stop(stop)
    weights = [s.weight for s in sources]
    for index, (size, source) in enumerate(zip(sizes, sources, strict=True)):
        if size == 0:
            raise ValueError(f"source {index} ({source.manifest!r}) has no samples to mix")
    if isinstance(stop, int):
        if any(s.repeat is not None for s in sources):
            raise ValueError("a fixed epoch size sets every source's quota: leave repeat unset")
        return _apportion(stop, weights)
    passes = [
        size * (1.0 if s.repeat is None else s.repeat)
        for size, s in zip(sizes, sources, strict=True)
    ]
    owed = [max(1, math.floor(x)) for x in passes]
    whole = sum(weights)
    spans = [o * whole / w for o, w in zip(owed, weights, strict=True)]
    if stop == "first_exhausted":
        parts = _apportion(math.floor(min(spans)), weights)
        return [min(p, o) for p, o in zip(parts, owed, strict=True)]
    parts = _apportion(math.ceil(max(spans)), weights)
    return [max(p, o) for p, o in zip(parts, owed, strict=True)]


class MixPlan:
    """The mixed order of one epoch: which source each position belongs to, never listed.

    Build it per ``(quotas, seed, epoch)``: O(sources); :meth:`prefix` is O(sources^2).
    """

    __slots__ = ("_last", "_phase", "_scale", "_span", "num_samples", "quotas")

    def __init__(self, quotas: Sequence[int], *, seed: int, epoch: int) -> None:
        if any(q < 0 for q in quotas):
            raise ValueError(f"quotas must be >= 0, got {list(quotas)}")
        self.quotas = tuple(quotas)
        self.num_samples = sum(self.quotas)
        live = [q for q in self.quotas if q]
        common = math.lcm(*live) if live else 1
        # sample k of source j has the integer key ((k << 32) + phase_j) * scale_j * S + j:
        # its fraction of the epoch over a common denominator, ties broken by j.
        self._scale = [common // q if q else 0 for q in self.quotas]
        self._phase = [_phase(seed, epoch, j) for j in range(len(self.quotas))]
        self._span = ((1 << _PHASE_BITS) * common) * len(self.quotas) + len(self.quotas)
        self._last: tuple[int, list[int]] = (0, [0] * len(self.quotas))  # one worker's end is
        # the next one's start: planning every worker of 4,096 ranks x 16 took 2.3 s without

    def key(self, source: int, index: int) -> int:
        """The sort key of sample ``index`` of ``source``."""
        count = len(self.quotas)
        base = (index << _PHASE_BITS) + self._phase[source]
        return base * self._scale[source] * count + source

    def _below(self, bound: int) -> list[int]:
        """Samples of each source whose key is below ``bound``."""
        count = len(self.quotas)
        out = []
        for j, quota in enumerate(self.quotas):
            if not quota:
                out.append(0)
                continue
            top = (bound - j - 1) // (self._scale[j] * count)  # largest allowed base
            below = ((top - self._phase[j]) >> _PHASE_BITS) + 1
            out.append(min(max(below, 0), quota))
        return out

    def prefix(self, position: int) -> list[int]:
        """How many samples of each source the first ``position`` positions hold.

        Keys below the fraction ``position / T`` of the key space are within one per source of
        ``position`` (each source's keys are evenly spaced), so at most ``sources`` steps of
        one sample each correct the guess: O(sources^2), no search.
        """
        total = self.num_samples
        if not 0 <= position <= total:
            raise ValueError(f"position must be in [0, {total}], got {position}")
        if position == total:
            return list(self.quotas)
        if self._last[0] == position:
            return list(self._last[1])
        counts = self._below(position * self._span // total)
        held = sum(counts)
        live = [j for j, quota in enumerate(self.quotas) if quota]
        while held < position:  # take the smallest key not yet counted
            j = min(
                (j for j in live if counts[j] < self.quotas[j]),
                key=lambda j: self.key(j, counts[j]),
            )
            counts[j] += 1
            held += 1
        while held > position:  # give back the largest key counted
            j = max((j for j in live if counts[j]), key=lambda j: self.key(j, counts[j] - 1))
            counts[j] -= 1
            held -= 1
        self._last = (position, list(counts))
        return counts

    def pieces(self, ranges: Iterable[tuple[int, int]]) -> list[list[tuple[int, int]]]:
        """For positions ``ranges``, each source's index ranges, in order (one per range)."""
        out: list[list[tuple[int, int]]] = [[] for _ in self.quotas]
        for start, stop in ranges:
            first, last = self.prefix(start), self.prefix(stop)
            for j, (lo, hi) in enumerate(zip(first, last, strict=True)):
                if lo < hi:
                    out[j].append((lo, hi))
        return out

    def order(self, ranges: Iterable[tuple[int, int]]) -> Iterator[int]:
        """The source of each sample at positions ``ranges``, in order."""
        for start, stop in ranges:
            first, last = self.prefix(start), self.prefix(stop)
            heap = [(self.key(j, lo), j, lo) for j, lo in enumerate(first) if lo < last[j]]
            heapq.heapify(heap)
            while heap:
                _, j, index = heap[0]
                yield j
                if index + 1 < last[j]:
                    heapq.heapreplace(heap, (self.key(j, index + 1), j, index + 1))
                else:
                    heapq.heappop(heap)


def _phase(seed: int, epoch: int, source: int) -> int:
    text = f"s3exchange.mix:{seed}:{epoch}:{source}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:4], "big")


def cycle_seed(seed: int, source: int, cycle: int) -> int:
    """The unit-order seed of ``source``'s pass number ``cycle`` over its samples."""
    text = f"s3exchange.mix.cycle:{seed}:{source}:{cycle}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def source_segments(
    counts: Sequence[int],
    ranges: Iterable[tuple[int, int]],
    *,
    source: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    plans: dict[int, EpochPlan],
) -> list[Segment]:
    """Segments of one source's index ``ranges``: index ``k`` is position ``k mod N`` of the
    plan of pass ``k // N``; ``plans`` caches those plans by pass."""

    def cycle_plan(cycle: int) -> EpochPlan:
        plan = plans.get(cycle)
        if plan is None:
            plan = EpochPlan(
                counts, seed=cycle_seed(seed, source, cycle), epoch=epoch, shuffle=shuffle
            )
            plans[cycle] = plan
        return plan

    out: list[Segment] = []
    for start, stop in ranges:
        size = cycle_plan(0).num_samples  # not sum(counts): O(units) per call
        index = start
        while index < stop:
            cycle, position = divmod(index, size)
            take = min(stop - index, size - position)
            out += cycle_plan(cycle).segments_at([(position, position + take)])
            index += take
    return out


def source_points(point: ResumePoint, order: Iterator[int], sources: int) -> list[ResumePoint]:
    """``point`` (over the worker's mixed positions) as one resume point per source."""
    pending = set(point.pending)
    arrived = [0] * sources
    buffered: list[list[int]] = [[] for _ in range(sources)]
    for position, source in zip(range(point.arrived), order, strict=False):
        if position in pending:
            buffered[source].append(arrived[source])
        arrived[source] += 1
    return [ResumePoint(a, tuple(b)) for a, b in zip(arrived, buffered, strict=True)]


def interleave(
    streams: Sequence[Iterator[T]], order: Iterator[int], point: ResumePoint
) -> Iterator[T]:
    """The sources' streams merged in ``order``, leaving out what ``point`` says was read."""
    pending = set(point.pending)
    for position, source in enumerate(order):
        if position < point.arrived and position not in pending:
            continue  # delivered before the resume: its source never fetched it
        yield next(streams[source])
