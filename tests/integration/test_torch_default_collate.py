"""A plain ``DataLoader(dataset, batch_size=...)``: batches arrive packed, over moto.

The dataset yields :class:`Sample` tuples, for which ``default_collate`` packs a batch into one
uint8 tensor (a :class:`PackedBatch`) in a slab the worker reuses once the main process has
freed the batch. These tests hold the path to what users rely on: every byte and entry exactly
once, views that outlive their batch stay intact, ``batch_size=None`` and ``collate_fn=list``
still give ``(data, entry)`` samples, and ``StatefulDataLoader`` resumes exactly.
"""

from __future__ import annotations

import gc
import os
import pickle
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import s3exchange_torch.collate as collate_module
from s3exchange import S3ExchangeStore
from s3exchange.testing import RunningServer
from s3exchange_torch import PackedBatch, S3ExchangeIterableDataset, Sample
from s3exchange_torch.collate import MAX_SLABS

pytestmark = pytest.mark.multiprocess

SHARDS = (90, 70)
LOOSE = 5


@dataclass(frozen=True)
class Corpus:
    store: S3ExchangeStore
    manifest: str
    data: dict[str, bytes]  # id -> payload


def payload(sample_id: str) -> bytes:
    return sample_id.encode() * (1 + len(sample_id) % 7) + bytes(range(256))


@pytest.fixture(scope="module")
def corpus(moto_server: RunningServer) -> Corpus:
    client = moto_server.s3.client(max_pool_connections=32)
    name = f"torch-collate-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    entries: list[Any] = []
    data: dict[str, bytes] = {}
    for s, count in enumerate(SHARDS):
        ids = [f"s{s}-{m}" for m in range(count)]
        items = [{"source": payload(i), "member_path": f"{i}.bin", "id": i} for i in ids]
        entries.append(store.put_shard_archive(f"shards/{s}.tar", items).entry)  # type: ignore[arg-type]
        data |= {i: payload(i) for i in ids}
    for n in range(LOOSE):
        sample_id = f"loose-{n}"
        entries.append(store.put_object(f"loose/{n}.bin", payload(sample_id), id=sample_id))
        data[sample_id] = payload(sample_id)
    store.write_manifest("root.jsonl", entries)
    return Corpus(store, "root.jsonl", data)


def make(corpus: Corpus, **kwargs: Any) -> S3ExchangeIterableDataset:
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    kwargs.setdefault("io_threads", 4)
    kwargs.setdefault("shuffle_buffer", 16)
    return S3ExchangeIterableDataset(corpus.store, corpus.manifest, **kwargs).resolve()


def unpack(batch: PackedBatch) -> dict[str, bytes]:
    assert isinstance(batch, PackedBatch)
    assert batch.data.dtype == torch.uint8
    assert batch.data.dim() == 1
    got: dict[str, bytes] = {}
    for index, (view, entry) in enumerate(batch):
        assert bytes(view.numpy()) == batch.tobytes(index)
        got[str(entry["id"])] = batch.tobytes(index)
    return got


@pytest.mark.parametrize("workers", [0, 2])
def test_a_plain_dataloader_packs_every_sample_once(corpus: Corpus, workers: int) -> None:
    loader = DataLoader(make(corpus, seed=3), batch_size=8, num_workers=workers)
    seen: Counter[str] = Counter()
    got: dict[str, bytes] = {}
    for batch in loader:  # each batch dropped before the next: slabs are reused
        assert len(batch) <= 8
        one = unpack(batch)
        seen.update(str(entry["id"]) for entry in batch.extras)
        got |= one
    assert seen == Counter(corpus.data.keys())
    assert got == corpus.data


def test_views_kept_past_their_batch_are_never_overwritten(corpus: Corpus) -> None:
    """Keep a view from every third batch (drop the rest, so slabs are reused) and check
    every kept view at the end: a slab is written again only once all its views are freed."""
    loader = DataLoader(
        make(corpus, seed=1), batch_size=3, num_workers=2, multiprocessing_context="fork"
    )
    kept: list[tuple[torch.Tensor, str]] = []
    batches = 0
    for batch in loader:
        if batches % 3 == 0:
            view, entry = batch[len(batch) - 1]
            kept.append((view[1:], str(entry["id"])))  # a view of a view: still the slab
        batches += 1
        del batch
        gc.collect()
    assert batches > 4 * MAX_SLABS  # enough batches per worker to cycle through its slabs
    for view, sample_id in kept:
        assert bytes(view.numpy()) == corpus.data[sample_id][1:]
    mapped = collate_module._mapped  # white box: the main process maps each slab once
    assert 0 < len(mapped) <= 2 * MAX_SLABS


