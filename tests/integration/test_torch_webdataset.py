"""webdataset interoperability: our shards read by ``wds.WebDataset``, our grouped stream fed to
webdataset pipeline stages, and key groups never split across ranks or workers."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import webdataset as wds
from torch.utils.data import DataLoader

import s3exchange_torch.dataset as dataset_module
from s3exchange import S3ExchangeStore
from s3exchange.testing import RunningServer
from s3exchange.types import Compression, ShardItem
from s3exchange_torch import S3ExchangeIterableDataset

SHARDS: tuple[tuple[int, Compression], ...] = ((5, None), (4, "gzip"), (3, None))
LOOSE_KEYS = 3


@dataclass(frozen=True)
class Corpus:
    store: S3ExchangeStore
    manifest: str
    archives: list[tuple[str, Compression]]
    labels: dict[str, int]  # sample key -> label


def text_of(key: str) -> bytes:
    return f"text of {key}".encode()


@pytest.fixture(scope="module")
def corpus(moto_server: RunningServer) -> Corpus:
    """Shards of ``<key>.txt`` + ``<key>.cls`` members (and a ``README`` member webdataset
    ignores), and loose ``.txt``/``.cls`` pairs listed consecutively."""
    client = moto_server.s3.client(max_pool_connections=32)
    name = f"torch-wds-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    store = S3ExchangeStore(client, name)
    entries: list[Any] = []
    archives: list[tuple[str, Compression]] = []
    labels: dict[str, int] = {}
    label = 0
    for s, (count, compression) in enumerate(SHARDS):
        items: list[ShardItem] = []
        for k in range(count):
            key = f"part{s}/sample{k:02d}"
            labels[key] = label = label + 1
            items.append({"source": text_of(key), "member_path": f"{key}.txt"})
            items.append({"source": str(label).encode(), "member_path": f"{key}.CLS"})
        if s == 0:
            items.insert(2, {"source": b"no extension: no sample", "member_path": "README"})
        archive = f"shards/{s:03d}.tar" + (".gz" if compression else "")
        entries.append(store.put_shard_archive(archive, items, compression=compression).entry)
        archives.append((archive, compression))
    for k in range(LOOSE_KEYS):
        key = f"loose/item{k}"
        labels[key] = label = label + 1
        entries.append(store.put_object(f"{key}.txt", text_of(key)))
        entries.append(store.put_object(f"{key}.cls", str(label).encode()))
    store.write_manifest("grouped.jsonl", entries)
    return Corpus(store, "grouped.jsonl", archives, labels)


def grouped(corpus: Corpus, **kwargs: Any) -> S3ExchangeIterableDataset:
    kwargs.setdefault("rank", 0)
    kwargs.setdefault("world_size", 1)
    kwargs.setdefault("io_threads", 4)
    return S3ExchangeIterableDataset(corpus.store, corpus.manifest, group_by="key", **kwargs)


def test_webdataset_reads_our_shards_as_plain_tars(corpus: Corpus, tmp_path: Path) -> None:
    paths = []
    for archive, _ in corpus.archives:
        path = tmp_path / archive.replace("/", "_")
        path.write_bytes(corpus.store.get_object(archive).read())
        paths.append(str(path))
    theirs = list(
        wds.WebDataset(
            paths,
            shardshuffle=False,
            # our internal manifest is the first member; webdataset would make it a sample
            select_files=lambda name: name != "__manifest__.jsonl",
        )
    )
    ours = [s for s in grouped(corpus, shuffle=False) if s["__url__"].startswith("shards/")]
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in ours]
    for their, our in zip(theirs, ours, strict=True):
        assert their["txt"] == our["txt"] == text_of(our["__key__"])
        assert their["cls"] == our["cls"] == str(corpus.labels[our["__key__"]]).encode()
        assert set(their) - {"__url__", "__local_path__"} == set(our) - {"__url__"}


def test_webdataset_sees_the_internal_manifest_unless_told_to_skip_it(
    corpus: Corpus, tmp_path: Path
) -> None:
    path = tmp_path / "first.tar"
    path.write_bytes(corpus.store.get_object(corpus.archives[0][0]).read())
    keys = [s["__key__"] for s in wds.WebDataset(str(path), shardshuffle=False)]
    assert keys[0] == "__manifest__"


def test_grouped_stream_feeds_webdataset_pipeline_stages(corpus: Corpus) -> None:
    pipeline = wds.DataPipeline(
        grouped(corpus, seed=1, shuffle_buffer=4),
        wds.decode(),
        wds.to_tuple("__key__", "txt", "cls"),
        wds.batched(4),
    )
    seen: list[str] = []
    for keys, texts, labels in pipeline:
        assert len(keys) <= 4
        for key, text, label in zip(keys, texts, labels.tolist(), strict=True):
            assert text == text_of(key).decode()
            assert label == corpus.labels[key]
            seen.append(key)
    assert Counter(seen) == Counter(list(corpus.labels))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_key_groups_are_never_split_across_ranks_or_workers(
    corpus: Corpus, world_size: int
) -> None:
    for num_workers in (1, 2, 3):
        seen: list[str] = []
        for rank in range(world_size):
            ds = grouped(corpus, rank=rank, world_size=world_size, balance=None, seed=5)
            count = 0
            for worker in range(num_workers):
                with mock.patch.object(
                    dataset_module, "_worker", return_value=(worker, num_workers)
                ):
                    iterator = iter(ds)
                for sample in iterator:
                    assert set(sample) == {"__key__", "__url__", "txt", "cls"}, sample
                    seen.append(sample["__key__"])
                    count += 1
            assert count == len(ds)
        assert Counter(seen) == Counter(list(corpus.labels)), (world_size, num_workers)


def test_grouped_transform_receives_the_sample_and_its_entries(corpus: Corpus) -> None:
    def transform(sample: dict[str, Any], entries: list[Any]) -> tuple[str, list[str]]:
        return sample["__key__"], [entry["key"] for entry in entries]

    out = dict(grouped(corpus, transform=transform))
    assert out["part0/sample01"] == [
        "shards/000.tar#part0/sample01.txt",
        "shards/000.tar#part0/sample01.CLS",
    ]
    assert out["loose/item2"] == ["loose/item2.txt", "loose/item2.cls"]


@pytest.mark.multiprocess
def test_webdataset_pipeline_over_dataloader_workers(corpus: Corpus) -> None:
    seen: list[str] = []
    for rank in range(2):
        ds = grouped(corpus, rank=rank, world_size=2, balance=None)
        ds.resolve()
        pipeline = wds.DataPipeline(ds, wds.decode(), wds.to_tuple("__key__", "txt", "cls"))
        loader = DataLoader(pipeline, batch_size=3, num_workers=2, multiprocessing_context="fork")
        for keys, texts, labels in loader:
            for key, text, label in zip(keys, texts, labels.tolist(), strict=True):
                assert text == text_of(key).decode()
                assert label == corpus.labels[key]
                seen.append(key)
    assert Counter(seen) == Counter(list(corpus.labels))
