"""Streaming GETs (``get_object``, shard reads) through the fast path: content, ranges, resumed
bodies, abandoned bodies, errors, checksums, and a server that ignores ``Range``.

Real servers on 127.0.0.1: moto and SeaweedFS, the fault proxy, and a scripted HTTP server.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import random
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from s3exchange import IntegrityError, ObjectNotFoundError, S3ExchangeStore
from s3exchange.bucket import Bucket
from s3exchange.keys import KeySpace
from s3exchange.testing import RunningServer
from s3exchange.testing.proxy import Fault, FaultProxy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1 << 20


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _botocore_gets(client: S3Client) -> list[str]:
    """Keys botocore's ``get_object`` is called for from now on, the fast path's probe aside
    (an event handler would count them too, but the fast path steps aside for one)."""
    calls: list[str] = []
    get_object = client.get_object

    def counted(**params: Any) -> Any:
        if not params["Key"].startswith("s3exchange-probe-"):
            calls.append(params["Key"])
        return get_object(**params)

    client.get_object = counted  # type: ignore[method-assign]
    return calls


@pytest.fixture(params=["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)])
def server(request: pytest.FixtureRequest) -> tuple[S3Client, str, RunningServer]:
    if request.param == "moto":
        names = ("s3_client", "bucket", "moto_server")
    else:
        names = ("seaweed_client", "seaweed_bucket", "seaweedfs_server")
    client, bucket, running = (request.getfixturevalue(name) for name in names)
    return client, bucket, running


def test_streams_take_the_fast_path_and_arrive_byte_identical(
    server: tuple[S3Client, str, RunningServer],
) -> None:
    client, bucket, _ = server
    store = S3ExchangeStore(client, bucket)
    payload = _payload(3 * MiB + 7, seed=1)
    store.put_object("big.bin", payload)
    store.put_object("empty.bin", b"")
    members = [{"source": _payload(100_000, seed=i), "member_path": f"{i}.bin"} for i in range(8)]
    shard = store.put_shard_archive("s.tar", members)  # type: ignore[arg-type]
    calls = _botocore_gets(client)
    with store.get_object("big.bin") as stream:
        assert stream.size == len(payload)
        assert stream.read(1000) + stream.read() == payload
    with store.get_object("empty.bin") as stream:
        assert stream.read() == b""
    got = [member.read() for member in store.iter_shard_members(shard.entry)]
    assert got == [member["source"] for member in members]
    bucket_ = Bucket(client, bucket, KeySpace())
    ranged = bucket_.open("big.bin", 10, stop=MiB)
    assert ranged.size == MiB
    assert ranged.body.read() == payload[10:MiB]
    assert calls == []


def test_an_abandoned_body_leaves_no_bytes_for_the_next_request(
    server: tuple[S3Client, str, RunningServer],
) -> None:
    client, bucket, _ = server
    store = S3ExchangeStore(client, bucket)
    payloads = {f"{i}.bin": _payload(MiB, seed=i) for i in range(3)}
    for key, data in payloads.items():
        store.put_object(key, data)
    for _ in range(5):
        for key, data in payloads.items():
            with store.get_object(key) as stream:
                assert stream.read(4096) == data[:4096]  # closed with most of it unread
            with store.get_object(key) as stream:
                assert stream.read() == data


@pytest.fixture
def flaky(server: tuple[S3Client, str, RunningServer]) -> Iterator[tuple[S3ExchangeStore, Any]]:
    """A store whose every request crosses the fault proxy (1 s read timeout)."""
    _, bucket, running = server
    port = int(running.s3.endpoint_url.rsplit(":", 1)[1])
    with FaultProxy(upstream_port=port) as proxy:
        client = running.s3.client(proxy.endpoint_url, read_timeout=1)
        yield S3ExchangeStore(client, bucket), proxy


@pytest.mark.parametrize("kind", ["reset", "truncate", "stall"])
def test_a_stream_broken_midway_resumes_where_it_broke(
    flaky: tuple[S3ExchangeStore, FaultProxy], kind: str
) -> None:
    store, proxy = flaky
    payload = _payload(3 * MiB, seed=3)
    store.put_object("big.bin", payload)
    proxy.inject(Fault(kind=kind, after_bytes=2 * MiB + 5, min_response_bytes=MiB, stall_s=3.0))
    with store.get_object("big.bin") as stream:
        assert stream.read() == payload
        assert stream.resumes == 1
    assert proxy.fired == 1


# --------------------------------------------------------------------------------------------
# a scripted server: error statuses, a checksum header, Range ignored, chunked framing
# --------------------------------------------------------------------------------------------


class _Server(http.server.BaseHTTPRequestHandler):
    BODY = b"0123456789abcdefghijklmnopqrstuvwxyz"
    errors: ClassVar[list[tuple[int, str]]] = []
    seen: ClassVar[list[dict[str, str]]] = []
    checksum: ClassVar[str | None] = None
    chunked: ClassVar[bool] = False
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        if self.errors:
            status, code = self.errors.pop(0)
            error = f"<Error><Code>{code}</Code><Message>scripted</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(error)))
            self.end_headers()
            self.wfile.write(error)
            return
        self.send_response(200)  # whatever Range asked for
        self.send_header("ETag", '"scripted"')
        if self.checksum is not None:
            self.send_header("x-amz-checksum-sha256", self.checksum)
        if self.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(self.BODY):x}\r\n".encode() + self.BODY + b"\r\n0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted(moto_server: RunningServer) -> Iterator[tuple[S3ExchangeStore, S3Client]]:
    _Server.errors, _Server.seen, _Server.checksum, _Server.chunked = [], [], None, False
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        client = moto_server.s3.client(
            f"http://127.0.0.1:{httpd.server_address[1]}",
            retries={"mode": "standard", "total_max_attempts": 3},
            response_checksum_validation="when_supported",
        )
        yield S3ExchangeStore(client, "scripted"), client
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_server_that_ignores_range_is_sliced(
    scripted: tuple[S3ExchangeStore, S3Client],
) -> None:
    _, client = scripted
    opened = Bucket(client, "scripted", KeySpace()).open("a.bin", 5, stop=12)
    assert opened.size == 12
    assert opened.body.read() == _Server.BODY[5:12]
    assert _Server.seen[-1]["Range"] == "bytes=5-11"


def test_opening_retries_server_errors_and_refuses_a_missing_key(
    scripted: tuple[S3ExchangeStore, S3Client],
) -> None:
    store, _ = scripted
    _Server.errors = [(503, "SlowDown"), (500, "InternalError")]
    with store.get_object("a.bin") as stream:
        assert stream.read() == _Server.BODY
    assert len(_Server.seen) == 3
    _Server.errors = [(404, "NoSuchKey")]
    with pytest.raises(ObjectNotFoundError):
        store.get_object("a.bin")


def test_a_whole_objects_checksum_is_checked_at_its_last_byte(
    scripted: tuple[S3ExchangeStore, S3Client],
) -> None:
    store, _ = scripted
    _Server.checksum = base64.b64encode(hashlib.sha256(_Server.BODY).digest()).decode()
    with store.get_object("a.bin") as stream:
        assert stream.read() == _Server.BODY
    _Server.checksum = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with store.get_object("a.bin") as stream, pytest.raises(IntegrityError, match="sha256"):
        stream.read()


def test_a_body_without_a_length_is_left_to_botocore(
    scripted: tuple[S3ExchangeStore, S3Client],
) -> None:
    store, client = scripted
    _Server.chunked = True
    calls = _botocore_gets(client)
    with store.get_object("a.bin") as stream:
        assert stream.read() == _Server.BODY
    assert len(calls) == 1
