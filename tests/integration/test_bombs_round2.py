"""Issue 10, items 4 and 5: memory and time stay bounded whatever an archive holds.

Hostile archives are built by hand (a tar of zeros costs nothing gzipped: 200 MiB in ~200 KB)
and uploaded directly to moto's server on 127.0.0.1. Memory is measured with tracemalloc (every
thread of this process); the CLI's peak RSS with ``wait4``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from s3exchange import S3ExchangeStore, ShardReadError, TransferConfig
from s3exchange.shard import MAX_INTERNAL_MANIFEST_BYTES, write_shard
from s3exchange.types import INTERNAL_MANIFEST_PATH, ShardItem
from s3exchange_torch import S3ExchangeIterableDataset
from s3exchange_torch.dataset import SampleTooLargeError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3exchange.testing import RunningServer

MiB = 1 << 20
BOMB = 200 * MiB
"""The bomb member: big enough that reading it whole shows in memory, ~200 KB gzipped."""
BOUND = 32 * MiB
"""Peak traced memory allowed where the fix streams (a whole read needs > BOMB)."""
_RUN = 8 * MiB


@functools.cache
def _gzip_run(byte: int) -> bytes:
    """One gzip member of ``_RUN`` equal bytes (~8 KB): concatenated, a cheap long run."""
    return gzip_bytes(bytes([byte]) * _RUN)


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def gzip_run(byte: int, size: int) -> bytes:
    """``size`` bytes equal to ``byte``, gzipped as a series of gzip members."""
    whole, rest = divmod(size, _RUN)
    return _gzip_run(byte) * whole + (gzip_bytes(bytes([byte]) * rest) if rest else b"")


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.PAX_FORMAT)


def bomb_archive(name: str = "bomb.bin", size: int = BOMB, manifest: bool = True) -> bytes:
    """A .tar.gz whose one data member is ``size`` zero bytes."""
    parts = []
    if manifest:
        line = json.dumps({"kind": "file", "key": name, "size_bytes": size}).encode() + b"\n"
        parts.append(header(INTERNAL_MANIFEST_PATH, len(line)) + line + bytes(-len(line) % 512))
    parts.append(header(name, size))
    return b"".join(
        [
            gzip_bytes(b"".join(parts)),
            gzip_run(0, size),
            gzip_bytes(bytes(-size % 512) + bytes(1024)),
        ]
    )


def peak_traced(action: Callable[[], Any]) -> tuple[Any, int]:
    """``action()``'s result (or exception) and the peak of memory traced while it ran."""
    tracemalloc.start()
    try:
        try:
            result: Any = action()
        except Exception as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def upload(s3_client: S3Client, bucket: str, key: str, body: bytes) -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def dataset(store: S3ExchangeStore, manifest: Any, **options: Any) -> S3ExchangeIterableDataset:
    return S3ExchangeIterableDataset(
        store, manifest, shuffle=False, rank=0, world_size=1, **options
    )


# -- 4. member bombs ----------------------------------------------------------------------------


def test_a_member_opened_by_virtual_key_streams(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    upload(s3_client, bucket, "bomb.tar.gz", bomb_archive())

    def first_bytes() -> tuple[bytes, int | None]:
        with store.get_object("bomb.tar.gz#bomb.bin") as stream:
            return stream.read(10), stream.size

    (data, size), peak = peak_traced(first_bytes)
    assert (data, size) == (bytes(10), BOMB)
    assert peak < BOUND, f"{peak / MiB:.0f} MiB traced: the member was read whole"


def test_a_member_opened_by_virtual_key_reads_whole_and_verified(
    store: S3ExchangeStore,
) -> None:
    items: list[ShardItem] = [
        {"source": b"first", "member_path": "a.txt"},
        {"source": b"second" * 1000, "member_path": "b.txt"},
    ]
    store.put_shard_archive("ok.tar.gz", items, compression="gzip")
    with store.get_object("ok.tar.gz#b.txt") as stream:
        assert b"".join(stream.iter_chunks(4096)) == b"second" * 1000
    assert store.get_object("ok.tar.gz#a.txt").read() == b"first"


@pytest.mark.parametrize("manifest", [True, False], ids=["internal-manifest", "plain-tar"])
def test_the_dataset_refuses_a_member_over_max_sample_bytes_before_reading_it(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str, manifest: bool
) -> None:
    upload(s3_client, bucket, "bomb.tar.gz", bomb_archive(manifest=manifest))
    shard = {"kind": "shard", "archive_key": "bomb.tar.gz", "compression": "gzip", "count": 1}
    store.write_manifest("m.jsonl", [shard])
    ds = dataset(store, "m.jsonl", max_sample_bytes=BOUND)
    error, peak = peak_traced(lambda: list(ds))
    assert isinstance(error, SampleTooLargeError), error
    assert str(error).startswith(
        f"shard 'bomb.tar.gz' member 'bomb.bin': {BOMB} bytes exceed max_sample_bytes={BOUND}"
    )
    assert "\n" not in str(error)
    assert (error.key, error.member_path) == ("bomb.tar.gz", "bomb.bin")
    assert peak < BOUND, f"{peak / MiB:.0f} MiB traced"
    assert 256 * MiB == TransferConfig().max_sample_bytes


def test_the_dataset_refuses_loose_files_and_listed_members_over_max_sample_bytes(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    upload(s3_client, bucket, "bomb.tar.gz", bomb_archive())
    upload(s3_client, bucket, "big.bin", bytes(MiB))
    member = {"kind": "file", "key": "bomb.tar.gz#bomb.bin"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"kind": "file", "key": "big.bin"}, "'big.bin': 1048576 bytes"),  # size from the GET
        ({"kind": "file", "key": "big.bin", "size_bytes": MiB}, "'big.bin': 1048576 bytes"),
        (
            {**member, "archive_key": "bomb.tar.gz", "member_path": "bomb.bin"},
            f"shard 'bomb.tar.gz' member 'bomb.bin': {BOMB} bytes",
        ),
    ]
    for entry, named in cases:
        ds = dataset(store, [entry], max_sample_bytes=MiB - 1)
        error, peak = peak_traced(functools.partial(list, ds))
        assert isinstance(error, SampleTooLargeError), (entry, error)
        assert named in str(error), str(error)
        assert peak < BOUND, (entry, f"{peak / MiB:.0f} MiB traced")
    small = dataset(store, [{"kind": "file", "key": "big.bin"}], max_sample_bytes=MiB)
    assert [bytes(sample.data) for sample in small] == [bytes(MiB)]


