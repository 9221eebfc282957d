"""S3ExchangeMapDataset over a real server: every item fetched by index equals the streamed
bytes, batched fetches agree, DistributedSampler ranks cover all, fork and spawn workers work."""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from torch.utils.data import DataLoader, DistributedSampler

from s3exchange import S3ExchangeStore
from s3exchange.errors import ObjectChangedError, ShardReadError
from s3exchange.shard_index import index_key_for
from s3exchange.testing import RunningServer
from s3exchange_torch import S3ExchangeMapDataset
from s3exchange_torch.mapdataset import COALESCE_GAP, _Ranged, _runs


@dataclass(frozen=True)
class Corpus:
    store: S3ExchangeStore
    manifest: str
    streamed: list[tuple[str, bytes]]  # (key, data) in manifest order


@pytest.fixture(scope="module")
def corpus(moto_server: RunningServer) -> Corpus:
    client = moto_server.s3.client(max_pool_connections=32)
    name = f"map-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    rng = random.Random(11)
    entries: list[Any] = []
    for compression, suffix in ((None, ".tar"), ("gzip", ".tar.gz")):
        with store.shard_writer(
            "w/shard-{index:03d}" + suffix, max_entries=40, compression=compression
        ) as writer:
            for i in range(30):
                size = rng.choice([0, 512, rng.randrange(1, 100_000)])
                writer.write({"__key__": f"{i:05d}", "bin": rng.randbytes(size), "json": {"i": i}})
        entries += writer.entries
    items = [
        {"source": rng.randbytes(rng.randrange(5000)), "member_path": f"p/{i}.bin", "id": f"p{i}"}
        for i in range(12)
    ]
    entries.append(store.put_shard_archive("p/a.tar.gz", items, compression="gzip").entry)  # type: ignore[arg-type]
    for i in range(5):
        entries.append(store.put_object(f"loose/{i}.bin", rng.randbytes(300), id=f"loose-{i}"))
    store.write_manifest("root.jsonl", entries)
    streamed = [(entry["key"], stream.read()) for stream, entry in store.iter_objects("root.jsonl")]
    return Corpus(store, "root.jsonl", streamed)


def test_every_item_by_index_equals_the_streamed_bytes(corpus: Corpus) -> None:
    ds = S3ExchangeMapDataset(corpus.store, corpus.manifest)
    assert len(ds) == len(corpus.streamed) == 2 * 60 + 12 + 5
    got = [(ds[i].entry["key"], ds[i].data) for i in range(len(ds))]
    assert got == corpus.streamed
    assert ds[-1] == ds[len(ds) - 1]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_batched_fetches_agree_with_single_ones_in_the_order_asked(corpus: Corpus) -> None:
    ds = S3ExchangeMapDataset(corpus.store, corpus.manifest, transform=lambda data, e: data)
    rng = random.Random(3)
    for _ in range(5):
        indices = [rng.randrange(len(ds)) for _ in range(rng.randrange(1, 40))]
        assert ds.__getitems__(indices) == [corpus.streamed[i][1] for i in indices]
    assert ds.__getitems__(list(range(len(ds)))) == [data for _, data in corpus.streamed]


def test_distributed_sampler_over_two_ranks_covers_everything(corpus: Corpus) -> None:
    ds = S3ExchangeMapDataset(corpus.store, corpus.manifest)
    seen: list[str] = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader = DataLoader(ds, batch_size=7, sampler=sampler, collate_fn=list)
        for batch in loader:
            seen += [sample.entry["key"] for sample in batch]
    assert set(seen) == {key for key, _ in corpus.streamed}
    assert len(seen) == len(ds) + len(ds) % 2  # the sampler pads to an even split


def _key_and_size(data: bytes, entry: Any) -> tuple[str, int]:
    return entry["key"], len(data)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_fetch_every_item(corpus: Corpus, context: str) -> None:
    ds = S3ExchangeMapDataset(corpus.store, corpus.manifest, transform=_key_and_size)
    loader = DataLoader(
        ds,
        batch_size=9,
        shuffle=True,
        num_workers=2,
        multiprocessing_context=context,
        collate_fn=list,
    )
    got = sorted(item for batch in loader for item in batch)
    assert got == sorted((key, len(data)) for key, data in corpus.streamed)


