"""``s3exchange index`` over shards we did not write: indexes stored beside the archives (never
rewritten), a manifest for a prefix, a wids shard list; the datasets then read them."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from s3exchange import S3ExchangeStore
from s3exchange.shard_index import index_key_for
from s3exchange.testing import RunningServer
from s3exchange_torch import S3ExchangeIterableDataset, S3ExchangeMapDataset


def _run(
    server: RunningServer, bucket: str, cwd: Path, *args: str
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3EXCHANGE_", "AWS_"))}
    env.update(
        server.s3.env(),
        S3EXCHANGE_BUCKET=bucket,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return subprocess.run(
        [sys.executable, "-m", "s3exchange", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _index(server: RunningServer, bucket: str, cwd: Path, *args: str) -> Any:
    result = _run(server, bucket, cwd, "index", *args, "--json")
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def _webdataset_tar(n: int, start: int, gz: bool = False) -> tuple[bytes, dict[str, bytes]]:
    """A tar as webdataset's writers make them (ustar/GNU, real mtimes, no internal manifest)."""
    members: dict[str, bytes] = {}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(start, start + n):
            for field, data in (("jpg", bytes([i % 256]) * (i * 37 % 5000)), ("cls", b"%d" % i)):
                info = tarfile.TarInfo(f"{i:06d}.{field}")
                info.size, info.mtime = len(data), 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
                members[info.name] = data
    raw = out.getvalue()
    return (gzip.compress(raw) if gz else raw), members


def test_index_a_prefix_of_webdataset_shards(
    moto_server: RunningServer, store: S3ExchangeStore, bucket: str, tmp_path: Path
) -> None:
    expected: dict[str, bytes] = {}
    for s in range(3):
        body, members = _webdataset_tar(20, 20 * s, gz=s == 2)
        name = f"wds/train-{s:04d}.tar" + (".gz" if s == 2 else "")
        store.s3_client.put_object(Bucket=bucket, Key=name, Body=body)
        expected.update({f"{name}#{path}": data for path, data in members.items()})
    before = {k: store.head_object(k)["ETag"] for k in store.list_keys("wds/")}

    report = _index(moto_server, bucket, tmp_path, "wds/", "--wids", "wds/wids.json")
    assert report["shards"] == report["indexed"] == 3
    assert (report["members"], report["seekable"]) == (120, 2)
    assert report["manifest"] == "wds/manifest.jsonl"
    assert {k: store.head_object(k)["ETag"] for k in before} == before  # never rewritten

    ds = S3ExchangeMapDataset(store, "wds/manifest.jsonl")
    assert {ds[i].entry["key"]: ds[i].data for i in range(len(ds))} == expected
    iterable = S3ExchangeIterableDataset(store, "wds/manifest.jsonl")
    assert {s.entry["key"]: s.data for s in iterable} == expected

    wids = json.loads(store.get_object("wds/wids.json").read())
    assert wids["__kind__"] == "wids-shard-index-v1"
    assert [(s["url"], s["nsamples"]) for s in wids["shardlist"]] == [
        ("train-0000.tar", 20),
        ("train-0001.tar", 20),
    ]  # wids reads plain tar only: the .tar.gz is left out

    again = _index(moto_server, bucket, tmp_path, "wds/")
    assert (again["indexed"], again["current"]) == (0, 3)


def test_index_a_manifest_of_old_shards(
    moto_server: RunningServer, store: S3ExchangeStore, bucket: str, tmp_path: Path
) -> None:
    items = [{"source": b"%d" % i * 50, "member_path": f"{i}.bin"} for i in range(5)]
    entry = store.put_shard_archive("old/a.tar", items).entry  # type: ignore[arg-type]
    store.delete_key(index_key_for("old/a.tar"))
    old = {k: v for k, v in entry.items() if k != "index_key"}
    store.write_manifest("old.jsonl", [old])
    report = _index(moto_server, bucket, tmp_path, "old.jsonl", "--wids", "old-wids.json")
    assert (report["indexed"], report["manifest"]) == (1, None)
    assert store.exists(index_key_for("old/a.tar"))
    assert store.read_shard_index(old).members[0]["offset"] > 0  # type: ignore[arg-type]
    wids = json.loads(store.get_object("old-wids.json").read())
    assert wids["shardlist"] == [
        {"url": "old/a.tar", "nsamples": 6, "filesize": entry["size_bytes"]}
    ]  # wids counts the internal manifest as a sample of its own


def test_index_of_a_corrupt_archive_fails_naming_it(
    moto_server: RunningServer, store: S3ExchangeStore, bucket: str, tmp_path: Path
) -> None:
    body, _ = _webdataset_tar(3, 0)
    store.s3_client.put_object(Bucket=bucket, Key="bad/a.tar", Body=body[: len(body) // 3])
    result = _run(moto_server, bucket, tmp_path, "index", "bad/")
    assert result.returncode == 4
    assert b"bad/a.tar" in result.stderr
    assert not store.exists(index_key_for("bad/a.tar"))
    empty = _run(moto_server, bucket, tmp_path, "index", "nothing-here/")
    assert empty.returncode == 3
    assert b"no .tar" in empty.stderr
