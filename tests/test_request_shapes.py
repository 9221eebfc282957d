"""The exact requests :class:`~s3exchange.bucket.Bucket` sends, checked with botocore's Stubber
(no server: each expected call's parameters are asserted, its answer given): the ``Range`` and
``If-Match`` of a resumed read, the ``If-None-Match: *`` / ``If-Match`` of ``append_parts``,
and the order and parts of a multipart upload. Behaviour on the wire is tested against real
servers in tests/integration; this pins what the library asks of them."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from s3exchange import parts
from s3exchange.body import ObjectStream, RetryPolicy
from s3exchange.bucket import Bucket
from s3exchange.errors import ObjectChangedError, UploadError
from s3exchange.keys import KeySpace
from s3exchange.multipart import MIN_PART_SIZE, MultipartWriter

ETAG = '"0123456789abcdef0123456789abcdef"'


@pytest.fixture
def stubbed() -> Iterator[tuple[Bucket, Stubber]]:
    """A Bucket over a client whose every request must be one the test expects, in order."""
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",  # never reached: the Stubber answers first
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    name = f"b-{uuid.uuid4().hex[:12]}"  # its own probe cache entry (parts._PROBED)
    with Stubber(client) as stub:
        yield Bucket(client, name, KeySpace("base")), stub
        stub.assert_no_pending_responses()


def body(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


class BreaksAfter(io.RawIOBase):
    """A response body whose connection resets after ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data, self._limit, self._at = data, limit, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._at >= self._limit:
            raise ConnectionResetError("reset by peer")
        end = self._limit if size is None or size < 0 else min(self._limit, self._at + size)
        chunk, self._at = self._data[self._at : end], end
        return chunk


# -- reads -----------------------------------------------------------------------------------


def test_a_first_get_asks_for_everything(stubbed: tuple[Bucket, Stubber]) -> None:
    bucket, stub = stubbed
    stub.add_response(
        "get_object",
        {"Body": body(b"abc"), "ContentLength": 3, "ETag": ETAG},
        {"Bucket": bucket.name, "Key": "base/k"},
    )
    opened = bucket.open("k")
    assert (opened.body.read(), opened.size, opened.etag) == (b"abc", 3, ETAG)


def test_a_resumed_read_sends_range_and_if_match(stubbed: tuple[Bucket, Stubber]) -> None:
    bucket, stub = stubbed
    data = b"0123456789" * 10
    stub.add_response(
        "get_object",
        {"Body": BreaksAfter(data, 40), "ContentLength": 100, "ETag": ETAG},
        {"Bucket": bucket.name, "Key": "base/k"},
    )
    stub.add_response(
        "get_object",
        {"Body": body(data[40:]), "ContentLength": 60, "ETag": ETAG},
        {"Bucket": bucket.name, "Key": "base/k", "Range": "bytes=40-", "IfMatch": ETAG},
    )
    retry = RetryPolicy(max_attempts=3, backoff_s=0.0, max_backoff_s=0.0)
    with ObjectStream("k", lambda o, e: bucket.open("k", o, e), retry=retry) as stream:
        assert stream.read() == data


def test_a_replaced_object_refuses_the_resume(stubbed: tuple[Bucket, Stubber]) -> None:
    bucket, stub = stubbed
    stub.add_client_error(
        "get_object",
        service_error_code="PreconditionFailed",
        http_status_code=412,
        expected_params={
            "Bucket": bucket.name,
            "Key": "base/k",
            "Range": "bytes=7-",
            "IfMatch": ETAG,
        },
    )
    with pytest.raises(ObjectChangedError):
        bucket.open("k", 7, ETAG)


# -- append_parts ----------------------------------------------------------------------------


def expect_probe(bucket: Bucket, stub: Stubber) -> None:
    """The once-per-server check that If-None-Match and If-Match are honoured."""
    probe = {"Bucket": bucket.name, "Key": ANY, "Body": ANY}
    stub.add_response("put_object", {"ETag": ETAG}, {**probe, "IfNoneMatch": "*"})
    stub.add_client_error(
        "put_object",
        "PreconditionFailed",
        http_status_code=412,
        expected_params={**probe, "IfNoneMatch": "*"},
    )
    stub.add_client_error(
        "put_object",
        "PreconditionFailed",
        http_status_code=412,
        expected_params={**probe, "IfMatch": '"0000000000000000000000000000dead"'},
    )
    stub.add_response("delete_object", {}, {"Bucket": bucket.name, "Key": ANY})


