"""Ranged reads against a real server: the writers store an index beside each shard, and one
ranged GET per member gives back the bytes the archive streams."""

from __future__ import annotations

import io
import logging
import random
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from s3exchange import S3ExchangeStore
from s3exchange.errors import ObjectChangedError, ObjectNotFoundError, ShardReadError
from s3exchange.shard_index import index_key_for
from s3exchange.types import ShardEntry, ShardItem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _items(rng: random.Random, n: int) -> list[ShardItem]:
    sizes = [0, 512, 1] + [
        rng.choice([rng.randrange(3000), rng.randrange(200_000)]) for _ in range(n)
    ]
    return [
        {"source": rng.randbytes(size), "member_path": f"s/{i:04d}.bin", "id": f"{i}"}
        for i, size in enumerate(sizes)
    ]


def _streamed(store: S3ExchangeStore, entry: ShardEntry) -> dict[str, bytes]:
    return {m.entry["member_path"]: m.read() for m in store.iter_shard_members(entry)}


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_every_member_of_a_put_shard_reads_by_range(
    store: S3ExchangeStore, compression: str | None
) -> None:
    rng = random.Random(7)
    name = "shards/a.tar.gz" if compression else "shards/a.tar"
    shard = store.put_shard_archive(name, _items(rng, 40), compression=compression)
    assert shard.entry["index_key"] == index_key_for(name)
    index = store.read_shard_index(shard.entry)
    assert index.seekable
    assert index.etag == shard.entry["etag"]
    streamed = _streamed(store, shard.entry)
    got = {m["member_path"]: store.read_indexed_member(index, m) for m in index.members}
    assert got == streamed
    assert [m["id"] for m in index.members] == [m["id"] for m in shard.members]


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_shard_writer_shards_read_by_range(store: S3ExchangeStore, compression: str | None) -> None:
    rng = random.Random(3)
    suffix = ".tar.gz" if compression else ".tar"
    with store.shard_writer(
        "w/shard-{index:03d}" + suffix, "w/manifest.jsonl", max_entries=30, compression=compression
    ) as writer:
        for i in range(40):
            writer.write(
                {
                    "__key__": f"{i:05d}",
                    "bin": rng.randbytes(rng.randrange(90_000)),
                    "json": {"i": i},
                }
            )
    assert len(writer.entries) == 3
    for entry in writer.entries:
        index = store.read_shard_index(entry)
        assert index.seekable
        assert len(index.members) == entry["count"]
        streamed = _streamed(store, entry)
        assert {
            m["member_path"]: store.read_indexed_member(index, m) for m in index.members
        } == streamed
        archive = store.get_object(entry["archive_key"]).read()
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r|*") as tar:
            offsets = {i.name: i.offset_data for i in tar}
        assert {
            m["member_path"]: m["offset_data"] for m in index.members
        }.items() <= offsets.items()


def test_a_shard_without_index_is_scanned_with_a_warning(
    store: S3ExchangeStore, caplog: pytest.LogCaptureFixture
) -> None:
    shard = store.put_shard_archive("old/a.tar", _items(random.Random(1), 10))
    store.delete_key(index_key_for("old/a.tar"))
    old = {k: v for k, v in shard.entry.items() if k != "index_key"}
    with caplog.at_level(logging.WARNING):
        index = store.read_shard_index(old)  # type: ignore[arg-type]
    assert "has no index" in caplog.text
    streamed = _streamed(store, shard.entry)
    assert {
        m["member_path"]: store.read_indexed_member(index, m) for m in index.members
    } == streamed


def test_a_replaced_archive_is_refused_by_ranged_reads(store: S3ExchangeStore) -> None:
    shard = store.put_shard_archive("r/a.tar", _items(random.Random(2), 5))
    index = store.read_shard_index(shard.entry)
    store.put_shard_archive("r/a.tar", _items(random.Random(9), 5))  # new bytes, same key
    with pytest.raises(ObjectChangedError, match=r"r/a\.tar"):
        store.read_indexed_member(index, index.members[4])


def test_a_corrupt_member_names_archive_and_member(store: S3ExchangeStore) -> None:
    shard = store.put_shard_archive("c/a.tar", _items(random.Random(4), 5))
    index = store.read_shard_index(shard.entry)
    member = dict(index.members[3])
    member["crc32c"] = "00000000"
    with pytest.raises(ShardReadError, match=r"'c/a.tar' member 's/0003.bin'.*crc32c"):
        store.read_indexed_member(index, member)  # type: ignore[arg-type]


