"""Fast unit tests of the logic above the request seam, over the in-memory bucket: the multipart
writer, ``append_parts``, deletion and compaction. The real-server suites (tests/integration)
stay the judge of behaviour on the wire; tests/integration/test_transport_conformance.py holds
the fake to a real server."""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3exchange import manifest, parts
from s3exchange.compaction import compact
from s3exchange.deletion import delete_manifest, delete_prefix, plan_delete_manifest
from s3exchange.errors import (
    ConcurrentModificationError,
    DeleteError,
    InvalidKeyError,
    ObjectChangedError,
    ObjectNotFoundError,
    StorageError,
    UploadError,
)
from s3exchange.multipart import MIN_PART_SIZE, MultipartWriter
from s3exchange.testing import MemoryBucket
from s3exchange.types import FileEntry, ManifestEntry

MiB = 1 << 20


@pytest.fixture
def bucket() -> MemoryBucket:
    return MemoryBucket(base_prefix="base")


def operations(bucket: MemoryBucket) -> list[str]:
    return [request.operation for request in bucket.requests]


# -- the fake itself -------------------------------------------------------------------------


def test_keys_live_under_the_base_prefix_and_come_back_logical(bucket: MemoryBucket) -> None:
    etag = bucket.put("a/b.bin", b"data", content_type="text/plain")
    assert list(bucket.objects) == ["base/a/b.bin"]
    assert bucket.keys() == ["a/b.bin"]
    assert [o["key"] for o in bucket.list_objects("a/")] == ["a/b.bin"]
    head = bucket.head("a/b.bin")
    assert (head["ContentLength"], head["ETag"], head["ContentType"]) == (4, etag, "text/plain")
    assert bucket.read_bytes("a/b.bin") == (b"data", etag)
    assert bucket.read_object("a/b.bin") == (b"data", etag)
    with pytest.raises(ObjectNotFoundError):
        bucket.head("missing")
    with pytest.raises(InvalidKeyError):
        bucket.put("/absolute", b"")


def test_a_ranged_read_is_pinned_to_its_etag(bucket: MemoryBucket) -> None:
    etag = bucket.put("k", b"0123456789")
    opened = bucket.open("k", 4, etag)
    assert (opened.body.read(), opened.size) == (b"456789", 10)
    bucket.put("k", b"replaced!!")
    with pytest.raises(ObjectChangedError):
        bucket.open("k", 4, etag)
    with pytest.raises(ObjectChangedError):
        bucket.open("k", 99)  # past the end: S3's InvalidRange


def test_conditional_puts_follow_s3(bucket: MemoryBucket) -> None:
    etag = bucket.put("k", b"1", if_none_match=True)
    with pytest.raises(ClientError, match="PreconditionFailed"):
        bucket.put("k", b"2", if_none_match=True)
    with pytest.raises(ClientError, match="PreconditionFailed"):
        bucket.put("k", b"2", if_match='"0000"')
    assert bucket.put("k", b"2", if_match=etag) != etag
    ignoring = MemoryBucket(conditional_writes=False)
    ignoring.put("k", b"1", if_none_match=True)
    ignoring.put("k", b"2", if_none_match=True)
    assert ignoring.data("k") == b"2"


# -- the multipart writer --------------------------------------------------------------------


def test_a_small_stream_is_one_put(bucket: MemoryBucket) -> None:
    with MultipartWriter(bucket, "o", content_type="x/y") as writer:
        writer.write(b"small")
    assert operations(bucket) == ["PutObject"]
    assert bucket.data("o") == b"small"
    assert writer.etag == bucket.head("o")["ETag"]
    assert bucket.requests[0].args["content_type"] == "x/y"


def test_a_large_stream_goes_in_parts_completed_in_order(bucket: MemoryBucket) -> None:
    data = os.urandom(2 * MIN_PART_SIZE + 123)
    with MultipartWriter(bucket, "o", part_size=MIN_PART_SIZE, concurrency=3) as writer:
        for offset in range(0, len(data), MiB + 7):
            writer.write(data[offset : offset + MiB + 7])
    assert bucket.data("o") == data
    assert writer.bytes_written == len(data)
    assert sorted(r.args["number"] for r in bucket.requests_of("UploadPart")) == [1, 2, 3]
    (complete,) = bucket.requests_of("CompleteMultipartUpload")
    assert [number for number, _ in complete.args["parts"]] == [1, 2, 3]
    assert str(writer.etag).endswith('-3"')
    assert bucket.uploads == {}