def test_append_creates_with_if_none_match_then_updates_with_if_match(
    stubbed: tuple[Bucket, Stubber],
) -> None:
    bucket, stub = stubbed
    root = {"Bucket": bucket.name, "Key": "base/m.jsonl"}
    put = {"Body": ANY, "ContentType": "application/x-ndjson"}
    expect_probe(bucket, stub)
    stub.add_response(
        "put_object", {"ETag": ETAG}, {**put, "Bucket": bucket.name, "Key": ANY, "IfNoneMatch": "*"}
    )
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404, expected_params=root)
    stub.add_response("put_object", {"ETag": ETAG}, {**root, **put, "IfNoneMatch": "*"})
    first = parts.append_part(bucket, "m.jsonl", b"{}\n")

    current = b'{"kind":"manifest_ref","key":"' + first.encode() + b'"}\n'
    stub.add_response(
        "put_object", {"ETag": ETAG}, {**put, "Bucket": bucket.name, "Key": ANY, "IfNoneMatch": "*"}
    )
    stub.add_response(
        "get_object", {"Body": body(current), "ContentLength": len(current), "ETag": ETAG}, root
    )
    stub.add_response("put_object", {"ETag": '"1"'}, {**root, **put, "IfMatch": ETAG})
    parts.append_part(bucket, "m.jsonl", b"{}\n")  # the probe is not repeated


def test_append_without_conditions_sends_none(stubbed: tuple[Bucket, Stubber]) -> None:
    bucket, stub = stubbed
    root = {"Bucket": bucket.name, "Key": "base/m.jsonl"}
    put = {"Body": ANY, "ContentType": "application/x-ndjson"}
    stub.add_response("put_object", {"ETag": ETAG}, {**put, "Bucket": bucket.name, "Key": ANY})
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404, expected_params=root)
    stub.add_response("put_object", {"ETag": ETAG}, {**root, **put})
    parts.append_part(bucket, "m.jsonl", b"{}\n", conditional="off")


# -- multipart uploads -----------------------------------------------------------------------


def test_a_multipart_upload_sends_parts_then_completes_in_order(
    stubbed: tuple[Bucket, Stubber],
) -> None:
    bucket, stub = stubbed
    key = {"Bucket": bucket.name, "Key": "base/o"}
    upload = {**key, "UploadId": "u1"}
    stub.add_response("create_multipart_upload", {"UploadId": "u1"}, {**key, "ContentType": "x/y"})
    for number in (2, 3, 1):  # the held head, part 1, goes last
        stub.add_response(
            "upload_part", {"ETag": f'"{number}"'}, {**upload, "PartNumber": number, "Body": ANY}
        )
    listed = [{"PartNumber": n, "ETag": f'"{n}"'} for n in (1, 2, 3)]
    stub.add_response(
        "complete_multipart_upload",
        {"ETag": '"x-3"'},
        {**upload, "MultipartUpload": {"Parts": listed}},
    )
    writer = MultipartWriter(
        bucket,
        "o",
        part_size=MIN_PART_SIZE,
        concurrency=1,
        content_type="x/y",
        hold_head=MIN_PART_SIZE,
    )
    with writer:
        writer.write(bytes(3 * MIN_PART_SIZE))
    assert writer.etag == '"x-3"'


def test_a_failed_part_aborts_the_upload(stubbed: tuple[Bucket, Stubber]) -> None:
    bucket, stub = stubbed
    key = {"Bucket": bucket.name, "Key": "base/o"}
    upload = {**key, "UploadId": "u1"}
    stub.add_response("create_multipart_upload", {"UploadId": "u1"}, key)
    stub.add_response("upload_part", {"ETag": '"1"'}, {**upload, "PartNumber": 1, "Body": ANY})
    stub.add_client_error(  # the last part, sent at close: nothing is queued behind it
        "upload_part",
        "InternalError",
        http_status_code=500,
        expected_params={**upload, "PartNumber": 2, "Body": ANY},
    )
    stub.add_response("abort_multipart_upload", {}, upload)
    writer = MultipartWriter(bucket, "o", part_size=MIN_PART_SIZE, concurrency=1)
    with pytest.raises(UploadError, match="part 2: UploadPart 'o' failed: InternalError"), writer:
        writer.write(bytes(MIN_PART_SIZE + 1))


def test_stale_uploads_are_listed_and_aborted_by_logical_key(
    stubbed: tuple[Bucket, Stubber],
) -> None:
    bucket, stub = stubbed
    initiated = datetime(2026, 1, 1, tzinfo=UTC)
    stub.add_response(
        "list_multipart_uploads",
        {"Uploads": [{"Key": "base/d/x", "UploadId": "u1", "Initiated": initiated}]},
        {"Bucket": bucket.name, "Prefix": "base/d/"},
    )
    stub.add_client_error(
        "abort_multipart_upload",
        "NoSuchUpload",
        http_status_code=404,
        expected_params={"Bucket": bucket.name, "Key": "base/d/x", "UploadId": "u1"},
    )
    (pending,) = bucket.list_multipart_uploads("d/")
    assert (pending.key, pending.upload_id, pending.initiated) == ("d/x", "u1", initiated)
    bucket.abort_multipart_upload(pending.key, pending.upload_id)  # gone meanwhile: no error
