"""The pack workflow: the pure plan and reconciliation, and the run against an in-memory store."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import crc32c
import pytest

from s3exchange import S3ExchangeStore, ShardEntry, ShardItem, UploadError
from s3exchange.errors import ManifestNotFoundError, PackConflictError, PackError
from s3exchange.packing import (
    PlannedShard,
    SourceFile,
    default_prefix,
    pack,
    plan_shards,
    reconcile,
    scan_directory,
    shard_key,
)
from s3exchange.samples import entry_id, sample_key
from s3exchange.shard import Shard
from s3exchange.store import id_from_key


def files(*sizes: int) -> list[SourceFile]:
    return [SourceFile(f"/src/f{i:02d}.bin", f"f{i:02d}.bin", size) for i, size in enumerate(sizes)]


def entry_for(shard: PlannedShard, **changes: Any) -> ShardEntry:
    entry: ShardEntry = {
        "kind": "shard",
        "archive_key": shard.archive_key,
        "count": shard.count,
        "members_size_bytes": shard.members_size_bytes,
        "size_bytes": 1000 + shard.index,
    }
    entry.update(changes)  # type: ignore[typeddict-item]
    return entry


# -- naming ------------------------------------------------------------------------------------


def test_entry_id_drops_only_the_last_extension() -> None:
    assert entry_id("a/b/clip.wav") == "a/b/clip"
    assert entry_id("x.tar.gz") == "x.tar"
    assert entry_id("README") == "README"
    assert entry_id("dir/.hidden") == "dir/.hidden"
    assert entry_id("a.d/2024.01.05.wav") == "a.d/2024.01.05"


def test_a_stored_objects_default_id_is_its_basenames_entry_id() -> None:
    assert id_from_key("training/7/x.seg.png") == "x.seg"
    assert id_from_key("raw/2024.01.05.wav") == "2024.01.05"
    assert id_from_key("raw/README") == "README"
    assert sample_key("training/7/x.seg.png") == "training/7/x"  # groups, never an id


def test_default_prefix_is_the_manifest_directory_plus_shards() -> None:
    assert default_prefix("data/train/manifest.jsonl") == "data/train/shards"
    assert default_prefix("manifest.jsonl") == "shards"


def test_shard_key_pads_the_index_and_names_the_compression() -> None:
    assert shard_key("p", 7, None) == "p/shard-00007.tar"
    assert shard_key("p", 123456, "gzip") == "p/shard-123456.tar.gz"


# -- scanning ----------------------------------------------------------------------------------


def test_scan_directory_is_sorted_recursive_and_posix(tmp_path: Path) -> None:
    for rel, data in [("b/2.txt", b"22"), ("a.txt", b"1"), ("b/1.txt", b""), ("c/d/e.bin", b"x")]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (tmp_path / "empty-dir").mkdir()
    os.symlink(tmp_path / "a.txt", tmp_path / "link.txt")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken.txt")
    found = scan_directory(tmp_path, follow_symlinks=True)
    assert [(f.member_path, f.size) for f in found] == [
        ("a.txt", 1),
        ("b/1.txt", 0),
        ("b/2.txt", 2),
        ("c/d/e.bin", 1),
        ("link.txt", 1),
    ]
    assert found[0].path == str(tmp_path / "a.txt")


def test_scan_directory_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="not a directory"):
        scan_directory(tmp_path / "missing")


# -- planning ----------------------------------------------------------------------------------


def test_plan_cuts_by_entries_and_bytes_in_order() -> None:
    plan = plan_shards(files(10, 10, 10, 50, 10), prefix="p", max_entries=2, max_bytes=40)
    assert [[f.member_path for f in s.files] for s in plan] == [
        ["f00.bin", "f01.bin"],
        ["f02.bin"],
        ["f03.bin"],  # larger than max_bytes: a shard of its own
        ["f04.bin"],
    ]
    assert [s.archive_key for s in plan] == [f"p/shard-0000{i}.tar" for i in range(4)]
    assert [(s.count, s.members_size_bytes) for s in plan] == [(2, 20), (1, 10), (1, 50), (1, 10)]


def test_plan_is_deterministic_and_items_carry_ids_and_sizes() -> None:
    a = plan_shards(files(1, 2, 3), prefix="p", max_entries=2, compression="gzip")
    b = plan_shards(files(1, 2, 3), prefix="p", max_entries=2, compression="gzip")
    assert a == b
    assert a[0].archive_key == "p/shard-00000.tar.gz"
    item = a[0].items()[1]
    assert item == {
        "source": "/src/f01.bin",
        "member_path": "f01.bin",
        "id": "f01",
        "size_bytes": 2,
    }


def test_plan_rejects_duplicate_member_paths() -> None:
    twice = [SourceFile("/a", "x", 1), SourceFile("/b", "x", 1)]
    with pytest.raises(PackError, match="duplicate"):
        plan_shards(twice, prefix="p")


# -- reconciling -------------------------------------------------------------------------------


def test_reconcile_decides_each_action() -> None:
    plan = plan_shards(files(1, 1, 1, 1), prefix="p", max_entries=1)
    listed = {plan[0].archive_key: [entry_for(plan[0])], plan[1].archive_key: [entry_for(plan[1])]}
    stored = {plan[0].archive_key: 1000, plan[2].archive_key: 5}
    tasks = reconcile(plan, listed, stored, prefix="p")
    assert [t.action for t in tasks] == ["skip", "restore", "replace", "upload"]
    assert tasks[1].listed == entry_for(plan[1])


def test_reconcile_ignores_entries_outside_the_shard_namespace() -> None:
    plan = plan_shards(files(1), prefix="p")
    other: ShardEntry = {"kind": "shard", "archive_key": "elsewhere/shard-00009.tar", "count": 3}
    tasks = reconcile(plan, {other["archive_key"]: [other]}, {}, prefix="p")
    assert [t.action for t in tasks] == ["upload"]


def test_reconcile_fails_when_a_listed_shard_has_other_members() -> None:
    plan = plan_shards(files(1, 2), prefix="p")
    listed = {plan[0].archive_key: [entry_for(plan[0], count=1)]}
    with pytest.raises(PackConflictError, match=r"listed with 1 members / 3 bytes") as info:
        reconcile(plan, listed, {plan[0].archive_key: 1000}, prefix="p")
    assert "split options" in str(info.value)


def test_reconcile_fails_when_the_manifest_lists_a_shard_the_plan_lacks() -> None:
    old = plan_shards(files(1, 1, 1), prefix="p", max_entries=1)
    new = plan_shards(files(1, 1, 1), prefix="p", max_entries=3)
    listed = {s.archive_key: [entry_for(s)] for s in old}
    with pytest.raises(PackConflictError) as info:
        reconcile(new, listed, {}, prefix="p")
    assert info.value.problems[:2] == [
        "the manifest lists p/shard-00001.tar, which this plan does not produce",
        "the manifest lists p/shard-00002.tar, which this plan does not produce",
    ]


def test_reconcile_fails_when_the_stored_size_disagrees_with_the_listing() -> None:
    plan = plan_shards(files(1), prefix="p")
    listed = {plan[0].archive_key: [entry_for(plan[0])]}
    with pytest.raises(PackConflictError, match="stored with 7 bytes but listed with 1000"):
        reconcile(plan, listed, {plan[0].archive_key: 7}, prefix="p")


# -- the run, against an in-memory store -------------------------------------------------------


class MemoryStore:
    """What :func:`pack` needs of a store, kept in dicts; uploads may be told to fail."""

    def __init__(self, fail: Iterable[str] = ()) -> None:
        self.objects: dict[str, int] = {}
        self.members: dict[str, list[tuple[str, int, str]]] = {}
        self.manifests: dict[str, list[list[ShardEntry]]] = {}
        self.fail = set(fail)
        self.lock = threading.Lock()

    def resolve(self, key: str) -> str:
        return key

    @property
    def parts(self) -> list[list[ShardEntry]]:
        return self.manifests.setdefault("d/m.jsonl", [])

    def iter_manifest_entries(self, key: str, resolve_refs: bool = True) -> Iterator[Any]:
        if key not in self.manifests:
            raise ManifestNotFoundError(key=key)
        for n, part in enumerate(self.manifests[key], 1):
            if resolve_refs:
                yield from part
            else:
                yield {"kind": "manifest_ref", "key": f"{key}.parts/{n}"}

    def delete_key(self, key: str) -> None:
        self.manifests.pop(key, None)  # a part goes with its root here

    def list_objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield {"key": key, "size": self.objects[key]}

    def read_shard_manifest(self, entry: ShardEntry) -> list[dict[str, Any]]:
        key = entry["archive_key"]
        return [{"member_path": p, "size_bytes": s, "crc32c": c} for p, s, c in self.members[key]]

    def put_shard_archive(self, key: str, items: list[ShardItem], compression: Any = None) -> Shard:
        if key in self.fail:
            raise UploadError(key=key, reason="injected failure")
        sizes = [(i["member_path"], i["size_bytes"], _crc32c(i["source"])) for i in items]
        size = 512 * (len(items) + 2) + sum(s for _, s, _ in sizes)
        with self.lock:
            self.objects[key] = size
            self.members[key] = sizes
        entry: ShardEntry = {
            "kind": "shard",
            "archive_key": key,
            "count": len(items),
            "members_size_bytes": sum(s for _, s, _ in sizes),
            "size_bytes": size,
            "etag": f'"{key}"',
        }
        return Shard(entry=entry, members=[])

    def put_sharded(self, key: str, entries: list[ShardEntry], mode: str) -> str:
        assert mode == "append_parts"
        parts = self.manifests.setdefault(key, [])
        parts.append(list(entries))
        return f"{key}.parts/{len(parts)}"

    def abort_stale_uploads(self, prefix: str, older_than: float, dry_run: bool) -> list[Any]:
        return []

    def listed(self) -> list[str]:
        return [e["archive_key"] for part in self.parts for e in part]


def _crc32c(source: Any) -> str:
    return format(crc32c.crc32c(Path(source).read_bytes()), "08x")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(10):
        (root / f"{i:02d}.bin").write_bytes(bytes(i + 1))
    return root


def run(store: MemoryStore, src: Path, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"max_entries": 2, **kwargs}
    return dict(pack(cast(S3ExchangeStore, store), src, "d/m.jsonl", **options))


def test_pack_checkpoints_the_manifest_every_n_shards(src: Path) -> None:
    """Checkpoints go to the side manifest; the manifest gets one part when the run ends."""
    store = MemoryStore(fail={"d/shards/shard-00004.tar"})
    with pytest.raises(UploadError):
        run(store, src, checkpoint_every=2)
    assert [len(p) for p in store.manifests["d/m.jsonl.unfinished.jsonl"]] == [2, 2]
    assert "d/m.jsonl" not in store.manifests
    store.fail.clear()
    report = run(store, src, checkpoint_every=2)
    assert [len(p) for p in store.parts] == [5]
    assert report["parts"] == ["d/m.jsonl.parts/1"]
    assert "d/m.jsonl.unfinished.jsonl" not in store.manifests


def test_pack_lists_every_shard_in_order_and_a_rerun_does_nothing(src: Path) -> None:
    store = MemoryStore()
    first = run(store, src, jobs=3)
    keys = [f"d/shards/shard-0000{i}.tar" for i in range(5)]
    assert store.listed() == keys
    assert (first["uploaded"], first["skipped"], first["files"], first["member_bytes"]) == (
        5,
        0,
        10,
        55,
    )
    again = run(store, src, jobs=3)
    assert (again["uploaded"], again["skipped"], again["parts"]) == (0, 5, [])


def test_pack_failure_still_lists_the_shards_that_finished(src: Path) -> None:
    store = MemoryStore(fail={"d/shards/shard-00002.tar"})
    with pytest.raises(UploadError):
        run(store, src, jobs=1)
    side = store.manifests["d/m.jsonl.unfinished.jsonl"]
    assert [e["archive_key"] for part in side for e in part] == [
        "d/shards/shard-00000.tar",
        "d/shards/shard-00001.tar",
    ]
    store.fail.clear()
    report = run(store, src)
    assert (report["uploaded"], report["skipped"]) == (3, 2)
    assert sorted(store.listed()) == [f"d/shards/shard-0000{i}.tar" for i in range(5)]


def test_pack_reuploads_and_lists_a_stored_but_unlisted_shard(src: Path) -> None:
    store = MemoryStore()
    run(store, src)
    store.parts[0] = [e for e in store.parts[0] if not e["archive_key"].endswith("00003.tar")]
    report = run(store, src)
    assert (report["replaced"], report["skipped"]) == (1, 4)
    assert store.listed()[-1] == "d/shards/shard-00003.tar"


def test_pack_restores_a_listed_but_deleted_shard_without_listing_it_twice(src: Path) -> None:
    store = MemoryStore()
    run(store, src)
    del store.objects["d/shards/shard-00001.tar"]
    report = run(store, src)
    assert (report["restored"], report["parts"]) == (1, [])
    assert "d/shards/shard-00001.tar" in store.objects
    assert len(store.listed()) == 5


def test_pack_refuses_to_overwrite_an_unlisted_shard_holding_other_files(
    src: Path, tmp_path: Path
) -> None:
    store = MemoryStore()
    run(store, src)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.bin").write_bytes(b"123")
    with pytest.raises(PackConflictError, match="holds other files"):
        pack(cast(S3ExchangeStore, store), other, "d/other.jsonl")
    assert store.members["d/shards/shard-00000.tar"][0][0] == "00.bin"


def test_pack_refuses_to_overwrite_an_unlisted_shard_of_same_names_and_sizes(
    src: Path, tmp_path: Path
) -> None:
    """Issue 10, item 1: names and sizes agree, bytes do not: another dataset's shard."""
    store = MemoryStore()
    run(store, src)
    other = tmp_path / "other"
    other.mkdir()
    for path in sorted(src.iterdir()):
        (other / path.name).write_bytes(b"\xff" * path.stat().st_size)
    before = dict(store.members)
    with pytest.raises(PackConflictError, match=r"member '00.bin' holds other bytes"):
        pack(cast(S3ExchangeStore, store), other, "d/other.jsonl", max_entries=2)
    assert store.members == before
    assert "d/other.jsonl" not in store.manifests


def test_pack_dry_run_counts_without_writing(src: Path) -> None:
    store = MemoryStore()
    report = run(store, src, dry_run=True)
    assert (report["uploaded"], report["dry_run"], store.objects, store.parts) == (5, True, {}, [])


def test_pack_rejects_bad_options_and_empty_sources(src: Path, tmp_path: Path) -> None:
    store = MemoryStore()
    with pytest.raises(PackError, match="compression"):
        run(store, src, compression="zstd")
    with pytest.raises(PackError, match="at least 1"):
        run(store, src, jobs=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PackError, match="no files"):
        pack(cast(S3ExchangeStore, store), tmp_path / "empty", "m.jsonl")
