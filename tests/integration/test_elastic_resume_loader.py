"""Elastic resume over moto: a job saved on some ranks and workers, resumed on others.

Ranks are simulated in this process (``rank=``/``world_size=``); the real ``torchrun`` case is
``test_elastic_resume_torchrun.py``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from s3exchange import S3ExchangeStore
from s3exchange.testing import RunningServer
from s3exchange_torch import PackedBatch, S3ExchangeIterableDataset, S3ExchangeLoader
from s3exchange_torch.plan import EpochPlan
from s3exchange_torch.resume import Remainder, Run

pytestmark = pytest.mark.multiprocess

SHARDS = (23, 7, 31, 1, 12)  # uneven shards, and loose files between them
LOOSE = 9


@dataclass(frozen=True)
class Corpus:
    store: S3ExchangeStore
    manifest: str
    ids: list[str]


@pytest.fixture(scope="module")
def corpus(moto_server: RunningServer) -> Corpus:
    client = moto_server.s3.client(max_pool_connections=32)
    name = f"elastic-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    entries: list[Any] = []
    ids: list[str] = []
    rng = np.random.default_rng(1)
    for s, count in enumerate(SHARDS):
        items = []
        for m in range(count):
            sample_id = f"s{s}-{m:02d}"
            items.append(
                {"source": rng.bytes(50), "member_path": f"{sample_id}.bin", "id": sample_id}
            )
            ids.append(sample_id)
        entries.append(store.put_shard_archive(f"shards/{s}.tar", items).entry)
        for i in range(LOOSE if s == 1 else 1):
            key = f"loose-{s}-{i}"
            entries.append(store.put_object(f"loose/{key}.bin", b"x", id=key))
            ids.append(key)
    store.write_manifest("elastic.jsonl", entries)
    return Corpus(store, "elastic.jsonl", ids)


def make(corpus: Corpus, rank: int, world_size: int, **kwargs: Any) -> S3ExchangeIterableDataset:
    kwargs.setdefault("seed", 4)
    kwargs.setdefault("shuffle_buffer", 8)
    kwargs.setdefault("balance", None)
    return S3ExchangeIterableDataset(
        corpus.store, corpus.manifest, rank=rank, world_size=world_size, io_threads=4, **kwargs
    )


def ids_of(batch: PackedBatch) -> list[str]:
    return [str(entry["id"]) for entry in batch.extras]


def take(batches: Iterator[Any], count: int) -> list[str]:
    out: list[str] = []
    for _ in range(count):
        out += ids_of(next(batches))
    return out


@pytest.mark.parametrize("shuffle", [True, False])
def test_two_ranks_of_two_workers_resume_on_three_ranks_from_one_ranks_state(
    corpus: Corpus, shuffle: bool
) -> None:
    before: list[str] = []
    states = []
    for rank in range(2):
        ds = make(corpus, rank, 2, shuffle=shuffle)
        with S3ExchangeLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="fork") as a:
            before += take(iter(a), 5)  # every rank consumed 5 batches: the synchronous case
            states.append(a.state_dict())
    after: list[str] = []
    for rank in range(3):
        resumed = S3ExchangeLoader(make(corpus, rank, 3, shuffle=shuffle), batch_size=4)
        resumed.load_state_dict(states[0])  # any one rank's state will do
        after += [i for batch in resumed for i in ids_of(batch)]
    assert Counter(before + after) == Counter(corpus.ids)
    # The next epoch is the plain plan of the new topology.
    later = []
    for rank in range(3):
        loader = S3ExchangeLoader(make(corpus, rank, 3, shuffle=shuffle), batch_size=4)
        loader.set_epoch(1)
        later += [i for batch in loader for i in ids_of(batch)]
    assert Counter(later) == Counter(corpus.ids)


def test_pad_evens_out_the_new_ranks_over_what_remains(corpus: Corpus) -> None:
    before: list[str] = []
    states = []
    for rank in range(2):
        loader = S3ExchangeLoader(make(corpus, rank, 2, balance="pad"), batch_size=5)
        before += take(iter(loader), 4)
        states.append(loader.state_dict())
    merged = S3ExchangeIterableDataset.merge_states(states)
    per_rank = []
    after: list[str] = []
    for rank in range(3):
        ds = make(corpus, rank, 3, balance="pad")
        ds.load_state_dict(merged)
        got = [str(entry["id"]) for _, entry in ds]
        per_rank.append(len(got))
        after += got
    remaining = len(corpus.ids) - len(before)
    assert per_rank == [-(-remaining // 3)] * 3
    assert set(before + after) == set(corpus.ids)
    assert len(before + after) - len(corpus.ids) < 3


def _dataset_states(state: Any) -> list[dict[str, Any]]:
    """The per-worker dataset states inside a StatefulDataLoader state."""
    if isinstance(state, dict):
        if "emitted" in state and "worker_id" in state:
            return [state]
        return [s for value in state.values() for s in _dataset_states(value)]
    return []


def test_uneven_ranks_merged_then_read_by_a_dataloader_with_another_num_workers(
    corpus: Corpus,
) -> None:
    def loader(ds: S3ExchangeIterableDataset, workers: int) -> StatefulDataLoader:
        return StatefulDataLoader(ds, batch_size=2, num_workers=workers, collate_fn=list)

    before: list[str] = []
    states: list[Any] = []
    for rank, steps in enumerate((3, 11)):  # ranks progressed unevenly
        first = loader(make(corpus, rank, 2), 2)
        batches = iter(first)
        for _ in range(steps):
            before += [str(entry["id"]) for _, entry in next(batches)]
        states.append(first.state_dict())  # a StatefulDataLoader state, as it is
        del batches, first
    assert sum(len(_dataset_states(s)) for s in states) == 4
    merged = S3ExchangeIterableDataset.merge_states(states)
    ds = make(corpus, 0, 1)
    ds.load_state_dict(merged)
    plain = DataLoader(ds, batch_size=None, num_workers=3, multiprocessing_context="fork")
    after = [str(entry["id"]) for _, entry in plain]
    assert Counter(before + after) == Counter(corpus.ids)
    # Workers start afresh from the main process's dataset each epoch: once the epoch moves
    # on, the loaded state no longer applies and the next epoch is whole.
    ds.set_epoch(1)
    assert Counter(str(entry["id"]) for _, entry in plain) == Counter(corpus.ids)


def test_resumes_chain_and_an_exact_resume_inside_the_chain(corpus: Corpus) -> None:
    delivered: list[str] = []
    # run 0: 3 ranks, in-process loaders
    states = []
    for rank in range(3):
        loader = S3ExchangeLoader(make(corpus, rank, 3), batch_size=2)
        delivered += take(iter(loader), 6)
        states.append(loader.state_dict())
    merged = S3ExchangeIterableDataset.merge_states(states)
    # run 1: 2 ranks; rank 1 saves, then resumes exactly on the same rank
    states = []
    for rank in range(2):
        loader = S3ExchangeLoader(make(corpus, rank, 2), batch_size=3)
        loader.load_state_dict(merged)
        batches = iter(loader)
        delivered += take(batches, 2)
        saved = loader.state_dict()
        if rank == 1:
            whole = [i for batch in batches for i in ids_of(batch)]
            again = S3ExchangeLoader(make(corpus, rank, 2), batch_size=3)
            again.load_state_dict(saved)
            assert [i for batch in again for i in ids_of(batch)] == whole  # exact continuation
            fresh = S3ExchangeLoader(make(corpus, rank, 2), batch_size=3)
            fresh.load_state_dict(saved)
            delivered += take(iter(fresh), 1)  # rank 1 now one batch ahead: merged below
            saved = fresh.state_dict()
        states.append(saved)
    assert states[0]["workers"][0]["runs"] == merged["runs"]
    merged = S3ExchangeIterableDataset.merge_states(states)
    assert len(merged["runs"]) == 2
    # run 2: 1 rank, finishes
    ds = make(corpus, 0, 1)
    ds.load_state_dict(merged)
    delivered += [str(entry["id"]) for _, entry in ds]
    assert Counter(delivered) == Counter(corpus.ids)


def test_merge_refuses_incomplete_or_mismatched_states(corpus: Corpus) -> None:
    ds = make(corpus, 0, 2)
    iterator = iter(ds)
    next(iterator)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="no state for 1 of 2 workers"):
        S3ExchangeIterableDataset.merge_states([state])
    other = make(corpus, 1, 2, seed=5)
    next(iter(other))
    with pytest.raises(ValueError, match="differ in seed"):
        S3ExchangeIterableDataset.merge_states([state, other.state_dict()])
    with pytest.raises(ValueError, match="worker 0 of 1, this is worker 0 of 3"):
        resumed = make(corpus, 0, 2)
        resumed.load_state_dict(state)
        resumed._iter_worker(0, 3)


def test_one_ranks_stateful_dataloader_states_with_its_batch_count(corpus: Corpus) -> None:
    before: list[str] = []
    saved: dict[str, Any] = {}
    for rank in range(2):
        first = StatefulDataLoader(
            make(corpus, rank, 2), batch_size=2, num_workers=2, collate_fn=list
        )
        batches = iter(first)
        for _ in range(5):  # synchronous: every rank 5 batches
            before += [str(entry["id"]) for _, entry in next(batches)]
        if rank == 1:
            saved = first.state_dict()
        del batches, first
    merged = S3ExchangeIterableDataset.merge_states([saved], batch_size=2)
    after: list[str] = []
    for rank in range(3):
        ds = make(corpus, rank, 3)
        ds.load_state_dict(merged)
        after += [str(entry["id"]) for _, entry in ds]
    assert Counter(before + after) == Counter(corpus.ids)


class CountingStore(S3ExchangeStore):
    """Counts shard streams opened."""

    streams = 0

    def iter_shard_members(self, *args: Any, **kwargs: Any) -> Any:
        type(self).streams += 1
        return super().iter_shard_members(*args, **kwargs)


def test_a_resumed_worker_opens_each_shard_once_for_the_buffered_members(corpus: Corpus) -> None:
    states = []
    before: list[str] = []
    for rank in range(2):
        for worker in range(2):
            ds = make(corpus, rank, 2, shuffle_buffer=16)
            samples = ds._iter_worker(worker, 2)
            before += [str(next(samples)[1]["id"]) for _ in range(10)]
            states.append(ds.state_dict())
            samples.close()  # type: ignore[attr-defined]
    merged = S3ExchangeIterableDataset.merge_states(states)
    store = CountingStore(corpus.store.s3_client, corpus.store.bucket)
    resumed = S3ExchangeIterableDataset(
        store, corpus.manifest, rank=0, world_size=1, seed=4, shuffle_buffer=16, balance=None
    )
    resumed.load_state_dict(merged)
    after = [str(entry["id"]) for _, entry in resumed]
    assert Counter(before + after) == Counter(corpus.ids)
    # 4 old workers each left up to 16 buffered members scattered over its shards: read per
    # shard and old worker (at most 2 x 5 streams here), not once per member segment.
    units, counts = resumed._resolved()
    plan = EpochPlan(counts, seed=4, epoch=0, shuffle=True)
    runs = [Run.from_state(record) for record in merged["runs"]]
    remainder = Remainder(plan.num_samples, runs, seed=4, epoch=0, buffer=16)
    segments = plan.segments_at(remainder.worker_ranges(1, 1, None, 0, 0))
    assert sum(1 for s in segments if "archive_key" in units[s.unit]) > 2 * len(SHARDS)
    assert CountingStore.streams <= 2 * len(SHARDS)
