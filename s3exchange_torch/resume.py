"""What remains of an epoch after interrupted runs, for any number of ranks and workers: pure.

An epoch's samples are the global positions ``0..N-1`` of its plan (:class:`~.plan.EpochPlan`).
A *run* (one launch of the job, until it is interrupted) reads a sequence ``S`` of positions,
cut per rank then per worker exactly as the plan cuts ``[0, N)``, ``balance`` included; the
first run's ``S`` is ``[0, N)`` itself. When a run is interrupted, worker ``j`` has emitted
``e_j`` samples of its slice. Replaying its shuffle buffer (:func:`~.shuffle.replay`) tells
which of its positions were still buffered, so what it did not deliver is a *block*: those
buffered positions (in order), then its slice's unread tail. The next run's ``S`` is the
concatenation of the blocks in (rank, worker) order, and is cut for the new topology the same
way (``"pad"``/``"drop"`` even out the new ranks over what remains).

So a run is its topology plus one emitted count per worker (:class:`Run`), and the rest of an
epoch after any number of runs is their list (:class:`Remainder`): a few integers per worker per
resume, never a list of samples, and the same whatever the shuffle buffer held. Mapping a slice
of the latest ``S`` back to global positions (:meth:`Remainder.ranges`) replays only the
workers whose blocks the slice overlaps, so a resumed worker pays for its own share.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from .plan import Balance, check_balance, rank_bounds, split_bounds
from .shuffle import buffer_rng, replay

__all__ = [
    "STATE_VERSION",
    "Range",
    "Remainder",
    "Run",
    "batches_delivered",
    "merge_states",
    "runs_of",
    "worker_bounds",
    "worker_rng",
]

Range = tuple[int, int]
"""Global sample positions ``[start, stop)`` of an epoch."""


def worker_rng(
    seed: int, epoch: int, run: int, rank: int, worker_id: int, num_workers: int
) -> random.Random:
    """The shuffle buffer RNG of one worker of run ``run`` (the first run: ``run == 0``)."""
    return buffer_rng(seed, epoch, rank, worker_id, num_workers, generation=run)


@dataclass(frozen=True, slots=True)
class Run:
    """One interrupted run: its topology and the samples each worker emitted (rank-major)."""

    world_size: int
    num_workers: int
    balance: Balance
    emitted: tuple[int, ...]

    def __post_init__(self) -> None:
        check_balance(self.balance)
        if self.world_size < 1 or self.num_workers < 1:
            raise ValueError(f"a run needs ranks and workers >= 1, got {self.topology}")
        if len(self.emitted) != self.world_size * self.num_workers:
            raise ValueError(
                f"a run of {self.world_size} ranks x {self.num_workers} workers needs "
                f"{self.world_size * self.num_workers} emitted counts, got {len(self.emitted)}"
            )

    @property
    def topology(self) -> tuple[int, int, Balance]:
        """``(world_size, num_workers, balance)``."""
        return self.world_size, self.num_workers, self.balance

    def to_state(self) -> dict[str, Any]:
        """Plain values for a state dict."""
        return {
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "balance": self.balance,
            "emitted": list(self.emitted),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Run:
        """The inverse of :meth:`to_state`."""
        try:
            return cls(
                int(state["world_size"]),
                int(state["num_workers"]),
                state["balance"],
                tuple(int(e) for e in state["emitted"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a run record: {exc!r}") from None


def worker_bounds(
    length: int, world_size: int, num_workers: int, balance: Balance, rank: int, worker_id: int
) -> tuple[int, int]:
    """Indices ``[start, stop)`` of one worker's slice of a sequence of ``length`` (mod
    ``length`` with ``"pad"``), cut as :class:`~.plan.EpochPlan` cuts an epoch."""
    start, stop = rank_bounds(length, world_size, rank, balance)
    lo, hi = split_bounds(stop - start, num_workers, worker_id)
    return start + lo, start + hi


class Remainder:
    """The rest of one epoch of ``num_samples`` samples after the interrupted ``runs``.

    ``buffer`` is the shuffle buffer size the runs used (0 when they did not buffer). Building
    is O(workers of all runs); :meth:`ranges` costs a buffer replay per overlapped worker.
    """

    __slots__ = ("_blocks", "_buffer", "_epoch", "_lengths", "_pending", "_runs", "_seed")

    def __init__(
        self, num_samples: int, runs: Sequence[Run], *, seed: int, epoch: int, buffer: int
    ) -> None:
        self._runs = tuple(runs)
        self._seed = seed
        self._epoch = epoch
        self._buffer = buffer
        self._lengths = [num_samples]  # length of run g's sequence S_g, and what remains last
        self._blocks: list[array[int]] = []  # per run: prefix sums of its workers' blocks
        for g, run in enumerate(self._runs):
            length = self._lengths[g]
            remaining = []
            for rank in range(run.world_size):
                for worker in range(run.num_workers):
                    start, stop = worker_bounds(length, *run.topology, rank, worker)
                    emitted = run.emitted[rank * run.num_workers + worker]
                    if not 0 <= emitted <= stop - start:
                        raise ValueError(
                            f"cannot resume: run {g} has rank {rank} worker {worker} emitting "
                            f"{emitted} of its {stop - start} samples (did the manifest change?)"
                        )
                    remaining.append(stop - start - emitted)
            self._blocks.append(array("q", accumulate(remaining, initial=0)))
            self._lengths.append(self._blocks[-1][-1])
        self._pending: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}

    @property
    def runs(self) -> tuple[Run, ...]:
        """The interrupted runs, oldest first."""
        return self._runs

    @property
    def num_samples(self) -> int:
        """Samples (with ``"pad"`` repeats) that remain to be read."""
        return self._lengths[-1]

    def worker_ranges(
        self, world_size: int, num_workers: int, balance: Balance, rank: int, worker_id: int
    ) -> list[Range]:
        """The global positions one worker of the next run reads, in reading order."""
        start, stop = worker_bounds(
            self.num_samples, world_size, num_workers, balance, rank, worker_id
        )
        return self.ranges(start, stop)

    def ranges(self, start: int, stop: int) -> list[Range]:
        """Global positions of indices ``[start, stop)`` of what remains, adjacent ones merged;
        indices past the end wrap around (``"pad"``)."""
        out: list[Range] = []
        self._resolve(len(self._runs), start, stop, out)
        return out

    # -- mapping back through the runs ---------------------------------------------------------

    def _resolve(self, g: int, start: int, stop: int, out: list[Range]) -> None:
        """Append the global positions of indices ``[start, stop)`` of sequence ``S_g``."""
        length = self._lengths[g]
        while start < stop:
            first = start % length
            take = min(stop - start, length - first)
            if g == 0:
                _append(out, first, first + take)
            else:
                self._within(g, first, first + take, out)
            start += take

    def _within(self, g: int, start: int, stop: int, out: list[Range]) -> None:
        """``_resolve`` for ``0 <= start < stop <= len(S_g)``, ``g >= 1``: walk run g-1's blocks."""
        run = self._runs[g - 1]
        cum = self._blocks[g - 1]
        length = self._lengths[g - 1]
        pos = start
        block = bisect_right(cum, pos) - 1
        while pos < stop:
            base, end = cum[block], min(cum[block + 1], stop)
            rank, worker = divmod(block, run.num_workers)
            first, _ = worker_bounds(length, *run.topology, rank, worker)
            arrived, pending = self._replayed(g - 1, block)
            lo, hi = pos - base, end - base  # offsets inside this block
            for offset in range(lo, min(hi, len(pending))):
                local = first + pending[offset]
                self._resolve(g - 1, local, local + 1, out)
            if hi > len(pending):
                skip = arrived - len(pending)
                self._resolve(g - 1, first + max(lo, len(pending)) + skip, first + hi + skip, out)
            pos = end
            block = bisect_right(cum, pos, block + 1) - 1

    def _replayed(self, g: int, block: int) -> tuple[int, tuple[int, ...]]:
        """Run g's worker ``block``: how many of its samples arrived, and the buffered ones
        (local indices, sorted)."""
        key = (g, block)
        cached = self._pending.get(key)
        if cached is not None:
            return cached
        run = self._runs[g]
        emitted = run.emitted[block]
        if self._buffer <= 1:
            result: tuple[int, tuple[int, ...]] = (emitted, ())
        else:
            rank, worker = divmod(block, run.num_workers)
            start, stop = worker_bounds(self._lengths[g], *run.topology, rank, worker)
            rng = worker_rng(self._seed, self._epoch, g, rank, worker, run.num_workers)
            point = replay(stop - start, self._buffer, rng, emitted)
            result = (point.arrived, tuple(sorted(point.pending)))
        self._pending[key] = result
        return result


