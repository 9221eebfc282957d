"""Issue 10 ("Reliability, round two"): each case failed before its fix and holds now.

Every test runs against moto's server and against SeaweedFS on 127.0.0.1 (``s3_server`` is
parametrised here), since ETags, batch deletes and listings are the servers' own code.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import random
import re
import signal
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

from s3exchange import (
    InvalidKeyError,
    InvalidManifestError,
    ObjectChangedError,
    ObjectNotFoundError,
    S3ExchangeStore,
    S3Settings,
    ShardItem,
    ShardReadError,
    StorageError,
    TransferConfig,
)
from s3exchange.errors import PackConflictError
from s3exchange.manifest import MAX_REF_DEPTH
from s3exchange.packing import pack
from s3exchange.testing import start_seaweedfs
from s3exchange_torch import S3ExchangeIterableDataset

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3exchange.testing import RunningServer


@pytest.fixture(params=["moto", "seaweedfs"])
def s3_server(request: pytest.FixtureRequest) -> RunningServer:
    """Both servers: moto (an emulator) and SeaweedFS (a production store)."""
    server: RunningServer = request.getfixturevalue(f"{request.param}_server")
    return server


def _dataset(root: Path, fill: int) -> Path:
    """Six files whose names and sizes do not depend on ``fill``; their bytes do."""
    root.mkdir()
    for i in range(6):
        (root / f"clip{i}.wav").write_bytes(bytes([fill, i]) * (50 + i))
    return root


def _read_all(store: S3ExchangeStore, manifest: str) -> dict[str, bytes]:
    return {e.get("member_path", e["key"]): s.read() for s, e in store.iter_objects(manifest)}


# -- 1. pack never overwrites another dataset; readers notice a replaced shard ------------------


def test_pack_refuses_a_prefix_holding_another_dataset_of_same_names_and_sizes(
    store: S3ExchangeStore, tmp_path: Path
) -> None:
    a = _dataset(tmp_path / "a", fill=1)
    b = _dataset(tmp_path / "b", fill=2)
    pack(store, a, "a/train.jsonl", prefix="shared", max_entries=4)
    stored = {o["key"]: o["etag"] for o in store.list_objects("shared/")}
    with pytest.raises(PackConflictError, match=r"shared/shard-00000\.tar .*holds other bytes"):
        pack(store, b, "b/train.jsonl", prefix="shared", max_entries=4)
    assert {o["key"]: o["etag"] for o in store.list_objects("shared/")} == stored
    assert not store.exists("b/train.jsonl")
    expected = {p.name: p.read_bytes() for p in a.iterdir()}
    assert _read_all(store, "a/train.jsonl") == expected
    # the same files again (a rerun after a crash between upload and listing) are accepted
    again = pack(store, a, "a2/train.jsonl", prefix="shared", max_entries=4)
    assert (again["replaced"], again["uploaded"]) == (2, 0)


def test_a_shard_replaced_under_its_key_is_refused_by_readers(store: S3ExchangeStore) -> None:
    listed = store.put_shard_archive(
        "shards/s.tar", [{"source": b"A" * 100, "member_path": "x.bin"}]
    ).entry
    store.put_sharded("m.jsonl", [listed], "overwrite")
    store.put_shard_archive("shards/s.tar", [{"source": b"B" * 100, "member_path": "x.bin"}])
    with pytest.raises(ObjectChangedError, match=r"'shards/s\.tar' was replaced") as caught:
        _read_all(store, "m.jsonl")
    assert caught.value.key == "shards/s.tar"
    with pytest.raises(ObjectChangedError, match=r"shards/s\.tar"):
        store.read_shard_manifest(listed)
    with pytest.raises(ObjectChangedError, match=r"shards/s\.tar"):
        list(store.iter_shard_members(listed, verify=False))
    unpinned = {k: v for k, v in listed.items() if k != "etag"}
    assert [m.read() for m in store.iter_shard_members(unpinned)] == [b"B" * 100]  # type: ignore[arg-type]


# -- 2. rm --manifest / delete_manifest: one plan, members never take a partly listed archive -----


def _three_member_shard(store: S3ExchangeStore) -> None:
    items: list[ShardItem] = [
        {"source": bytes([i]) * 10, "member_path": f"{i}.bin"} for i in range(3)
    ]
    shard = store.put_shard_archive("shards/s.tar", items)
    store.write_manifest("m.jsonl", [shard.entry])
    store.compact_manifest("m.jsonl", "flat.jsonl", expand_shards=True)
    members = list(store.iter_manifest_entries("flat.jsonl"))
    store.write_manifest("partial.jsonl", members[:2])


def test_member_entries_delete_their_archive_only_when_they_cover_it(
    store: S3ExchangeStore,
) -> None:
    _three_member_shard(store)
    partial = store.plan_delete_manifest("partial.jsonl")
    assert list(partial.targets()) == [("manifest", "partial.jsonl")]
    assert partial.kept == (("shards/s.tar", "2 of its 3 members are listed"),)
    report = store.delete_manifest("partial.jsonl")
    assert (report["deleted_archive_count"], report["deleted_manifest_count"]) == (0, 1)
    assert [m.read() for m, _ in store.iter_objects("m.jsonl")] == [
        b"\0" * 10,
        b"\1" * 10,
        b"\2" * 10,
    ]

    whole = store.plan_delete_manifest("flat.jsonl")
    assert list(whole.targets()) == [
        ("archive", "shards/s.tar"),
        ("index", "shards/s.tar.index.jsonl"),
        ("manifest", "flat.jsonl"),
    ]
    assert whole.kept == ()
    assert store.delete_manifest("flat.jsonl", plan=whole)["deleted_archive_count"] == 1
    assert sorted(store.list_keys()) == ["m.jsonl"]


# -- 3. a bad key anywhere in the graph deletes nothing ----------------------------------------


def test_a_bad_key_after_a_full_batch_deletes_nothing(store: S3ExchangeStore) -> None:
    entries = [{"kind": "file", "key": f"d/{i:05d}.bin"} for i in range(1500)]
    entries.append({"kind": "file", "key": "/etc/passwd"})
    store.write_manifest("m.jsonl", entries)
    for i in (0, 1, 999):
        store.put_object(f"d/{i:05d}.bin", b"keep")
    with pytest.raises(InvalidManifestError, match=r"'/etc/passwd'.*relative") as caught:
        store.delete_manifest("m.jsonl")
    assert caught.value.key == "m.jsonl"
    assert sorted(store.list_keys()) == ["d/00000.bin", "d/00001.bin", "d/00999.bin", "m.jsonl"]


# -- 9. an error keeps the key it is about ------------------------------------------------------


def test_a_missing_key_with_a_newline_is_named_in_the_error(store: S3ExchangeStore) -> None:
    with pytest.raises(ObjectNotFoundError) as caught:
        store.get_object("dir/missing\nkey.bin")
    assert caught.value.key == "dir/missing\nkey.bin"
    assert "'dir/missing\\nkey.bin'" in str(caught.value)


# -- 12. member paths from an internal manifest obey the reader's rules -------------------------


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "a/../../b"])
def test_a_hostile_internal_manifest_path_is_refused_by_listings(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str, path: str
) -> None:
    line = json.dumps({"kind": "file", "key": path, "member_path": path, "size_bytes": 2})
    body = _tar({"__manifest__.jsonl": line.encode() + b"\n", "ok.bin": b"ok"})
    s3_client.put_object(Bucket=bucket, Key="evil.tar", Body=body)
    store.write_manifest("m.jsonl", [{"kind": "shard", "archive_key": "evil.tar"}])
    refused = rf"'evil\.tar' member '{re.escape(path)}'"
    with pytest.raises(ShardReadError, match=refused):
        list(store.list_manifest_files("m.jsonl"))
    with pytest.raises(ShardReadError, match=refused):
        list(store.list_by_manifest_prefix("m.jsonl", "evil.tar"))
    with pytest.raises(ShardReadError, match=refused):
        store.compact_manifest("m.jsonl", "flat.jsonl", expand_shards=True)
    assert not store.exists("flat.jsonl")


# -- 16. one key rule for keys and prefixes; deleting everything is explicit ---------------------


def test_a_root_or_empty_prefix_deletes_nothing_without_allow_all(
    s3_client: S3Client, bucket: str
) -> None:
    store = S3ExchangeStore(s3_client, bucket, base_prefix="p")
    for key in ("a.bin", "d/b.bin"):
        store.put_object(key, b"x")
    s3_client.put_object(Bucket=bucket, Key="other/c.bin", Body=b"x")
    with pytest.raises(InvalidKeyError, match="relative"):
        store.delete_key("/a.bin")
    with pytest.raises(InvalidKeyError, match="relative"):
        store.delete_prefix("/")
    with pytest.raises(InvalidKeyError, match="relative"):
        list(store.list_keys("/d"))
    with pytest.raises(InvalidKeyError, match="allow_all=True"):
        store.delete_prefix("")
    assert sorted(store.list_keys()) == ["a.bin", "d/b.bin"]
    assert store.delete_prefix("", allow_all=True) == 2
    assert [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]] == [
        "other/c.bin"
    ]


# -- 8. counts and sizes within sane bounds ------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"), [("count", 2**63), ("size_bytes", 2**64), ("members_size_bytes", 2**53)]
)
def test_a_huge_count_or_size_is_an_invalid_manifest_line(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str, field: str, value: int
) -> None:
    shard = store.put_shard_archive("s.tar", [{"source": b"x", "member_path": "x.bin"}]).entry
    lines = [json.dumps({**shard, "archive_key": f"s{i}.tar"}) for i in range(2)]
    lines.append(json.dumps({**shard, field: value}))
    s3_client.put_object(Bucket=bucket, Key="m.jsonl", Body="\n".join(lines).encode())
    with pytest.raises(InvalidManifestError, match=rf"'m\.jsonl' line 3: field '{field}'") as e:
        list(store.iter_manifest_entries("m.jsonl"))
    assert (e.value.key, e.value.line) == ("m.jsonl", 3)
    with pytest.raises(InvalidManifestError, match=rf"line 3: field '{field}'"):
        len(S3ExchangeIterableDataset(store, "m.jsonl").resolve())


# -- 13. no credential in botocore's DEBUG logs --------------------------------------------------


def test_debug_logs_hold_no_credential(
    moto_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = {
        "aws_access_key_id": "AKIDR2LOGTEST0001",
        "aws_secret_access_key": "secret-R2-log-test-0002",
        "aws_session_token": "token-R2-log-test+0003/ab==",
    }
    settings = S3Settings(
        endpoint_url=moto_server.s3.endpoint_url,
        region=moto_server.s3.region,
        bucket="r2-logs",
        **secrets,  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.DEBUG):
        store = S3ExchangeStore.from_settings(settings)
        store.s3_client.create_bucket(Bucket="r2-logs")
        store.put_object("a.bin", b"x")
        assert store.get_object("a.bin").read() == b"x"
        pickle.loads(pickle.dumps(store)).get_object("a.bin").read()
    assert "Authorization" in caplog.text  # botocore did dump the signed request
    assert "<redacted>" in caplog.text
    for secret in secrets.values():
        assert secret not in caplog.text
    assert "token-R2-log" not in caplog.text


# -- 6. each manifest read once per walk; 7. deep chains are iterative and bounded ---------------


def _count_gets(store: S3ExchangeStore) -> list[str]:
    """Keys of the GetObject requests the store's client sends from now on."""
    keys: list[str] = []
    store.s3_client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: keys.append(params["url_path"])
    )
    return keys


