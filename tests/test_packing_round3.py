"""Issue 11: the pack plan and ``split_items`` keep every file of a webdataset sample together."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from s3exchange import ShardItem
from s3exchange.packing import SourceFile, plan_shards
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
