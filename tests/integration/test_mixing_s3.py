"""A 70/20/10 mix of three manifests over moto: quotas, exactly-once, workers, elastic resume."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from torch.utils.data import DataLoader

from s3exchange import S3ExchangeStore
from s3exchange.testing import RunningServer
from s3exchange_torch import S3ExchangeIterableDataset, S3ExchangeLoader
from s3exchange_torch.mixing import Source

SIZES = {"web": (40, 35, 1, 1, 1), "books": (30, 9), "code": (60,)}  # shards, loose files (1)


@pytest.fixture(scope="module")
def store(moto_server: RunningServer) -> S3ExchangeStore:
    client = moto_server.s3.client(max_pool_connections=32)
    name = f"mix-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    for source, units in SIZES.items():
        entries: list[Any] = []
        for u, count in enumerate(units):
            if count == 1:
                entries.append(store.put_object(f"{source}/{u}.bin", b"x", id=f"{source}-{u}"))
                continue
            items = [
                {"source": b"y", "member_path": f"{source}-{u}-{m}.bin", "id": f"{source}-{u}-{m}"}
                for m in range(count)
            ]
            entries.append(store.put_shard_archive(f"{source}/{u}.tar", items).entry)
        store.write_manifest(f"{source}.jsonl", entries)
    return store


def make(store: S3ExchangeStore, rank: int = 0, world_size: int = 1, **kwargs: Any) -> Any:
    kwargs.setdefault("stop", "first_exhausted")
    mix = [Source("web.jsonl", 0.7), Source("books.jsonl", 0.2), Source("code.jsonl", 0.1)]
    return S3ExchangeIterableDataset.mix(
        store,
        mix,
        rank=rank,
        world_size=world_size,
        seed=1,
        shuffle_buffer=8,
        io_threads=4,
        balance=None,
        **kwargs,
    )


def source_of(sample_id: str) -> str:
    return sample_id.split("-", maxsplit=1)[0]


def read_job(store: S3ExchangeStore, world_size: int, workers: int, **kwargs: Any) -> list[str]:
    ids = []
    for rank in range(world_size):
        for worker in range(workers):
            ds = make(store, rank, world_size, **kwargs)
            ids += [str(entry["id"]) for _, entry in ds._iter_worker(worker, workers)]
    return ids


def test_a_70_20_10_mix_follows_its_quotas_and_never_repeats_a_repeat_one_source(
    store: S3ExchangeStore,
) -> None:
    ds = make(store)
    assert ds.num_samples == 111  # "web" (78 samples) runs out first: floor(78 / 0.7)
    ids = read_job(store, 2, 2)
    tally = Counter(source_of(i) for i in ids)
    assert tally == {"web": 78, "books": 22, "code": 11}
    assert len(ids) == len(set(ids))  # repeat=1 sources: no sample twice
    assert Counter(read_job(store, 3, 1)) == Counter(ids)  # the topology does not change it
    assert read_job(store, 2, 2) == ids  # deterministic
    other_epoch = make(store)
    other_epoch.set_epoch(1)
    assert [str(e["id"]) for _, e in other_epoch] != [str(e["id"]) for _, e in make(store)]


def test_all_exhausted_upsamples_the_smaller_sources(store: S3ExchangeStore) -> None:
    ids = [str(entry["id"]) for _, entry in make(store, stop="all_exhausted")]
    tally = Counter(source_of(i) for i in ids)
    assert tally["code"] == 60  # every sample of the 10 % source, once
    assert abs(tally["web"] / len(ids) - 0.7) < 0.01
    web = Counter(i for i in ids if source_of(i) == "web")
    assert set(web) == {f"web-{u}-{m}" for u in (0, 1) for m in range(SIZES["web"][u])} | {
        f"web-{u}" for u in (2, 3, 4)
    }
    assert max(web.values()) - min(web.values()) <= 1  # repeats spread evenly


def test_a_dataloader_with_workers_reads_the_mix(store: S3ExchangeStore) -> None:
    ds = make(store, stop=60)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    ids = [str(entry["id"]) for _, entry in loader]
    assert Counter(source_of(i) for i in ids) == {"web": 42, "books": 12, "code": 6}


def test_a_mix_resumes_mid_epoch_on_another_topology(store: S3ExchangeStore) -> None:
    full = Counter(read_job(store, 1, 1))
    before: list[str] = []
    states = []
    for rank in range(2):
        for worker in range(2):
            ds = make(store, rank, 2)
            samples = ds._iter_worker(worker, 2)
            before += [str(next(samples)[1]["id"]) for _ in range(7 + 5 * rank + worker)]
            states.append(ds.state_dict())
    merged = S3ExchangeIterableDataset.merge_states(states)
    after: list[str] = []
    for rank in range(3):
        ds = make(store, rank, 3)
        ds.load_state_dict(merged)
        after += [str(entry["id"]) for _, entry in ds]
    assert Counter(before + after) == full
    with pytest.raises(ValueError, match="mix"):
        make(store, stop="all_exhausted").load_state_dict(merged)


def test_the_loader_reads_a_mix_and_resumes_it_on_other_ranks(store: S3ExchangeStore) -> None:
    full = Counter(read_job(store, 1, 1))
    before: list[str] = []
    states = []
    for rank in range(2):
        loader = S3ExchangeLoader(make(store, rank, 2), batch_size=4, num_workers=2)
        with loader:
            batches = iter(loader)
            for _ in range(3):
                before += [str(entry["id"]) for entry in next(batches).extras]
            states.append(loader.state_dict())
    after: list[str] = []
    for rank in range(3):
        resumed = S3ExchangeLoader(make(store, rank, 3), batch_size=5)
        resumed.load_state_dict(states[1])
        after += [str(entry["id"]) for batch in resumed for entry in batch.extras]
    assert Counter(before + after) == full


@pytest.mark.parametrize("emitted", [0, 1, 9, 30, 55])
def test_a_mix_resumed_on_the_same_worker_continues_its_exact_sequence(
    store: S3ExchangeStore, emitted: int
) -> None:
    full = [str(entry["id"]) for _, entry in make(store, 1, 2)._iter_worker(0, 1)]
    ds = make(store, 1, 2)
    samples = ds._iter_worker(0, 1)
    head = [str(next(samples)[1]["id"]) for _ in range(min(emitted, len(full)))]
    state = ds.state_dict()
    samples.close()  # type: ignore[attr-defined]
    resumed = make(store, 1, 2)
    resumed.load_state_dict(state)
    assert head + [str(entry["id"]) for _, entry in resumed._iter_worker(0, 1)] == full
