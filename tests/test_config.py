"""One frozen TransferConfig for the tuning knobs: checked once, routed from the store's and the
dataset's keyword arguments, its memory figures derived from its defaults."""

from __future__ import annotations

import dataclasses
import pickle
import re

import boto3
import pytest

from s3exchange import RetryPolicy, S3ExchangeStore, S3Settings, TransferConfig
from s3exchange.deletion import delete_prefix
from s3exchange.testing import MemoryBucket
from s3exchange_torch import S3ExchangeIterableDataset

MiB = 1 << 20


def offline_store(**kwargs: object) -> S3ExchangeStore:
    """A store whose client never sends a request (nothing here reaches a server)."""
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    return S3ExchangeStore(client, "bucket", **kwargs)  # type: ignore[arg-type]


def test_the_defaults_are_the_measured_choices() -> None:
    config = TransferConfig()
    assert (config.part_size, config.upload_concurrency) == (8 * MiB, 2)
    assert config.read_retry == RetryPolicy()
    assert (config.reconnect_s, config.io_threads, config.prefetch_shards) == (30.0, None, 2)
    assert (config.chunk_samples, config.chunk_bytes, config.queue_chunks) == (64, MiB, 4)
    assert (config.max_sample_bytes, config.delete_batch) == (256 * MiB, 1000)


def test_the_docstrings_memory_figures_follow_from_the_defaults() -> None:
    config = TransferConfig()
    doc = " ".join((TransferConfig.__doc__ or "").split())
    upload = config.part_size * (2 * config.upload_concurrency + 1)
    reading = (1 + config.prefetch_shards) * (config.queue_chunks + 1) * config.chunk_bytes
    assert "``part_size x (2 x upload_concurrency + 1)`` [40 MiB]" in doc
    assert upload == 40 * MiB
    assert "(1 + prefetch_shards) x (queue_chunks + 1) x chunk_bytes`` of shard bytes" in doc
    assert re.search(r"\[15 MiB, whatever the shard size\]", doc)
    assert reading == 15 * MiB


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("part_size", 4 * MiB),
        ("part_size", (5 << 30) + 1),
        ("upload_concurrency", 0),
        ("reconnect_s", -1.0),
        ("io_threads", 0),
        ("prefetch_shards", -1),
        ("chunk_samples", 0),
        ("chunk_bytes", 0),
        ("queue_chunks", 0),
        ("max_sample_bytes", 0),
        ("delete_batch", 0),
        ("delete_batch", 1001),
        ("read_retry", RetryPolicy(max_attempts=0)),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^TransferConfig\.{field} "):
        TransferConfig(**{field: value})  # type: ignore[arg-type]


def test_it_is_frozen_and_replace_checks_again() -> None:
    config = TransferConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.part_size = 16 * MiB  # type: ignore[misc]
    assert config.replace(part_size=None, io_threads=None) is config  # None: not given
    assert config.replace(part_size=16 * MiB).part_size == 16 * MiB
    with pytest.raises(ValueError, match="part_size"):
        config.replace(part_size=MiB)


def test_it_pickles_for_spawned_workers() -> None:
    config = TransferConfig(part_size=16 * MiB, read_retry=RetryPolicy(max_attempts=9))
    assert pickle.loads(pickle.dumps(config)) == config


def test_the_stores_keyword_arguments_override_its_config() -> None:
    base = TransferConfig(part_size=16 * MiB, upload_concurrency=4, reconnect_s=5.0)
    store = offline_store(config=base, upload_concurrency=3, read_retry=RetryPolicy(7))
    assert store.config == dataclasses.replace(
        base, upload_concurrency=3, read_retry=RetryPolicy(7)
    )
    assert (store.part_size, store.upload_concurrency, store.reconnect_s) == (16 * MiB, 3, 5.0)
    assert offline_store().config == TransferConfig()
    assert offline_store(part_size=6 * MiB).config.part_size == 6 * MiB
    with pytest.raises(ValueError, match="part_size"):
        offline_store(part_size=MiB)
    assert store.scope(x=1).config is store.config


def test_from_settings_applies_the_reconnect_timeout_unless_given_a_config() -> None:
    settings = S3Settings(
        bucket="b",
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        reconnect_timeout=3.0,
        aws_access_key_id="test",  # type: ignore[arg-type]
        aws_secret_access_key="test",  # type: ignore[arg-type]
    )
    assert S3ExchangeStore.from_settings(settings).config.reconnect_s == 3.0
    assert S3ExchangeStore.from_settings(settings, reconnect_s=1.0).config.reconnect_s == 1.0
    config = TransferConfig(reconnect_s=9.0)
    assert S3ExchangeStore.from_settings(settings, config=config).config is config


def test_the_datasets_keyword_arguments_override_the_stores_config() -> None:
    store = offline_store(config=TransferConfig(prefetch_shards=1, chunk_samples=8))
    entries = [{"kind": "file", "key": "a.bin", "id": "a"}]
    dataset = S3ExchangeIterableDataset(store, entries, io_threads=4)  # type: ignore[arg-type]
    config = dataset._transfer
    assert (config.io_threads, config.prefetch_shards, config.chunk_samples) == (4, 1, 8)
    with pytest.raises(ValueError, match="io_threads"):
        S3ExchangeIterableDataset(store, entries, io_threads=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_sample_bytes"):
        S3ExchangeIterableDataset(store, entries, max_sample_bytes=0)  # type: ignore[arg-type]
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored._transfer == config


def test_deletes_go_delete_batch_keys_a_request() -> None:
    bucket = MemoryBucket()
    for i in range(5):
        bucket.put(f"d/{i}.bin", b"x")
    assert delete_prefix(bucket, "d/", batch_size=2) == 5
    sizes = [len(r.args["keys"]) for r in bucket.requests_of("DeleteObjects")]
    assert sizes == [2, 2, 1]
