"""Issue 10 ("Reliability, round two") through the ``s3exchange`` command, against moto."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_cli import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_PROBLEMS, EXIT_USAGE, Cli, clean_env

from s3exchange import S3ExchangeStore, ShardItem
from s3exchange.manifest import MAX_REF_DEPTH

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3exchange.testing import RunningServer


@pytest.fixture
def cli(moto_server: RunningServer, bucket: str, tmp_path: Path) -> Cli:
    env = clean_env(**moto_server.s3.env(), S3EXCHANGE_BUCKET=bucket)
    return Cli(env, tmp_path)


def _prompt(cli: Cli, *args: str, answer: bytes) -> tuple[int, str]:
    """Run with stdin a terminal, answer the question; returns (exit code, stderr)."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3exchange", *args],
            env=cli.env,
            cwd=cli.cwd,
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(controller, answer)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    return proc.returncode, err.decode()


# -- 2. rm --manifest shows, asks about and deletes one plan ------------------------------------


def test_rm_manifest_of_an_expanded_manifest_shows_and_asks_about_the_archive(
    cli: Cli, store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    items: list[ShardItem] = [
        {"source": bytes([i]) * 10, "member_path": f"{i}.bin"} for i in range(3)
    ]
    shard = store.put_shard_archive("shards/s.tar", items)
    store.write_manifest("m.jsonl", [shard.entry])
    store.compact_manifest("m.jsonl", "flat.jsonl", expand_shards=True)
    store.write_manifest("partial.jsonl", list(store.iter_manifest_entries("flat.jsonl"))[:2])

    listed = cli.jsonl("rm", "--manifest", "flat.jsonl", "--dry-run", "--json")
    assert listed == [
        {"role": "archive", "key": "shards/s.tar"},
        {"role": "index", "key": "shards/s.tar.index.jsonl"},
        {"role": "manifest", "key": "flat.jsonl"},
    ]
    code, err = _prompt(cli, "rm", "--manifest", "flat.jsonl", answer=b"n\n")
    assert code == EXIT_USAGE
    assert "delete 0 objects, 1 archive and 1 manifest of flat.jsonl?" in err

    text = cli.ok("rm", "--manifest", "partial.jsonl", "--dry-run").decode().splitlines()
    assert text == [
        "manifest  partial.jsonl",
        "kept      shards/s.tar  (2 of its 3 members are listed; not deleted)",
    ]
    code, err = _prompt(cli, "rm", "--manifest", "partial.jsonl", answer=b"n\n")
    assert "delete 0 objects, 0 archives and 1 manifest of partial.jsonl, keeping 1" in err
    report = cli.json("rm", "--manifest", "partial.jsonl", "--yes")
    assert (report["deleted_archive_count"], report["deleted_manifest_count"]) == (0, 1)
    assert report["kept"] == [{"key": "shards/s.tar", "reason": "2 of its 3 members are listed"}]
    assert store.exists("shards/s.tar")
    report = cli.json("rm", "--manifest", "flat.jsonl", "--yes")
    assert report["deleted_archive_count"] == 1
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == ["m.jsonl"]


# -- 9. the error names the key, whatever it holds ----------------------------------------------


def test_cat_of_a_missing_key_with_a_newline_names_it(cli: Cli) -> None:
    err = cli.fails(EXIT_NOT_FOUND, "cat", "dir/missing\nkey.bin")
    assert "object not found: 'dir/missing\\nkey.bin'" in err


# -- 10. a file-system error is one line naming the path ----------------------------------------


def _as_unprivileged(cli: Cli, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command where file modes apply: root keeps them by dropping its DAC bypass."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: file modes cannot be enforced")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "s3exchange", *args],
        env=cli.env,
        cwd=cli.cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_pack_of_an_unreadable_subdirectory_is_one_line_naming_it(
    cli: Cli, tmp_path: Path, s3_client: S3Client, bucket: str
) -> None:
    src = tmp_path / "src"
    locked = src / "b" / "locked"
    locked.mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a")
    (locked / "c.bin").write_bytes(b"c")
    locked.chmod(0)
    try:
        result = _as_unprivileged(cli, "pack", str(src), "m.jsonl")
    finally:
        locked.chmod(0o755)
    err = result.stderr.decode()
    assert result.returncode == EXIT_USAGE, err
    assert err == f"s3exchange: error: cannot read {str(locked)!r}: Permission denied\n"
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)


# -- 6, 7. the CLI walks the graph as the library does ------------------------------------------


def test_stats_verify_and_rm_read_a_diamond_once_and_refuse_a_deep_chain(
    cli: Cli, store: S3ExchangeStore
) -> None:
    for i in range(9):  # each referencing the next twice: 511 reads of m09 when walked naively
        ref = {"kind": "manifest_ref", "key": f"g/m{i + 1:02d}.jsonl"}
        store.write_manifest(f"g/m{i:02d}.jsonl", [ref, ref])
    store.put_object("g/data.bin", b"payload")
    store.write_manifest("g/m09.jsonl", [{"kind": "file", "key": "g/data.bin"}])
    stats = cli.json("manifest", "stats", "g/m00.jsonl")
    assert (stats["manifests"], stats["refs"], stats["files"]) == (10, 18, 1)
    verified = cli.json("verify", "g/m00.jsonl")
    assert (verified["ok"], verified["manifests"], verified["files"]) == (True, 10, 1)
    listed = cli.jsonl("rm", "--manifest", "g/m00.jsonl", "--dry-run", "--json")
    assert [t["role"] for t in listed] == ["object"] + ["manifest"] * 10

    for i in range(MAX_REF_DEPTH + 1):
        ref = {"kind": "manifest_ref", "key": f"c/m{i + 1:03d}.jsonl"}
        store.write_manifest(f"c/m{i:03d}.jsonl", [ref])
    store.write_manifest(f"c/m{MAX_REF_DEPTH + 1:03d}.jsonl", [])
    for command in (["manifest", "show"], ["manifest", "stats"], ["rm", "--dry-run", "--manifest"]):
        err = cli.fails(EXIT_INVALID, *command, "c/m000.jsonl")
        assert f"manifest_ref nesting deeper than {MAX_REF_DEPTH} levels" in err
    result = cli.run("verify", "c/m000.jsonl")
    assert result.returncode == EXIT_PROBLEMS
    assert b"nesting deeper than" in result.stdout


# -- 11. gc aborts pending uploads under a prefix -------------------------------------------------


def test_gc_lists_and_aborts_stale_uploads_under_a_prefix(
    cli: Cli, s3_client: S3Client, bucket: str
) -> None:
    for key in ("d/shards/shard-00000.tar", "d/shards/shard-00001.tar", "other/x.bin"):
        s3_client.create_multipart_upload(Bucket=bucket, Key=key)
    listed = cli.jsonl("gc", "d/", "--older-than", "0s", "--dry-run", "--json")
    assert [u["key"] for u in listed] == ["d/shards/shard-00000.tar", "d/shards/shard-00001.tar"]
    assert cli.json("gc", "d/", "--older-than", "0") == {"prefix": "d/", "aborted": 2}
    pending = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["Key"] for u in pending] == ["other/x.bin"]
    assert "must not be empty" in cli.fails(EXIT_USAGE, "gc", "/")
    assert "not a duration" in cli.run("gc", "d/", "--older-than", "soon").stderr.decode()
