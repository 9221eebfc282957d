"""``store.shard_writer``: samples streamed into shards on real S3 servers (moto, SeaweedFS).

Shards are read back by ``tarfile`` (stream mode, as webdataset opens them, and random access),
GNU tar, webdataset, ``gzip``, ``store.iter_objects`` and the dataset with ``group_by="key"``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3exchange import S3ExchangeStore, ShardWriteError
from s3exchange.multipart import MIN_PART_SIZE
from s3exchange.testing import RunningServer
from s3exchange.types import Compression, ShardEntry

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1 << 20
INTERNAL = "__manifest__.jsonl"

BOTH_SERVERS = pytest.mark.parametrize(
    "s3_server", ["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)], indirect=True
)


@pytest.fixture
def s3_server(request: pytest.FixtureRequest, moto_server: RunningServer) -> RunningServer:
    """moto, or SeaweedFS where a test is parametrized with ``BOTH_SERVERS``."""
    if getattr(request, "param", "moto") == "seaweedfs":
        server: RunningServer = request.getfixturevalue("seaweedfs_server")
        return server
    return moto_server


def suffix(compression: Compression) -> str:
    return ".tar.gz" if compression else ".tar"


def pending_uploads(client: S3Client, bucket: str) -> list[str]:
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def stored_keys(client: S3Client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def members_of(store: S3ExchangeStore, entry: ShardEntry) -> list[str]:
    return [m["member_path"] for m in store.read_shard_manifest(entry)]


# -- what the design relies on ---------------------------------------------------------------


@BOTH_SERVERS
def test_servers_take_part_one_last_and_refuse_small_middle_parts(
    s3_client: S3Client, bucket: str
) -> None:
    """Part 1 uploaded after parts 2..N is assembled first; a non-last part under 5 MiB is
    refused at completion (so a writer that breaks the rule fails loudly, never silently)."""

    def upload(sizes: dict[int, int]) -> str:
        upload_id = s3_client.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
        etags = {}
        for number in (2, 3, 1):
            body = bytes([number]) * sizes[number]
            etags[number] = s3_client.upload_part(
                Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=number, Body=body
            )["ETag"]
        s3_client.complete_multipart_upload(
            Bucket=bucket,
            Key="k",
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]},
        )
        return upload_id

    upload({1: MIN_PART_SIZE, 2: MIN_PART_SIZE, 3: 7})
    data = s3_client.get_object(Bucket=bucket, Key="k")["Body"].read()
    assert data == b"\1" * MIN_PART_SIZE + b"\2" * MIN_PART_SIZE + b"\3" * 7
    with pytest.raises(ClientError, match="EntityTooSmall"):
        upload({1: MIN_PART_SIZE - 1, 2: MIN_PART_SIZE, 3: 7})


# -- large shards, read by everyone ------------------------------------------------------------


def big_samples(count: int) -> Iterator[dict[str, Any]]:
    """3 MiB of random bytes and a JSON field per sample: six fill a shard of three parts."""
    base = os.urandom(3 * MiB)
    for i in range(count):
        yield {"__key__": f"s/{i:04d}", "bin": i.to_bytes(4, "big") + base[4:], "json": {"i": i}}


@BOTH_SERVERS
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_large_shards_stream_in_parts_and_read_everywhere(
    store: S3ExchangeStore,
    s3_client: S3Client,
    bucket: str,
    compression: Compression,
    tmp_path: Path,
) -> None:
    import webdataset as wds

    from s3exchange_torch import S3ExchangeIterableDataset

    samples = list(big_samples(14))
    pattern = "train/shard-{index:03d}" + suffix(compression)
    with store.shard_writer(
        pattern,
        manifest="train/manifest.jsonl",
        max_entries=12,
        compression=compression,
        compresslevel=1,
    ) as writer:
        for sample in samples:
            writer.write(sample)
    entries = writer.entries
    assert writer.close() == entries  # idempotent once closed
    assert [e["count"] for e in entries] == [12, 12, 4]
    assert pending_uploads(s3_client, bucket) == []

    paths = []
    for index, entry in enumerate(entries):
        head = s3_client.head_object(Bucket=bucket, Key=entry["archive_key"])
        assert entry["etag"] == head["ETag"]
        assert entry["size_bytes"] == head["ContentLength"]
        assert entry["compression"] == compression
        if index < 2:  # 18 MiB: part 1 = manifest + 5 MiB head, part 2 = 8 MiB, then the rest
            part1 = s3_client.head_object(Bucket=bucket, Key=entry["archive_key"], PartNumber=1)
            assert part1["PartsCount"] == 3
            assert part1["ContentLength"] > MIN_PART_SIZE
        else:  # 6 MiB: one PutObject
            assert "-" not in head["ETag"]
        path = tmp_path / f"{index}{suffix(compression)}"
        path.write_bytes(store.get_object(entry["archive_key"]).read())
        paths.append(str(path))
        if compression:
            gzip.decompress(path.read_bytes())  # one valid gzip member: CRC and size trailer

    expected = [(f"{s['__key__']}.{f}", encoded(s[f])) for s in samples for f in ("bin", "json")]
    # tarfile, stream mode (what webdataset uses) and random access
    for mode in ("r|*", "r:*"):
        found = []
        for path in paths:
            with tarfile.open(path, mode) as archive:
                for info in archive:
                    data = archive.extractfile(info)
                    assert data is not None
                    found.append((info.name, data.read()))
        assert [name for name, _ in found if name == INTERNAL] == [INTERNAL] * 3
        assert [item for item in found if item[0] != INTERNAL] == expected, mode
    # webdataset
    theirs = list(wds.WebDataset(paths, shardshuffle=False, select_files=lambda n: n != INTERNAL))
    assert [(s["__key__"], s["bin"], s["json"]) for s in theirs] == [
        (s["__key__"], encoded(s["bin"]), encoded(s["json"])) for s in samples
    ]
    # our readers
    ours = [
        (e["member_path"], stream.read())
        for stream, e in store.iter_objects("train/manifest.jsonl")
    ]
    assert ours == expected
    dataset = S3ExchangeIterableDataset(
        store, "train/manifest.jsonl", group_by="key", shuffle=False, rank=0, world_size=1
    )
    grouped = [(s["__key__"], s["bin"], json.loads(s["json"])) for s in dataset]
    assert grouped == [(s["__key__"], s["bin"], s["json"]) for s in samples]


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode() if isinstance(value, dict) else bytes(value)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_gnu_tar_lists_and_extracts_a_streamed_shard(
    store: S3ExchangeStore, compression: Compression, tmp_path: Path
) -> None:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("no tar binary on PATH")
    samples = list(big_samples(6))
    with store.shard_writer("s-{index}" + suffix(compression), compression=compression) as w:
        for sample in samples:
            w.write(sample)
    (entry,) = w.entries
    path = tmp_path / ("shard" + suffix(compression))
    path.write_bytes(store.get_object(entry["archive_key"]).read())
    listing = subprocess.run([tar, "-tvf", str(path)], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in listing.stdout.splitlines()]
    assert names == [INTERNAL] + [f"s/{i:04d}.{f}" for i in range(6) for f in ("bin", "json")]
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tar, "-xf", str(path), "-C", str(out)], check=True)
    for sample in samples:
        assert (out / f"{sample['__key__']}.bin").read_bytes() == sample["bin"]
    lines = (out / INTERNAL).read_text().splitlines()
    assert [json.loads(line)["member_path"] for line in lines] == names[1:]


# -- samples are never split -------------------------------------------------------------------


sample_shapes = st.lists(
    st.lists(st.integers(0, 400), min_size=1, max_size=3), min_size=1, max_size=12
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shapes=sample_shapes,
    max_entries=st.one_of(st.none(), st.integers(1, 6)),
    max_bytes=st.one_of(st.none(), st.integers(1, 1200)),
)
def test_samples_are_never_split_and_shards_fill_greedily(
    store: S3ExchangeStore,
    shapes: list[list[int]],
    max_entries: int | None,
    max_bytes: int | None,
) -> None:
    run = uuid.uuid4().hex[:8]
    fields = ["a", "b", "c"]
    samples = [
        {"__key__": f"k{i:03d}", **{fields[f]: bytes([i]) * n for f, n in enumerate(sizes)}}
        for i, sizes in enumerate(shapes)
    ]
    with store.shard_writer(
        run + "/{index}.tar", max_entries=max_entries, max_bytes=max_bytes
    ) as writer:
        for sample in samples:
            writer.write(sample)
    shards: list[list[str]] = []  # sample keys per shard, from the internal manifests
    for entry in writer.entries:
        paths = members_of(store, entry)
        keys = list(dict.fromkeys(path.split(".")[0] for path in paths))
        assert entry["count"] == len(paths)
        assert entry["members_size_bytes"] == sum(
            len(samples[int(k[1:])][f]) for k in keys for f in fields if f in samples[int(k[1:])]
        )
        alone = len(keys) == 1
        assert max_entries is None or entry["count"] <= max_entries or alone
        assert max_bytes is None or entry["members_size_bytes"] <= max_bytes or alone
        shards.append(keys)
    assert [k for keys in shards for k in keys] == [s["__key__"] for s in samples]
    for index in range(1, len(shards)):  # each roll was needed: the next sample did not fit
        earlier = writer.entries[index - 1]
        first = samples[int(shards[index][0][1:])]
        n = len(first) - 1
        size = sum(len(v) for f, v in first.items() if f != "__key__")
        fits_count = max_entries is None or earlier["count"] + n <= max_entries
        fits_bytes = max_bytes is None or earlier["members_size_bytes"] + size <= max_bytes
        assert not (fits_count and fits_bytes), "rolled to a new shard with room left"


# -- field encodings and errors ----------------------------------------------------------------


def test_each_field_type_is_encoded_as_webdataset_expects(store: S3ExchangeStore) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    sample = {
        "__key__": "dir/0001",
        "__url__": "ignored: metadata",
        "bin": b"\x00\xff",
        "raw": bytearray(b"ba"),
        "view": memoryview(b"mv"),
        "txt": "héllo ✓",
        "json": {"label": 3, "tags": ["a", "é"]},
        "list.json": [1, 2],
        "npy": array,
        "_private": "skipped too",
    }
    with store.shard_writer("enc-{index}.tar", manifest="enc.jsonl") as writer:
        writer.write(sample)
    got = {e["member_path"]: s.read() for s, e in store.iter_objects("enc.jsonl")}
    assert list(got) == [
        f"dir/0001.{f}" for f in ("bin", "raw", "view", "txt", "json", "list.json", "npy")
    ]
    assert got["dir/0001.bin"] == b"\x00\xff"
    assert got["dir/0001.raw"] == b"ba"
    assert got["dir/0001.view"] == b"mv"
    assert got["dir/0001.txt"].decode() == "héllo ✓"
    assert json.loads(got["dir/0001.json"]) == {"label": 3, "tags": ["a", "é"]}
    assert json.loads(got["dir/0001.list.json"]) == [1, 2]
    loaded = np.load(io.BytesIO(got["dir/0001.npy"]), allow_pickle=False)
    assert loaded.dtype == np.float32
    assert (loaded == array).all()


@pytest.mark.parametrize(
    ("value", "error", "reason"),
    [
        (3, TypeError, "cannot encode int"),
        (None, TypeError, "cannot encode NoneType"),
        ({1, 2}, TypeError, "cannot encode set"),
        (np.float32(1.5), TypeError, "cannot encode float32"),
        ({"x": float("nan")}, ValueError, "is not JSON"),
        ({"x": object()}, ValueError, "is not JSON"),
        (np.array([object()]), ValueError, "cannot save as .npy"),
        (memoryview(b"abcdef")[::2], ValueError, "not C-contiguous"),
        ("\ud800", ValueError, "not valid UTF-8"),
    ],
)
def test_an_unencodable_field_names_key_and_field_and_leaves_the_writer_usable(
    store: S3ExchangeStore, value: Any, error: type[Exception], reason: str
) -> None:
    with store.shard_writer("bad-{index}.tar", manifest="bad.jsonl") as writer:
        writer.write({"__key__": "0000", "txt": "fine"})
        with pytest.raises(error) as info:
            writer.write({"__key__": "0001", "txt": "fine", "cls": value})
        writer.write({"__key__": "0002", "txt": "fine"})
    message = str(info.value)
    assert message.startswith("sample '0001' field 'cls': "), message
    assert reason in message
    assert "\n" not in message
    keys = [e["member_path"] for _, e in store.iter_objects("bad.jsonl")]
    assert keys == ["0000.txt", "0002.txt"]


@pytest.mark.parametrize(
    ("sample", "error", "message"),
    [
        ({"jpg": b""}, ValueError, "sample has no '__key__' (fields: 'jpg')"),
        ({"__key__": 7, "jpg": b""}, TypeError, "sample '__key__' must be a str, got int 7"),
        ({"__key__": "a.b", "jpg": b""}, ValueError, "sample 'a.b': invalid key: the last"),
        ({"__key__": "../x", "jpg": b""}, ValueError, "sample '../x': invalid key: member path"),
        ({"__key__": "/x", "jpg": b""}, ValueError, "sample '/x': invalid key: member path is abs"),
        ({"__key__": "x"}, ValueError, "sample 'x' has no fields to write"),
        ({"__key__": "x", "": b""}, ValueError, "sample 'x' field '': a field is a non-empty"),
        ({"__key__": "x", "a/b": b""}, ValueError, "sample 'x' field 'a/b': a field is"),
        ({"__key__": "x", "jpg": b"", "JPG": b""}, ValueError, "sample 'x' field 'JPG': repeats"),
        (
            {"__key__": "__manifest__", "jsonl": b""},
            ValueError,
            "sample '__manifest__' field 'jsonl': the member path is reserved",
        ),
        ({"__key__": "x", 3: b""}, TypeError, "sample 'x': field names are str, got 3"),
    ],
)
def test_a_bad_key_or_field_name_is_refused_before_anything_is_written(
    store: S3ExchangeStore,
    s3_client: S3Client,
    bucket: str,
    sample: dict[Any, Any],
    error: type[Exception],
    message: str,
) -> None:
    with (
        store.shard_writer("n-{index}.tar", manifest="n.jsonl") as writer,
        pytest.raises(error) as info,
    ):
        writer.write(sample)
    assert str(info.value).startswith(message), str(info.value)
    assert stored_keys(s3_client, bucket) == ["n.jsonl"]


def test_a_key_repeated_within_a_shard_is_refused(store: S3ExchangeStore) -> None:
    with store.shard_writer("r-{index}.tar", max_entries=4) as writer:
        writer.write({"__key__": "a", "x": b"1"})
        writer.write({"__key__": "b", "x": b"1"})
        with pytest.raises(ValueError, match=r"sample 'a': key repeated within shard 'r-0\.tar'"):
            writer.write({"__key__": "a", "x": b"2"})
        writer.write({"__key__": "c", "x": b"1"})
    assert [e["count"] for e in writer.entries] == [3]


def test_pattern_and_options_are_checked_before_any_upload(store: S3ExchangeStore) -> None:
    with pytest.raises(ValueError, match=r"has no \{index\} placeholder"):
        store.shard_writer("one.tar")
    with pytest.raises(ValueError, match="named for compression None but compression is 'gzip'"):
        store.shard_writer("s-{index}.tar", compression="gzip")
    with pytest.raises(ValueError, match="named for compression 'gzip' but compression is None"):
        store.shard_writer("s-{index}.tar.gz")
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        store.shard_writer("s-{index}.tar", max_bytes=0)
    with pytest.raises(ValueError, match="update_mode must be"):
        store.shard_writer("s-{index}.tar", update_mode="append")  # type: ignore[arg-type]


def test_a_sample_over_the_limits_gets_a_shard_of_its_own(store: S3ExchangeStore) -> None:
    with store.shard_writer("o-{index}.tar", max_bytes=100, max_entries=2) as writer:
        writer.write({"__key__": "a", "x": b"1" * 10})
        writer.write({"__key__": "big", "x": b"2" * 500, "y": b"3", "z": b"4"})
        writer.write({"__key__": "b", "x": b"5" * 10})
    assert [members_of(store, e) for e in writer.entries] == [
        ["a.x"],
        ["big.x", "big.y", "big.z"],
        ["b.x"],
    ]


# -- failures leave nothing behind -------------------------------------------------------------


class Boom(Exception):
    pass


@BOTH_SERVERS
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_an_exception_mid_shard_leaves_no_object_and_no_pending_upload(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str, compression: Compression
) -> None:
    with (
        pytest.raises(Boom),
        store.shard_writer(
            "x/{index}" + suffix(compression),
            manifest="x/m.jsonl",
            compression=compression,
            compresslevel=1,
        ) as writer,
    ):
        for sample in big_samples(6):  # 18 MiB: part 2 is uploading or up
            writer.write(sample)
        assert pending_uploads(s3_client, bucket) == [f"x/0{suffix(compression)}"]
        raise Boom
    assert stored_keys(s3_client, bucket) == []
    assert pending_uploads(s3_client, bucket) == []
    with pytest.raises(ValueError, match="the ShardWriter is aborted: no more samples"):
        writer.write({"__key__": "late", "x": b""})


@BOTH_SERVERS
def test_an_exception_in_a_later_shard_keeps_the_finished_ones_unlisted(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    with (
        pytest.raises(Boom),
        store.shard_writer("y/{index}.tar", manifest="y/m.jsonl", max_entries=12) as writer,
    ):
        for sample in big_samples(10):
            writer.write(sample)
        raise Boom
    assert stored_keys(s3_client, bucket) == ["y/0.tar", "y/0.tar.index.jsonl"]
    assert pending_uploads(s3_client, bucket) == []
    assert [e["archive_key"] for e in writer.entries] == ["y/0.tar"]


# -- manifests ---------------------------------------------------------------------------------


@BOTH_SERVERS
def test_append_parts_runs_add_to_one_manifest_and_never_replace_a_listed_shard(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    def run(start: int, keys: range) -> list[ShardEntry]:
        with store.shard_writer(
            "a/{index:04d}.tar",
            manifest="a/m.jsonl",
            max_entries=2,
            update_mode="append_parts",
            start_index=start,
        ) as writer:
            for k in keys:
                writer.write({"__key__": f"k{k}", "txt": str(k)})
        return writer.entries

    first = run(0, range(3))
    second = run(100, range(3, 6))
    assert [e["archive_key"] for e in first + second] == [
        "a/0000.tar",
        "a/0001.tar",
        "a/0100.tar",
        "a/0101.tar",
    ]
    got = [s.read().decode() for s, _ in store.iter_objects("a/m.jsonl")]
    assert got == [str(k) for k in range(6)]
    refs = [e for e in store.iter_manifest_entries("a/m.jsonl", resolve_refs=False)]
    assert [e["kind"] for e in refs] == ["manifest_ref", "manifest_ref"]

    before = sorted(stored_keys(s3_client, bucket))
    with pytest.raises(ShardWriteError, match=r"'a/0001\.tar'.*already exists"):
        run(1, range(6, 9))
    assert sorted(stored_keys(s3_client, bucket)) == before
    assert pending_uploads(s3_client, bucket) == []
    assert [s.read().decode() for s, _ in store.iter_objects("a/m.jsonl")] == got


def test_closing_an_empty_writer(store: S3ExchangeStore, s3_client: S3Client, bucket: str) -> None:
    with store.shard_writer("e/{index}.tar", manifest="e/over.jsonl") as writer:
        pass
    assert writer.entries == []
    assert list(store.iter_manifest_entries("e/over.jsonl")) == []
    with store.shard_writer("e/{index}.tar", "e/app.jsonl", update_mode="append_parts"):
        pass
    with store.shard_writer("e/{index}.tar") as writer:
        writer.write({"__key__": "only", "x": b"1"})
    assert sorted(stored_keys(s3_client, bucket)) == [
        "e/0.tar",
        "e/0.tar.index.jsonl",
        "e/over.jsonl",
    ]


def test_manifest_and_pattern_take_store_vars(s3_client: S3Client, bucket: str) -> None:
    store = S3ExchangeStore(s3_client, bucket, base_prefix="base", default_vars={"job": "j7"})
    with store.shard_writer(
        "{job}/{run}/{index:02d}.tar", "{job}/m.jsonl", vars={"run": "r1"}
    ) as w:
        w.write({"__key__": "k", "x": b"1"})
    assert [e["archive_key"] for e in w.entries] == ["j7/r1/00.tar"]
    assert sorted(stored_keys(s3_client, bucket)) == [
        "base/j7/m.jsonl",
        "base/j7/r1/00.tar",
        "base/j7/r1/00.tar.index.jsonl",
    ]
    assert [s.read() for s, _ in store.iter_objects("j7/m.jsonl")] == [b"1"]


# -- memory ------------------------------------------------------------------------------------


def test_256_mib_streams_through_in_bounded_memory(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    """256 one-MiB samples into 2 shards of 128 MiB: the peak stays near the design's ~45 MiB
    (head 5 + filling part 8 + 4 queued or in flight x 8), half a shard at most."""
    payload = os.urandom(MiB)
    tracemalloc.start()
    try:
        with store.shard_writer("mem/{index}.tar", "mem/m.jsonl", max_bytes=128 * MiB) as writer:
            for i in range(256):
                writer.write({"__key__": f"{i:05d}", "bin": payload})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [e["members_size_bytes"] for e in writer.entries] == [128 * MiB] * 2
    assert pending_uploads(s3_client, bucket) == []
    assert peak < 64 * MiB, peak  # 54 MiB measured


# -- the README, as written --------------------------------------------------------------------


def test_readme_shard_writer_snippet_runs_as_written(store: S3ExchangeStore) -> None:
    source = [(b"\xff\xd8 jpeg %d" % i, i % 10) for i in range(5)]
    with store.shard_writer(
        "train/shards/shard-{index:06d}.tar",  # {index}: 0, 1, 2 ... (start_index=)
        manifest="train/manifest.jsonl",  # written at close; None: no manifest
        max_entries=20_000,  # members (files) per shard, as pack --max-entries
        max_bytes=256 * 1024**2,  # member bytes per shard (the default)
        compression=None,  # or "gzip" (name the shards .tar.gz)
        update_mode="overwrite",  # or "append_parts"
    ) as writer:
        for i, (jpeg, label) in enumerate(source):
            writer.write({"__key__": f"{i:08d}", "jpg": jpeg, "json": {"label": label}})
    shard_entries = writer.entries  # also close()'s return: count, size_bytes, etag ...
    (entry,) = shard_entries
    assert entry["archive_key"] == "train/shards/shard-000000.tar"
    assert entry["count"] == 10
    assert set(entry) == {
        "kind",
        "archive_key",
        "format",
        "compression",
        "internal_manifest_path",
        "count",
        "size_bytes",
        "members_size_bytes",
        "etag",
        "index_key",
    }
    assert entry["index_key"] == "train/shards/shard-000000.tar.index.jsonl"
    got = [(e["member_path"], s.read()) for s, e in store.iter_objects("train/manifest.jsonl")]
    assert got[:2] == [("00000000.jpg", b"\xff\xd8 jpeg 0"), ("00000000.json", b'{"label": 0}')]