def test_gnu_tar_and_webdataset_read_the_seekable_tar_gz(
    store: S3ExchangeStore, tmp_path: Path
) -> None:
    import webdataset

    items = _items(random.Random(5), 60)
    shard = store.put_shard_archive("g/a.tar.gz", items, compression="gzip")
    path = tmp_path / "a.tar.gz"
    path.write_bytes(store.get_object("g/a.tar.gz").read())
    index = store.read_shard_index(shard.entry)
    assert len({m["gz_offset"] for m in index.members}) > 5  # many flush points
    tar = shutil.which("tar")
    assert tar is not None
    listed = subprocess.run([tar, "tzf", str(path)], capture_output=True, check=True, text=True)
    assert listed.stdout.split() == ["__manifest__.jsonl"] + [i["member_path"] for i in items]
    samples = list(webdataset.WebDataset(str(path), shardshuffle=False))
    assert sum(1 for s in samples if "bin" in s) == len(items)


def test_gnu_tar_and_webdataset_read_a_shard_writer_tar_gz(
    store: S3ExchangeStore, tmp_path: Path
) -> None:
    """The ShardWriter's gzip framing (head deflated last, flush points in the data) too."""
    import webdataset

    rng = random.Random(12)
    payloads = [rng.randbytes(rng.randrange(60_000)) for _ in range(40)]
    with store.shard_writer("sw/{index}.tar.gz", compression="gzip") as writer:
        for i, payload in enumerate(payloads):
            writer.write({"__key__": f"{i:04d}", "bin": payload})
    (entry,) = writer.entries
    path = tmp_path / "sw.tar.gz"
    path.write_bytes(store.get_object(entry["archive_key"]).read())
    assert len({m["gz_offset"] for m in store.read_shard_index(entry).members}) > 5
    tar = shutil.which("tar")
    assert tar is not None
    listed = subprocess.run([tar, "tzf", str(path)], capture_output=True, check=True, text=True)
    assert listed.stdout.split() == ["__manifest__.jsonl"] + [f"{i:04d}.bin" for i in range(40)]
    samples = list(webdataset.WebDataset(str(path), shardshuffle=False))
    assert [s["bin"] for s in samples if "bin" in s] == payloads


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_virtual_keys_open_by_ranged_get(store: S3ExchangeStore, compression: str | None) -> None:
    name = "v/a.tar.gz" if compression else "v/a.tar"
    items = _items(random.Random(6), 20)
    store.put_shard_archive(name, items, compression=compression)  # type: ignore[arg-type]
    for item in items:
        with store.get_object(f"{name}#{item['member_path']}") as stream:
            assert stream.read() == item["source"]
    with store.get_object(f"{name}#{items[-1]['member_path']}") as stream:
        first = stream.read(7)
        assert first + stream.read() == items[-1]["source"]
    with pytest.raises(ObjectNotFoundError, match="no-such"):
        store.get_object(f"{name}#no-such.bin")


def test_a_virtual_key_with_a_stale_index_streams_the_new_archive(store: S3ExchangeStore) -> None:
    store.put_shard_archive("s/a.tar", _items(random.Random(1), 4))
    stale = store.get_object(index_key_for("s/a.tar")).read()
    fresh = _items(random.Random(2), 4)
    store.put_shard_archive("s/a.tar", fresh)
    store.put_object(index_key_for("s/a.tar"), stale)  # the index of the old archive
    assert store.get_object("s/a.tar#s/0003.bin").read() == fresh[3]["source"]


def test_a_corrupt_ranged_member_fails_naming_archive_and_member(store: S3ExchangeStore) -> None:
    store.put_shard_archive("k/a.tar", _items(random.Random(3), 4))
    raw = store.get_object(index_key_for("k/a.tar")).read()
    store.put_object(index_key_for("k/a.tar"), raw.replace(b'"crc32c":"', b'"crc32c":"f'))
    with pytest.raises(ShardReadError, match=r"'k/a\.tar' member 's/0003\.bin'.*crc32c"):
        store.get_object("k/a.tar#s/0003.bin").read()


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_ranged_reads_through_botocore_when_the_fast_path_is_off(
    s3_client: S3Client, bucket: str, monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    monkeypatch.setenv("S3EXCHANGE_FAST_GET", "0")
    store = S3ExchangeStore(s3_client, bucket)
    name = "b/a.tar.gz" if compression else "b/a.tar"
    items = _items(random.Random(8), 12)
    shard = store.put_shard_archive(name, items, compression=compression)  # type: ignore[arg-type]
    index = store.read_shard_index(shard.entry)
    got = [store.read_indexed_member(index, m) for m in index.members]
    assert got == [item["source"] for item in items]
    assert store._bucket._fast_getter() is None  # these went through botocore
    store.put_shard_archive(name, items[::-1], compression=compression)  # type: ignore[arg-type]
    with pytest.raises(ObjectChangedError, match=name.replace(".", r"\.")):
        store.read_indexed_member(index, index.members[5])
