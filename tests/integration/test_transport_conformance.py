"""The in-memory bucket answers as real servers do: one scenario of every request kind the library
makes, run through :class:`~s3exchange.bucket.Bucket` against moto and SeaweedFS and through
:class:`~s3exchange.testing.MemoryBucket`, with the same observations expected of each. This is
what lets tests/test_memory_bucket.py stand in for a server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from botocore.exceptions import ClientError

from s3exchange.bucket import Bucket, error_code
from s3exchange.errors import ObjectChangedError, ObjectNotFoundError, S3ExchangeError
from s3exchange.keys import KeySpace
from s3exchange.multipart import MIN_PART_SIZE
from s3exchange.testing import MemoryBucket
from s3exchange.transport import Transport

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.parametrize(
    "s3_server", ["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)], indirect=True
)


def outcome(call: Any) -> Any:
    """What a call gave, or the kind of error (and S3 code) it raised."""
    try:
        return call()
    except ClientError as exc:
        return ("ClientError", error_code(exc))
    except ObjectChangedError:
        return ("ObjectChangedError",)
    except ObjectNotFoundError:
        return ("ObjectNotFoundError",)
    except S3ExchangeError as exc:
        return (type(exc).__name__, getattr(exc, "code", None))


def scenario(bucket: Transport) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    etag = bucket.put("d/a.bin", b"0123456789", content_type="text/plain")
    seen["etag"] = etag
    opened = bucket.open("d/a.bin", 4, etag)
    seen["ranged"] = (opened.body.read(), opened.size, opened.etag)
    opened.body.close()
    seen["head"] = {k: bucket.head("d/a.bin").get(k) for k in ("ContentLength", "ContentType")}
    seen["missing"] = outcome(lambda: bucket.head("d/none"))
    seen["create"] = outcome(lambda: bucket.put("d/a.bin", b"x", if_none_match=True))
    seen["stale"] = outcome(lambda: bucket.put("d/a.bin", b"x", if_match='"0000"'))
    replaced = bucket.put("d/a.bin", b"replaced", if_match=etag)
    seen["replaced"] = replaced is not None and replaced != etag
    seen["pinned"] = outcome(lambda: bucket.open("d/a.bin", 2, etag))
    seen["past_end"] = outcome(lambda: bucket.open("d/a.bin", 100))
    seen["read"] = (bucket.read_bytes("d/a.bin"), bucket.read_object("d/a.bin"))
    bounded = bucket.open("d/a.bin", 2, replaced, stop=6)
    seen["bounded"] = (bounded.body.read(), bounded.size)
    bounded.body.close()
    seen["slice"] = bucket.read_object("d/a.bin", byte_range=(1, 4), if_match=replaced)
    seen["stale_slice"] = outcome(
        lambda: bucket.read_object("d/a.bin", byte_range=(1, 4), if_match=etag)
    )

    upload = bucket.create_multipart_upload("d/big", content_type="x/y")
    seen["pending"] = [u.key for u in bucket.list_multipart_uploads("d/")]
    tail = b"\3" * 7
    etags = {
        2: bucket.upload_part("d/big", upload, 2, b"\2" * MIN_PART_SIZE),
        3: bucket.upload_part("d/big", upload, 3, tail),
        1: bucket.upload_part("d/big", upload, 1, b"\1" * MIN_PART_SIZE),
    }
    seen["part_etags"] = sorted(etags.items())
    big = bucket.complete_multipart_upload("d/big", upload, sorted(etags.items()))
    seen["big"] = (
        big,
        bucket.read_bytes("d/big")[0] == b"\1" * 5 * 2**20 + b"\2" * 5 * 2**20 + tail,
    )
    small = bucket.create_multipart_upload("d/small")
    tiny = [(1, bucket.upload_part("d/small", small, 1, b"x")), (2, "")]
    tiny[1] = (2, bucket.upload_part("d/small", small, 2, b"y"))
    seen["too_small"] = outcome(lambda: bucket.complete_multipart_upload("d/small", small, tiny))
    bucket.abort_multipart_upload("d/small", small)
    bucket.abort_multipart_upload("d/small", small)  # twice: no error
    seen["after_abort"] = [u.key for u in bucket.list_multipart_uploads("d/")]

    seen["listed"] = [(o["key"], o["size"], o.get("etag")) for o in bucket.list_objects("d/")]
    seen["deleted"] = bucket.delete_many(["d/a.bin", "d/never-stored"])
    bucket.delete("d/big")
    seen["left"] = [o["key"] for o in bucket.list_objects("")]
    return seen


def test_memory_bucket_answers_as_the_server_does(s3_client: S3Client, bucket: str) -> None:
    real = scenario(Bucket(s3_client, bucket, KeySpace("base")))
    fake = scenario(MemoryBucket(bucket, "base"))
    assert fake == real
    assert real["create"] == real["stale"] == ("ClientError", "PreconditionFailed")
    assert real["pinned"] == real["past_end"] == real["stale_slice"] == ("ObjectChangedError",)
    assert real["bounded"] == (b"plac", 6)
    assert real["slice"][0] == b"epl"
    assert real["too_small"] == ("StorageError", "EntityTooSmall")
    assert real["big"][1] is True
    assert real["left"] == []