def test_runs_coalesce_close_neighbours_only() -> None:
    def ranged(position: int, start: int, stop: int) -> _Ranged:
        return _Ranged(position, {"kind": "file", "key": "k"}, start, stop)

    far = 10 * COALESCE_GAP
    items = [
        ranged(0, far, far + 10),
        ranged(1, 0, 100),
        ranged(2, 100 + COALESCE_GAP, 200 + COALESCE_GAP),
        ranged(3, 50, 100),
    ]
    runs = [[item.position for item in run] for run in _runs(items)]
    assert runs == [[1, 3, 2], [0]]


def test_an_old_shard_without_index_works_with_a_warning(
    store: S3ExchangeStore, caplog: pytest.LogCaptureFixture
) -> None:
    items = [{"source": b"%d" % i * 100, "member_path": f"{i}.bin"} for i in range(4)]
    entry = store.put_shard_archive("o/a.tar", items).entry  # type: ignore[arg-type]
    store.delete_key(index_key_for("o/a.tar"))
    store.write_manifest("o.jsonl", [{k: v for k, v in entry.items() if k != "index_key"}])  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING):
        ds = S3ExchangeMapDataset(store, "o.jsonl", transform=lambda data, e: data)
    assert "has no index" in caplog.text
    assert [ds[i] for i in range(4)] == [b"%d" % i * 100 for i in range(4)]


def test_errors_name_archive_and_member(store: S3ExchangeStore) -> None:
    items = [{"source": b"x" * 1000, "member_path": f"{i}.bin"} for i in range(3)]
    entry = store.put_shard_archive("e/a.tar", items).entry  # type: ignore[arg-type]
    store.write_manifest("e.jsonl", [entry])
    ds = S3ExchangeMapDataset(store, "e.jsonl")
    raw = store.get_object(index_key_for("e/a.tar")).read()
    store.put_object(index_key_for("e/a.tar"), raw.replace(b'"crc32c":"', b'"crc32c":"0'))
    with pytest.raises(ShardReadError, match=r"'e/a\.tar' member '0\.bin'"):
        S3ExchangeMapDataset(store, "e.jsonl")[0]
    store.put_shard_archive("e/a.tar", items[::-1])  # replaced: the old index's ETag is stale
    with pytest.raises(ObjectChangedError, match=r"e/a\.tar"):
        ds[1]


def test_members_listed_one_by_one_are_read_by_range(store: S3ExchangeStore) -> None:
    items = [
        {"source": bytes([i]) * (700 + i), "member_path": f"{i}.bin", "id": f"{i}"}
        for i in range(6)
    ]
    entry = store.put_shard_archive("x/a.tar", items).entry  # type: ignore[arg-type]
    store.write_manifest("x/m.jsonl", [entry])
    store.compact_manifest("x/m.jsonl", "x/flat.jsonl", expand_shards=True)
    ds = S3ExchangeMapDataset(store, "x/flat.jsonl")
    assert [ds[i].data for i in range(len(ds))] == [item["source"] for item in items]
    assert [ds.entry(i)["key"] for i in range(2)] == ["x/a.tar#0.bin", "x/a.tar#1.bin"]
    store.put_shard_archive("x/a.tar", items[::-1])  # a ranged read refuses the new archive
    with pytest.raises(ObjectChangedError, match=r"x/a\.tar"):
        ds[2]


def test_a_broken_index_line_fails_its_item_only(store: S3ExchangeStore) -> None:
    items = [{"source": b"y" * 900, "member_path": f"{i}.bin"} for i in range(3)]
    entry = store.put_shard_archive("b/a.tar", items).entry  # type: ignore[arg-type]
    store.write_manifest("b.jsonl", [entry])
    lines = store.get_object(index_key_for("b/a.tar")).read().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"offset_data":', b'"offset_datum":')
    store.put_object(index_key_for("b/a.tar"), b"".join(lines))
    ds = S3ExchangeMapDataset(store, "b.jsonl", transform=lambda data, e: data)
    assert (ds[0], ds[2]) == (b"y" * 900, b"y" * 900)
    with pytest.raises(ShardReadError, match=r"'b/a\.tar' member '1\.bin'.*without offset"):
        ds[1]
