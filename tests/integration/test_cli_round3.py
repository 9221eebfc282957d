"""Issue 11 ("rough edges a new user hits") through the ``s3exchange`` command, against moto."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_cli import EXIT_NOT_FOUND, EXIT_PROBLEMS, Cli, clean_env

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


# -- 4. an interrupted pack is visibly unfinished; the same command finishes it -----------------


def _interrupt_pack(cli: Cli, store: S3ExchangeStore, *args: str) -> subprocess.Popen[bytes]:
    """Start ``pack``, send Ctrl-C once its second shard is stored, and wait for it to end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3exchange", "pack", *args],
        env=cli.env,
        cwd=cli.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(list(store.list_keys("b/shards/"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    return proc


def test_an_interrupted_pack_is_refused_by_verify_until_rerun(
    cli: Cli, store: S3ExchangeStore, tmp_path: Path
) -> None:
    src = _image_samples(tmp_path / "src", 100, size=10)
    args = (str(src), "b/train.jsonl", "--max-entries", "2")
    proc = _interrupt_pack(cli, store, *args)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert proc.returncode == 130, err
    assert "run the same command again to finish the job" in err
    assert "'b/train.jsonl.unfinished.jsonl'" in err
    done = len(_shards(store, "b/train.jsonl.unfinished.jsonl"))
    assert 2 <= done < 100

    err = cli.fails(EXIT_NOT_FOUND, "verify", "b/train.jsonl")
    assert "a pack into 'b/train.jsonl' has not finished" in err
    assert "run the same pack command again to finish it" in err
    result = cli.run("verify", "b/train.jsonl.unfinished.jsonl")
    assert result.returncode == EXIT_PROBLEMS
    result = cli.run("verify", "b/train.jsonl", "--allow-unfinished", "--json")
    assert result.returncode == 0, result.stderr
    assert b"warning: a pack into 'b/train.jsonl' has not finished" in result.stderr
    assert json.loads(result.stdout)["shards"] == done

    report = cli.json("pack", *args)
    assert report["skipped"] + report["uploaded"] + report["replaced"] == 100
    assert len(report["parts"]) == 1  # the whole job at once
    assert not store.exists("b/train.jsonl.unfinished.jsonl")
    assert list(store.list_keys("b/train.jsonl.unfinished")) == []
    assert len(_shards(store, "b/train.jsonl")) == 100
    assert cli.json("verify", "b/train.jsonl")["ok"] is True


def test_verify_refuses_a_manifest_with_a_pack_into_it_under_way(
    cli: Cli, store: S3ExchangeStore, tmp_path: Path
) -> None:
    first = _image_samples(tmp_path / "first", 2, size=10)
    cli.ok("pack", str(first), "b/train.jsonl", "--prefix", "b/first")
    more = _image_samples(tmp_path / "more", 100, size=10)
    proc = _interrupt_pack(cli, store, str(more), "b/train.jsonl", "--max-entries", "2")
    assert proc.returncode == 130
    result = cli.run("verify", "b/train.jsonl")
    assert result.returncode == EXIT_PROBLEMS
    assert result.stdout.decode().startswith(
        "b/train.jsonl: a pack into 'b/train.jsonl' has not finished"
    )
    report = cli.json("verify", "b/train.jsonl", "--allow-unfinished")
    assert (report["ok"], report["shards"]) == (True, 1)
    assert report["unfinished"] == "b/train.jsonl.unfinished.jsonl"
