"""The dataset's side of issue 11: a pack that has not finished is refused (or read, when
allowed, with a warning), and a sample split across shards is reported once, by name."""

from __future__ import annotations

import logging

import pytest

from s3exchange import InvalidManifestError, S3ExchangeStore
from s3exchange.packing import unfinished_key
from s3exchange_torch import S3ExchangeIterableDataset


def _shard(store: S3ExchangeStore, key: str, paths: list[str]) -> dict[str, object]:
    items = [{"source": path.encode(), "member_path": path} for path in paths]
    return dict(store.put_shard_archive(key, items).entry)  # type: ignore[arg-type]


def _dataset(store: S3ExchangeStore, manifest: str, **kwargs: object) -> S3ExchangeIterableDataset:
    return S3ExchangeIterableDataset(
        store,
        manifest,
        rank=0,
        world_size=1,
        shuffle=False,
        **kwargs,  # type: ignore[arg-type]
    )


def test_a_pack_that_never_finished_is_refused_then_read_when_allowed(
    store: S3ExchangeStore, caplog: pytest.LogCaptureFixture
) -> None:
    shard = _shard(store, "d/shard-00000.tar", ["a.bin", "b.bin"])
    store.write_manifest(unfinished_key("d/train.jsonl"), [shard])  # type: ignore[list-item]
    with pytest.raises(InvalidManifestError, match="run the same pack command again"):
        len(_dataset(store, "d/train.jsonl"))
    with caplog.at_level(logging.WARNING, logger="s3exchange_torch.dataset"):
        ds = _dataset(store, "d/train.jsonl", allow_unfinished=True)
        assert sorted(bytes(data) for data, _ in ds) == [b"a.bin", b"b.bin"]
    assert "has not finished" in caplog.text


def test_a_finished_manifest_with_a_pack_into_it_under_way_is_refused(
    store: S3ExchangeStore,
) -> None:
    first = _shard(store, "e/shard-00000.tar", ["a.bin"])
    second = _shard(store, "e/shard-00001.tar", ["b.bin"])
    store.write_manifest("e/train.jsonl", [first])  # type: ignore[list-item]
    store.write_manifest(unfinished_key("e/train.jsonl"), [second])  # type: ignore[list-item]
    with pytest.raises(InvalidManifestError, match="has not finished"):
        len(_dataset(store, "e/train.jsonl"))
    allowed = _dataset(store, "e/train.jsonl", allow_unfinished=True)
    assert [bytes(data) for data, _ in allowed] == [b"a.bin"]  # what the manifest lists
    assert len(_dataset(store, "e/train.jsonl", allow_unfinished=True)) == 1


def test_a_sample_split_between_shards_is_reported_once_by_name(
    store: S3ExchangeStore, caplog: pytest.LogCaptureFixture
) -> None:
    first = _shard(store, "s/0.tar", ["k1.jpg", "k1.json", "k2.jpg"])
    second = _shard(store, "s/1.tar", ["k2.json", "k3.jpg", "k3.json"])
    third = _shard(store, "s/2.tar", ["k3.cls"])
    store.write_manifest("s/m.jsonl", [first, second, third])  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING, logger="s3exchange_torch.units"):
        ds = _dataset(store, "s/m.jsonl", group_by="key")
        assert len(ds) == 5  # k1, k2 (part), k2 (part), k3 (part), k3 (part)
    warnings = [r.getMessage() for r in caplog.records if "is split between" in r.getMessage()]
    assert len(warnings) == 1
    for part in ("'k2'", "'s/0.tar'", "'s/1.tar'"):
        assert part in warnings[0]


def test_whole_samples_raise_no_warning(
    store: S3ExchangeStore, caplog: pytest.LogCaptureFixture
) -> None:
    first = _shard(store, "w/0.tar", ["k1.jpg", "k1.json"])
    second = _shard(store, "w/1.tar", ["k2.jpg", "k2.json"])
    store.write_manifest("w/m.jsonl", [first, second])  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING, logger="s3exchange_torch.units"):
        assert len(_dataset(store, "w/m.jsonl", group_by="key")) == 2
    assert "split between" not in caplog.text
