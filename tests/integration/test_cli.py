"""The ``s3exchange`` command, run for real in subprocesses against moto's server.

Each run costs a Python start-up, so every test drives one scenario through several commands.
moto accepts any credentials, so "access denied" is checked against a stub HTTP server that
answers every request with S3's 403 ``InvalidAccessKeyId`` error document, and "no credentials"
with an environment that has none.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from s3exchange import S3ExchangeStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3exchange.testing import RunningServer

EXIT_PROBLEMS, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID = 1, 2, 3, 4
EXIT_DENIED, EXIT_STORAGE, EXIT_CONFLICT = 5, 6, 7


@dataclass
class Cli:
    """Runs ``python -m s3exchange`` with a given environment, stdin not a terminal."""

    env: dict[str, str]
    cwd: Path
    calls: list[list[str]] = field(default_factory=list)

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        self.calls.append(list(args))
        result = subprocess.run(
            [sys.executable, "-m", "s3exchange", *args],
            env=env if env is not None else self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert b"Traceback" not in result.stderr, result.stderr.decode()
        return result

    def ok(self, *args: str) -> bytes:
        result = self.run(*args)
        assert result.returncode == 0, (args, result.stderr.decode())
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def jsonl(self, *args: str) -> list[Any]:
        return [json.loads(line) for line in self.ok(*args).splitlines()]

    def fails(self, code: int, *args: str, env: dict[str, str] | None = None) -> str:
        """Run expecting exit ``code``; returns stderr, which must be one line."""
        result = self.run(*args, env=env)
        err = result.stderr.decode()
        assert result.returncode == code, (args, result.returncode, err)
        assert err.startswith("s3exchange: error: ") or code == EXIT_PROBLEMS, err
        assert err.count("\n") <= 1, err
        return err


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any S3 or AWS settings of the host."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3EXCHANGE_", "AWS_"))}
    env.update(
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


@pytest.fixture
def cli(moto_server: RunningServer, bucket: str, tmp_path: Path) -> Cli:
    env = clean_env(**moto_server.s3.env(), S3EXCHANGE_BUCKET=bucket)
    return Cli(env, tmp_path)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """12 binary files in nested directories, 100 to 1200 bytes each."""
    root = tmp_path / "src"
    for i in range(12):
        path = root / f"part{i % 3}" / f"sample{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(str(i).encode()).digest() * (3 * (i + 1)) + b"\n\0")
    return root


def objects(client: S3Client, bucket: str, prefix: str = "") -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def read(client: S3Client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


# -- entry points ------------------------------------------------------------------------------


def test_console_script_and_module_show_help_with_exit_codes(cli: Cli) -> None:
    script = Path(sys.executable).with_name("s3exchange")
    version = subprocess.run([script, "--version"], capture_output=True, check=True, timeout=60)
    assert version.stdout.startswith(b"s3exchange ")
    help_text = cli.ok("verify", "--help").decode()
    assert "exit codes:" in help_text
    assert "verify found problems" in help_text
    assert "--no-data" in help_text
    assert cli.run("rm", "--manifest", "m", "--prefix", "p").returncode == EXIT_USAGE


# -- the happy path ----------------------------------------------------------------------------


def test_pack_then_inspect_verify_cat_and_compact(
    cli: Cli, src: Path, s3_client: S3Client, bucket: str
) -> None:
    report = cli.json("pack", str(src), "data/train.jsonl", "--max-entries", "5", "--jobs", "2")
    assert report["prefix"] == "data/shards"
    assert (report["files"], report["shards"], report["uploaded"], report["skipped"]) == (
        12,
        3,
        3,
        0,
    )
    member_bytes = sum(p.stat().st_size for p in src.rglob("*.bin"))
    assert report["member_bytes"] == member_bytes
    shard_keys = [f"data/shards/shard-0000{i}.tar" for i in range(3)]
    stored = objects(s3_client, bucket)
    assert set(shard_keys) <= set(stored)

    listed = cli.jsonl("ls", "data/", "--json")
    assert {o["key"]: o["size"] for o in listed} == stored
    text = cli.ok("ls", "data/shards").decode().splitlines()
    listed_keys = [k for key in shard_keys for k in (key, f"{key}.index.jsonl")]
    assert [line.split() for line in text] == [[str(stored[k]), k] for k in listed_keys]

    roots = cli.jsonl("manifest", "show", "data/train.jsonl", "--no-resolve")
    assert [e["kind"] for e in roots] == ["manifest_ref"]
    entries = cli.jsonl("manifest", "show", "data/train.jsonl")
    assert [e["archive_key"] for e in entries] == shard_keys
    assert [e["count"] for e in entries] == [5, 5, 2]

    stats = cli.json("manifest", "stats", "data/train.jsonl")
    assert stats | {"manifest_key": None} == {
        "manifest_key": None,
        "manifests": 2,
        "refs": 1,
        "files": 0,
        "shards": 3,
        "members": 12,
        "expanded_members": 0,
        "file_bytes": 0,
        "shard_bytes": sum(stored[k] for k in shard_keys),
        "member_bytes": member_bytes,
        "total_bytes": sum(stored[k] for k in shard_keys),
        "entries_without_size": 0,
    }
    assert "members               12" in cli.ok("manifest", "stats", "data/train.jsonl").decode()

    # cat: a shard member by virtual key, and a multi-chunk binary object, byte for byte
    member = "part1/sample04.bin"
    cat = cli.ok("cat", f"data/shards/shard-00001.tar#{member}")
    assert cat == (src / member).read_bytes()
    blob = os.urandom(3 << 20) + b"\r\n\0"
    s3_client.put_object(Bucket=bucket, Key="blob.bin", Body=blob)
    assert cli.ok("cat", "blob.bin") == blob

    verified = cli.json("verify", "data/train.jsonl")
    assert verified["ok"] is True
    assert (verified["shards"], verified["members"], verified["bytes_checked"]) == (
        3,
        12,
        member_bytes,
    )
    assert cli.json("verify", "data/train.jsonl", "--no-data")["problems"] == []
    assert cli.ok("verify", "data/train.jsonl").decode().startswith("OK: data/train.jsonl")

    compacted = cli.json("compact", "data/train.jsonl", "data/flat.jsonl", "--expand-shards")
    assert (compacted["total_entries"], compacted["file_entries"]) == (12, 12)
    flat = cli.json("verify", "data/flat.jsonl")
    assert (flat["ok"], flat["members"], flat["bytes_checked"]) == (True, 12, member_bytes)


# -- pack resumability -------------------------------------------------------------------------


def drop_listing(client: S3Client, bucket: str, root: str, archive_key: str) -> None:
    """Simulate a crash between upload and manifest update: unlist one shard."""
    for ref in read(client, bucket, root).decode().splitlines():
        part = json.loads(ref)["key"]
        lines = read(client, bucket, part).decode().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["archive_key"] != archive_key]
        if kept != lines:
            client.put_object(Bucket=bucket, Key=part, Body="".join(kept).encode())
            return
    raise AssertionError(f"{archive_key} is not listed")


def test_pack_resumes_repairs_and_refuses_a_changed_source(
    cli: Cli, src: Path, s3_client: S3Client, bucket: str
) -> None:
    args = ("pack", str(src), "data/train.jsonl", "--max-entries", "3", "--compression", "gzip")
    assert cli.json(*args)["uploaded"] == 4
    again = cli.json(*args)
    assert (again["uploaded"], again["skipped"], again["parts"]) == (0, 4, [])

    drop_listing(s3_client, bucket, "data/train.jsonl", "data/shards/shard-00001.tar.gz")
    s3_client.delete_object(Bucket=bucket, Key="data/shards/shard-00002.tar.gz")
    assert cli.run("verify", "data/train.jsonl", "--no-data").returncode == EXIT_PROBLEMS
    dry = cli.json(*args, "--dry-run")
    assert (dry["replaced"], dry["restored"], dry["skipped"]) == (1, 1, 2)
    repaired = cli.json(*args)
    assert (repaired["replaced"], repaired["restored"], repaired["skipped"]) == (1, 1, 2)
    assert len(repaired["parts"]) == 1
    verified = cli.json("verify", "data/train.jsonl")
    assert (verified["ok"], verified["shards"], verified["members"]) == (True, 4, 12)

    before = objects(s3_client, bucket)
    (src / "part0" / "new.bin").write_bytes(b"late arrival")
    err = cli.fails(EXIT_CONFLICT, *args)
    assert "shard-00000.tar.gz is listed with 3 members" in err
    assert "pack into a new manifest" in err
    (src / "part0" / "new.bin").unlink()
    err = cli.fails(EXIT_CONFLICT, *args[:-2])  # the same files, no longer gzipped
    assert "the manifest lists data/shards/shard-00000.tar.gz" in err
    assert objects(s3_client, bucket) == before

    other = src / "part2"  # a different dataset packed beside the first one, same prefix
    err = cli.fails(EXIT_CONFLICT, "pack", str(other), "data/val.jsonl", *args[3:])
    assert "holds other files" in err
    assert objects(s3_client, bucket) == before


# -- verify ------------------------------------------------------------------------------------


def test_verify_reports_every_missing_or_corrupt_object(
    cli: Cli, store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    files = [store.put_object(f"loose/{n}.bin", n.encode() * 100) for n in "abcd"]
    shards = [
        store.put_shard_archive(
            f"shards/{i}.tar",
            [{"source": bytes([i]) * 700, "member_path": f"m{j}.bin"} for j in range(3)],
        ).entry
        for i in range(4)
    ]
    no_etag = {k: v for k, v in shards[3].items() if k != "etag"}  # checked by sha256 only
    store.write_manifest("m.jsonl", [*files, *shards[:3], no_etag])

    s3_client.delete_object(Bucket=bucket, Key="loose/a.bin")
    s3_client.put_object(Bucket=bucket, Key="loose/b.bin", Body=b"B" * 100)  # same size
    s3_client.delete_object(Bucket=bucket, Key="shards/0.tar")
    for key in ("shards/1.tar", "shards/3.tar"):  # flip one byte of member data
        data = bytearray(read(s3_client, bucket, key))
        data[2048] ^= 0xFF
        s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    result = cli.run("verify", "m.jsonl", "--json")
    assert result.returncode == EXIT_PROBLEMS
    report = json.loads(result.stdout)
    problems = {p["key"]: p["problem"] for p in report["problems"]}
    assert set(problems) == {
        "loose/a.bin",
        "loose/b.bin",
        "shards/0.tar",
        "shards/1.tar",
        "shards/3.tar",
    }
    assert problems["loose/a.bin"] == "missing"
    assert problems["shards/0.tar"] == "missing"
    assert "ETag" in problems["loose/b.bin"]
    assert "ETag" in problems["shards/1.tar"]
    assert "crc32c mismatch" in problems["shards/3.tar"]
    assert {p["manifest"] for p in report["problems"]} == {"m.jsonl"}
    assert (report["files"], report["shards"]) == (4, 4)

    quick = json.loads(cli.run("verify", "m.jsonl", "--json", "--no-data").stdout)
    assert {p["key"] for p in quick["problems"]} == set(problems) - {"shards/3.tar"}

    text = cli.run("verify", "m.jsonl").stdout.decode().splitlines()
    assert "loose/a.bin: missing  [listed in m.jsonl]" in text
    assert text[-1].startswith("FAILED: m.jsonl")
    assert text[-1].endswith("5 problems")


# -- errors ------------------------------------------------------------------------------------


class _DenyAll(BaseHTTPRequestHandler):
    """Answers every request the way S3 answers an unknown access key."""

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
        b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message>"
        b"</Error>"
    )

    def _deny(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _deny

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def deny_all() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyAll)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_errors_are_one_line_with_distinct_exit_codes(
    cli: Cli, s3_client: S3Client, bucket: str, deny_all: str
) -> None:
    assert "object not found: 'nope.bin'" in cli.fails(EXIT_NOT_FOUND, "cat", "nope.bin")
    assert "manifest not found" in cli.fails(EXIT_NOT_FOUND, "manifest", "show", "nope.jsonl")
    cli.fails(EXIT_NOT_FOUND, "verify", "nope.jsonl")
    cli.fails(EXIT_NOT_FOUND, "ls", "--bucket", "no-such-bucket-here")

    s3_client.put_object(
        Bucket=bucket, Key="bad.jsonl", Body=b'{"kind": "file", "key": "a"}\nnot json\n'
    )
    err = cli.fails(EXIT_INVALID, "manifest", "stats", "bad.jsonl")
    assert "invalid manifest 'bad.jsonl' line 2: invalid JSON" in err
    assert cli.run("manifest", "show", "bad.jsonl").returncode == EXIT_INVALID
    s3_client.put_object(Bucket=bucket, Key="fake.tar", Body=b"\x01" * 1024)
    assert cli.fails(EXIT_INVALID, "cat", "fake.tar#x").startswith(
        "s3exchange: error: cannot read shard"
    )

    no_bucket = {k: v for k, v in cli.env.items() if k != "S3EXCHANGE_BUCKET"}
    assert "no bucket" in cli.fails(EXIT_USAGE, "ls", env=no_bucket)

    denied = dict(cli.env, S3EXCHANGE_ENDPOINT_URL=deny_all)
    assert "InvalidAccessKeyId" in cli.fails(EXIT_DENIED, "ls", env=denied)
    anonymous = {k: v for k, v in cli.env.items() if "_AWS_" not in k}
    assert "no credentials" in cli.fails(EXIT_DENIED, "cat", "x", env=anonymous)
    unreachable = dict(
        cli.env, S3EXCHANGE_ENDPOINT_URL="http://127.0.0.1:9", S3EXCHANGE_MAX_ATTEMPTS="1"
    )
    assert "Could not connect" in cli.fails(EXIT_STORAGE, "ls", env=unreachable)


# -- rm ----------------------------------------------------------------------------------------


def test_rm_lists_refuses_without_confirmation_and_deletes(
    cli: Cli, src: Path, s3_client: S3Client, bucket: str
) -> None:
    cli.ok("pack", str(src), "a/train.jsonl", "--max-entries", "6")
    s3_client.put_object(Bucket=bucket, Key="logs/keep.txt", Body=b"k")
    for name in ("x.log", "y.log", "z.tmp"):
        s3_client.put_object(Bucket=bucket, Key=f"logs/{name}", Body=b"data")
    before = objects(s3_client, bucket)

    assert cli.ok("rm", "--prefix", "logs/", "--regex", r"\.log$", "--dry-run").split() == [
        b"logs/x.log",
        b"logs/y.log",
    ]
    listed = cli.jsonl("rm", "--manifest", "a/train.jsonl", "--dry-run", "--json")
    roles = [(t["role"], t["key"]) for t in listed]
    assert roles[:2] == [
        ("archive", "a/shards/shard-00000.tar"),
        ("archive", "a/shards/shard-00001.tar"),
    ]
    assert roles[2:4] == [
        ("index", "a/shards/shard-00000.tar.index.jsonl"),
        ("index", "a/shards/shard-00001.tar.index.jsonl"),
    ]
    assert [r for r, _ in roles[4:]] == ["manifest", "manifest"]
    assert roles[-1] == ("manifest", "a/train.jsonl")
    assert "pass --yes" in cli.fails(EXIT_USAGE, "rm", "--prefix", "logs/")
    cli.fails(EXIT_USAGE, "rm", "--manifest", "a/train.jsonl")
    cli.fails(EXIT_USAGE, "rm", "--prefix", "/")
    assert objects(s3_client, bucket) == before

    deleted = cli.json("rm", "--prefix", "logs/", "--regex", r"\.log$", "--yes")
    assert deleted["deleted"] == 2
    report = cli.json("rm", "--manifest", "a/train.jsonl", "--yes")
    assert (report["deleted_archive_count"], report["deleted_manifest_count"]) == (2, 2)
    assert objects(s3_client, bucket) == {"logs/keep.txt": 1, "logs/z.tmp": 4}
