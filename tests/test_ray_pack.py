"""``pack --engine ray`` / ``s3exchange.ray.pack_objects``: loose objects in the bucket packed by
Ray tasks (local Ray, 2 CPUs) into the same shards as the local ``pack`` of the same files, with
its resumability, ``--shuffle``, report and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import ray

from s3exchange import ObjectNotFoundError, PackConflictError, PackError, S3ExchangeStore
from s3exchange.packing import PATHS_FIELD, pack, unfinished_key
from s3exchange.ray import pack_objects
from s3exchange.ray.pack import scan_objects

if TYPE_CHECKING:
    from s3exchange.testing import RunningServer
    from s3exchange.types import ShardEntry

EXIT_USAGE, EXIT_CONFLICT = 2, 7


def _tree(root: Path) -> dict[str, bytes]:
    """A small dataset: samples of two fields, a nested directory, a file without extension,
    one of 2 MiB, and a hidden file (left out by both engines)."""
    files = {
        f"img/{i:03d}.{ext}": f"{ext}-{i}".encode() * (i + 1)
        for i in range(9)
        for ext in ("jpg", "json")
    }
    files["img/sub/extra.txt"] = b"nested"
    files["README"] = b"no extension"
    files["big/blob.bin"] = os.urandom(2 << 20)
    files[".hidden/x.txt"] = b"skip me"
    for member, data in files.items():
        (root / member).parent.mkdir(parents=True, exist_ok=True)
        (root / member).write_bytes(data)
    return files


def _upload(store: S3ExchangeStore, files: dict[str, bytes], prefix: str = "raw") -> None:
    for member, data in files.items():
        store.put_object(f"{prefix}/{member}", data)


def _shards(store: S3ExchangeStore, manifest: str) -> list[ShardEntry]:
    return [e for e in store.iter_manifest_entries(manifest) if e["kind"] == "shard"]


def _contents(store: S3ExchangeStore, manifest: str) -> list[list[tuple[Any, ...]]]:
    """Per shard, its members as (path, id, size, crc32c), read from the archives."""
    return [
        [
            (m["member_path"], m.get("id"), m["size_bytes"], m.get("crc32c"))
            for m in store.read_shard_manifest(shard)
        ]
        for shard in _shards(store, manifest)
    ]


@pytest.mark.parametrize(("shuffle", "compression"), [(None, "none"), (7, "gzip")])
def test_a_ray_pack_equals_the_local_pack_of_the_same_files(
    ray_local: None, store: S3ExchangeStore, tmp_path: Path, shuffle: int | None, compression: str
) -> None:
    files = _tree(tmp_path)
    _upload(store, files)
    options: dict[str, Any] = {"max_entries": 5, "compression": compression, "shuffle": shuffle}
    local = pack(store, tmp_path, "local/manifest.jsonl", **options)
    remote = pack_objects(store, "raw/", "dist/manifest.jsonl", **options)

    for field in ("files", "member_bytes", "shards", "uploaded", "skipped_files", "shuffle"):
        assert remote[field] == local[field], field  # type: ignore[literal-required]
    assert remote["skipped_files"]["hidden"] == 1
    assert remote["shards"] >= 5
    assert remote["uploaded"] == remote["shards"]
    assert _contents(store, "dist/manifest.jsonl") == _contents(store, "local/manifest.jsonl")
    ours, theirs = _shards(store, "dist/manifest.jsonl"), _shards(store, "local/manifest.jsonl")
    for a, b in zip(ours, theirs, strict=True):
        for field in ("count", "members_size_bytes", "compression", PATHS_FIELD):
            assert a.get(field) == b.get(field), field
        assert a["archive_key"].replace("dist/", "local/", 1) == b["archive_key"]
    by_path = {e["member_path"]: s.read() for s, e in store.iter_objects("dist/manifest.jsonl")}
    assert by_path == {k: v for k, v in files.items() if not k.startswith(".")}

    # the same plan: a Ray run finds the local run's shards done, and the other way round
    again = pack_objects(store, "raw/", "local/manifest.jsonl", **options)
    assert again["skipped"] == again["shards"]
    assert pack(store, tmp_path, "dist/manifest.jsonl", **options)["uploaded"] == 0
    # stored but unlisted: replaced only once every member's crc32c matches its object's bytes
    store.delete_key("local/manifest.jsonl")
    replaced = pack_objects(store, "raw/", "local/manifest.jsonl", **options)
    assert replaced["replaced"] == replaced["shards"]


def test_a_failed_ray_pack_keeps_its_shards_and_a_rerun_finishes_it(
    ray_local: None, store: S3ExchangeStore, tmp_path: Path
) -> None:
    files = _tree(tmp_path)
    _upload(store, files)
    lost = "raw/img/004.jpg"  # deleted after planning: the shard holding it fails
    data = store.get_object(lost).read()

    class DeleteOnStart:
        def start(self, total_bytes: int, total_shards: int) -> None:
            store.delete_key(lost)

        def advance(self, member_bytes: int) -> None:
            pass

    with pytest.raises(ObjectNotFoundError, match=r"raw/img/004\.jpg"):
        pack_objects(store, "raw", "train/m.jsonl", max_entries=4, jobs=1, progress=DeleteOnStart())
    assert not store.exists("train/m.jsonl")
    kept = _shards(store, unfinished_key("train/m.jsonl"))
    assert kept, "the shards finished before the failure are listed in the side manifest"

    store.put_object(lost, data)
    report = pack_objects(store, "raw", "train/m.jsonl", max_entries=4)
    assert report["skipped"] == len(kept)
    assert report["uploaded"] + report["replaced"] == report["shards"] - len(kept)
    assert not store.exists(unfinished_key("train/m.jsonl"))
    again = pack_objects(store, "raw", "train/m.jsonl", max_entries=4)
    assert again["skipped"] == again["shards"]
    assert again["uploaded_bytes"] == 0
    keys = [e["member_path"] for _, e in store.iter_objects("train/m.jsonl")]
    assert sorted(keys) == sorted(k for k in files if not k.startswith("."))

    with pytest.raises(PackConflictError, match="changed since the manifest was written"):
        pack_objects(store, "raw", "train/m.jsonl", max_entries=3)


def test_scan_objects_follows_the_directory_rules(store: S3ExchangeStore) -> None:
    names = ["a/1.jpg", "a/.DS_Store", ".git/config", "a/cache/x.jpg", "b/1.tmp", "b/2.jpg"]
    _upload(store, dict.fromkeys(names, b"x"), prefix="src")
    store.put_object("src/dir/", b"")  # a console's "folder"
    skipped = {"hidden": 0, "symlinks": 0, "excluded": 0}
    found = scan_objects(store, "src/", exclude=["cache", "*.tmp"], skipped=skipped)  # type: ignore[arg-type]
    assert [f.member_path for f in found] == ["a/1.jpg", "b/2.jpg"]
    assert [f.path for f in found] == ["src/a/1.jpg", "src/b/2.jpg"]
    assert skipped == {"hidden": 2, "symlinks": 0, "excluded": 2}
    with pytest.raises(PackError, match="lies under the source prefix"):
        pack_objects(store, "src", "src/manifest.jsonl", dry_run=True)
    with pytest.raises(PackError, match="no objects under 'nothing/'"):
        pack_objects(store, "nothing", "train/manifest.jsonl", dry_run=True)


def test_the_cli_packs_a_bucket_prefix_on_a_ray_cluster(
    ray_local: None, moto_server: RunningServer, store: S3ExchangeStore, tmp_path: Path
) -> None:
    _upload(store, {f"{i:02d}.txt": b"t" * i for i in range(12)})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("S3EXCHANGE_")},
        **moto_server.s3.env(),
    }
    address = ray.get_runtime_context().gcs_address  # the tests' cluster, as a real one is named

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "s3exchange", "pack", f"s3://{store.bucket}/raw/"]
        return subprocess.run(
            [*command, f"s3://{store.bucket}/train/m.jsonl", "--engine", "ray", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = cli("--max-entries", "5", "--ray-address", address, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["files"], report["shards"], report["uploaded"]) == (12, 3, 3)
    assert len(_shards(store, "train/m.jsonl")) == 3

    conflict = cli("--max-entries", "4", "--ray-address", address)
    assert conflict.returncode == EXIT_CONFLICT, conflict.stderr
    assert "changed since the manifest was written" in conflict.stderr
    assert "Traceback" not in conflict.stderr
    usage = cli("--follow-symlinks", "--ray-address", address)
    assert usage.returncode == EXIT_USAGE
    assert "applies to a directory" in usage.stderr


def test_without_ray_the_core_imports_and_the_ray_engine_is_a_usage_error(
    moto_server: RunningServer, tmp_path: Path
) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if the extra were not installed
        "import s3exchange, s3exchange.cli\n"
        "sys.exit(s3exchange.cli.main(sys.argv[1:]))"
    )
    args = ["pack", "s3://b/raw/", "s3://b/train/m.jsonl", "--engine", "ray"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **moto_server.s3.env()},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "--engine ray needs Ray: pip install 's3exchange[ray]'" in result.stderr
    assert "Traceback" not in result.stderr
