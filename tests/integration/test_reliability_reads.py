"""Reads survive resets, truncation and stalls mid-body, and catch corrupt or changed data."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from s3exchange import (
    IntegrityError,
    ObjectChangedError,
    S3ExchangeStore,
    ShardItem,
    ShardReadError,
)
from s3exchange.testing.proxy import Fault, FaultProxy

pytestmark = pytest.mark.parametrize(
    "s3_server", ["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)], indirect=True
)

MiB = 1024 * 1024


@pytest.fixture
def proxy(s3_server: Any) -> Iterator[FaultProxy]:
    port = int(s3_server.s3.endpoint_url.rsplit(":", 1)[1])
    with FaultProxy(upstream_port=port) as running:
        yield running


@pytest.fixture
def flaky_store(proxy: FaultProxy, s3_server: Any, bucket: str) -> S3ExchangeStore:
    """A store whose every request crosses the fault proxy, with a short read timeout."""
    import boto3
    from botocore.config import Config

    s3 = s3_server.s3
    client = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint_url,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        region_name=s3.region,
        config=Config(
            read_timeout=2,
            retries={"mode": "standard", "max_attempts": 3},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    return S3ExchangeStore(client, bucket)


def _payload(size: int, seed: int = 0) -> bytes:
    """Incompressible bytes (so a gzip shard is as large as its members)."""
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("kind", ["reset", "truncate", "stall"])
def test_loose_object_arrives_byte_identical_through_a_fault(
    flaky_store: S3ExchangeStore, proxy: FaultProxy, kind: str
) -> None:
    payload = _payload(6 * MiB)
    entry = flaky_store.put_object("big.bin", payload)
    proxy.inject(
        Fault(kind=kind, after_bytes=2 * MiB, count=1, min_response_bytes=MiB, stall_s=4.0)
    )
    [(stream, _)] = list(flaky_store.iter_objects([entry]))
    assert stream.read() == payload
    assert proxy.fired == 1


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_shard_members_arrive_byte_identical_through_resets(
    flaky_store: S3ExchangeStore, proxy: FaultProxy, compression: str | None
) -> None:
    members = {f"{i:04d}.bin": _payload(100 * 1024 + i, seed=i) for i in range(60)}
    items: list[ShardItem] = [{"source": v, "member_path": k} for k, v in members.items()]
    shard = flaky_store.put_shard_archive("s.tar", items, compression=compression)  # type: ignore[arg-type]
    proxy.inject(Fault(kind="reset", after_bytes=1_000_000, count=2, min_response_bytes=500_000))
    got = {e["member_path"]: s.read() for s, e in flaky_store.iter_objects([shard.entry])}
    assert got == members
    assert proxy.fired == 2


def test_object_replaced_mid_read_raises_instead_of_mixing_versions(
    store: S3ExchangeStore,
) -> None:
    store.put_object("obj.bin", _payload(4 * MiB, seed=1))
    stream = store.get_object("obj.bin")
    first = stream.read(1024)
    assert len(first) == 1024
    store.put_object("obj.bin", _payload(4 * MiB, seed=2))
    stream._current.body.close()  # type: ignore[union-attr]  # the connection breaks
    with pytest.raises(ObjectChangedError) as err:
        stream.read()
    assert err.value.key == "obj.bin"


def test_loose_object_changed_since_the_manifest_is_caught(store: S3ExchangeStore) -> None:
    entry = store.put_object("a.bin", b"version one")
    store.put_object("a.bin", b"version two")
    with pytest.raises(IntegrityError, match="ETag"):
        list(store.iter_objects([entry]))


def test_loose_object_size_and_checksum_are_verified(store: S3ExchangeStore) -> None:
    entry = store.put_object("a.bin", b"0123456789")
    wrong_size = {**entry, "size_bytes": 11}
    with pytest.raises(IntegrityError, match="size"):
        list(store.iter_objects([wrong_size]))  # type: ignore[list-item]
    wrong_sum = {k: v for k, v in entry.items() if k != "etag"}
    wrong_sum["sha256"] = "0" * 64
    [(stream, _)] = list(store.iter_objects([wrong_sum]))  # type: ignore[list-item]
    with pytest.raises(IntegrityError, match="sha256"):
        stream.read()


def _shard(store: S3ExchangeStore, n: int = 4) -> tuple[dict[str, Any], bytes]:
    items: list[ShardItem] = [
        {"source": _payload(3000 + i, seed=i), "member_path": f"{i}.bin"} for i in range(n)
    ]
    shard = store.put_shard_archive("s.tar", items)
    return dict(shard.entry), store.get_object("s.tar").read()


def _read_all(store: S3ExchangeStore, entry: dict[str, Any]) -> None:
    for stream, _ in store.iter_objects([entry]):  # type: ignore[list-item]
        stream.read()


def test_shard_truncated_at_a_member_boundary_is_caught(store: S3ExchangeStore) -> None:
    import tarfile
    from io import BytesIO

    entry, raw = _shard(store)
    with tarfile.open(fileobj=BytesIO(raw)) as tar:
        last = tar.getmembers()[-1]
    cut = raw[: last.offset]  # ends exactly where the last member's header would start
    store.put_object("s.tar", cut)
    entry.pop("etag", None)  # else the re-upload is refused by its ETag first (issue 10, item 1)
    with pytest.raises(ShardReadError) as err:
        _read_all(store, entry)
    assert err.value.archive_key == "s.tar"


def test_flipped_byte_names_the_member(store: S3ExchangeStore) -> None:
    entry, raw = _shard(store)
    import tarfile
    from io import BytesIO

    with tarfile.open(fileobj=BytesIO(raw)) as tar:
        member = tar.getmembers()[2]
    corrupt = bytearray(raw)
    corrupt[member.offset_data + 10] ^= 0x01
    store.put_object("s.tar", bytes(corrupt))
    entry.pop("etag", None)  # else the re-upload is refused by its ETag first (issue 10, item 1)
    with pytest.raises(ShardReadError) as err:
        _read_all(store, entry)
    assert err.value.member_path == member.name


def test_member_count_mismatch_is_caught(store: S3ExchangeStore) -> None:
    entry, _ = _shard(store)
    entry["count"] = 5
    with pytest.raises(ShardReadError, match="5"):
        _read_all(store, entry)
