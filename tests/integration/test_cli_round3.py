"""Issue 11 ("rough edges a new user hits") through the ``s3exchange`` command, against moto."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_cli import (
    EXIT_CONFLICT,
    EXIT_DENIED,
    EXIT_NOT_FOUND,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    Cli,
    clean_env,
)

from s3exchange import S3ExchangeStore, ShardEntry
from s3exchange.shard import sample_key

if TYPE_CHECKING:
    from s3exchange.testing import RunningServer

EXIT_PLACEHOLDER = 8


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
    # Ctrl-C came once two shards were stored; a shard is checkpointed after it is stored, so
    # the second may be stored but not yet listed (the rerun reuses it: its checksums match)
    assert 1 <= done < 100

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


# -- 2. s3://bucket/key addresses -----------------------------------------------------------------


def test_s3_urls_give_the_bucket_to_every_command(
    cli: Cli, store: S3ExchangeStore, bucket: str, tmp_path: Path
) -> None:
    src = _image_samples(tmp_path / "src", 3)
    env = {k: v for k, v in cli.env.items() if k != "S3EXCHANGE_BUCKET"}
    url = Cli(env, cli.cwd)
    plan = url.json("pack", str(src), f"s3://{bucket}/y/train.jsonl", "--dry-run")
    assert (plan["manifest_key"], plan["prefix"]) == ("y/train.jsonl", "y/shards")
    url.ok("pack", str(src), f"s3://{bucket}/y/train.jsonl")
    listed = url.jsonl("ls", f"s3://{bucket}/y/", "--json")
    assert [o["key"] for o in listed if "parts/" not in o["key"]] == [
        "y/shards/shard-00000.tar",
        "y/shards/shard-00000.tar.index.jsonl",
        "y/train.jsonl",
    ]
    assert url.ok("cat", f"s3://{bucket}/y/shards/shard-00000.tar#0001.json") == b'{"label": 1}'
    assert url.json("verify", f"s3://{bucket}/y/train.jsonl")["ok"] is True
    assert url.json("manifest", "stats", f"s3://{bucket}/y/train.jsonl")["shards"] == 1
    url.ok("compact", f"s3://{bucket}/y/train.jsonl", f"s3://{bucket}/y/flat.jsonl")
    assert store.exists("y/flat.jsonl")

    err = cli.fails(EXIT_USAGE, "ls", "--bucket", "other", f"s3://{bucket}/y/")
    assert f"--bucket other clashes with 's3://{bucket}/y/'" in err
    err = cli.fails(EXIT_USAGE, "compact", f"s3://{bucket}/a.jsonl", "s3://other/b.jsonl")
    assert "keys in two buckets" in err
    assert "no bucket in 's3:///x'" in cli.fails(EXIT_USAGE, "cat", "s3:///x")
    assert "must not be empty" in cli.fails(EXIT_USAGE, "gc", f"s3://{bucket}/")
    assert "must not be empty" in cli.fails(EXIT_USAGE, "rm", "--prefix", f"s3://{bucket}/")


# -- 3. endpoints, buckets, access, placeholders: one line each, the table's exit code ----------


def test_a_bad_endpoint_or_bucket_is_one_line_naming_it(
    cli: Cli, moto_server: RunningServer, bucket: str
) -> None:
    hostport = moto_server.endpoint_url.split("//")[1]
    err = cli.fails(EXIT_USAGE, "ls", "--endpoint-url", hostport)
    assert f"invalid endpoint URL '{hostport}': it needs a scheme, e.g. http://{hostport}" in err
    err = cli.fails(EXIT_USAGE, "ls", "x/", "--endpoint-url", f"http://{hostport}/{bucket}")
    assert f"give http://{hostport} and the bucket as --bucket {bucket}" in err
    err = cli.fails(EXIT_NOT_FOUND, "ls", "--bucket", "no-such-bucket-here")
    assert f"bucket 'no-such-bucket-here' not found at http://{hostport}" in err


class _DenyWrites(BaseHTTPRequestHandler):
    """Passes reads through to the S3 server behind it; answers every write AccessDenied."""

    upstream = ("127.0.0.1", 0)
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message></Error>"
    )

    def _forward(self) -> None:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(self.command, self.path, headers=headers)
        response = conn.getresponse()
        data = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    def _deny(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_HEAD = _forward
    do_PUT = do_POST = do_DELETE = _deny

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def deny_writes(moto_server: RunningServer) -> Iterator[str]:
    host, port = moto_server.endpoint_url.split("//")[1].split(":")
    handler = type("Handler", (_DenyWrites,), {"upstream": (host, int(port))})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_access_denied_during_pack_exits_5(
    cli: Cli, tmp_path: Path, bucket: str, deny_writes: str
) -> None:
    src = _image_samples(tmp_path / "src", 2)
    env = dict(cli.env, S3EXCHANGE_ENDPOINT_URL=deny_writes, S3EXCHANGE_MAX_ATTEMPTS="1")
    err = cli.fails(EXIT_DENIED, "pack", str(src), "d/train.jsonl", env=env)
    assert "AccessDenied" in err
    assert f"the permissions on bucket '{bucket}'" in err


def test_placeholders_are_filled_by_var_and_a_missing_one_has_its_own_exit_code(
    cli: Cli, store: S3ExchangeStore, tmp_path: Path
) -> None:
    src = _image_samples(tmp_path / "src", 2)
    err = cli.fails(EXIT_PLACEHOLDER, "pack", str(src), "x/{split}.jsonl")
    assert "missing placeholder {split} in key 'x/{split}.jsonl': pass --var split=VALUE" in err
    cli.ok("pack", str(src), "x/{split}-{v:03d}.jsonl", "--var", "split=train", "--var", "v=7")
    assert store.exists("x/train-007.jsonl")
    assert cli.json("verify", "x/{split}-007.jsonl", "--var", "split=train")["ok"] is True
    err = cli.fails(EXIT_PLACEHOLDER, "verify", "x/{split}-{v}.jsonl", "--var", "v=007")
    assert "pass --var split=VALUE" in err

    err = cli.fails(EXIT_USAGE, "pack", str(src), "x/{v:05d}.jsonl", "--var", "v=abc")
    assert "invalid key template 'x/{v:05d}.jsonl': Unknown format code 'd'" in err
    err = cli.fails(EXIT_USAGE, "pack", str(src), "x/{v.real}.jsonl", "--var", "v=1")
    assert "'x/{v.real}.jsonl'" in err
    assert cli.run("ls", "--var", "novalue").returncode == EXIT_USAGE


# -- 5. looking inside a shard --------------------------------------------------------------------


def test_ls_and_cat_look_inside_an_archive(
    cli: Cli, store: S3ExchangeStore, tmp_path: Path
) -> None:
    src = _image_samples(tmp_path / "src", 2, size=5)
    cli.ok("pack", str(src), "d/train.jsonl", "--compression", "gzip")
    archive = "d/shards/shard-00000.tar.gz"
    text = cli.ok("ls", f"{archive}#").decode().splitlines()
    assert [line.split() for line in text] == [
        ["5", f"{archive}#0000.jpg"],
        ["12", f"{archive}#0000.json"],
        ["5", f"{archive}#0001.jpg"],
        ["12", f"{archive}#0001.json"],
    ]
    records = cli.jsonl("ls", f"{archive}#0001", "--json")
    assert records == [
        {"key": f"{archive}#0001.jpg", "size": 5},
        {"key": f"{archive}#0001.json", "size": 12},
    ]
    internal = cli.jsonl("cat", f"{archive}#__manifest__.jsonl")
    assert [m["member_path"] for m in internal] == [
        "0000.jpg",
        "0000.json",
        "0001.jpg",
        "0001.json",
    ]
    assert all(len(m["crc32c"]) == 8 for m in internal)
    assert "object not found: 'd/missing.tar'" in cli.fails(EXIT_NOT_FOUND, "ls", "d/missing.tar#")
    err = cli.fails(EXIT_USAGE, "cat", f"{archive}#")
    assert f"names no member: `s3exchange ls '{archive}#'` lists the members" in err


# -- 7, 8 and the small things: --shuffle, what pack takes, plurals, defaults, mtimes ------------


def test_pack_shuffles_by_seed_and_resumes_with_it(
    cli: Cli, store: S3ExchangeStore, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    for k in range(4):
        _image_samples(src / f"class{k}", 8, size=10)
    args = ("pack", str(src), "d/train.jsonl", "--max-entries", "8", "--shuffle", "11")
    cli.ok(*args)
    first = _members(store, "d/train.jsonl")[0]
    assert len({path.split("/")[0] for path in first}) > 1  # sorted, it would be class0 only
    assert [sample_key(p) for p in first[::2]] == [sample_key(p) for p in first[1::2]]
    again = cli.json(*args)
    assert (again["skipped"], again["uploaded"], again["shuffle"]) == (8, 0, 11)
    err = cli.fails(EXIT_CONFLICT, *args[:-1], "12")
    assert "listed with other member paths" in err


def test_pack_skips_hidden_files_and_symlinks_and_never_leaves_the_source(
    cli: Cli, store: S3ExchangeStore, tmp_path: Path
) -> None:
    src = _image_samples(tmp_path / "src", 1, size=10)
    (src / ".DS_Store").write_bytes(b"finder")
    (src / "scratch").mkdir()
    (src / "scratch" / "notes.txt").write_bytes(b"notes")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.txt", src / "0001.txt")
    os.utime(src / "0000.jpg", (1_700_000_000, 1_700_000_000))

    out = cli.ok("pack", str(src), "d/train.jsonl", "--exclude", "scratch").decode()
    assert "into 1 shard under d/shards/" in out
    assert "1 manifest part appended" in out
    assert "skipped 1 hidden, 1 symlink, 1 excluded" in out
    assert _members(store, "d/train.jsonl") == [["0000.jpg", "0000.json"]]
    assert "0 files, 1 shard (2 members)" in cli.ok("verify", "d/train.jsonl").decode()
    data = store.get_object("d/shards/shard-00000.tar").read()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getmember("0000.jpg").mtime == 1_700_000_000  # the source file's

    err = cli.fails(EXIT_USAGE, "pack", str(src), "e/train.jsonl", "--follow-symlinks")
    assert f"'{src / '0001.txt'}' is a symlink to '{tmp_path / 'secret.txt'}', outside" in err
    assert not list(store.list_keys("e/"))


def test_pack_help_shows_the_defaults(cli: Cli) -> None:
    text = " ".join(cli.ok("pack", "--help").decode().split())
    for default in (
        "shards in parallel (default: 1; with --engine ray, the cluster's CPUs)",
        "shard compression (default: none)",
        "(default: 256MiB)",
        "(default: no limit)",
        "(default: sorted by path)",
        "(default: skipped, like .DS_Store)",
    ):
        assert default in text
    assert "8 a key template names a {placeholder} that no --var NAME=VALUE fills" in text