def _append(out: list[Range], start: int, stop: int) -> None:
    if out and out[-1][1] == start:
        out[-1] = (out[-1][0], stop)
    else:
        out.append((start, stop))


def batches_delivered(batch_counts: Sequence[int], batches: int) -> list[int]:
    """Batches each worker delivered after ``batches`` in DataLoader order: round-robin from
    worker 0, skipping workers that have none left (``batch_counts[w]`` each)."""
    delivered = [0] * len(batch_counts)
    left = batches
    active = [w for w, count in enumerate(batch_counts) if count > 0]
    while left > 0 and active:
        rounds = min(*(batch_counts[w] - delivered[w] for w in active), left // len(active))
        if rounds == 0:
            for w in active[:left]:
                delivered[w] += 1
            break
        for w in active:
            delivered[w] += rounds
        left -= rounds * len(active)
        active = [w for w in active if delivered[w] < batch_counts[w]]
    return delivered


# -- states ------------------------------------------------------------------------------------

STATE_VERSION = 2
"""Version of the dataset's states: 2 added ``num_samples`` and ``runs`` (elastic resume); a
version 1 state still loads."""
_DATA_KEYS = ("seed", "shuffle", "shuffle_buffer", "group_by", "mix")
_SHARED_KEYS = (*_DATA_KEYS, "epoch", "world_size", "num_workers", "balance", "runs")


def merge_states(
    states: Iterable[Mapping[str, Any]],
    *,
    batches: int | None = None,
    batch_size: int | None = None,
    drop_last: bool = False,
) -> dict[str, Any]:
    """The elastic state of a job from its worker states: see
    :meth:`~s3exchange_torch.S3ExchangeIterableDataset.merge_states`."""
    workers: dict[tuple[int, int], Mapping[str, Any]] = {}
    placeholders: list[tuple[int, int, int, int]] = []  # (rank, world, workers, worker_id)
    bases: list[Mapping[str, Any]] = []
    for state in states:
        stateful = _stateful_loader(state)
        if stateful is not None:  # a torchdata StatefulDataLoader state
            inner, yielded = stateful
            batches = yielded if batches is None else batches
            for saved in inner:
                if saved.get("kind") == "elastic":
                    bases.append(saved)
                else:
                    _add(workers, saved)
        elif "workers" in state:  # an S3ExchangeLoader state
            if batches is None:
                batches, batch_size = int(state["batches"]), int(state["batch_size"])
                drop_last = bool(state["drop_last"])
            count = len(state["workers"])
            for index, worker in enumerate(state["workers"]):
                if worker is not None and worker.get("kind") != "elastic":
                    _add(workers, worker)
                    continue
                if worker is not None:
                    bases.append(worker)
                if "rank" in state:
                    placeholders.append((state["rank"], state["world_size"], count, index))
        elif state.get("kind") == "elastic":
            bases.append(state)
        else:
            _add(workers, state)
    if not workers:
        if not bases:
            raise ValueError("no worker has read anything yet: start the epoch afresh")
        if any(_elastic_key(base) != _elastic_key(bases[0]) for base in bases):
            raise ValueError("cannot merge: the states resume different epochs or runs")
        return dict(bases[0])  # nothing read since this was loaded
    template = next(iter(workers.values()))
    for rank, world_size, count, index in placeholders:
        if (rank, index) not in workers:
            workers[rank, index] = {
                **template,
                "rank": rank,
                "world_size": world_size,
                "num_workers": count,
                "worker_id": index,
                "worker_samples": -1,
                "emitted": 0,
            }
    for worker in workers.values():
        for key in _SHARED_KEYS:
            if worker.get(key, []) != template.get(key, []):
                raise ValueError(
                    f"cannot merge: states differ in {key} ({worker.get(key)!r} and "
                    f"{template.get(key)!r})"
                )
    known = {int(w.get("num_samples", -1)) for w in workers.values()} - {-1}
    if len(known) != 1:
        raise ValueError(f"cannot merge: the states give {sorted(known) or 'no'} epoch sizes")
    (num_samples,) = known
    epoch = int(template["epoch"])
    world_size, num_workers, balance = (
        int(template["world_size"]),
        int(template["num_workers"]),
        template["balance"],
    )
    runs = tuple(Run.from_state(record) for record in template.get("runs", ()))
    buffer = int(template["shuffle_buffer"]) if template["shuffle"] else 0
    length = Remainder(
        num_samples, runs, seed=int(template["seed"]), epoch=epoch, buffer=buffer
    ).num_samples
    totals = [
        worker_bounds(length, world_size, num_workers, balance, rank, worker)
        for rank in range(world_size)
        for worker in range(num_workers)
    ]
    totals_n = [stop - start for start, stop in totals]
    for (rank, worker), state in workers.items():
        total = totals_n[rank * num_workers + worker]
        if int(state["worker_samples"]) not in (-1, total) or int(state["emitted"]) > total:
            raise ValueError(
                f"cannot merge: rank {rank} worker {worker} has emitted {state['emitted']} of "
                f"{state['worker_samples']} samples, the plan gives it {total}"
            )
    emitted = _emitted(workers, totals_n, world_size, num_workers, batches, batch_size, drop_last)
    return {
        "version": STATE_VERSION,
        "kind": "elastic",
        **{key: template.get(key) for key in _DATA_KEYS},
        "epoch": epoch,
        "num_samples": num_samples,
        "runs": [
            *(run.to_state() for run in runs),
            Run(world_size, num_workers, balance, tuple(emitted)).to_state(),
        ],
    }


def _stateful_loader(state: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], int] | None:
    """A ``StatefulDataLoader`` state's dataset states and batches yielded (None if not one)."""
    snapshot = state.get("_snapshot")
    if isinstance(snapshot, Mapping):
        snapshots = snapshot.get("_worker_snapshots", {}).values()
        inner = [w["dataset_state"] for w in snapshots if w.get("dataset_state")]
        return inner, int(snapshot["_snapshot_step"])
    if "dataset_state" in state and "_num_yielded" in state:  # num_workers=0
        inner = [state["dataset_state"]] if state["dataset_state"] else []
        return inner, int(state["_num_yielded"])
    return None


