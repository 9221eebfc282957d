"""TransferConfig's knobs reach the shard read-ahead and the deletes (a real server, moto)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from s3exchange import S3ExchangeStore, ShardItem, TransferConfig
from s3exchange_torch import S3ExchangeMapDataset
from s3exchange_torch.plan import Segment
from s3exchange_torch.prefetch import Prefetcher, SampleTooLargeError, plan_jobs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@pytest.mark.parametrize(
    ("config", "lengths"),
    [
        (TransferConfig(chunk_samples=3), [3, 3, 3, 1]),
        (TransferConfig(chunk_bytes=150), [2, 2, 2, 2, 2]),
        (TransferConfig(), [10]),
    ],
    ids=["chunk_samples", "chunk_bytes", "defaults"],
)
def test_a_shard_is_handed_over_in_lists_the_config_sizes(
    store: S3ExchangeStore, config: TransferConfig, lengths: list[int]
) -> None:
    items: list[ShardItem] = [
        {"source": bytes([i]) * 100, "member_path": f"{i:02}.bin"} for i in range(10)
    ]
    entry = store.put_shard_archive("s.tar", items).entry
    prefetcher = Prefetcher(store, plan_jobs([entry], [Segment(0, 0, 10)]), config=config)
    chunks = list(prefetcher.chunks())
    assert [len(chunk) for chunk in chunks] == lengths
    datas = [sample[0] for chunk in chunks for sample in chunk]
    assert datas == [item["source"] for item in items]


def test_max_sample_bytes_of_the_config_refuses_a_member(store: S3ExchangeStore) -> None:
    entry = store.put_shard_archive("s.tar", [{"source": b"x" * 200, "member_path": "a.bin"}])
    config = TransferConfig(max_sample_bytes=199)
    prefetcher = Prefetcher(store, plan_jobs([entry.entry], [Segment(0, 0, 1)]), config=config)
    with pytest.raises(SampleTooLargeError, match="200 bytes exceed max_sample_bytes=199"):
        list(prefetcher.chunks())


def test_the_stores_deletes_go_delete_batch_keys_a_request(
    s3_client: S3Client, bucket: str
) -> None:
    store = S3ExchangeStore(s3_client, bucket, config=TransferConfig(delete_batch=2))
    for i in range(5):
        store.put_object(f"d/{i}.bin", b"x")
    sizes: list[int] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        sizes.append(len(params["Delete"]["Objects"]))

    s3_client.meta.events.register("provide-client-params.s3.DeleteObjects", count)
    try:
        assert store.delete_prefix("d/") == 5
    finally:
        s3_client.meta.events.unregister("provide-client-params.s3.DeleteObjects", count)
    assert sizes == [2, 2, 1]
    assert list(store.list_objects("d/")) == []


def test_the_map_datasets_io_threads_come_from_the_config(s3_client: S3Client, bucket: str) -> None:
    store = S3ExchangeStore(s3_client, bucket, config=TransferConfig(io_threads=3))
    entry = store.put_object("a.bin", b"x")
    store.write_manifest("m.jsonl", [entry])
    assert S3ExchangeMapDataset(store, "m.jsonl")._io_threads == 3
    assert S3ExchangeMapDataset(store, "m.jsonl", io_threads=5)._io_threads == 5
    assert S3ExchangeMapDataset(store.scope(), "m.jsonl")._io_threads == 3
    plain = S3ExchangeStore(s3_client, bucket)
    assert S3ExchangeMapDataset(plain, "m.jsonl")._io_threads == 16  # automatic: 16
    with pytest.raises(ValueError, match="io_threads"):
        S3ExchangeMapDataset(store, "m.jsonl", io_threads=0)
