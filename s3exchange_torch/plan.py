"""Which samples each rank and DataLoader worker reads in one epoch: a pure function, no I/O.

A *unit* is a loose file (1 sample) or a shard (``count`` member samples). The epoch's unit order
is the manifest order, or a permutation drawn from ``(seed, epoch)`` when shuffling; concatenating
the units in that order gives a global sequence of ``N = sum(counts)`` sample positions. Ranks get
contiguous slices of it (so each reads long runs of whole shards), and each rank's slice is split
contiguously among its workers. The order depends on nothing but ``(counts, seed, epoch,
shuffle)``: it is identical in every process (``PYTHONHASHSEED`` plays no part) and for any
number of ranks or workers.

``balance`` decides what happens when ``N`` does not divide by the world size:

- ``None``: rank ``r`` gets ``[floor(r*N/W), floor((r+1)*N/W))``; every sample exactly once.
- ``"drop"``: every rank gets ``q = N // W`` samples, ``[r*q, (r+1)*q)``; fewer than ``W`` dropped.
- ``"pad"``: every rank gets ``q = ceil(N / W)`` samples, ``[r*q, (r+1)*q)`` modulo ``N`` (wrapping
  to the start of the sequence); fewer than ``W`` samples repeat.
"""

from __future__ import annotations

import hashlib
import operator
import random
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal, TypeAlias

__all__ = [
    "Balance",
    "EpochPlan",
    "Segment",
    "check_balance",
    "plan_worker",
    "rank_bounds",
    "rank_size",
    "split_bounds",
]

Balance: TypeAlias = Literal["pad", "drop"] | None
"""How ranks are evened out: ``None`` (exact split), ``"pad"`` (repeat) or ``"drop"`` (truncate)."""

_BALANCES: tuple[Balance, ...] = (None, "pad", "drop")


