"""MultipartWriter's held-back head (``hold_head`` + ``prepend``), over moto: what the
ShardWriter builds on to put an internal manifest known only at the end in front."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from s3exchange.bucket import Bucket
from s3exchange.keys import KeySpace
from s3exchange.multipart import DEFAULT_PART_SIZE, MIN_PART_SIZE, MultipartWriter

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1 << 20


@pytest.mark.parametrize("size", [0, 3 * MiB, 5 * MiB + 1, 23 * MiB])
def test_prepended_bytes_lead_the_object_whatever_its_size(
    s3_client: S3Client, bucket: str, size: int
) -> None:
    data = os.urandom(size)
    transport = Bucket(s3_client, bucket, KeySpace(""))
    with MultipartWriter(transport, "o", hold_head=MIN_PART_SIZE) as writer:
        for offset in range(0, size, 3 * MiB + 7):
            writer.write(data[offset : offset + 3 * MiB + 7])
        writer.prepend(b"HEAD")
    stored = s3_client.get_object(Bucket=bucket, Key="o")["Body"].read()
    assert stored == b"HEAD" + data
    assert writer.bytes_written == size + 4
    parts = s3_client.head_object(Bucket=bucket, Key="o", PartNumber=1)
    if size > MIN_PART_SIZE + DEFAULT_PART_SIZE:  # multipart: part 1 went up last
        assert parts["ContentLength"] == MIN_PART_SIZE + 4
        assert parts["PartsCount"] == 4  # head 5 MiB, then 8 + 8 + 2
    else:  # the held head and one part at most: one PutObject
        assert "PartsCount" not in parts


def test_prepend_needs_a_held_head(s3_client: S3Client, bucket: str) -> None:
    transport = Bucket(s3_client, bucket, KeySpace(""))
    writer = MultipartWriter(transport, "o")
    with pytest.raises(ValueError, match="hold_head"):
        writer.prepend(b"x")
    writer.abort()
    with pytest.raises(ValueError, match="hold_head"):
        MultipartWriter(transport, "o", hold_head=MIN_PART_SIZE - 1)
