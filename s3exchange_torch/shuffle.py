"""A sample shuffle buffer whose decisions can be replayed without the data: pure, no I/O.

The buffer holds up to ``size`` samples. Each arriving sample is appended; once the buffer is
full, one slot chosen by the RNG is emitted (swapped to the end and popped); when the input ends
the rest drains in RNG order. So that the first samples do not wait for ``size`` arrivals, the
buffer starts emitting once it holds ``initial`` samples, one emission per two arrivals until
it is full (webdataset's ``shuffle(bufsize, initial)`` ramps up the same way). Whether a sample
is emitted, and which *slot*, depends only on the RNG and on counts, never on the samples.
So running the same algorithm over positions ``0..total-1`` (:func:`replay`) tells, for any
number ``k`` of samples already emitted, which input positions were emitted (those arrived and
no longer buffered), which are still buffered (and in which slots), and leaves the RNG exactly
where the live run had it.
A resumed run fetches only the buffered positions and the ones not yet arrived, and continues
with :func:`shuffled` to produce exactly the rest of the original sequence.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

__all__ = ["INITIAL", "ResumePoint", "buffer_rng", "replay", "restore_buffer", "shuffled"]

T = TypeVar("T")

INITIAL = 100
"""Samples buffered before the first emission (at most ``size``)."""


def buffer_rng(
    seed: int, epoch: int, rank: int, worker_id: int, num_workers: int, generation: int = 0
) -> random.Random:
    """The buffer's RNG for one (seed, epoch, rank, worker): identical in every process.

    ``generation`` counts the elastic resumes within the epoch (:mod:`.resume`), so that a
    resumed run does not draw the same stream as the run it continues.
    """
    text = f"s3exchange.shuffle:{seed}:{epoch}:{rank}:{worker_id}:{num_workers}"
    if generation:
        text += f":resumed{generation}"
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest(), "big"))


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a run stands after some samples were emitted.

    ``arrived``: input positions ``[0, arrived)`` have entered the buffer. ``pending``: the
    positions still buffered, in slot order. Every other position below ``arrived`` was emitted.
    """

    arrived: int
    pending: tuple[int, ...] = ()


def _pick(buffer: list[T], random01: float) -> T:
    """Emit the slot ``random01`` designates: swap it to the end and pop it (O(1))."""
    slot = int(random01 * len(buffer))
    last = len(buffer) - 1
    buffer[slot], buffer[last] = buffer[last], buffer[slot]
    return buffer.pop()


def _emits(buffered: int, arrived: int, size: int, initial: int) -> bool:
    """Whether arrival number ``arrived`` (leaving ``buffered`` held) triggers an emission."""
    return buffered >= size or (buffered >= initial and not arrived & 1)


def shuffled(
    items: Iterable[T],
    size: int,
    rng: random.Random,
    buffer: list[T] | None = None,
    *,
    arrived: int = 0,
    initial: int = INITIAL,
) -> Iterator[T]:
    """Yield ``items`` through a shuffle buffer of ``size`` slots.

    When resuming from a :class:`ResumePoint`, ``buffer`` pre-fills the slots (in slot order;
    it is consumed) and ``arrived`` says how many samples had arrived. ``size <= 1`` still
    draws from ``rng`` (one draw per sample), so that replay stays exact; callers skip the
    buffer entirely when they do not shuffle.
    """
    slots: list[T] = buffer if buffer is not None else []
    draw = rng.random
    size = max(size, 1)
    initial = min(max(initial, 1), size)
    for item in items:
        slots.append(item)
        arrived += 1
        if len(slots) >= size or (len(slots) >= initial and not arrived & 1):
            yield _pick(slots, draw())
    while slots:
        yield _pick(slots, draw())


def replay(
    total: int, size: int, rng: random.Random, emitted: int, *, initial: int = INITIAL
) -> ResumePoint:
    """Run the first ``emitted`` decisions of :func:`shuffled` over ``total`` positions.

    Advances ``rng`` exactly as the live run did, so ``shuffled(rest, size, rng, buffer,
    arrived=point.arrived)`` then continues the original sequence, where ``buffer`` holds the
    data of ``pending`` (slot order) and ``rest`` the data of positions ``arrived..total-1``.
    """
    if not 0 <= emitted <= total:
        raise ValueError(f"emitted must be in [0, {total}], got {emitted}")
    slots: list[int] = []
    draw = rng.random
    size = max(size, 1)
    initial = min(max(initial, 1), size)
    arrived = done = 0
    while done < emitted:
        if arrived < total:
            slots.append(arrived)
            arrived += 1
            if not _emits(len(slots), arrived, size, initial):
                continue
        _pick(slots, draw())
        done += 1
    return ResumePoint(arrived, tuple(slots))


def restore_buffer(items: Iterator[T], pending: tuple[int, ...]) -> list[T]:
    """The buffered samples of a resume point, in slot order.

    ``pending`` lists positions in slot order; their data arrives first, in position order.
    """
    if not pending:
        return []
    arrived = list(islice(items, len(pending)))
    if len(arrived) != len(pending):
        raise RuntimeError("the resumed stream ended before refilling the shuffle buffer")
    by_position = dict(zip(sorted(pending), arrived, strict=True))
    return [by_position[position] for position in pending]