def _add(workers: dict[tuple[int, int], Mapping[str, Any]], state: Mapping[str, Any]) -> None:
    key = (int(state["rank"]), int(state["worker_id"]))
    previous = workers.get(key)
    if previous is not None and previous != state:
        raise ValueError(f"cannot merge: two different states for rank {key[0]} worker {key[1]}")
    workers[key] = state


def _elastic_key(state: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(repr(state.get(key)) for key in (*_DATA_KEYS, "epoch", "num_samples", "runs"))


def _emitted(
    workers: Mapping[tuple[int, int], Mapping[str, Any]],
    totals: Sequence[int],
    world_size: int,
    num_workers: int,
    batches: int | None,
    batch_size: int | None,
    drop_last: bool,
) -> list[int]:
    """Every worker's emitted count: from its state, or (synchronous case) derived from the
    batches every rank consumed."""
    everyone = [(r, w) for r in range(world_size) for w in range(num_workers)]
    missing = [key for key in everyone if key not in workers]
    if not missing:
        return [int(workers[key]["emitted"]) for key in everyone]
    ranks = {rank for rank, _ in workers}
    if batches is None or batch_size is None or len(ranks) != 1:
        shown = ", ".join(f"rank {r} worker {w}" for r, w in missing[:4])
        raise ValueError(
            f"cannot merge: no state for {len(missing)} of {len(everyone)} workers ({shown}"
            f"{', ...' if len(missing) > 4 else ''}); pass every rank's states, or one rank's "
            "with the batches it consumed and batch_size (every rank consumed as many)"
        )
    (own,) = ranks
    if any((own, w) not in workers for w in range(num_workers)):
        raise ValueError(
            f"cannot merge: rank {own}'s states do not cover its {num_workers} workers"
        )
    emitted = []
    for rank in range(world_size):
        sizes = totals[rank * num_workers : (rank + 1) * num_workers]
        counts = [t // batch_size if drop_last else -(-t // batch_size) for t in sizes]
        delivered = batches_delivered(counts, batches)
        for worker, (size, count, done) in enumerate(zip(sizes, counts, delivered, strict=True)):
            if rank == own:
                emitted.append(int(workers[rank, worker]["emitted"]))
            else:
                emitted.append(size if done >= count else done * batch_size)
    return emitted


def runs_of(state: Mapping[str, Any]) -> tuple[Run, ...]:
    """The interrupted runs a state resumes after (none in a version 1 state)."""
    records = state.get("runs", ())
    if not isinstance(records, list | tuple):
        raise ValueError(f"not a state: runs is {type(records).__name__}, not a list")
    return tuple(Run.from_state(record) for record in records)