def test_a_held_head_is_part_one_sent_last(bucket: MemoryBucket) -> None:
    body = os.urandom(3 * MIN_PART_SIZE)
    writer = MultipartWriter(bucket, "o", part_size=MIN_PART_SIZE, hold_head=MIN_PART_SIZE)
    with writer:
        writer.write(body)
        writer.prepend(b"HEAD")
    assert bucket.data("o") == b"HEAD" + body
    numbers = [r.args["number"] for r in bucket.requests_of("UploadPart")]
    assert numbers[-1] == 1
    assert sorted(numbers) == [1, 2, 3]


def test_a_failed_part_aborts_the_upload_and_names_the_key(bucket: MemoryBucket) -> None:
    bucket.fail("UploadPart")
    writer = MultipartWriter(bucket, "big", part_size=MIN_PART_SIZE)
    with pytest.raises(UploadError) as info, writer:
        writer.write(bytes(3 * MIN_PART_SIZE))
    assert info.value.key == "big"
    assert "InternalError" in str(info.value)
    assert isinstance(info.value.__cause__, StorageError)
    assert bucket.keys() == []
    assert bucket.uploads == {}
    assert operations(bucket)[-1] == "AbortMultipartUpload"


def test_an_exception_in_the_block_aborts_and_a_failed_abort_is_only_logged(
    bucket: MemoryBucket, caplog: pytest.LogCaptureFixture
) -> None:
    bucket.fail("AbortMultipartUpload")
    writer = MultipartWriter(bucket, "o", part_size=MIN_PART_SIZE)
    with pytest.raises(RuntimeError, match="caller"), writer:
        writer.write(bytes(MIN_PART_SIZE + 1))
        raise RuntimeError("caller")
    assert bucket.keys() == []
    assert "could not abort the upload of 'o'" in caplog.text


def test_the_fake_refuses_a_small_middle_part_as_s3_does(bucket: MemoryBucket) -> None:
    upload = bucket.create_multipart_upload("k")
    small = bucket.upload_part("k", upload, 1, b"x")
    last = bucket.upload_part("k", upload, 2, b"y")
    with pytest.raises(StorageError, match="EntityTooSmall"):
        bucket.complete_multipart_upload("k", upload, [(1, small), (2, last)])


# -- append_parts ----------------------------------------------------------------------------


def entries_of(bucket: MemoryBucket, key: str) -> list[ManifestEntry]:
    return list(manifest.iter_entries(bucket.data(key).splitlines(), key=key))


def refs(bucket: MemoryBucket, root: str) -> list[str]:
    return [entry["key"] for entry in entries_of(bucket, root) if entry["kind"] != "shard"]


def test_append_creates_the_root_then_updates_it_on_its_etag(bucket: MemoryBucket) -> None:
    first = parts.append_part(bucket, "m.jsonl", b"{}\n")
    root_puts = [r for r in bucket.requests_of("PutObject") if r.key == "m.jsonl"]
    assert root_puts[-1].args["if_none_match"] is True
    etag = bucket.head("m.jsonl")["ETag"]
    second = parts.append_part(bucket, "m.jsonl", b"{}\n")
    root_puts = [r for r in bucket.requests_of("PutObject") if r.key == "m.jsonl"]
    assert root_puts[-1].args["if_match"] == etag
    assert refs(bucket, "m.jsonl") == [first, second]
    part_put = next(r for r in bucket.requests_of("PutObject") if r.key == second)
    assert part_put.args["if_none_match"] is True


