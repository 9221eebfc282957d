"""Shard members written from files carry the file's mtime, not 1970 (issue 11, item 10)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from s3exchange import S3ExchangeStore, ShardItem

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

WHEN = 1_700_000_000  # 2023-11-14


def _members(s3_client: S3Client, bucket: str, key: str) -> dict[str, int]:
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
        return {info.name: int(info.mtime) for info in tar.getmembers()}


def test_members_from_files_are_dated_by_their_source(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str, tmp_path: Path
) -> None:
    for i, name in enumerate(["a.jpg", "b.json"]):
        path = tmp_path / name
        path.write_bytes(b"x" * (100 + i))
        os.utime(path, (WHEN + i, WHEN + i))
    items: list[ShardItem] = [
        {"source": tmp_path / "a.jpg", "member_path": "a.jpg"},
        {"source": str(tmp_path / "b.json"), "member_path": "b.json"},
        {"source": b"in memory", "member_path": "c.txt"},
    ]
    for key, compression in [("s.tar", None), ("s.tar.gz", "gzip")]:
        store.put_shard_archive(key, items, compression=compression)
        dates = _members(s3_client, bucket, key)
        assert dates["a.jpg"] == WHEN
        assert dates["b.json"] == WHEN + 1
        assert dates["c.txt"] == 0  # bytes have no date: 0 keeps such shards byte-identical