def test_batches_held_past_every_slab_come_in_memory_of_their_own(corpus: Corpus) -> None:
    """Holding every batch: after MAX_SLABS the worker packs into one-off nameless memory,
    and nothing is left in /dev/shm."""
    before = _shm_files()
    loader = DataLoader(make(corpus, seed=3), batch_size=4, num_workers=1)
    held = list(loader)
    assert len(held) > 2 * MAX_SLABS
    got: dict[str, bytes] = {}
    for batch in held:
        got |= unpack(batch)
    assert got == corpus.data
    del held, loader
    gc.collect()
    assert _shm_files() <= before


def _shm_files() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_a_received_batch_pickles_as_a_copy(corpus: Corpus) -> None:
    loader = DataLoader(make(corpus, shuffle=False), batch_size=5, num_workers=1)
    batch = next(iter(loader))
    again = pickle.loads(pickle.dumps(batch))
    assert isinstance(again, PackedBatch)
    assert unpack(again) == unpack(batch)
    assert again.data.data_ptr() != batch.data.data_ptr()


def test_unbatched_and_list_collated_samples_are_data_entry_pairs(corpus: Corpus) -> None:
    unbatched = list(DataLoader(make(corpus, seed=2), batch_size=None, num_workers=2))
    listed = [
        sample
        for batch in DataLoader(make(corpus, seed=2), batch_size=4, num_workers=2, collate_fn=list)
        for sample in batch
    ]
    for samples in (unbatched, listed):
        assert len(samples) == len(corpus.data)
        for sample in samples:
            assert isinstance(sample, Sample)
            data, entry = sample
            assert sample == (data, entry)
            assert isinstance(data, bytes)
            assert data == corpus.data[entry["id"]]


def test_spawned_workers_pack_too(corpus: Corpus) -> None:
    loader = DataLoader(
        make(corpus, seed=4), batch_size=16, num_workers=2, multiprocessing_context="spawn"
    )
    got: dict[str, bytes] = {}
    for batch in loader:
        got |= unpack(batch)
    assert got == corpus.data


def test_stateful_dataloader_resumes_packed_batches_exactly(corpus: Corpus) -> None:
    def ids(batch: PackedBatch) -> list[str]:
        return [str(entry["id"]) for entry in batch.extras]

    full = [ids(b) for b in StatefulDataLoader(make(corpus, seed=6), batch_size=4, num_workers=2)]
    loader = StatefulDataLoader(make(corpus, seed=6), batch_size=4, num_workers=2)
    iterator = iter(loader)
    before = [ids(next(iterator)) for _ in range(9)]
    state = loader.state_dict()
    del iterator
    resumed = StatefulDataLoader(make(corpus, seed=6), batch_size=4, num_workers=2)
    resumed.load_state_dict(state)
    after = [ids(b) for b in resumed]
    assert before + after == full
    assert Counter(i for batch in full for i in batch) == Counter(corpus.data.keys())


def test_grouped_samples_keep_the_default_collation(corpus: Corpus) -> None:
    """``group_by="key"`` yields webdataset dicts: collated per field, as before."""
    loader = DataLoader(make(corpus, group_by="key", seed=5), batch_size=4, num_workers=2)
    fields: list[bytes] = []
    for batch in loader:
        assert isinstance(batch, dict)
        assert len(batch["__key__"]) == len(batch["bin"]) <= 4
        fields += batch["bin"]
    assert sorted(fields) == sorted(corpus.data.values())


@pytest.mark.parametrize("persistent", [False, True])
def test_epochs_map_only_the_live_workers_slabs(corpus: Corpus, persistent: bool) -> None:
    """Each epoch's batches are intact; the main process lets go of exited workers' slabs."""
    ds = make(corpus)
    loader = DataLoader(
        ds,
        batch_size=8,
        num_workers=2,
        persistent_workers=persistent,
        multiprocessing_context="fork",
    )
    for epoch in range(3):
        ds.set_epoch(epoch)
        got: dict[str, bytes] = {}
        for batch in loader:
            got |= unpack(batch)
        assert got == corpus.data, f"epoch {epoch}"
        producers = {pid for pid, _, _ in collate_module._mapped.values()}
        assert len(producers) == 2  # this epoch's two workers only


def test_a_batch_naming_an_unmapped_slab_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="never mapped"):
        collate_module._from_slab(12345, [0], [], [])
