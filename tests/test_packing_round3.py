"""Issue 11: the pack plan and ``split_items`` keep every file of a webdataset sample together."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3exchange import ShardEntry, ShardItem
from s3exchange.packing import (
    PATHS_FIELD,
    PackConflictError,
    PackError,
    Skipped,
    SourceFile,
    describe_skipped,
    plan_shards,
    reconcile,
    scan_directory,
    shuffled,
)
from s3exchange.shard import sample_key, split_items


def _samples(*fields: int, size: int = 10) -> list[ShardItem]:
    """Sample ``i`` has ``fields[i]`` files ``{i:04d}.f0`` ... each of ``size`` bytes."""
    return [
        {"source": b"", "member_path": f"d/{i:04d}.f{j}", "size_bytes": size}
        for i, n in enumerate(fields)
        for j in range(n)
    ]


def _keys_per_batch(batches: list[list[ShardItem]]) -> list[set[str]]:
    return [{sample_key(item["member_path"]) for item in batch} for batch in batches]


def _spanning(batches: list[list[ShardItem]]) -> list[str]:
    seen = Counter(key for keys in _keys_per_batch(batches) for key in keys)
    return [key for key, n in seen.items() if n > 1]


def test_sample_key_is_the_path_up_to_the_first_dot_of_the_basename() -> None:
    assert sample_key("a/b/x.seg.png") == "a/b/x"
    assert sample_key("a.d/x.jpg") == "a.d/x"
    assert sample_key("a/README") == "a/README"
    assert sample_key("a/.DS_Store") == "a/"  # as webdataset splits it


def test_split_items_never_cuts_a_sample_by_entries_or_bytes() -> None:
    """Issue 11, item 1: 300 two-file samples with max_entries 101 split 3 of them."""
    items = _samples(*[2] * 300)
    by_entries = split_items(items, max_entries=101)
    assert _spanning(by_entries) == []
    assert [len(b) for b in by_entries] == [100, 100, 100, 100, 100, 100]
    by_bytes = split_items(_samples(*[2] * 30, size=100), max_bytes=1050)
    assert _spanning(by_bytes) == []
    assert all(len(b) == 10 for b in by_bytes)


def test_split_items_gathers_a_sample_listed_apart_and_gives_a_big_one_its_own_batch() -> None:
    items: list[ShardItem] = [
        {"source": b"", "member_path": p, "size_bytes": 10}
        for p in ("x.jpg", "y.jpg", "x.json", "z.jpg", "y.json")
    ]
    batches = split_items(items, max_entries=2)
    assert [[i["member_path"] for i in b] for b in batches] == [
        ["x.jpg", "x.json"],
        ["y.jpg", "y.json"],
        ["z.jpg"],
    ]
    big = split_items(_samples(1, 5, 1), max_entries=2)
    assert [len(b) for b in big] == [1, 5, 1]


@given(
    fields=st.lists(st.integers(1, 4), min_size=1, max_size=40),
    max_entries=st.one_of(st.none(), st.integers(1, 9)),
    max_bytes=st.one_of(st.none(), st.integers(1, 90)),
)
def test_split_items_keeps_samples_whole_and_within_limits(
    fields: list[int], max_entries: int | None, max_bytes: int | None
) -> None:
    items = _samples(*fields)
    batches = split_items(items, max_entries, max_bytes)
    assert _spanning(batches) == []
    assert sorted(i["member_path"] for b in batches for i in b) == sorted(
        i["member_path"] for i in items
    )
    for batch in batches:
        if len(_keys_per_batch([batch])[0]) > 1:  # a lone oversize sample may exceed them
            assert max_entries is None or len(batch) <= max_entries
            assert max_bytes is None or 10 * len(batch) <= max_bytes


def test_plan_shards_keeps_a_sample_in_one_shard() -> None:
    files = [
        SourceFile(f"/s/{i:03d}.{ext}", f"{i:03d}.{ext}", 100_000)
        for i in range(200)
        for ext in ("jpg", "json")
    ]
    plan = plan_shards(files, prefix="p", max_bytes=256 * 1024)
    keys = [{sample_key(f.member_path) for f in shard.files} for shard in plan]
    assert sum(len(k) for k in keys) == 200
    assert all(shard.count % 2 == 0 for shard in plan)


# -- 7. --shuffle SEED ---------------------------------------------------------------------------


def _class_sorted(classes: int, per_class: int) -> list[SourceFile]:
    return [
        SourceFile(f"/s/c{k}/{i:03d}.{ext}", f"c{k}/{i:03d}.{ext}", 10)
        for k in range(classes)
        for i in range(per_class)
        for ext in ("jpg", "json")
    ]


def test_shuffled_mixes_classes_keeps_samples_together_and_repeats_per_seed() -> None:
    files = _class_sorted(10, 100)
    mixed = shuffled(files, 7)
    assert mixed == shuffled(files, 7)
    assert mixed != shuffled(files, 8)
    assert sorted(mixed, key=lambda f: f.member_path) == files
    keys = [sample_key(f.member_path) for f in mixed]
    assert all(keys[i] == keys[i + 1] for i in range(0, len(keys), 2))  # jpg, json together
    batches = [keys[i : i + 64] for i in range(0, len(keys) - 63, 64)]  # 32 samples each
    classes = [len({k.split("/")[0] for k in batch}) for batch in batches]
    assert min(classes) >= 6
    assert sum(classes) / len(classes) >= 9
    sorted_classes = [len({f.member_path.split("/")[0] for f in files[i : i + 64]}) for i in (0,)]
    assert sorted_classes == [1]


def test_a_rerun_with_other_member_paths_of_equal_sizes_is_a_conflict() -> None:
    files = _class_sorted(2, 4)
    plan = plan_shards(shuffled(files, 1), prefix="p", max_entries=4)
    listed = {
        s.archive_key: [
            cast(
                ShardEntry,
                {
                    "kind": "shard",
                    "archive_key": s.archive_key,
                    "count": s.count,
                    "members_size_bytes": s.members_size_bytes,
                    PATHS_FIELD: s.paths_digest,
                },
            )
        ]
        for s in plan
    }
    stored = {s.archive_key: 100 for s in plan}
    assert {t.action for t in reconcile(plan, listed, stored, prefix="p")} == {"skip"}
    other = plan_shards(shuffled(files, 2), prefix="p", max_entries=4)
    with pytest.raises(PackConflictError, match="other member paths"):
        reconcile(other, listed, stored, prefix="p")


# -- 8. what pack takes from the source directory ------------------------------------------------


def _tree(root: Path, outside: Path) -> None:
    for rel in ("a/1.jpg", "a/1.json", "a/.DS_Store", ".git/config", "b/tmp/x.bin", "b/2.tmp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    outside.write_bytes(b"secret")
    os.symlink(root / "a" / "1.jpg", root / "b" / "inside.jpg")
    os.symlink(root, root / "a" / "loop")


def test_scan_skips_hidden_excluded_and_symlinks_by_default(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _tree(root, tmp_path / "outside.bin")
    skipped: Skipped = {"hidden": 0, "symlinks": 0, "excluded": 0}
    found = scan_directory(root, exclude=["*.tmp", "b/tmp"], skipped=skipped)
    assert [f.member_path for f in found] == ["a/1.jpg", "a/1.json"]
    assert skipped == {"hidden": 2, "symlinks": 2, "excluded": 2}
    assert describe_skipped(skipped) == "skipped 2 hidden, 2 symlinks, 2 excluded"

    found = scan_directory(root, hidden=True, follow_symlinks=True)
    assert [f.member_path for f in found] == [
        ".git/config",
        "a/.DS_Store",
        "a/1.jpg",
        "a/1.json",
        "b/2.tmp",
        "b/inside.jpg",
        "b/tmp/x.bin",
    ]  # the loop a/loop -> src is not walked


def test_a_followed_symlink_never_leads_outside_the_source(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _tree(root, tmp_path / "outside.bin")
    os.symlink(tmp_path / "outside.bin", root / "a" / "2.jpg")
    assert "a/2.jpg" not in [f.member_path for f in scan_directory(root)]
    with pytest.raises(PackError, match=r"2\.jpg' is a symlink to .*outside\.bin', outside"):
        scan_directory(root, follow_symlinks=True)
    os.remove(root / "a" / "2.jpg")
    os.symlink(tmp_path, root / "up")
    with pytest.raises(PackError, match=r"'.*up' is a symlink to .*, outside the source"):
        scan_directory(root, follow_symlinks=True)