def test_a_diamond_graph_is_read_once_per_manifest_and_agrees_everywhere(
    store: S3ExchangeStore,
) -> None:
    levels = 13  # each referencing the next twice: 8,191 GETs and 46 s when read naively
    for i in range(levels - 1):
        ref = {"kind": "manifest_ref", "key": f"g/m{i + 1:02d}.jsonl"}
        store.write_manifest(f"g/m{i:02d}.jsonl", [ref, ref])
    store.put_object("g/data.bin", b"payload")
    store.write_manifest(f"g/m{levels - 1:02d}.jsonl", [{"kind": "file", "key": "g/data.bin"}])
    gets = _count_gets(store)
    entries = list(store.iter_manifest_entries("g/m00.jsonl"))
    assert [e["key"] for e in entries] == ["g/data.bin"]
    assert len(gets) == levels
    assert [e["key"] for _, e in store.iter_objects("g/m00.jsonl")] == ["g/data.bin"]
    plan = store.plan_delete_manifest("g/m00.jsonl")
    assert (len(plan.objects), len(plan.manifests)) == (1, levels)
    assert len(S3ExchangeIterableDataset(store, "g/m00.jsonl").resolve()) == 1


def _chain(store: S3ExchangeStore, levels: int) -> None:
    """``c/m000`` -> ``c/m001`` -> ... -> ``c/m{levels}``, which lists one file."""
    for i in range(levels):
        store.write_manifest(
            f"c/m{i:03d}.jsonl", [{"kind": "manifest_ref", "key": f"c/m{i + 1:03d}.jsonl"}]
        )
    store.write_manifest(f"c/m{levels:03d}.jsonl", [{"kind": "file", "key": "c/x.bin"}])


