"""Issue 11 ("rough edges a new user hits") through the ``s3exchange`` command, against moto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_cli import Cli, clean_env

from s3exchange import S3ExchangeStore, ShardEntry
from s3exchange.shard import sample_key

if TYPE_CHECKING:
    from s3exchange.testing import RunningServer


@pytest.fixture
def cli(moto_server: RunningServer, bucket: str, tmp_path: Path) -> Cli:
    env = clean_env(**moto_server.s3.env(), S3EXCHANGE_BUCKET=bucket)
    return Cli(env, tmp_path)


def _image_samples(root: Path, n: int, size: int = 1000) -> Path:
    """``n`` samples of a ``.jpg`` and a ``.json`` each, as a preprocessing script leaves them."""
    for i in range(n):
        (root / f"{i:04d}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{i:04d}.jpg").write_bytes(bytes([i % 256]) * size)
        (root / f"{i:04d}.json").write_text(json.dumps({"label": i % 10}))
    return root


def _shards(store: S3ExchangeStore, manifest: str) -> list[ShardEntry]:
    return [e for e in store.iter_manifest_entries(manifest) if e["kind"] == "shard"]


def _members(store: S3ExchangeStore, manifest: str) -> list[list[str]]:
    return [
        [m["member_path"] for m in store.read_shard_manifest(e)] for e in _shards(store, manifest)
    ]


# -- 1. pack keeps a sample's files in one shard -------------------------------------------------


def test_pack_never_splits_a_sample_across_shards(
    cli: Cli, store: S3ExchangeStore, tmp_path: Path
) -> None:
    src = _image_samples(tmp_path / "src", 30)
    cli.ok("pack", str(src), "a/train.jsonl", "--max-entries", "7")
    cli.ok("pack", str(src), "b/train.jsonl", "--max-bytes", "3500")
    for manifest in ("a/train.jsonl", "b/train.jsonl"):
        shards = _members(store, manifest)
        keys = [key for paths in shards for key in dict.fromkeys(map(sample_key, paths))]
        assert sum(len(paths) for paths in shards) == 60
        assert len(keys) == len(set(keys)) == 30, manifest  # no key in two shards
        assert all(len(paths) % 2 == 0 for paths in shards)
