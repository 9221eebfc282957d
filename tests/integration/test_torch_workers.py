"""S3ExchangeIterableDataset in real DataLoader worker processes (fork and spawn), over moto.

Each test starts few workers on little data: a spawned worker imports torch (seconds).
The expected per-worker sequences come from the same dataset iterated in this process as that
worker would (``as_worker``); the DataLoader interleaves its workers round-robin.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import s3exchange_torch.dataset as dataset_module
from s3exchange import FileEntry, ObjectNotFoundError, S3ExchangeStore, ShardReadError
from s3exchange.testing import RunningServer
from s3exchange_torch import S3ExchangeIterableDataset

pytestmark = pytest.mark.multiprocess

SHARDS = (6, 5, 4)
LOOSE = 7
N = sum(SHARDS) + LOOSE


@dataclass(frozen=True)
class Corpus:
    store: S3ExchangeStore
    manifest: str
    ids: list[str]


@pytest.fixture(scope="module")
def corpus(moto_server: RunningServer) -> Corpus:
    client = moto_server.s3.client(max_pool_connections=32)
    name = f"torch-workers-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    entries: list[Any] = []
    ids: list[str] = []
    for s, count in enumerate(SHARDS):
        members = [f"s{s}-{m}" for m in range(count)]
        items = [{"source": m.encode(), "member_path": f"{m}.bin", "id": m} for m in members]
        entries.append(store.put_shard_archive(f"shards/{s}.tar", items).entry)  # type: ignore[arg-type]
        ids += members
    for i in range(LOOSE):
        entries.append(store.put_object(f"loose/{i}.bin", b"%d" % i, id=f"loose-{i}"))
        ids.append(f"loose-{i}")
    store.write_manifest("root.jsonl", entries)
    return Corpus(store, "root.jsonl", ids)


def make(corpus: Corpus, manifest: str | None = None, **kwargs: Any) -> S3ExchangeIterableDataset:
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    kwargs.setdefault("io_threads", 4)
    return S3ExchangeIterableDataset(corpus.store, manifest or corpus.manifest, **kwargs)


def sample_id(sample: Any) -> str:
    return str(sample[1]["id"])


def batch_ids(batch: list[tuple[bytes, FileEntry]]) -> list[str]:
    """collate_fn: the ids of a batch (entries differ in fields, so no default collation)."""
    return [str(entry["id"]) for _, entry in batch]


def expected_order(ds: S3ExchangeIterableDataset, num_workers: int) -> list[str]:
    """What a DataLoader with ``num_workers`` yields (batch_size=None): workers round-robin."""
    per_worker = []
    for worker in range(num_workers):
        with mock.patch.object(dataset_module, "_worker", return_value=(worker, num_workers)):
            iterator = iter(ds)
        per_worker.append([sample_id(s) for s in iterator])
    return [i for group in itertools.zip_longest(*per_worker) for i in group if i is not None]


def test_fork_workers_read_the_epoch_once_without_rereading_the_manifest(corpus: Corpus) -> None:
    corpus.store.write_manifest("fork.jsonl", corpus.store.iter_manifest_entries(corpus.manifest))
    seen: list[str] = []
    for rank in range(2):
        ds = make(corpus, "fork.jsonl", rank=rank, world_size=2, balance=None, seed=4)
        ds.resolve()
        if rank == 1:
            corpus.store.delete_key("fork.jsonl")  # workers must use the units shipped to them
        expected = expected_order(ds, 2)
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
        got = [sample_id(s) for s in loader]
        assert got == expected
        assert len(got) == len(ds)
        seen += got
    assert Counter(seen) == Counter(corpus.ids)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_follow_set_epoch(corpus: Corpus, context: str) -> None:
    ds = make(corpus, seed=11, shuffle_buffer=3)
    loader = DataLoader(
        ds,
        batch_size=None,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
    )
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = [sample_id(s) for s in loader]
        assert got == expected_order(ds, 2), f"epoch {epoch}"
        epochs.append(got)
    assert epochs[0] != epochs[1]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(corpus.ids)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumes_mid_epoch_without_loss_or_repeat(
    corpus: Corpus, num_workers: int
) -> None:
    def loader(ds: S3ExchangeIterableDataset) -> StatefulDataLoader:
        return StatefulDataLoader(ds, batch_size=2, num_workers=num_workers, collate_fn=batch_ids)

    options: dict[str, Any] = {"seed": 2, "shuffle_buffer": 4}
    reference = [i for batch in loader(make(corpus, **options)) for i in batch]
    assert sorted(reference) == sorted(corpus.ids)

    first = loader(make(corpus, **options))
    before: list[str] = []
    for batch in first:
        before += batch
        if len(before) >= 8:
            break
    state = first.state_dict()
    del first

    second = loader(make(corpus, **options))
    second.load_state_dict(state)
    after = [i for batch in second for i in batch]
    assert Counter(before + after) == Counter(corpus.ids)
    assert before + after == reference


def _missing_shard(store: S3ExchangeStore) -> tuple[list[Any], str, type[Exception]]:
    shard = store.put_shard_archive("w/ok.tar", [{"source": b"x", "member_path": "a.bin"}])
    return (
        [shard.entry, {**shard.entry, "archive_key": "w/gone.tar"}],
        "w/gone.tar",
        (ObjectNotFoundError),
    )


def _corrupt_archive(store: S3ExchangeStore) -> tuple[list[Any], str, type[Exception]]:
    items = [{"source": bytes(3000), "member_path": f"{i}.bin"} for i in range(2)]
    shard = store.put_shard_archive("w/corrupt.tar", items)  # type: ignore[arg-type]
    raw = bytearray(store.get_object("w/corrupt.tar").read())
    raw[len(raw) // 3 : 2 * len(raw) // 3] = b"\xff" * (2 * len(raw) // 3 - len(raw) // 3)
    store.put_object("w/corrupt.tar", bytes(raw))
    entry = {k: v for k, v in shard.entry.items() if k != "etag"}  # else: ObjectChangedError
    return [entry], "w/corrupt.tar", ShardReadError


def _missing_object(store: S3ExchangeStore) -> tuple[list[Any], str, type[Exception]]:
    return [{"kind": "file", "key": "w/absent.bin"}], "w/absent.bin", ObjectNotFoundError


@pytest.mark.parametrize("case", [_missing_shard, _corrupt_archive, _missing_object])
def test_worker_errors_reach_the_main_process_naming_the_key(
    store: S3ExchangeStore, case: Any
) -> None:
    entries, key, error = case(store)
    ds = S3ExchangeIterableDataset(store, entries, shuffle=False, rank=0, world_size=1)
    loader = DataLoader(ds, batch_size=None, num_workers=1, multiprocessing_context="fork")
    iterator = iter(loader)
    try:
        with pytest.raises(error) as caught:
            list(iterator)
    finally:
        # torch only reaps a worker that raised after a 5 s join timeout when the iterator is
        # garbage-collected; shutting it down explicitly keeps the test fast.
        getattr(iterator, "_shutdown_workers")()  # noqa: B009
    assert key in str(caught.value)
    assert "DataLoader worker process 0" in str(caught.value)
