"""Every snippet of the seed README, run as written against moto and SeaweedFS over HTTP."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from s3exchange import (
    CompactReport,
    DeleteReport,
    FileEntry,
    InvalidManifestError,
    ManifestEntry,
    ManifestNotFoundError,
    MissingPlaceholderError,
    ObjectNotFoundError,
    S3ExchangeStore,
    Shard,
    ShardEntry,
    ShardItem,
    ShardReadError,
)

pytestmark = pytest.mark.parametrize(
    "s3_server", ["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)], indirect=True
)

P = "training/123/samples"


def test_quick_start_store_with_base_prefix_and_default_vars(s3_client: Any, bucket: str) -> None:
    store = S3ExchangeStore(
        s3_client=s3_client,
        bucket=bucket,
        base_prefix="prod",
        default_vars={"service_name": "training-service"},
    )
    entry = store.put_object("{service_name}/x.bin", b"abc")
    assert entry["key"] == "training-service/x.bin"
    raw = s3_client.get_object(Bucket=bucket, Key="prod/training-service/x.bin")
    assert raw["Body"].read() == b"abc"
    assert list(store.list_keys()) == ["training-service/x.bin"]
    assert store.get_object(next(iter(store.list_keys()))).read() == b"abc"


def test_get_object_reads_and_closes(store: S3ExchangeStore) -> None:
    store.put_object(f"{P}/file.wav", b"audio data...")
    stream = store.get_object(f"{P}/file.wav")
    data = stream.read()
    stream.close()
    assert data == b"audio data..."


def test_get_object_partial_reads_chunks_and_context_manager(store: S3ExchangeStore) -> None:
    payload = bytes(range(256)) * 4096
    store.put_object("blob", payload)
    with store.get_object("blob") as stream:
        head = stream.read(10)
        rest = b"".join(stream.iter_chunks(65536))
    assert head + rest == payload


def test_put_object_returns_file_entry(store: S3ExchangeStore) -> None:
    entry = store.put_object(
        key=f"{P}/file.wav",
        data=b"audio data...",
        id="file-001",
        meta={"sr": 16000, "length": 15342},
        content_type="audio/wav",
    )
    assert entry["kind"] == "file"
    assert entry["key"] == f"{P}/file.wav"
    assert entry["id"] == "file-001"
    assert entry["meta"] == {"sr": 16000, "length": 15342}
    assert entry["size_bytes"] == len(b"audio data...")
    assert entry["etag"].strip('"')
    assert store.head_object(f"{P}/file.wav")["ContentType"] == "audio/wav"


def test_put_object_from_path_str_path_and_file_object(
    store: S3ExchangeStore, tmp_path: Path
) -> None:
    source = tmp_path / "file.wav"
    source.write_bytes(b"x" * 1000)
    by_str = store.put_object(key=f"{P}/a.wav", data=str(source), id="file-001")
    by_path = store.put_object(key=f"{P}/b.wav", data=source)
    with source.open("rb") as fh:
        by_file = store.put_object(key=f"{P}/c.wav", data=fh)
    assert by_str["id"] == "file-001"
    assert by_path["id"] == "b"  # inferred from the key's basename
    for entry in (by_str, by_path, by_file):
        assert entry["size_bytes"] == 1000
        assert store.get_object(entry["key"]).read() == b"x" * 1000


def test_put_object_large_file_goes_multipart(store: S3ExchangeStore, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    payload = bytes(range(251)) * (13 * 1024 * 1024 // 251)
    source.write_bytes(payload)
    entry = store.put_object("big.bin", source)
    assert "-" in entry["etag"]  # a multipart ETag
    assert entry["size_bytes"] == len(payload)
    assert store.get_object("big.bin").read() == payload


def _write_three(store: S3ExchangeStore) -> None:
    for name in ("file1", "file2", "file3"):
        store.put_object(f"{P}/{name}.wav", name.encode())


def test_write_manifest_overwrite_and_iterate(store: S3ExchangeStore) -> None:
    _write_three(store)
    entries = [
        {"kind": "file", "key": f"{P}/file1.wav", "id": "001"},
        {"kind": "file", "key": f"{P}/file2.wav", "id": "002"},
    ]
    store.write_manifest(key=f"{P}/manifest.jsonl", entries=entries, mode="overwrite")
    seen = []
    for stream, entry in store.iter_objects(f"{P}/manifest.jsonl"):
        seen.append((entry["key"], stream.read()))
        stream.close()
    assert seen == [(f"{P}/file1.wav", b"file1"), (f"{P}/file2.wav", b"file2")]
    kinds = [
        (e["kind"], e.get("key", e.get("archive_key")))
        for e in store.iter_manifest_entries(f"{P}/manifest.jsonl")
    ]
    assert kinds == [("file", f"{P}/file1.wav"), ("file", f"{P}/file2.wav")]


def test_append_parts_adds_part_and_ref(store: S3ExchangeStore) -> None:
    _write_three(store)
    root = f"{P}/manifest.jsonl"
    store.write_manifest(
        key=root,
        entries=[{"kind": "file", "key": f"{P}/file1.wav", "id": "001"}],
        mode="overwrite",
    )
    new_entries = [{"kind": "file", "key": f"{P}/file3.wav", "id": "003"}]
    part = store.write_manifest(key=root, entries=new_entries, mode="append_parts")
    assert part != root
    assert part.startswith(f"{P}/manifest.parts/")
    raw = list(store.iter_manifest_entries(root, resolve_refs=False))
    assert raw[-1] == {"kind": "manifest_ref", "key": part}
    resolved = [e["key"] for e in store.iter_manifest_entries(root)]  # type: ignore[typeddict-item]
    assert resolved == [f"{P}/file1.wav", f"{P}/file3.wav"]
    store.write_manifest(key=root, entries=new_entries, mode="append_parts")
    assert len(list(store.iter_manifest_entries(root))) == 3


def test_append_parts_creates_missing_root(store: S3ExchangeStore) -> None:
    store.write_manifest("m.jsonl", [{"kind": "file", "key": "a"}], mode="append_parts")
    assert [e["kind"] for e in store.iter_manifest_entries("m.jsonl", resolve_refs=False)] == [
        "manifest_ref"
    ]


def _items(tmp_path: Path, n: int) -> list[ShardItem]:
    items: list[ShardItem] = []
    for i in range(n):
        path = tmp_path / f"file{i}.wav"
        path.write_bytes(f"wave-{i}".encode() * (i + 1))
        items.append(
            {
                "source": str(path),
                "member_path": f"{i:04d}.wav",
                "id": f"{i:04d}",
                "meta": {"sr": 16000},
                "size_bytes": path.stat().st_size,
            }
        )
    return items


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_shard_snippet_end_to_end(
    store: S3ExchangeStore, tmp_path: Path, compression: str | None
) -> None:
    items = _items(tmp_path, 7)
    shard_batches = Shard.split_items(items, max_entries=3, max_bytes=1024 * 1024 * 1024)
    assert [len(b) for b in shard_batches] == [3, 3, 1]
    shard_entries: list[ShardEntry] = []
    for i, batch in enumerate(shard_batches):
        archive_key = f"{P}/shards/shard-{i:05d}.tar" + (".gz" if compression else "")
        shard = store.put_shard_archive(
            archive_key=archive_key,
            shard_items=batch,
            format="tar",
            compression=compression,  # type: ignore[arg-type]
        )
        assert shard.entry["count"] == len(batch)
        assert shard.entry["internal_manifest_path"] == "__manifest__.jsonl"
        shard_entries.append(shard.entry)
    store.put_sharded(
        manifest_key=f"{P}/manifest.jsonl",
        shard_entries=shard_entries,
        update_mode="append_parts",
    )
    got = []
    for stream, entry in store.iter_objects(f"{P}/manifest.jsonl"):
        assert entry["key"] == f"{entry['archive_key']}#{entry['member_path']}"
        got.append((entry["member_path"], entry["id"], entry["meta"], stream.read()))
        stream.close()
    expected = [
        (it["member_path"], it["id"], it["meta"], Path(str(it["source"])).read_bytes())
        for it in items
    ]
    assert got == expected


def test_shard_is_a_standard_tar_with_manifest_first(
    store: S3ExchangeStore, tmp_path: Path
) -> None:
    shard = store.put_shard_archive("s.tar.gz", _items(tmp_path, 3), compression="gzip")
    raw = store.get_object("s.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = tar.getnames()
    assert names == ["__manifest__.jsonl", "0000.wav", "0001.wav", "0002.wav"]
    assert shard.entry["size_bytes"] == len(raw)


def test_iter_manifest_entries_without_fetching(store: S3ExchangeStore) -> None:
    store.write_manifest(
        "m.jsonl",
        [
            {"kind": "file", "key": "a.wav", "id": "a"},
            {"kind": "shard", "archive_key": "s.tar", "count": 2},
        ],
    )
    out = [
        f"Entry: {e['kind']}, Key: {e.get('key', e.get('archive_key'))}"
        for e in store.iter_manifest_entries("m.jsonl")
    ]
    assert out == ["Entry: file, Key: a.wav", "Entry: shard, Key: s.tar"]


def test_delete_key_and_prefix_with_regex(store: S3ExchangeStore) -> None:
    for name in ("a.wav", "b.wav", "c.txt"):
        store.put_object(f"{P}/{name}", b"1")
    store.delete_key(f"{P}/a.wav")
    count = store.delete_prefix(prefix=f"{P}/", regex=r".*\.wav$")
    assert count == 1
    assert list(store.list_keys(prefix=f"{P}/")) == [f"{P}/c.txt"]


def test_delete_manifest_recursive(store: S3ExchangeStore, tmp_path: Path) -> None:
    _write_three(store)
    shard = store.put_shard_archive(f"{P}/shards/s0.tar", _items(tmp_path, 2))
    root = f"{P}/manifest.jsonl"
    store.write_manifest(root, [{"kind": "file", "key": f"{P}/file1.wav"}])
    store.write_manifest(root, [{"kind": "file", "key": f"{P}/file2.wav"}], mode="append_parts")
    store.put_sharded(root, [shard.entry], update_mode="append_parts")
    store.write_manifest(root, [{"kind": "file", "key": f"{P}/file2.wav"}], mode="append_parts")
    report: DeleteReport = store.delete_manifest(manifest=root, delete_manifests=True, dedupe=True)
    assert report["deleted_object_count"] == 2
    assert report["deleted_archive_count"] == 1
    assert report["deleted_manifest_count"] == 4
    assert report["errors"] == []
    assert list(store.list_keys(prefix=f"{P}/")) == [f"{P}/file3.wav"]


def test_list_keys_paginates_past_1000(store: S3ExchangeStore, s3_client: Any, bucket: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    keys = [f"many/{i:05d}" for i in range(1205)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3_client.put_object(Bucket=bucket, Key=k, Body=b""), keys))
    assert list(store.list_keys(prefix="many/")) == keys
    assert store.delete_prefix("many/") == 1205
    assert list(store.list_keys(prefix="many/")) == []


def test_list_manifest_files_and_prefix_filter(store: S3ExchangeStore, tmp_path: Path) -> None:
    _write_three(store)
    shard = store.put_shard_archive(f"{P}/000-shard.tar", _items(tmp_path, 2))
    store.write_manifest(
        f"{P}/manifest.jsonl",
        [{"kind": "file", "key": f"{P}/file1.wav"}, shard.entry],
    )
    files = [
        e.get("key", e.get("member_path"))
        for e in store.list_manifest_files(manifest=f"{P}/manifest.jsonl", include_shards=True)
    ]
    assert files == [f"{P}/file1.wav", f"{P}/000-shard.tar#0000.wav", f"{P}/000-shard.tar#0001.wav"]
    no_shards = list(store.list_manifest_files(f"{P}/manifest.jsonl", include_shards=False))
    assert [e["key"] for e in no_shards] == [f"{P}/file1.wav"]
    filtered = [
        e["key"]
        for e in store.list_by_manifest_prefix(
            manifest=f"{P}/manifest.jsonl", prefix_filter=f"{P}/000"
        )
    ]
    assert filtered == [f"{P}/000-shard.tar#0000.wav", f"{P}/000-shard.tar#0001.wav"]
    member = [
        e["key"]
        for e in store.list_by_manifest_prefix(f"{P}/manifest.jsonl", f"{P}/000-shard.tar#0001")
    ]
    assert member == [f"{P}/000-shard.tar#0001.wav"]


@pytest.mark.parametrize("expand", [False, True])
def test_compact_manifest(store: S3ExchangeStore, tmp_path: Path, expand: bool) -> None:
    _write_three(store)
    shard = store.put_shard_archive(f"{P}/s.tar", _items(tmp_path, 3))
    root = f"{P}/manifest.jsonl"
    store.write_manifest(root, [{"kind": "file", "key": f"{P}/file1.wav"}], mode="append_parts")
    store.write_manifest(root, [{"kind": "file", "key": f"{P}/file2.wav"}], mode="append_parts")
    store.put_sharded(root, [shard.entry])
    report: CompactReport = store.compact_manifest(
        src_manifest_key=root,
        dst_manifest_key=f"{P}/manifest-compact.jsonl",
        resolve_refs=True,
        expand_shards=expand,
    )
    assert report["total_entries"] == (5 if expand else 3)
    compacted = list(store.iter_manifest_entries(f"{P}/manifest-compact.jsonl", resolve_refs=False))
    assert len(compacted) == report["total_entries"]
    assert all(e["kind"] != "manifest_ref" for e in compacted)
    assert [s.read() for s, _ in store.iter_objects(f"{P}/manifest-compact.jsonl")] == [
        s.read() for s, _ in store.iter_objects(root)
    ]


def test_compact_without_resolving_keeps_refs(store: S3ExchangeStore) -> None:
    store.write_manifest("m.jsonl", [{"kind": "file", "key": "a"}], mode="append_parts")
    report = store.compact_manifest("m.jsonl", "c.jsonl", resolve_refs=False)
    assert report["total_entries"] == 1
    assert report["manifest_ref_entries"] == 1


def test_error_snippets(store: S3ExchangeStore) -> None:
    with pytest.raises(ObjectNotFoundError) as not_found:
        store.get_object("nonexistent.wav")
    assert not_found.value.key == "nonexistent.wav"
    with pytest.raises(MissingPlaceholderError) as missing:
        store._resolve_key("training/{job_id}/samples", {})
    assert missing.value.placeholder == "job_id"
    with pytest.raises(ManifestNotFoundError):
        list(store.iter_manifest_entries("missing.jsonl"))


def test_placeholders_resolve_from_defaults_and_call_vars(s3_client: Any, bucket: str) -> None:
    store = S3ExchangeStore(s3_client, bucket, base_prefix="/base/", default_vars={"job": 7})
    entry = store.put_object("training/{job}/{part:03d}.bin", b"1", vars={"part": 5})
    assert entry["key"] == "training/7/005.bin"
    assert store._resolve_key("training/{job}/x", {"job": 8}) == "base/training/8/x"
    assert store.scope(job=9).resolve("t/{job}") == "t/9"


def test_keys_with_spaces_plus_and_unicode(store: S3ExchangeStore, tmp_path: Path) -> None:
    keys = ["with space/a b.wav", "plus+sign/a+b.wav", "ünïcødé/日本語 ☃.wav", "percent%20x"]
    for key in keys:
        store.put_object(key, key.encode())
    assert sorted(store.list_keys()) == sorted(keys)
    for key in keys:
        assert store.get_object(key).read() == key.encode()
    item: ShardItem = {"source": b"payload", "member_path": "dir/ünï cødé+1.wav"}
    shard = store.put_shard_archive("shards/ä ö+.tar", [item])
    got = [(e["member_path"], s.read()) for s, e in store.iter_objects([shard.entry])]
    assert got == [("dir/ünï cødé+1.wav", b"payload")]
    assert store.delete_prefix("", allow_all=True) == len(keys) + 2  # the shard and its index


def test_manifest_ref_cycle_raises(store: S3ExchangeStore) -> None:
    store.write_manifest("a.jsonl", [{"kind": "manifest_ref", "key": "b.jsonl"}])
    store.write_manifest("b.jsonl", [{"kind": "manifest_ref", "key": "a.jsonl"}])
    with pytest.raises(InvalidManifestError, match="cycle"):
        list(store.iter_manifest_entries("a.jsonl"))


def test_malformed_manifest_line_names_key_and_line(store: S3ExchangeStore) -> None:
    store.put_object("bad.jsonl", b'{"kind":"file","key":"a"}\n\n{"kind":"file"}\n')
    with pytest.raises(InvalidManifestError) as err:
        list(store.iter_manifest_entries("bad.jsonl"))
    assert err.value.key == "bad.jsonl"
    assert err.value.line == 3


def test_unknown_fields_survive_a_round_trip(store: S3ExchangeStore) -> None:
    entry: dict[str, Any] = {"kind": "file", "key": "a", "custom": {"x": [1, 2]}, "lang": "de"}
    store.write_manifest("m.jsonl", [entry])
    assert list(store.iter_manifest_entries("m.jsonl")) == [entry]


def test_iter_objects_accepts_entries(store: S3ExchangeStore) -> None:
    e1: FileEntry = store.put_object("x/1", b"one")
    e2: FileEntry = store.put_object("x/2", b"two")
    entries: list[ManifestEntry] = [e1, e2]
    assert [s.read() for s, _ in store.iter_objects(entries)] == [b"one", b"two"]


def test_corrupt_shard_raises_shard_read_error(store: S3ExchangeStore, tmp_path: Path) -> None:
    shard = store.put_shard_archive("s.tar", _items(tmp_path, 3))
    raw = bytearray(store.get_object("s.tar").read())
    raw[len(raw) // 2] ^= 0xFF
    store.put_object("s.tar", bytes(raw))
    # without its etag: a re-upload with the etag listed is ObjectChangedError (issue 10, item 1)
    entry = {k: v for k, v in shard.entry.items() if k != "etag"}
    with pytest.raises(ShardReadError) as err:
        for stream, _ in store.iter_objects([entry]):  # type: ignore[list-item]
            stream.read()
    assert err.value.archive_key == "s.tar"


def test_virtual_key_opens_a_member(store: S3ExchangeStore) -> None:
    store.put_shard_archive(
        "s.tar",
        [{"source": b"m1", "member_path": "a.bin"}, {"source": b"m2", "member_path": "b.bin"}],
    )
    assert store.get_object("s.tar#b.bin").read() == b"m2"
    with pytest.raises(ObjectNotFoundError):
        store.get_object("s.tar#zzz.bin")


def test_delete_manifest_of_an_expanded_manifest_deletes_the_archives(
    store: S3ExchangeStore, tmp_path: Path
) -> None:
    shard = store.put_shard_archive("s/a.tar", _items(tmp_path, 2))
    store.write_manifest("m.jsonl", [shard.entry])
    store.compact_manifest("m.jsonl", "flat.jsonl", expand_shards=True)
    report = store.delete_manifest("flat.jsonl")
    assert report["deleted_archive_count"] == 1
    assert sorted(store.list_keys()) == ["m.jsonl"]
