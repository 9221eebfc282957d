"""S3ExchangeIterableDataset in one process, over moto: coverage, balance, order, resume, errors.

Ranks are simulated by passing ``rank``/``world_size``; DataLoader workers by patching the
dataset's worker lookup (real worker processes are in ``test_torch_workers.py``).
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest

import s3exchange_torch.dataset as dataset_module
import s3exchange_torch.io_threads as io_threads_module
from s3exchange import (
    FileEntry,
    InvalidManifestError,
    ObjectNotFoundError,
    S3ExchangeStore,
    ShardEntry,
    ShardMember,
    ShardReadError,
)
from s3exchange.testing import RunningServer
from s3exchange.types import Compression, Readable
from s3exchange_torch import S3ExchangeIterableDataset

SHARDS: tuple[tuple[int, Compression], ...] = ((7, None), (5, None), (6, "gzip"), (4, None))
LOOSE = 9
N = sum(count for count, _ in SHARDS) + LOOSE  # 31: divisible by none of 2, 3, 4


@dataclass(frozen=True)
class Corpus:
    store: S3ExchangeStore
    manifest: str
    ids: list[str]  # every sample id, in manifest order
    data: dict[str, bytes]


def payload(sample_id: str) -> bytes:
    return f"payload of {sample_id}".encode() * 3


def build_corpus(store: S3ExchangeStore) -> Corpus:
    """Shards and loose files in two part manifests joined by manifest_ref entries.

    The second shard's entry has no ``count``, so planning must read its internal manifest.
    """
    parts: list[list[dict[str, Any]]] = [[], []]
    ids: list[str] = []
    for s, (count, compression) in enumerate(SHARDS):
        members = [f"s{s}-{m}" for m in range(count)]
        suffix = ".tar.gz" if compression else ".tar"
        shard = store.put_shard_archive(
            f"shards/{s:03d}{suffix}",
            [{"source": payload(i), "member_path": f"{i}.bin", "id": i} for i in members],
            compression=compression,
        )
        entry: dict[str, Any] = dict(shard.entry)
        if s == 1:
            del entry["count"]
        parts[s % 2].append(entry)
        ids += members
    for i in range(LOOSE):
        sample_id = f"loose-{i}"
        loose = store.put_object(f"loose/{i:03d}.bin", payload(sample_id), id=sample_id)
        parts[i % 2].append(dict(loose))
        ids.append(sample_id)
    for n, part in enumerate(parts):
        store.write_manifest(f"parts/{n}.jsonl", part)
    store.write_manifest(
        "root.jsonl", [{"kind": "manifest_ref", "key": f"parts/{n}.jsonl"} for n in (0, 1)]
    )
    return Corpus(store, "root.jsonl", ids, {i: payload(i) for i in ids})


@pytest.fixture(scope="module")
def corpus(moto_server: RunningServer) -> Corpus:
    """One bucket for the module (built once); tests only read it."""
    client = moto_server.s3.client(max_pool_connections=32)
    name = f"torch-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    corpus = build_corpus(S3ExchangeStore(client, name))
    assert len(set(corpus.ids)) == len(corpus.ids) == N
    return corpus


def make(corpus: Corpus, **kwargs: Any) -> S3ExchangeIterableDataset:
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    kwargs.setdefault("io_threads", 8)
    return S3ExchangeIterableDataset(corpus.store, corpus.manifest, **kwargs)


def as_worker(worker_id: int, num_workers: int) -> Any:
    """Make the dataset believe it runs in DataLoader worker ``worker_id`` of ``num_workers``."""
    return mock.patch.object(dataset_module, "_worker", return_value=(worker_id, num_workers))


def sample_id(sample: Any) -> str:
    _, entry = sample
    return str(entry["id"])


def read(ds: S3ExchangeIterableDataset, worker_id: int = 0, num_workers: int = 1) -> list[str]:
    with as_worker(worker_id, num_workers):
        iterator = iter(ds)
    return [sample_id(sample) for sample in iterator]


def read_rank(ds: S3ExchangeIterableDataset, num_workers: int) -> list[list[str]]:
    return [read(ds, w, num_workers) for w in range(num_workers)]


def io_threads_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("s3exchange-torch")]


def wait_for_no_threads(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while io_threads_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert io_threads_alive() == []


# --- coverage and balance ---------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_sample_read_exactly_once_for_any_ranks_and_workers(
    corpus: Corpus, world_size: int, shuffle: bool
) -> None:
    for num_workers in (1, 2, 3):  # DataLoader's num_workers=0 plans like one worker
        seen: list[str] = []
        for rank in range(world_size):
            ds = make(
                corpus,
                rank=rank,
                world_size=world_size,
                balance=None,
                shuffle=shuffle,
                shuffle_buffer=5,
            )
            per_worker = read_rank(ds, num_workers)
            assert sum(map(len, per_worker)) == len(ds)
            seen += [i for ids in per_worker for i in ids]
        assert Counter(seen) == Counter(corpus.ids), (world_size, num_workers)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_pad_gives_every_rank_ceil_and_drop_floor(corpus: Corpus, world_size: int) -> None:
    padded = [make(corpus, rank=r, world_size=world_size, balance="pad") for r in range(world_size)]
    dropped = [
        make(corpus, rank=r, world_size=world_size, balance="drop") for r in range(world_size)
    ]
    pad_ids = [[i for ids in read_rank(ds, 2) for i in ids] for ds in padded]
    drop_ids = [[i for ids in read_rank(ds, 2) for i in ids] for ds in dropped]
    assert [len(ds) for ds in padded] == [math.ceil(N / world_size)] * world_size
    assert [len(ids) for ids in pad_ids] == [math.ceil(N / world_size)] * world_size
    everything = Counter(i for ids in pad_ids for i in ids)
    assert set(everything) == set(corpus.ids)
    assert sum(everything.values()) - N < world_size  # fewer than W repeats
    assert [len(ds) for ds in dropped] == [N // world_size] * world_size
    assert [len(ids) for ids in drop_ids] == [N // world_size] * world_size
    flat = [i for ids in drop_ids for i in ids]
    assert len(set(flat)) == len(flat) == world_size * (N // world_size)


def test_samples_are_the_stored_bytes_with_their_entries(corpus: Corpus) -> None:
    samples = list(make(corpus, shuffle=False))
    assert [sample_id(s) for s in samples] == [
        i for part in (0, 1) for i in corpus.ids if _part_of(i) == part
    ]
    for data, entry in samples:
        assert data == corpus.data[entry["id"]]
        if entry["id"].startswith("s"):
            assert entry["key"] == f"{entry['archive_key']}#{entry['member_path']}"
        else:
            assert entry["key"].startswith("loose/")


def _part_of(sample_id: str) -> int:
    """Which part manifest ``build_corpus`` put a sample in."""
    if sample_id.startswith("loose-"):
        return int(sample_id.split("-")[1]) % 2
    return int(sample_id[1:].partition("-")[0]) % 2


def test_transform_receives_data_and_entry(corpus: Corpus) -> None:
    def transform(data: bytes, entry: FileEntry) -> tuple[str, int]:
        return str(entry["id"]), len(data)

    out = list(make(corpus, transform=transform))
    assert sorted(out) == sorted((i, len(corpus.data[i])) for i in corpus.ids)


def test_entries_in_hand_work_like_a_manifest_key(corpus: Corpus) -> None:
    entries = list(corpus.store.iter_manifest_entries("parts/0.jsonl"))
    entries.append({"kind": "manifest_ref", "key": "parts/1.jsonl"})
    ds = S3ExchangeIterableDataset(corpus.store, entries, rank=0, world_size=1, shuffle=False)
    assert read(ds) == read(make(corpus, shuffle=False))


# --- order --------------------------------------------------------------------------------------


def test_same_seed_and_epoch_give_the_same_sequence_and_a_new_epoch_a_new_one(
    corpus: Corpus,
) -> None:
    first = read_rank(make(corpus, seed=7, shuffle_buffer=6), 2)
    again = make(corpus, seed=7, shuffle_buffer=6)
    assert read_rank(again, 2) == first
    again.set_epoch(1)
    assert again.epoch == 1
    other_epoch = read_rank(again, 2)
    assert other_epoch != first
    assert sorted(i for ids in other_epoch for i in ids) == sorted(corpus.ids)
    assert read_rank(make(corpus, seed=8, shuffle_buffer=6), 2) != first
    assert read_rank(make(corpus, shuffle=False), 2) != first


def test_a_ranks_samples_do_not_depend_on_the_number_of_workers(corpus: Corpus) -> None:
    ds = make(corpus, rank=1, world_size=3, seed=3)
    sets = {n: sorted(i for ids in read_rank(ds, n) for i in ids) for n in (1, 2, 3)}
    assert sets[1] == sets[2] == sets[3]
    assert len(sets[1]) == len(ds)


def test_default_rank_and_world_size_come_from_the_environment(
    corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    ds = S3ExchangeIterableDataset(corpus.store, corpus.manifest)
    assert (ds.rank, ds.world_size) == (2, 3)
    assert len(ds) == math.ceil(N / 3)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    ds = S3ExchangeIterableDataset(corpus.store, corpus.manifest)
    assert (ds.rank, ds.world_size, len(ds)) == (0, 1, N)


# --- resumption ---------------------------------------------------------------------------------


class CountingStore(S3ExchangeStore):
    """Counts the loose objects and shard members actually downloaded."""

    fetched: Counter[str]

    def read_file_entry(self, entry: FileEntry, *, verify: bool | None = None) -> bytes:
        self.fetched["loose"] += 1
        return super().read_file_entry(entry, verify=verify)

    def iter_shard_members(
        self,
        entry: ShardEntry,
        *,
        select: Callable[[int, FileEntry], bool] | None = None,
        verify: bool | None = None,
        stream: Readable | None = None,
    ) -> Generator[ShardMember, None, None]:
        members = super().iter_shard_members(entry, select=select, verify=verify, stream=stream)
        for member in members:
            self.fetched["member"] += 1
            yield member


def counting_store(corpus: Corpus) -> CountingStore:
    store = CountingStore(corpus.store.s3_client, corpus.store.bucket)
    store.fetched = Counter()
    return store


@pytest.mark.parametrize("emitted", [0, 1, 6, 13, 21, 24, 25])
def test_resume_continues_the_exact_sequence_and_fetches_only_the_rest(
    corpus: Corpus, emitted: int
) -> None:
    options: dict[str, Any] = {"seed": 5, "shuffle_buffer": 8, "world_size": 2, "rank": 1}
    with as_worker(0, 1):
        full = [sample_id(s) for s in make(corpus, **options)]
        assert len(full) == 16
        emitted = min(emitted, len(full))
        ds = make(corpus, **options)
        iterator = iter(ds)
        before = [sample_id(next(iterator)) for _ in range(emitted)]
        state = ds.state_dict()
        iterator.close()  # type: ignore[attr-defined]
        assert (state["emitted"], state["epoch"]) == (emitted, 0)
        store = counting_store(corpus)
        resumed = S3ExchangeIterableDataset(store, corpus.manifest, io_threads=8, **options)
        resumed.load_state_dict(state)
        assert resumed.state_dict() == state  # a save right after a load round-trips
        after = [sample_id(s) for s in resumed]
    assert before + after == full
    # Replay knows what was delivered: only buffered and unread samples are downloaded (a
    # shard member is counted when the stream yields it, so none beyond need is counted).
    assert sum(store.fetched.values()) == len(after)


def test_resume_after_the_epoch_ended_yields_nothing_then_the_next_epoch(corpus: Corpus) -> None:
    ds = make(corpus, seed=1)
    epoch0 = read(ds)
    state = ds.state_dict()
    assert state["emitted"] == N
    resumed = make(corpus, seed=1)
    resumed.load_state_dict(state)
    assert read(resumed) == []
    assert read(resumed) == epoch0  # back to set_epoch's epoch (still 0)


def test_load_state_dict_rejects_a_different_configuration(corpus: Corpus) -> None:
    ds = make(corpus, seed=1)
    state = ds.state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        make(corpus, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        make(corpus, seed=1).load_state_dict({"epoch": 0})
    other_worker = make(corpus, seed=1)
    other_worker.load_state_dict(state)
    with pytest.raises(ValueError, match="worker 0 of 1"):
        read(other_worker, 0, 2)


# --- concurrency and threads --------------------------------------------------------------------


class SlowStore(S3ExchangeStore):
    """Adds a fixed latency before every loose GET, like a distant endpoint, and counts the
    GETs in flight at once."""

    latency_s = 0.03

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count_lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0

    def read_file_entry(self, entry: FileEntry, *, verify: bool | None = None) -> bytes:
        with self._count_lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.latency_s)
            return super().read_file_entry(entry, verify=verify)
        finally:
            with self._count_lock:
                self.in_flight -= 1


def test_loose_objects_are_fetched_concurrently_in_order(
    moto_server: RunningServer, store: S3ExchangeStore
) -> None:
    entries = [store.put_object(f"small/{i:03d}.bin", payload(str(i))) for i in range(64)]
    slow = SlowStore(moto_server.s3.client(max_pool_connections=32), store.bucket)
    ds = S3ExchangeIterableDataset(
        slow, entries, shuffle=False, rank=0, world_size=1, io_threads=16
    )
    keys = [entry["key"] for _, entry in ds]
    assert keys == [entry["key"] for entry in entries]
    # counted, not timed: on a loaded machine a wall-clock bound fails without cause
    assert slow.most_in_flight >= 8, f"at most {slow.most_in_flight} GETs overlapped"


def test_threads_stop_when_iteration_is_abandoned(corpus: Corpus) -> None:
    wait_for_no_threads()
    ds = make(corpus, shuffle=False, prefetch_shards=3)
    iterator = iter(ds)
    next(iterator)
    assert io_threads_alive()
    del iterator
    gc.collect()
    wait_for_no_threads()


# --- errors -------------------------------------------------------------------------------------


def test_missing_shard_raises_object_not_found_naming_the_archive(store: S3ExchangeStore) -> None:
    shard = store.put_shard_archive("s/ok.tar", [{"source": b"x", "member_path": "a.bin"}])
    gone: ShardEntry = {**shard.entry, "archive_key": "s/gone.tar"}
    ds = S3ExchangeIterableDataset(store, [shard.entry, gone], shuffle=False, rank=0, world_size=1)
    with pytest.raises(ObjectNotFoundError, match=r"s/gone\.tar") as caught:
        list(ds)
    assert caught.value.key == "s/gone.tar"
    wait_for_no_threads()


def test_corrupt_archive_raises_shard_read_error_naming_the_archive(
    store: S3ExchangeStore,
) -> None:
    shard = store.put_shard_archive(
        "s/bad.tar", [{"source": bytes(2000), "member_path": f"{i}.bin"} for i in range(3)]
    )
    raw = bytearray(store.get_object("s/bad.tar").read())
    third = len(raw) // 3
    raw[third : 2 * third] = b"\xff" * third  # headers and data of the members
    store.put_object("s/bad.tar", bytes(raw))
    # without the etag: a listed etag would report the replacement (ObjectChangedError) first
    entry = {k: v for k, v in shard.entry.items() if k != "etag"}
    ds = S3ExchangeIterableDataset(store, [entry], shuffle=False, rank=0, world_size=1)
    with pytest.raises(ShardReadError, match=r"s/bad\.tar"):
        list(ds)
    wait_for_no_threads()


def test_bad_manifest_raises_invalid_manifest_naming_the_key(store: S3ExchangeStore) -> None:
    store.put_object("bad.jsonl", b'{"kind": "file", "key": "a"}\nnot json\n')
    ds = S3ExchangeIterableDataset(store, "bad.jsonl", rank=0, world_size=1)
    with pytest.raises(InvalidManifestError, match=r"bad\.jsonl"):
        len(ds)


def test_missing_loose_object_raises_naming_the_key(store: S3ExchangeStore) -> None:
    entries: list[FileEntry] = [{"kind": "file", "key": f"nowhere/{i}.bin"} for i in range(3)]
    ds = S3ExchangeIterableDataset(store, entries, shuffle=False, rank=0, world_size=1)
    with pytest.raises(ObjectNotFoundError, match=r"nowhere/0\.bin"):
        list(ds)
    wait_for_no_threads()


def test_io_threads_default_to_what_the_connection_pool_leaves_free(
    moto_server: RunningServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    def store_with_pool(size: int) -> S3ExchangeStore:
        return S3ExchangeStore(moto_server.s3.client(max_pool_connections=size), bucket)

    io_threads = io_threads_module.io_threads_for
    assert io_threads(store_with_pool(10), None, shard_streams=3, num_workers=1) == 7
    assert io_threads(store_with_pool(64), None, shard_streams=3, num_workers=1) == 32
    assert io_threads(store_with_pool(2), None, shard_streams=3, num_workers=1) == 1
    io_threads_module._POOL_WARNED.discard(os.getpid())
    with caplog.at_level("WARNING", logger="s3exchange_torch.dataset"):
        assert io_threads(store_with_pool(10), 16, shard_streams=3, num_workers=1) == 16
    assert "max_pool_connections=19" in caplog.text


def test_the_default_shuffle_buffer_is_for_shards_only(corpus: Corpus) -> None:
    """Shards stream members in archive order, so they get a buffer; loose files are already
    shuffled one by one by the plan, so by default they do not wait for one."""
    loose = [e for e in corpus.store.iter_manifest_entries(corpus.manifest) if e["kind"] == "file"]
    only_loose = S3ExchangeIterableDataset(corpus.store, loose, rank=0, world_size=1, seed=3)
    assert only_loose.state_dict()["shuffle_buffer"] == 0
    first = read(only_loose)
    assert sorted(first) == sorted(str(e["id"]) for e in loose)
    assert first != [str(e["id"]) for e in loose]  # still shuffled, by the plan
    assert make(corpus).state_dict()["shuffle_buffer"] == 1000
    assert make(corpus, shuffle_buffer=5).state_dict()["shuffle_buffer"] == 5
    assert make(corpus, shuffle=False).state_dict()["shuffle_buffer"] == 0
    chosen = S3ExchangeIterableDataset(
        corpus.store, loose, rank=0, world_size=1, seed=3, shuffle_buffer=4
    )
    assert sorted(read(chosen)) == sorted(first)
