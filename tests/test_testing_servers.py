"""s3exchange.testing: local S3 servers on 127.0.0.1 and the fault-injecting proxy."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import pytest
from botocore.exceptions import ResponseStreamingError

from s3exchange import S3Settings
from s3exchange.testing import (
    Fault,
    FaultProxy,
    RunningServer,
    ServerStartError,
    start_moto,
    start_seaweedfs,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024


def _round_trip(client: S3Client, bucket: str) -> None:
    client.put_object(Bucket=bucket, Key="dir/a.bin", Body=b"alpha")
    client.put_object(Bucket=bucket, Key="dir/b.bin", Body=b"beta")
    assert client.get_object(Bucket=bucket, Key="dir/a.bin")["Body"].read() == b"alpha"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="dir/")
    assert [o["Key"] for o in listed["Contents"]] == ["dir/a.bin", "dir/b.bin"]


# --- servers ----------------------------------------------------------------------------------


def test_moto_serves_put_get_list_on_loopback(
    moto_server: RunningServer, s3_client: S3Client, bucket: str
) -> None:
    assert moto_server.s3.kind == "moto"
    assert moto_server.endpoint_url.startswith("http://127.0.0.1:")
    _round_trip(s3_client, bucket)


@pytest.mark.seaweedfs
def test_seaweedfs_serves_put_get_list_on_loopback(
    seaweedfs_server: RunningServer, seaweed_client: S3Client, seaweed_bucket: str
) -> None:
    assert seaweedfs_server.s3.kind == "seaweedfs"
    assert seaweedfs_server.endpoint_url.startswith("http://127.0.0.1:")
    _round_trip(seaweed_client, seaweed_bucket)


@pytest.mark.seaweedfs
def test_two_seaweedfs_instances_run_side_by_side(
    seaweedfs_server: RunningServer, seaweed_client: S3Client, seaweed_bucket: str
) -> None:
    with start_seaweedfs() as other:
        assert other.port != seaweedfs_server.port
        other_client = other.s3.client()
        other_client.create_bucket(Bucket=seaweed_bucket)
        other_client.put_object(Bucket=seaweed_bucket, Key="only-here", Body=b"x")
        assert seaweed_client.list_objects_v2(Bucket=seaweed_bucket)["KeyCount"] == 0
    assert other.process.poll() is not None


def test_env_configures_s3settings(
    moto_server: RunningServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto_server.s3.env().items():
        monkeypatch.setenv(name, value)
    client = S3Settings().create_client()
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_stop_is_idempotent_and_ends_the_process() -> None:
    server = start_moto()
    server.stop()
    server.stop()
    assert server.process.poll() is not None


def test_start_failure_carries_the_server_output() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServerStartError, match="Address already in use"):
            start_moto(port=busy.getsockname()[1], timeout=10)


@pytest.mark.seaweedfs
def test_seaweedfs_on_a_busy_port_fails_fast_with_its_log() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServerStartError, match="is not available"):
            start_seaweedfs(port=busy.getsockname()[1], timeout=20)


# --- proxy ------------------------------------------------------------------------------------


@pytest.fixture
def proxy(moto_server: RunningServer) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_port=moto_server.port) as running:
        yield running


@pytest.fixture
def proxied(moto_server: RunningServer, proxy: FaultProxy) -> S3Client:
    """A client whose requests cross the proxy; one attempt, so faults are not retried away."""
    through_proxy = dataclasses.replace(moto_server.s3, endpoint_url=proxy.endpoint_url)
    return through_proxy.client(retries={"mode": "standard", "max_attempts": 1}, read_timeout=5)


@pytest.fixture
def big_object(s3_client: S3Client, bucket: str) -> bytes:
    data = os.urandom(5 * MiB)
    s3_client.put_object(Bucket=bucket, Key="big", Body=data)
    return data


def test_proxy_forwards_a_5mib_object_unchanged(
    proxied: S3Client, bucket: str, big_object: bytes, proxy: FaultProxy
) -> None:
    assert proxied.get_object(Bucket=bucket, Key="big")["Body"].read() == big_object
    assert proxy.fired == 0


@pytest.mark.parametrize(
    ("kind", "symptom"), [("reset", "Connection reset by peer"), ("truncate", "IncompleteRead")]
)
def test_fault_breaks_the_body_read(
    proxied: S3Client,
    bucket: str,
    big_object: bytes,
    proxy: FaultProxy,
    kind: Literal["reset", "truncate"],
    symptom: str,
) -> None:
    proxy.inject(Fault(kind=kind, after_bytes=MiB, min_response_bytes=64 * 1024))
    body = proxied.get_object(Bucket=bucket, Key="big")["Body"]
    with pytest.raises(ResponseStreamingError, match=symptom):
        body.read()
    assert proxy.fired == 1
    assert proxy.pending_faults == 0


def test_small_responses_do_not_trigger_a_fault(
    proxied: S3Client, bucket: str, proxy: FaultProxy
) -> None:
    proxy.inject(Fault(kind="reset", after_bytes=10, min_response_bytes=64 * 1024))
    proxied.put_object(Bucket=bucket, Key="small", Body=b"tiny")
    assert proxied.get_object(Bucket=bucket, Key="small")["Body"].read() == b"tiny"
    assert proxy.fired == 0
    assert proxy.pending_faults == 1


def test_stall_fault_delays_but_delivers_everything(
    proxied: S3Client, bucket: str, big_object: bytes, proxy: FaultProxy
) -> None:
    proxy.inject(Fault(kind="stall", after_bytes=MiB, min_response_bytes=64 * 1024, stall_s=0.5))
    began = time.monotonic()
    assert proxied.get_object(Bucket=bucket, Key="big")["Body"].read() == big_object
    assert time.monotonic() - began >= 0.5
    assert proxy.fired == 1


def test_ttfb_delays_every_response(
    proxied: S3Client, s3_client: S3Client, bucket: str, proxy: FaultProxy
) -> None:
    s3_client.put_object(Bucket=bucket, Key="small", Body=b"tiny")
    proxied.head_bucket(Bucket=bucket)  # open the keep-alive connection before timing
    proxy.ttfb_ms = 50
    began = time.monotonic()
    for _ in range(10):
        assert proxied.get_object(Bucket=bucket, Key="small")["Body"].read() == b"tiny"
    assert time.monotonic() - began >= 0.5


def test_stop_leaves_no_thread_alive(
    moto_server: RunningServer, bucket: str, big_object: bytes
) -> None:
    proxy = FaultProxy(upstream_port=moto_server.port).start()
    client = dataclasses.replace(moto_server.s3, endpoint_url=proxy.endpoint_url).client()
    assert client.get_object(Bucket=bucket, Key="big")["Body"].read() == big_object
    # An idle client connection that stop() must close (the server may drop boto3's keep-alive).
    idle = socket.create_connection(("127.0.0.1", proxy.port))
    deadline = time.monotonic() + 5
    while proxy.active_connections < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.active_connections >= 1
    proxy.stop()
    proxy.stop()
    idle.close()
    assert proxy.active_connections == 0
    alive = [t.name for t in threading.enumerate() if t.name.startswith("FaultProxy")]
    assert alive == []


def test_a_fault_with_count_two_hits_two_responses_once_each(
    proxied: S3Client, bucket: str, big_object: bytes, proxy: FaultProxy
) -> None:
    proxy.inject(
        Fault(kind="stall", after_bytes=MiB, count=2, min_response_bytes=64 * 1024, stall_s=0.1)
    )
    assert proxied.get_object(Bucket=bucket, Key="big")["Body"].read() == big_object
    assert proxy.fired == 1
    assert proxied.get_object(Bucket=bucket, Key="big")["Body"].read() == big_object
    assert proxy.fired == 2