def lose_root_puts(
    bucket: MemoryBucket, root: str, times: int, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """Make the next ``times`` PUTs of ``root`` lose their race (412), as if another writer
    had just replaced it; returns a counter of the losses."""
    monkeypatch.setattr(parts.time, "sleep", lambda _: None)
    original = bucket.put
    lost = [0]

    def racing(key: str, body: Any, **kwargs: Any) -> str | None:
        if key == root and lost[0] < times:
            lost[0] += 1
            error: Any = {"Error": {"Code": "PreconditionFailed", "Message": "lost"}}
            raise ClientError(error, "PutObject")
        return original(key, body, **kwargs)

    monkeypatch.setattr(bucket, "put", racing)
    return lost


def test_a_lost_race_for_the_root_is_retried(
    bucket: MemoryBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = parts.append_part(bucket, "m.jsonl", b"{}\n")
    lost = lose_root_puts(bucket, "m.jsonl", 2, monkeypatch)
    second = parts.append_part(bucket, "m.jsonl", b"{}\n")
    assert lost == [2]
    assert refs(bucket, "m.jsonl") == [first, second]


def test_a_root_contended_past_the_budget_raises(
    bucket: MemoryBucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts.append_part(bucket, "m.jsonl", b"{}\n")
    lose_root_puts(bucket, "m.jsonl", parts.MAX_ROOT_ATTEMPTS, monkeypatch)
    with pytest.raises(ConcurrentModificationError, match="still contended"):
        parts.append_part(bucket, "m.jsonl", b"{}\n")


def test_a_server_ignoring_conditions_is_refused_unless_told(bucket: MemoryBucket) -> None:
    ignoring = MemoryBucket(conditional_writes=False)
    with pytest.raises(ConcurrentModificationError, match="ignores conditional writes"):
        parts.append_part(ignoring, "m.jsonl", b"{}\n")
    assert ignoring.keys() == []  # the probe cleaned up after itself
    key = parts.append_part(ignoring, "m.jsonl", b"{}\n", conditional="off")
    assert refs(ignoring, "m.jsonl") == [key]
    assert all(not r.args.get("if_none_match") for r in ignoring.requests_of("PutObject")[-2:])


# -- deletion --------------------------------------------------------------------------------


def test_delete_prefix_matches_the_regex_and_reports_refusals(bucket: MemoryBucket) -> None:
    for key in ("d/a.wav", "d/b.wav", "d/c.txt", "d/keep.wav", "e/x.wav"):
        bucket.put(key, b"")
    bucket.refuse_delete = {"d/keep.wav"}
    with pytest.raises(DeleteError) as info:
        delete_prefix(bucket, "d/", r"\.wav$")
    assert [key for key, _, _ in info.value.errors] == ["d/keep.wav"]
    assert bucket.keys() == ["d/c.txt", "d/keep.wav", "e/x.wav"]
    with pytest.raises(InvalidKeyError):
        delete_prefix(bucket, "")
    bucket.refuse_delete = set()
    assert delete_prefix(bucket, "", allow_all=True) == 3
    assert bucket.keys() == []


def put_manifest(bucket: MemoryBucket, key: str, entries: list[ManifestEntry]) -> None:
    bucket.put(key, b"".join(manifest.dumps_entry(e) for e in entries))


def test_delete_manifest_deletes_data_first_and_keeps_manifests_on_failure(
    bucket: MemoryBucket,
) -> None:
    for key in ("o/1", "o/2", "s/0.tar"):
        bucket.put(key, b"x")
    put_manifest(bucket, "part.jsonl", [{"kind": "shard", "archive_key": "s/0.tar"}])
    put_manifest(
        bucket,
        "root.jsonl",
        [
            {"kind": "file", "key": "o/1"},
            {"kind": "file", "key": "o/2"},
            {"kind": "manifest_ref", "key": "part.jsonl"},
        ],
    )

    def read(key: str) -> Any:
        return manifest.iter_entries_from_stream(bucket.open(key).body, key=key)

    plan = plan_delete_manifest(bucket.keyspace, "root.jsonl", read, lambda _: [])
    assert plan.manifests == ("part.jsonl", "root.jsonl")
    bucket.refuse_delete = {"o/2"}
    report = delete_manifest(bucket, plan)
    assert report["deleted_manifest_count"] == 0
    assert bucket.keys() == ["o/2", "part.jsonl", "root.jsonl"]
    bucket.refuse_delete = set()
    report = delete_manifest(bucket, plan)
    assert (report["deleted_object_count"], report["deleted_manifest_count"]) == (2, 2)
    assert bucket.keys() == []
    batches = bucket.requests_of("DeleteObjects")
    assert batches[-1].args["keys"] == ["part.jsonl", "root.jsonl"]  # deepest part first


# -- compaction ------------------------------------------------------------------------------


def test_compaction_writes_every_entry_and_expands_shards(bucket: MemoryBucket) -> None:
    entries: list[ManifestEntry] = [
        {"kind": "file", "key": "a"},
        {"kind": "shard", "archive_key": "s.tar"},
        {"kind": "file", "key": "b"},
    ]
    members: list[FileEntry] = [{"kind": "file", "key": "s.tar#x", "archive_key": "s.tar"}]
    report = compact(
        bucket, "src", "dst", entries=iter(entries), expand=lambda _: members, part_size=MiB * 5
    )
    assert (report["total_entries"], report["file_entries"], report["shard_entries"]) == (3, 3, 0)
    written = entries_of(bucket, "dst")
    assert [e.get("key") for e in written] == ["a", "s.tar#x", "b"]
    (put,) = bucket.requests_of("PutObject")
    assert put.args["content_type"] == "application/x-ndjson"


def test_a_failed_compaction_leaves_the_destination_alone(bucket: MemoryBucket) -> None:
    bucket.put("dst", b"old\n")

    def broken() -> Any:
        yield {"kind": "file", "key": "a"}
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        compact(bucket, "src", "dst", entries=broken(), expand=None, part_size=MiB * 5)
    assert bucket.data("dst") == b"old\n"
