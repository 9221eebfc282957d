"""S3ExchangeLoader over moto (and SeaweedFS): worker processes, shared-memory rings, resume.

Expected sequences come from the dataset iterated in this process as each worker would
(``dataset._iter_worker``) and batched the way the loader does: round-robin over workers.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from s3exchange import ObjectNotFoundError, S3ExchangeStore
from s3exchange.testing import RunningServer
from s3exchange_torch import (
    LoaderWorkerError,
    PackedBatch,
    S3ExchangeIterableDataset,
    S3ExchangeLoader,
    collate_into,
)

pytestmark = pytest.mark.multiprocess

SHARDS = (40, 33, 27)
LOOSE = 11
N = sum(SHARDS) + LOOSE


@dataclass(frozen=True)
class Corpus:
    store: S3ExchangeStore
    manifest: str
    payloads: dict[str, bytes]


def _corpus(server: RunningServer) -> Corpus:
    client = server.s3.client(max_pool_connections=32)
    name = f"loader-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    entries: list[Any] = []
    payloads: dict[str, bytes] = {}
    rng = np.random.default_rng(0)
    for s, count in enumerate(SHARDS):
        items = []
        for m in range(count):
            sample_id = f"s{s}-{m:03d}"
            data = rng.bytes(int(rng.integers(0, 3000)))
            payloads[sample_id] = data
            items.append({"source": data, "member_path": f"{sample_id}.bin", "id": sample_id})
        entries.append(store.put_shard_archive(f"shards/{s}.tar", items).entry)
    for i in range(LOOSE):
        data = rng.bytes(int(rng.integers(1, 500)))
        payloads[f"loose-{i}"] = data
        entries.append(store.put_object(f"loose/{i}.bin", data, id=f"loose-{i}"))
    store.write_manifest("root.jsonl", entries)
    return Corpus(store, "root.jsonl", payloads)


@pytest.fixture(scope="module")
def corpus(moto_server: RunningServer) -> Corpus:
    return _corpus(moto_server)


def make(corpus: Corpus, **kwargs: Any) -> S3ExchangeIterableDataset:
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    kwargs.setdefault("io_threads", 4)
    kwargs.setdefault("shuffle_buffer", 16)
    return S3ExchangeIterableDataset(corpus.store, corpus.manifest, **kwargs)


def ids_of(batch: PackedBatch) -> list[str]:
    return [str(entry["id"]) for entry in batch.extras]


def check_bytes(corpus: Corpus, batch: PackedBatch) -> None:
    for index in range(len(batch)):
        assert batch.tobytes(index) == corpus.payloads[batch.extras[index]["id"]]


def expected_batches(
    ds: S3ExchangeIterableDataset, workers: int, batch_size: int, drop_last: bool = False
) -> list[list[str]]:
    """What the loader yields: each worker's batches, interleaved round-robin."""
    per_worker = []
    for worker in range(workers):
        ids = [str(entry["id"]) for _, entry in ds._iter_worker(worker, workers)]
        batches = [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        per_worker.append(batches)
    order: list[list[str]] = []
    for round_ in range(max(map(len, per_worker))):
        order += [batches[round_] for batches in per_worker if round_ < len(batches)]
    return order


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


@pytest.mark.parametrize(("workers", "batch_size"), [(0, 8), (1, 7), (3, 8)])
def test_batches_follow_the_dataloader_order_with_exact_bytes(
    corpus: Corpus, workers: int, batch_size: int
) -> None:
    ds = make(corpus, seed=3)
    with S3ExchangeLoader(ds, batch_size=batch_size, num_workers=workers) as loader:
        batches = list(loader)
        assert len(loader) == len(batches)
    assert [ids_of(b) for b in batches] == expected_batches(ds, max(1, workers), batch_size)
    for batch in batches:  # every batch kept alive: later ones went through fresh memory
        check_bytes(corpus, batch)


def test_exactly_once_across_ranks_and_workers(corpus: Corpus) -> None:
    seen: Counter[str] = Counter()
    for rank in range(3):
        ds = make(corpus, rank=rank, world_size=3, balance=None, seed=1)
        with S3ExchangeLoader(ds, batch_size=5, num_workers=2) as loader:
            for batch in loader:
                seen.update(ids_of(batch))
                check_bytes(corpus, batch)
    assert seen == Counter(list(corpus.payloads))


def test_pad_gives_every_rank_the_same_count(corpus: Corpus) -> None:
    sizes = []
    for rank in range(4):
        ds = make(corpus, rank=rank, world_size=4, balance="pad")
        with S3ExchangeLoader(ds, batch_size=4, num_workers=2) as loader:
            sizes.append(sum(len(batch) for batch in loader))
    assert sizes == [-(-N // 4)] * 4


def test_epochs_persist_workers_and_change_the_order(corpus: Corpus) -> None:
    ds = make(corpus, seed=5)
    with S3ExchangeLoader(ds, batch_size=6, num_workers=2) as loader:
        first = [ids_of(b) for b in loader]
        pids = [w.process.pid for w in loader._workers]
        rings = [w.ring for w in loader._workers]
        loader.set_epoch(1)
        second = [ids_of(b) for b in loader]
        assert [w.process.pid for w in loader._workers] == pids
        assert [w.ring for w in loader._workers] == rings  # a ring lasts across epochs
    assert sorted(chain(*first)) == sorted(chain(*second)) == sorted(corpus.payloads)
    assert first != second
    assert second == expected_batches(ds, 2, 6)


def test_ring_regions_are_reused_when_batches_are_dropped(corpus: Corpus) -> None:
    ds = make(corpus, shuffle=False)
    with S3ExchangeLoader(ds, batch_size=4, num_workers=2) as loader:
        loader._ring_bytes = lambda: 16 * 1024  # type: ignore[method-assign]
        total = 0
        for batch in loader:
            check_bytes(corpus, batch)
            total += len(batch)
            del batch
        assert total == N
        # nothing held: every region went back to its worker
        assert all(not w.ring.pending for w in loader._workers)


def _first(loader: S3ExchangeLoader, count: int) -> list[list[str]]:
    """The ids of ``loader``'s first ``count`` batches; the iteration is then left."""
    head = []
    for batch in loader:
        head.append(ids_of(batch))
        if len(head) == count:
            break
    return head


def _interrupted(
    first: S3ExchangeIterableDataset, then: S3ExchangeIterableDataset, count: int, **options: Any
) -> tuple[list[list[str]], list[list[str]]]:
    """An interrupted run and its resumption: the ids of the first ``count`` batches of a
    loader over ``first``, then of every batch of a loader over ``then`` given its state."""
    with S3ExchangeLoader(first, **options) as loader:
        head = _first(loader, count)
        state = loader.state_dict()
    with S3ExchangeLoader(then, **options) as loader:
        loader.load_state_dict(state)
        tail = [ids_of(batch) for batch in loader]
    return head, tail


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_resume_continues_the_interrupted_sequence_exactly(corpus: Corpus, context: str) -> None:
    options: dict[str, Any] = {"batch_size": 5, "num_workers": 2}
    with S3ExchangeLoader(make(corpus, seed=9), multiprocessing_context=context, **options) as a:
        full = [ids_of(b) for b in a]
    head, tail = _interrupted(
        make(corpus, seed=9), make(corpus, seed=9), 7, multiprocessing_context=context, **options
    )
    assert head + tail == full


def _slow_in_worker_0(data: bytes, entry: Any) -> tuple[bytes, Any]:
    info = torch.utils.data.get_worker_info()
    if info is not None and info.id == 0:
        time.sleep(0.04)
    return data, entry


def _per_worker(ds: S3ExchangeIterableDataset, workers: int) -> list[list[str]]:
    return [[str(e["id"]) for _, e in ds._iter_worker(w, workers)] for w in range(workers)]


def test_out_of_order_takes_the_first_ready_batch_and_keeps_each_workers_order(
    corpus: Corpus,
) -> None:
    ds = make(corpus, seed=4, transform=_slow_in_worker_0)
    expected = _per_worker(ds, 2)
    with S3ExchangeLoader(ds, batch_size=4, num_workers=2, in_order=False) as loader:
        batches = [ids_of(b) for b in loader]
    owner = {sample: w for w, ids in enumerate(expected) for sample in ids}
    sources = [owner[batch[0]] for batch in batches]
    for batch, source in zip(batches, sources, strict=True):
        assert {owner[sample] for sample in batch} == {source}
    for worker in range(2):  # each worker's batches in its own order, every sample once
        mine = (b for b, s in zip(batches, sources, strict=True) if s == worker)
        assert list(chain(*mine)) == expected[worker]
    assert sources[:3] == [1, 1, 1]  # worker 0 sleeps 40 ms a sample: worker 1 does not wait


def test_out_of_order_resumes_every_worker_where_it_was(corpus: Corpus) -> None:
    resumed = make(corpus, seed=6)
    head, tail = _interrupted(
        make(corpus, seed=6, transform=_slow_in_worker_0),
        resumed,
        6,
        batch_size=3,
        num_workers=2,
        in_order=False,
    )
    delivered = list(chain(*head, *tail))
    assert Counter(delivered) == Counter(list(corpus.payloads))
    for ids in _per_worker(resumed, 2):  # each worker continued its own sequence exactly
        mine = set(ids)
        assert [sample for sample in delivered if sample in mine] == ids


def test_resume_in_process(corpus: Corpus) -> None:
    full = [ids_of(b) for b in S3ExchangeLoader(make(corpus), batch_size=9)]
    loader = S3ExchangeLoader(make(corpus), batch_size=9)
    head = _first(loader, 3)
    resumed = S3ExchangeLoader(make(corpus), batch_size=9)
    resumed.load_state_dict(loader.state_dict())
    assert head + [ids_of(b) for b in resumed] == full


def test_state_of_another_configuration_is_refused(corpus: Corpus) -> None:
    state = S3ExchangeLoader(make(corpus), batch_size=4, num_workers=2).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        S3ExchangeLoader(make(corpus), batch_size=5, num_workers=2).load_state_dict(state)


def test_drop_last_drops_each_workers_short_batch(corpus: Corpus) -> None:
    ds = make(corpus)
    with S3ExchangeLoader(ds, batch_size=8, num_workers=2, drop_last=True) as loader:
        batches = [ids_of(b) for b in loader]
        assert len(loader) == len(batches)
    assert batches == expected_batches(ds, 2, 8, drop_last=True)
    assert all(len(b) == 8 for b in batches)


def _to_tensor(data: bytes, entry: Any) -> tuple[torch.Tensor, int]:
    """Fixed-shape tensors (what decoding does): the first 16 bytes, zero-padded."""
    row = torch.zeros(16, dtype=torch.float32)
    head = torch.frombuffer(bytearray(data[:16]) or bytearray(1), dtype=torch.uint8)[:16]
    row[: len(data[:16])] = head[: len(data[:16])].float()
    return row, len(data)


def test_fixed_shape_tensors_are_stacked_in_the_ring(corpus: Corpus) -> None:
    ds = make(corpus, transform=_to_tensor, shuffle=False)
    with S3ExchangeLoader(ds, batch_size=8, num_workers=2) as loader:
        batches = list(loader)
    total = 0
    for rows, sizes in batches:
        assert rows.dtype == torch.float32
        assert rows.shape == (len(sizes), 16)
        total += len(sizes)
    assert total == N


def _sum_collate(samples: list[Any]) -> dict[str, Any]:
    return {"n": len(samples), "sizes": torch.tensor([len(d) for d, _ in samples])}


def test_a_custom_collate_runs_in_the_worker(corpus: Corpus) -> None:
    ds = make(corpus, shuffle=False)
    with S3ExchangeLoader(ds, batch_size=8, num_workers=2, collate=_sum_collate) as loader:
        batches = list(loader)
    assert sum(b["n"] for b in batches) == N
    assert sum(int(b["sizes"].sum()) for b in batches) == sum(map(len, corpus.payloads.values()))


def test_collate_into_without_a_ring() -> None:
    packed = collate_into([(b"ab", {"id": 1}), (b"", {"id": 2}), (b"c", {"id": 3})])
    assert isinstance(packed, PackedBatch)
    assert [packed.tobytes(i) for i in range(3)] == [b"ab", b"", b"c"]
    grouped = collate_into([{"__key__": "a", "jpg": b"x"}, {"__key__": "b", "jpg": b"yz"}])
    assert grouped["__key__"] == ["a", "b"]
    assert grouped["jpg"].tobytes(1) == b"yz"
    stacked = collate_into([(torch.ones(2), 1.5), (torch.zeros(2), 2.5)])
    assert stacked[0].shape == (2, 2)
    assert stacked[1].tolist() == [1.5, 2.5]
    assert collate_into([torch.ones(2), torch.ones(3)])[1].shape == (3,)  # ragged: a list


def _fail_on(data: bytes, entry: Any) -> bytes:
    if entry["id"] == "s1-005":
        raise ValueError(f"cannot decode {entry['id']}")
    return data


def test_an_error_in_a_transform_keeps_its_type_and_stops_the_workers(corpus: Corpus) -> None:
    loader = S3ExchangeLoader(make(corpus, transform=_fail_on), batch_size=4, num_workers=2)
    with pytest.raises(ValueError, match="cannot decode s1-005") as raised:
        list(loader)
    assert any(
        "S3ExchangeLoader worker 1" in note or "S3ExchangeLoader worker 0" in note
        for note in raised.value.__notes__
    )
    assert loader._workers == []


def test_a_missing_object_is_a_domain_error_naming_the_key(corpus: Corpus) -> None:
    entries = [*corpus.store.iter_manifest_entries(corpus.manifest)]
    entries.append({"kind": "file", "key": "loose/not-there.bin", "id": "gone"})
    ds = S3ExchangeIterableDataset(corpus.store, entries, rank=0, world_size=1, shuffle=False)
    with pytest.raises(ObjectNotFoundError, match="not-there"):
        list(S3ExchangeLoader(ds, batch_size=4, num_workers=2))


def test_a_killed_worker_ends_the_epoch_with_a_clear_error(corpus: Corpus) -> None:
    before = shm_names()
    slow = make(corpus, transform=_slower)  # ~3 s per worker: still running when killed
    loader = S3ExchangeLoader(slow, batch_size=2, num_workers=2, poll=0.2)
    iterator = iter(loader)
    next(iterator)
    victim = loader._workers[1].process.pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(LoaderWorkerError, match=rf"worker 1 \(pid {victim}\) exited"):
        for _ in iterator:
            pass
    assert time.monotonic() - started < 10
    assert loader._workers == []
    assert shm_names() <= before  # rings have no name there, however a worker ends


def _slow(data: bytes, entry: Any) -> bytes:
    time.sleep(0.01)
    return data


def _slower(data: bytes, entry: Any) -> bytes:
    time.sleep(0.05)
    return data


def test_abandoned_and_interrupted_iterations_leave_no_shared_memory(corpus: Corpus) -> None:
    before = shm_names()
    loader = S3ExchangeLoader(make(corpus, transform=_slow), batch_size=3, num_workers=2)
    for _ in loader:
        break
    iterator = iter(loader)  # the abandoned iteration's workers are stopped
    next(iterator)
    timer = threading.Timer(0.2, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in iterator:
            time.sleep(0.05)
    timer.join()
    del iterator  # Ctrl-C came in the loop body: the iteration ends when it is dropped
    assert loader._workers == []
    loader.close()
    gc.collect()
    assert shm_names() <= before


def test_group_by_key_samples_are_dicts_of_packed_fields(moto_server: RunningServer) -> None:
    client = moto_server.s3.client()
    name = f"loader-g-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    items = []
    for i in range(10):
        items.append({"source": b"J%d" % i, "member_path": f"k{i}.jpg"})
        items.append({"source": b"{}", "member_path": f"k{i}.json"})
    entry = store.put_shard_archive("g.tar", items).entry
    ds = S3ExchangeIterableDataset(
        store, [entry], group_by="key", shuffle=False, rank=0, world_size=1
    )
    with S3ExchangeLoader(ds, batch_size=4, num_workers=2) as loader:
        batches = list(loader)
    keys = list(chain.from_iterable(b["__key__"] for b in batches))
    assert sorted(keys) == sorted(f"k{i}" for i in range(10))
    for batch in batches:
        for j, key in enumerate(batch["__key__"]):
            assert batch["jpg"].tobytes(j) == b"J" + key[1:].encode()


@pytest.mark.seaweedfs
def test_on_seaweedfs(seaweedfs_server: RunningServer) -> None:
    corpus = _corpus(seaweedfs_server)
    ds = make(corpus, seed=2)
    with S3ExchangeLoader(ds, batch_size=8, num_workers=2) as loader:
        batches = list(loader)
    assert [ids_of(b) for b in batches] == expected_batches(ds, 2, 8)
    for batch in batches:
        check_bytes(corpus, batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batches_land_on_the_gpu(corpus: Corpus) -> None:
    ds = make(corpus, seed=4)
    with S3ExchangeLoader(ds, batch_size=8, num_workers=2, device="cuda") as loader:
        batches = list(loader)
    assert all(b.data.device.type == "cuda" for b in batches)
    for batch in batches:
        data = batch.data.cpu().numpy().tobytes()
        for i, entry in enumerate(batch.extras):
            start, stop = batch.offsets[i], batch.offsets[i + 1]
            assert data[start:stop] == corpus.payloads[entry["id"]]


def test_the_readme_loader_snippet_runs(store: S3ExchangeStore) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### The fastest path: `S3ExchangeLoader`", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    items = [{"source": b"x%d" % i, "member_path": f"{i}.bin", "id": str(i)} for i in range(20)]
    store.write_manifest("train/manifest.jsonl", [store.put_shard_archive("s.tar", items).entry])
    code = code.replace("S3ExchangeStore.from_settings()", "test_store").replace(
        "num_workers=8", "num_workers=2"
    )
    if not torch.cuda.is_available():
        code = code.replace('device="cuda"', "device=None")
    namespace: dict[str, Any] = {"test_store": store}
    exec(code, namespace)
    assert namespace["ids"]  # the last batch's ids