@dataclass(frozen=True, slots=True)
class Segment:
    """Members ``[start, stop)`` of unit ``unit`` (an index into the ``counts`` of the plan)."""

    unit: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of samples in the segment."""
        return self.stop - self.start


def check_balance(balance: object) -> None:
    """Refuse (ValueError) anything but a :data:`Balance`; the one place this is checked."""
    if balance not in _BALANCES:
        raise ValueError(f"balance must be None, 'pad' or 'drop', got {balance!r}")


def _check_index(name: str, value: int, bound: int, bound_name: str) -> None:
    if not 0 <= value < bound:
        raise ValueError(f"{name} must be in [0, {bound_name}={bound}), got {value}")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def split_bounds(total: int, parts: int, index: int) -> tuple[int, int]:
    """Bounds of part ``index`` when ``total`` items are cut into ``parts`` contiguous parts."""
    return index * total // parts, (index + 1) * total // parts


def rank_bounds(num_samples: int, world_size: int, rank: int, balance: Balance) -> tuple[int, int]:
    """Positions ``[start, stop)`` of ``rank`` in a sequence of ``num_samples`` (see above)."""
    if balance is None:
        return split_bounds(num_samples, world_size, rank)
    per_rank = num_samples // world_size if balance == "drop" else -(-num_samples // world_size)
    return rank * per_rank, (rank + 1) * per_rank


def rank_size(num_samples: int, world_size: int, rank: int, balance: Balance = None) -> int:
    """Samples rank ``rank`` reads per epoch out of ``num_samples`` (for ``len(dataset)``)."""
    _check_positive("world_size", world_size)
    _check_index("rank", rank, world_size, "world_size")
    check_balance(balance)
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    start, stop = rank_bounds(num_samples, world_size, rank, balance)
    return stop - start


def _shuffle_seed(seed: int, epoch: int) -> int:
    """A process-independent integer mixed from ``(seed, epoch)`` (``hash()`` is salted)."""
    digest = hashlib.sha256(f"s3exchange.plan:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest, "big")


class EpochPlan:
    """The unit order and prefix sums of one epoch; answers any (rank, worker) in O(log units).

    Build it once per ``(counts, seed, epoch, shuffle, world_size, balance)``; building is O(units)
    and :meth:`segments` then costs O(log units + segments returned).
    """

    __slots__ = ("_cum", "_order", "balance", "num_samples", "world_size")

    def __init__(
        self,
        counts: Sequence[int],
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = False,
        world_size: int = 1,
        balance: Balance = None,
    ) -> None:
        _check_positive("world_size", world_size)
        check_balance(balance)
        try:
            sizes = array("q", counts)  # compact for millions of units
        except TypeError as exc:
            raise TypeError(f"counts must be integers: {exc}") from None
        if sizes and min(sizes) < 0:
            raise ValueError(f"counts must be >= 0, got {min(sizes)}")
        mixed_seed = _shuffle_seed(operator.index(seed), operator.index(epoch))
        order: Sequence[int]
        if shuffle:
            permutation = array("q", range(len(sizes)))
            random.Random(mixed_seed).shuffle(permutation)
            order = permutation
            ordered: Sequence[int] = [sizes[unit] for unit in permutation]
        else:
            order = range(len(sizes))
            ordered = sizes
        self._order = order
        # _cum[k] is the global position of the first sample of the k-th unit in epoch order.
        self._cum = array("q", accumulate(ordered, initial=0))
        self.num_samples: int = self._cum[-1]
        self.world_size = world_size
        self.balance = balance

    @property
    def order(self) -> Sequence[int]:
        """Unit indices in this epoch's reading order (do not mutate)."""
        return self._order

    def rank_slice(self, rank: int) -> tuple[int, int]:
        """Global positions ``[start, stop)`` of ``rank``; with ``"pad"`` they are taken mod N."""
        _check_index("rank", rank, self.world_size, "world_size")
        return rank_bounds(self.num_samples, self.world_size, rank, self.balance)

    def rank_size(self, rank: int) -> int:
        """Samples ``rank`` reads this epoch."""
        start, stop = self.rank_slice(rank)
        return stop - start

    def worker_slice(self, rank: int, worker_id: int = 0, num_workers: int = 1) -> tuple[int, int]:
        """Global positions ``[start, stop)`` of one worker of ``rank`` (mod N with ``"pad"``)."""
        _check_positive("num_workers", num_workers)
        _check_index("worker_id", worker_id, num_workers, "num_workers")
        rank_start, rank_stop = self.rank_slice(rank)
        lo, hi = split_bounds(rank_stop - rank_start, num_workers, worker_id)
        return rank_start + lo, rank_start + hi

    def worker_size(self, rank: int, worker_id: int = 0, num_workers: int = 1) -> int:
        """Samples one worker of ``rank`` reads this epoch; sibling workers differ by at most 1."""
        start, stop = self.worker_slice(rank, worker_id, num_workers)
        return stop - start

    def segments(self, rank: int, worker_id: int = 0, num_workers: int = 1) -> list[Segment]:
        """The worker's samples as unit segments in reading order.

        A unit appears once, except with ``"pad"`` where the wrap to the start of the sequence may
        bring a unit back (never as a continuation of the previous segment).
        """
        start, stop = self.worker_slice(rank, worker_id, num_workers)
        length = stop - start
        if length == 0:
            return []
        # A rank never holds more than N samples (ceil(N/W) <= N), so the slice wraps at most once.
        first = start % self.num_samples
        if first + length <= self.num_samples:
            return self._between(first, first + length)
        return self._between(first, self.num_samples) + self._between(
            0, first + length - self.num_samples
        )

    def segments_at(self, ranges: Iterable[tuple[int, int]]) -> list[Segment]:
        """Segments covering the global position ``ranges`` (each within ``[0, N)``), in order:
        what a worker reads when it resumes the rest of an epoch (:mod:`.resume`)."""
        out: list[Segment] = []
        for start, stop in ranges:
            if not 0 <= start <= stop <= self.num_samples:
                raise ValueError(f"positions [{start}, {stop}) outside [0, {self.num_samples})")
            if start < stop:
                out += self._between(start, stop)
        return out

    def _between(self, start: int, stop: int) -> list[Segment]:
        """Segments covering global positions ``[start, stop)``, ``0 <= start < stop <= N``."""
        cum, order = self._cum, self._order
        out: list[Segment] = []
        k = bisect_right(cum, start) - 1  # last unit starting at or before `start`: non-empty
        pos = start
        while pos < stop:
            base = cum[k]
            end = min(cum[k + 1], stop)
            out.append(Segment(order[k], pos - base, end - base))
            pos = end
            k = bisect_right(cum, pos, k + 1) - 1  # skips empty units without a linear scan
        return out


def plan_worker(
    counts: Sequence[int],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    world_size: int,
    balance: Balance,
    rank: int,
    worker_id: int = 0,
    num_workers: int = 1,
) -> tuple[list[Segment], int]:
    """One worker's segments and sample count; build an :class:`EpochPlan` to ask for many."""
    plan = EpochPlan(
        counts, seed=seed, epoch=epoch, shuffle=shuffle, world_size=world_size, balance=balance
    )
    segments = plan.segments(rank, worker_id, num_workers)
    return segments, sum(segment.size for segment in segments)