def test_a_manifest_ref_chain_deeper_than_the_limit_is_an_invalid_manifest(
    store: S3ExchangeStore,
) -> None:
    _chain(store, MAX_REF_DEPTH + 1)
    assert [e["key"] for e in store.iter_manifest_entries("c/m001.jsonl")] == ["c/x.bin"]
    deep = rf"'c/m{MAX_REF_DEPTH:03d}\.jsonl': manifest_ref nesting deeper than {MAX_REF_DEPTH}"
    with pytest.raises(InvalidManifestError, match=deep):
        list(store.iter_manifest_entries("c/m000.jsonl"))
    with pytest.raises(InvalidManifestError, match=deep):
        store.delete_manifest("c/m000.jsonl")
    assert store.exists("c/m000.jsonl")


# -- 11. a killed pack's pending uploads are aborted ---------------------------------------------


def _start_upload(s3_client: S3Client, bucket: str, key: str) -> str:
    """What a writer killed mid-upload leaves: an upload with a part, never completed."""
    upload = s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3_client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"p" * 99)
    return upload


def _pending(s3_client: S3Client, bucket: str) -> list[str]:
    return sorted(
        u["Key"] for u in s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    )


def test_pack_aborts_the_stale_shard_uploads_of_a_killed_run(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str, tmp_path: Path
) -> None:
    _start_upload(s3_client, bucket, "d/shards/shard-00003.tar")
    _start_upload(s3_client, bucket, "other/big.bin")
    time.sleep(1.1)  # servers stamp Initiated in whole seconds
    (upload,) = store.list_uploads("d/shards/")
    if upload.initiated.year > 2020:  # moto stamps every upload 2010-11-10: always stale
        assert store.abort_stale_uploads("d/shards/", dry_run=True) == []  # younger than 1 h
    src = _dataset(tmp_path / "src", fill=1)
    dry = pack(store, src, "d/m.jsonl", max_entries=4, stale_uploads_after=1, dry_run=True)
    assert dry["aborted_uploads"] == 1
    assert _pending(s3_client, bucket) == ["d/shards/shard-00003.tar", "other/big.bin"]
    report = pack(store, src, "d/m.jsonl", max_entries=4, stale_uploads_after=1)
    assert (report["aborted_uploads"], report["uploaded"]) == (1, 2)
    assert _pending(s3_client, bucket) == ["other/big.bin"]
    with pytest.raises(InvalidKeyError, match="prefix"):
        store.abort_stale_uploads("", 0)