_PEAK_RSS_AT_EXIT = """
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        print(next(line for line in status if line.startswith("VmHWM:")), file=sys.stderr)
atexit.register(peak)
sys.argv = ["s3exchange", *sys.argv[1:]]
runpy.run_module("s3exchange", run_name="__main__", alter_sys=True)
"""
"""Runs the CLI and prints its peak RSS (VmHWM) at exit; ``wait4``'s ``ru_maxrss`` would report
the forking pytest process's own (kept across exec)."""


def test_cat_streams_a_member_bomb(
    moto_server: RunningServer, s3_client: S3Client, bucket: str
) -> None:
    upload(s3_client, bucket, "bomb.tar.gz", bomb_archive())
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3EXCHANGE_")}
    env.update(moto_server.s3.env(), S3EXCHANGE_BUCKET=bucket)
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_AT_EXIT, "cat", "bomb.tar.gz#bomb.bin"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # 200 MiB of zeros
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    err = result.stderr.decode()
    assert result.returncode == 0, err
    peak_kib = int(err.split("VmHWM:")[1].split()[0])
    assert peak_kib * 1024 < 150 * MiB, err  # 66 MiB measured (ls: 63); BOMB is 200


# -- 5. planning bombs --------------------------------------------------------------------------


def test_an_internal_manifest_over_the_cap_is_refused_before_it_is_read(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    size = MAX_INTERNAL_MANIFEST_BYTES + 1  # 64 MiB of spaces: ~64 KB gzipped
    body = gzip_bytes(header(INTERNAL_MANIFEST_PATH, size)) + gzip_run(0x20, size)
    upload(s3_client, bucket, "fat.tar.gz", body)
    store.write_manifest(
        "m.jsonl", [{"kind": "shard", "archive_key": "fat.tar.gz", "compression": "gzip"}]
    )
    readers: dict[str, Callable[[], Any]] = {
        "listing": lambda: list(store.list_manifest_files("m.jsonl")),
        "reading": lambda: [stream.read() for stream, _ in store.iter_objects("m.jsonl")],
        "planning": lambda: len(dataset(store, "m.jsonl")),
    }
    for what, read in readers.items():
        error, peak = peak_traced(read)
        assert isinstance(error, ShardReadError), (what, error)
        assert "exceeds the 67108864 byte limit" in str(error), (what, str(error))
        assert peak < 8 * MiB, (what, f"{peak / MiB:.0f} MiB traced")


def manifest_only_archive(lines: int) -> bytes:
    """A .tar.gz holding an internal manifest of ``lines`` small entries (and no data)."""
    manifest = b"".join(
        b'{"kind":"file","key":"%07d.bin","size_bytes":0}\n' % i for i in range(lines)
    )
    pad = bytes(-len(manifest) % 512)
    return gzip_bytes(header(INTERNAL_MANIFEST_PATH, len(manifest)) + manifest + pad + bytes(1024))


@pytest.mark.parametrize("group_by", [None, "key"])
def test_planning_counts_shards_without_count_by_streaming(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str, group_by: str | None
) -> None:
    lines = 20_000  # 0.9 MB each; held parsed, 2 shards cost ~20 MiB traced
    for i in range(2):
        upload(s3_client, bucket, f"s{i}.tar.gz", manifest_only_archive(lines))
    store.write_manifest(
        "m.jsonl",
        [{"kind": "shard", "archive_key": f"s{i}.tar.gz", "compression": "gzip"} for i in range(2)],
    )
    ds = dataset(store, "m.jsonl", group_by=group_by)
    count, peak = peak_traced(lambda: ds.num_samples)
    assert count == 2 * lines  # one sample per member, or per key: one member each
    assert peak < 8 * MiB, f"{peak / MiB:.1f} MiB traced"


def padded_shard(padding: int) -> bytes:
    """A valid .tar.gz shard followed by ``padding`` zero bytes after its end-of-archive."""
    out = io.BytesIO()
    items: list[ShardItem] = [{"source": b"sample", "member_path": "x.bin"}]
    write_shard(items, out, archive_key="padded.tar.gz")
    return gzip_bytes(out.getvalue()) + gzip_run(0, padding)


def test_zero_padding_after_the_end_of_archive_is_not_read(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    upload(s3_client, bucket, "padded.tar.gz", padded_shard(512 * MiB))  # 512 KB stored
    store.write_manifest(
        "m.jsonl", [{"kind": "shard", "archive_key": "padded.tar.gz", "compression": "gzip"}]
    )

    def read_all() -> Iterator[bytes]:
        for stream, _ in store.iter_objects("m.jsonl"):
            yield stream.read()

    started = time.process_time()
    assert list(read_all()) == [b"sample"]
    assert [bytes(s.data) for s in dataset(store, "m.jsonl")] == [b"sample"]
    cpu = time.process_time() - started
    assert cpu < 1.0, f"{cpu:.2f} s of CPU: the padding was read (~8 s/GiB)"