# -- 15. a server killed and restarted mid-epoch is ridden through ------------------------------


class RestartableSeaweedFS:
    """A SeaweedFS of one test's own (the session's must not be killed), its data on disk so
    it can be killed and started again on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.servers = [start_seaweedfs(data_dir=data_dir)]

    def kill_and_restart(self, after_s: float) -> threading.Thread:
        """SIGKILL the server now; start it again on the same port ``after_s`` later."""
        server = self.servers[-1]
        server.process.kill()
        server.stop()

        def restart() -> None:
            time.sleep(after_s)
            self.servers.append(start_seaweedfs(data_dir=self.data_dir, port=server.port))

        thread = threading.Thread(target=restart)
        thread.start()
        return thread


@pytest.fixture
def own_seaweedfs(tmp_path: Path) -> Iterator[RestartableSeaweedFS]:
    running = RestartableSeaweedFS(tmp_path / "weed")
    yield running
    for server in running.servers:
        server.stop()


@pytest.mark.seaweedfs
def test_reads_ride_through_a_server_killed_and_restarted_mid_epoch(
    own_seaweedfs: RestartableSeaweedFS,
) -> None:
    client = own_seaweedfs.servers[0].s3.client()
    client.create_bucket(Bucket="restart")
    store = S3ExchangeStore(client, "restart")
    rng = random.Random(15)
    members = {f"{i:03d}.bin": rng.randbytes(64 << 10) for i in range(3 * 128)}
    names = sorted(members)
    entries = []
    for n in range(3):  # 8 MiB each: more than the socket buffers hold when the server dies
        items: list[ShardItem] = [
            {"source": members[m], "member_path": m} for m in names[n * 128 : (n + 1) * 128]
        ]
        entries.append(store.put_shard_archive(f"s/{n}.tar", items).entry)
    store.put_object("loose.bin", b"L" * 1000)
    store.write_manifest("m.jsonl", [*entries, {"kind": "file", "key": "loose.bin"}])

    got: dict[str, bytes] = {}
    restarter = None
    started = time.monotonic()
    for stream, entry in store.iter_objects("m.jsonl"):
        got[entry.get("member_path", entry["key"])] = stream.read()
        if len(got) == 20:  # 1.2 MiB into the first shard's body
            restarter = own_seaweedfs.kill_and_restart(after_s=2.0)
    assert restarter is not None
    restarter.join()
    assert got == {**members, "loose.bin": b"L" * 1000}
    assert time.monotonic() - started < TransferConfig().reconnect_s

    dataset = S3ExchangeIterableDataset(store, "m.jsonl", shuffle=False)
    seen = 0
    for seen, _ in enumerate(dataset, 1):
        if seen == 10:
            restarter = own_seaweedfs.kill_and_restart(after_s=2.0)
    restarter.join()
    assert seen == 3 * 128 + 1

    restarter = own_seaweedfs.kill_and_restart(after_s=2.0)  # the whole-object GET path
    assert store.read_file_entry({"kind": "file", "key": "loose.bin"}) == b"L" * 1000
    restarter.join()


def test_an_unreachable_server_fails_a_read_after_the_reconnect_budget(
    moto_server: RunningServer,
) -> None:
    port = socket.socket()
    port.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
    try:
        endpoint = f"http://127.0.0.1:{port.getsockname()[1]}"
        client = moto_server.s3.client(retries={"max_attempts": 1})
        dead = S3ExchangeStore(
            boto3.client(
                "s3",
                endpoint_url=endpoint,
                aws_access_key_id="x",
                aws_secret_access_key="y",
                region_name=moto_server.s3.region,
                config=client.meta.config,
            ),
            "b",
            reconnect_s=1.5,
        )
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"'a\.bin'"):
            dead.get_object("a.bin")
        assert 1.5 <= time.monotonic() - started < 10
    finally:
        port.close()


# -- 14. a frozen server fails a read within the documented worst case --------------------------


@pytest.mark.seaweedfs
def test_a_frozen_server_fails_a_read_within_the_read_budget(
    own_seaweedfs: RestartableSeaweedFS,
) -> None:
    """A read waits ``read_timeout x (1 + max_attempts)`` on a frozen server (360 s with the
    defaults); ``read_budget`` sets the read timeout so that this fits the budget."""
    server = own_seaweedfs.servers[0]
    writer = S3ExchangeStore(server.s3.client(), "frozen")
    writer.s3_client.create_bucket(Bucket="frozen")
    rng = random.Random(14)
    # 64 MiB: what is left after the freeze must exceed what the kernel can already hold for
    # the reader (loopback buffers grow to tcp_rmem's max, 32 MiB here, plus the server's send
    # buffer); with 8 MiB a reader under load once drained it all and never waited.
    items: list[ShardItem] = [
        {"source": rng.randbytes(1 << 20), "member_path": f"{i:03d}.bin"} for i in range(64)
    ]
    entry = writer.put_shard_archive("s.tar", items).entry
    settings = S3Settings(
        endpoint_url=server.s3.endpoint_url,
        region=server.s3.region,
        aws_access_key_id=server.s3.access_key_id,  # type: ignore[arg-type]
        aws_secret_access_key=server.s3.secret_access_key,  # type: ignore[arg-type]
        addressing_style="path",
        max_attempts=2,
        read_budget=3,
    )
    assert settings.effective_read_timeout() == 1
    defaults = S3Settings.model_construct()  # the field defaults, whatever the environment
    assert defaults.effective_read_timeout() * (1 + defaults.max_attempts) == 360
    store = S3ExchangeStore.from_settings(settings, bucket="frozen")
    frozen_at = None
    try:
        with pytest.raises(StorageError, match="ReadTimeoutError"):
            for n, (stream, _) in enumerate(store.iter_objects([entry]), 1):
                stream.read()
                if n == 2:  # 2 MiB into a 64 MiB body: SIGSTOP, the process frozen
                    server.process.send_signal(signal.SIGSTOP)
                    frozen_at = time.monotonic()
    finally:
        server.process.send_signal(signal.SIGCONT)
    assert frozen_at is not None
    assert 3 <= time.monotonic() - frozen_at < 3 + 3  # the budget, plus botocore's backoff


# -- 7. an internal manifest nested too deeply is a corrupt shard -------------------------------


def test_an_internal_manifest_nested_too_deeply_is_a_shard_read_error(
    store: S3ExchangeStore, s3_client: S3Client, bucket: str
) -> None:
    nested = b"[" * 200_000 + b"]" * 200_000 + b"\n"
    body = _tar({"__manifest__.jsonl": nested, "ok.bin": b"ok"})
    s3_client.put_object(Bucket=bucket, Key="deep.tar", Body=body)
    store.write_manifest("m.jsonl", [{"kind": "shard", "archive_key": "deep.tar"}])
    too_deep = r"'deep\.tar': internal manifest line 1: JSON nested too deeply"
    with pytest.raises(ShardReadError, match=too_deep):
        list(store.list_manifest_files("m.jsonl"))
    with pytest.raises(ShardReadError, match=too_deep):
        list(store.iter_objects("m.jsonl"))
