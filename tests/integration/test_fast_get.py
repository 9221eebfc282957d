"""Fast-path GETs, whole objects (``read_file_entry``) and streams (``get_object``, shard
reads): content, checks, errors, retries and timeouts.

Everything runs against real servers on 127.0.0.1: moto and SeaweedFS, the fault proxy for
broken connections, a scripted HTTP server for error statuses, and a moto server with IAM
authentication on (it checks every signature and session token).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import http.server
import multiprocessing
import os
import random
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from s3exchange import (
    AccessDeniedError,
    IntegrityError,
    ObjectChangedError,
    ObjectNotFoundError,
    S3ExchangeStore,
    StorageError,
    http11,
)
from s3exchange.bucket import Bucket
from s3exchange.clients import ClientFactory
from s3exchange.fastget import FastGetter
from s3exchange.keys import KeySpace
from s3exchange.testing import LocalS3, RunningServer, start_moto
from s3exchange.testing.proxy import Fault, FaultProxy
from s3exchange_torch.io_threads import loose_requests_per_worker

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

KiB = 1024
MiB = 1024 * KiB


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _client(endpoint: str, s3: LocalS3, **config: Any) -> S3Client:
    """``s3``'s client aimed at ``endpoint`` (a proxy in front of it), three attempts."""
    return s3.client(
        endpoint, **{"retries": {"mode": "standard", "total_max_attempts": 3}, **config}
    )


@pytest.fixture(params=["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)])
def server(request: pytest.FixtureRequest) -> tuple[S3Client, str, RunningServer]:
    """(client, fresh bucket, server) on moto and on SeaweedFS."""
    if request.param == "moto":
        names = ("s3_client", "bucket", "moto_server")
    else:
        names = ("seaweed_client", "seaweed_bucket", "seaweedfs_server")
    client, bucket, running = (request.getfixturevalue(name) for name in names)
    return client, bucket, running


@pytest.fixture
def any_store(server: tuple[S3Client, str, RunningServer]) -> S3ExchangeStore:
    client, bucket, _ = server
    return S3ExchangeStore(client, bucket, base_prefix="prod")


# --------------------------------------------------------------------------------------------
# content and checks
# --------------------------------------------------------------------------------------------


def test_the_fast_path_is_taken_for_an_ordinary_client(
    server: tuple[S3Client, str, RunningServer],
) -> None:
    client, bucket, _ = server
    getter = FastGetter.for_client(client, bucket)
    assert getter is not None
    assert getter.max_attempts == 6  # max_attempts=5 retries in the test client's config
    assert getter.target.prefix == f"/{bucket}/"


@pytest.mark.parametrize(
    ("key", "size"),
    [
        ("empty.bin", 0),
        ("one.bin", 1),
        ("samples/0001.wav", 16 * KiB),
        ("odd keys/ü + x=1&y~(2).bin", 16 * KiB),
        ("big.bin", 3 * MiB + 7),
    ],
)
def test_whole_object_arrives_byte_identical(
    any_store: S3ExchangeStore, key: str, size: int
) -> None:
    payload = _payload(size, seed=size)
    entry = any_store.put_object(key, payload)
    assert any_store.read_file_entry(entry) == payload
    assert any_store.read_file_entry(entry, verify=False) == payload


def test_checksums_the_server_stores_are_checked(
    server: tuple[S3Client, str, RunningServer],
) -> None:
    client, bucket, running = server
    payload = _payload(16 * KiB, seed=9)
    client.put_object(Bucket=bucket, Key="sum.bin", Body=payload, ChecksumAlgorithm="SHA256")
    checking = _client(
        running.s3.endpoint_url, running.s3, response_checksum_validation="when_supported"
    )
    getter = FastGetter.for_client(checking, bucket)
    assert getter is not None
    assert getter.target.checksum_mode
    store = S3ExchangeStore(checking, bucket)
    assert store.read_file_entry({"kind": "file", "key": "sum.bin"}) == payload


def test_changed_object_fails_the_etag_check(any_store: S3ExchangeStore) -> None:
    entry = any_store.put_object("a.bin", b"version one")
    any_store.put_object("a.bin", b"version two")
    with pytest.raises(IntegrityError, match="ETag") as err:
        any_store.read_file_entry(entry)
    assert err.value.key == "a.bin"
    assert any_store.read_file_entry(entry, verify=False) == b"version two"


def test_size_and_sha256_are_verified(any_store: S3ExchangeStore) -> None:
    entry = any_store.put_object("a.bin", b"0123456789")
    with pytest.raises(IntegrityError, match="size is 10 bytes"):
        any_store.read_file_entry({**entry, "size_bytes": 11})
    no_etag = {k: v for k, v in entry.items() if k != "etag"}
    with pytest.raises(IntegrityError, match="sha256"):
        any_store.read_file_entry({**no_etag, "sha256": "0" * 64})  # type: ignore[typeddict-item]
    assert any_store.read_file_entry({**entry, "sha256": "0" * 64}, verify=False) == b"0123456789"


def test_missing_key_names_the_logical_key(any_store: S3ExchangeStore) -> None:
    with pytest.raises(ObjectNotFoundError) as err:
        any_store.read_file_entry({"kind": "file", "key": "no/such.bin"})
    assert err.value.key == "no/such.bin"


def test_shard_member_entry_is_read_from_its_archive(any_store: S3ExchangeStore) -> None:
    shard = any_store.put_shard_archive("s.tar", [{"source": b"member", "member_path": "m.bin"}])
    [member] = any_store.read_shard_manifest(shard.entry)
    entry = {**member, "archive_key": "s.tar"}
    assert any_store.read_file_entry(entry) == b"member"  # type: ignore[arg-type]


def test_loose_objects_through_the_dataset(any_store: S3ExchangeStore) -> None:
    from s3exchange_torch import S3ExchangeIterableDataset

    payloads = {f"loose/{i:03d}.bin": _payload(16 * KiB, seed=i) for i in range(40)}
    entries = [any_store.put_object(key, data) for key, data in payloads.items()]
    any_store.write_manifest("m.jsonl", entries)
    dataset = S3ExchangeIterableDataset(any_store, "m.jsonl", shuffle=False)
    got = {entry["key"]: data for data, entry in dataset}
    assert got == payloads


# --------------------------------------------------------------------------------------------
# configurations the fast path leaves to botocore
# --------------------------------------------------------------------------------------------


def test_client_with_a_foreign_event_handler_reads_through_botocore(
    s3_client: S3Client, bucket: str
) -> None:
    def add_header(request: Any, **_: Any) -> None:
        request.headers["x-s3exchange-test"] = "1"

    s3_client.meta.events.register("before-sign.s3.GetObject", add_header)
    assert FastGetter.for_client(s3_client, bucket) is None
    store = S3ExchangeStore(s3_client, bucket)
    entry = store.put_object("a.bin", b"through botocore")
    assert store.read_file_entry(entry) == b"through botocore"


def test_stubbed_client_is_left_to_its_stubber(s3_client: S3Client, bucket: str) -> None:
    from botocore.stub import Stubber

    with Stubber(s3_client):
        assert FastGetter.for_client(s3_client, bucket) is None
    assert FastGetter.for_client(s3_client, bucket) is not None


def test_proxies_and_the_switch_turn_it_off(
    s3_client: S3Client, moto_server: RunningServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxied = _client(moto_server.s3.endpoint_url, moto_server.s3, proxies={"http": "127.0.0.1:9"})
    assert FastGetter.for_client(proxied, bucket) is None
    adaptive = _client(moto_server.s3.endpoint_url, moto_server.s3, retries={"mode": "adaptive"})
    assert FastGetter.for_client(adaptive, bucket) is None
    monkeypatch.setenv("S3EXCHANGE_FAST_GET", "0")
    assert FastGetter.for_client(s3_client, bucket) is None


def test_concurrency_policy_bounds_requests_only_when_workers_outnumber_cores() -> None:
    assert loose_requests_per_worker(2, pool=32, shard_streams=3, cpu_count=2) == 29
    assert loose_requests_per_worker(12, pool=32, shard_streams=3, cpu_count=16) == 29
    assert loose_requests_per_worker(6, pool=32, shard_streams=3, cpu_count=2) == 10
    assert loose_requests_per_worker(64, pool=32, shard_streams=3, cpu_count=2) == 8
    assert loose_requests_per_worker(1, pool=4, shard_streams=3, cpu_count=16) == 1


# --------------------------------------------------------------------------------------------
# broken connections (fault proxy)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def proxy(server: tuple[S3Client, str, RunningServer]) -> Iterator[FaultProxy]:
    _, _, running = server
    port = int(running.s3.endpoint_url.rsplit(":", 1)[1])
    with FaultProxy(upstream_port=port) as started:
        yield started


@pytest.fixture
def flaky_store(proxy: FaultProxy, server: tuple[S3Client, str, RunningServer]) -> S3ExchangeStore:
    """Every request crosses the fault proxy; 1 s read timeout, 3 attempts."""
    _, bucket, running = server
    return S3ExchangeStore(_client(proxy.endpoint_url, running.s3, read_timeout=1), bucket)


def test_reset_before_the_response_is_retried(
    flaky_store: S3ExchangeStore, proxy: FaultProxy
) -> None:
    payload = _payload(16 * KiB)
    entry = flaky_store.put_object("a.bin", payload)
    proxy.inject(Fault(kind="reset", after_bytes=0, count=2))
    assert flaky_store.read_file_entry(entry) == payload
    assert proxy.fired == 2


@pytest.mark.parametrize("kind", ["reset", "truncate", "stall"])
def test_body_broken_midway_is_resumed(
    flaky_store: S3ExchangeStore, proxy: FaultProxy, kind: str
) -> None:
    payload = _payload(3 * MiB, seed=3)
    entry = flaky_store.put_object("big.bin", payload)
    # past the first 1 MiB read: resumed with Range + If-Match from where it broke
    proxy.inject(Fault(kind=kind, after_bytes=2 * MiB + 5, min_response_bytes=MiB, stall_s=3.0))
    assert flaky_store.read_file_entry(entry) == payload
    assert proxy.fired == 1


def test_object_replaced_while_resuming_raises(
    flaky_store: S3ExchangeStore, proxy: FaultProxy
) -> None:
    entry = flaky_store.put_object("big.bin", _payload(3 * MiB, seed=1))
    proxy.inject(Fault(kind="stall", after_bytes=2 * MiB, min_response_bytes=MiB, stall_s=3.0))
    replace = threading.Timer(0.2, flaky_store.put_object, ("big.bin", _payload(3 * MiB, 2)))
    replace.start()
    try:
        with pytest.raises(ObjectChangedError) as err:
            flaky_store.read_file_entry(entry)
    finally:
        replace.join()
    assert err.value.key == "big.bin"


def test_read_timeout_after_the_last_attempt_is_a_storage_error(
    flaky_store: S3ExchangeStore, proxy: FaultProxy
) -> None:
    entry = flaky_store.put_object("a.bin", b"slow")
    proxy.ttfb_ms = 1500  # every response starts after the 1 s read timeout
    with pytest.raises(StorageError) as err:
        flaky_store.read_file_entry(entry)
    assert err.value.code == "ReadTimeoutError"
    assert err.value.key == "a.bin"


def test_refused_connection_is_a_storage_error(moto_server: RunningServer) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = _client(f"http://127.0.0.1:{port}", moto_server.s3)
    store = S3ExchangeStore(client, "nowhere", reconnect_s=0.5)  # retried, then given up
    with pytest.raises(StorageError) as err:
        store.read_file_entry({"kind": "file", "key": "a.bin"})
    assert err.value.code == "EndpointConnectionError"


# --------------------------------------------------------------------------------------------
# error statuses and HTTP framing (a scripted server)
# --------------------------------------------------------------------------------------------


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers GETs from ``script`` (one entry per request), then with ``BODY``."""

    BODY = b"scripted object body"
    script: ClassVar[list[tuple[int, str]]] = []
    seen: ClassVar[list[dict[str, str]]] = []
    framing: ClassVar[str] = "length"
    checksum: ClassVar[str | None] = None  # an x-amz-checksum-sha256 header to send
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        if self.script:
            status, code = self.script.pop(0)
            body = f"<Error><Code>{code}</Code><Message>scripted</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("ETag", '"scripted"')
        if self.checksum is not None:
            self.send_header("x-amz-checksum-sha256", self.checksum)
        if self.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (self.BODY[:5], self.BODY[5:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.framing == "close":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(self.BODY)
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(self.BODY)))
            self.end_headers()
            self.wfile.write(self.BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted(
    request: pytest.FixtureRequest, moto_server: RunningServer
) -> Iterator[S3ExchangeStore]:
    _Scripted.script, _Scripted.seen, _Scripted.framing = [], [], "length"
    _Scripted.checksum = None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"
        validation = getattr(request, "param", "when_required")
        client = _client(endpoint, moto_server.s3, response_checksum_validation=validation)
        yield S3ExchangeStore(client, "scripted")
    finally:
        httpd.shutdown()
        httpd.server_close()


_KEY = {"kind": "file", "key": "a.bin"}


@pytest.mark.parametrize(
    ("status", "code"),
    [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests"), (400, "RequestTimeout")],
)
def test_server_errors_and_throttling_are_retried(
    scripted: S3ExchangeStore, status: int, code: str
) -> None:
    _Scripted.script = [(status, code)] * 2
    assert scripted.read_file_entry(_KEY) == _Scripted.BODY  # type: ignore[arg-type]
    assert len(_Scripted.seen) == 3
    assert all(h["Authorization"].startswith("AWS4-HMAC-SHA256 ") for h in _Scripted.seen)


def test_retries_stop_at_the_clients_max_attempts(scripted: S3ExchangeStore) -> None:
    _Scripted.script = [(503, "SlowDown")] * 3
    with pytest.raises(StorageError) as err:
        scripted.read_file_entry(_KEY)  # type: ignore[arg-type]
    assert (err.value.code, err.value.key) == ("SlowDown", "a.bin")
    assert len(_Scripted.seen) == 3


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(404, "NoSuchKey", ObjectNotFoundError), (403, "AccessDenied", AccessDeniedError)],
)
def test_client_errors_are_not_retried(
    scripted: S3ExchangeStore, status: int, code: str, error: type[Exception]
) -> None:
    _Scripted.script = [(status, code)]
    with pytest.raises(error):
        scripted.read_file_entry(_KEY)  # type: ignore[arg-type]
    assert len(_Scripted.seen) == 1


@pytest.mark.parametrize("framing", ["chunked", "close", "length"])
def test_response_framings(scripted: S3ExchangeStore, framing: str) -> None:
    _Scripted.framing = framing
    for _ in range(3):  # kept-alive, or reconnected after a close
        assert scripted.read_file_entry(_KEY) == _Scripted.BODY  # type: ignore[arg-type]


@pytest.mark.parametrize("scripted", ["when_supported"], indirect=True)
def test_response_checksum_is_checked_when_the_client_asks(scripted: S3ExchangeStore) -> None:
    digest = base64.b64encode(hashlib.sha256(_Scripted.BODY).digest()).decode()
    _Scripted.checksum = digest
    assert scripted.read_file_entry(_KEY) == _Scripted.BODY  # type: ignore[arg-type]
    assert _Scripted.seen[-1]["x-amz-checksum-mode"] == "ENABLED"
    _Scripted.checksum = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with pytest.raises(IntegrityError, match="x-amz-checksum-sha256"):
        scripted.read_file_entry(_KEY)  # type: ignore[arg-type]
    _Scripted.checksum = digest + "-2"  # a checksum of part checksums: not checkable
    assert scripted.read_file_entry(_KEY) == _Scripted.BODY  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# streams (get_object, shard reads): FastGetter.open
# --------------------------------------------------------------------------------------------


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
    ranged = Bucket(client, bucket, KeySpace()).open("big.bin", 10, stop=MiB)
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


@pytest.mark.parametrize("kind", ["reset", "truncate", "stall"])
def test_a_stream_broken_midway_resumes_where_it_broke(
    flaky_store: S3ExchangeStore, proxy: FaultProxy, kind: str
) -> None:
    payload = _payload(3 * MiB, seed=3)
    flaky_store.put_object("big.bin", payload)
    proxy.inject(Fault(kind=kind, after_bytes=2 * MiB + 5, min_response_bytes=MiB, stall_s=3.0))
    with flaky_store.get_object("big.bin") as stream:
        assert stream.read() == payload
        assert stream.resumes == 1
    assert proxy.fired == 1


def test_a_server_that_ignores_range_is_sliced(scripted: S3ExchangeStore) -> None:
    opened = Bucket(scripted.s3_client, "scripted", KeySpace()).open("a.bin", 5, stop=12)
    assert opened.size == 12
    assert opened.body.read() == _Scripted.BODY[5:12]
    assert _Scripted.seen[-1]["Range"] == "bytes=5-11"


def test_opening_a_stream_retries_server_errors_and_refuses_a_missing_key(
    scripted: S3ExchangeStore,
) -> None:
    _Scripted.script = [(503, "SlowDown"), (500, "InternalError")]
    with scripted.get_object("a.bin") as stream:
        assert stream.read() == _Scripted.BODY
    assert len(_Scripted.seen) == 3
    _Scripted.script = [(404, "NoSuchKey")]
    with pytest.raises(ObjectNotFoundError):
        scripted.get_object("a.bin")


@pytest.mark.parametrize("scripted", ["when_supported"], indirect=True)
def test_a_streamed_objects_checksum_is_checked_at_its_last_byte(
    scripted: S3ExchangeStore,
) -> None:
    _Scripted.checksum = base64.b64encode(hashlib.sha256(_Scripted.BODY).digest()).decode()
    with scripted.get_object("a.bin") as stream:
        assert stream.read() == _Scripted.BODY
    _Scripted.checksum = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with scripted.get_object("a.bin") as stream, pytest.raises(IntegrityError, match="sha256"):
        stream.read()


def test_a_streamed_body_without_a_length_is_left_to_botocore(scripted: S3ExchangeStore) -> None:
    _Scripted.framing = "chunked"
    calls = _botocore_gets(scripted.s3_client)
    with scripted.get_object("a.bin") as stream:
        assert stream.read() == _Scripted.BODY
    assert calls == ["a.bin"]


# --------------------------------------------------------------------------------------------
# https (a TLS front on 127.0.0.1 with a self-signed certificate)
# --------------------------------------------------------------------------------------------


def _self_signed(directory: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


class _TlsFront:
    """Terminates TLS on 127.0.0.1 and relays each connection to a plain-HTTP upstream."""

    def __init__(self, cert: str, key: str, upstream_port: int) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._upstream = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self._upstream))

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.close()

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def tls(tmp_path: Any, moto_server: RunningServer) -> Iterator[tuple[str, str]]:
    """(https endpoint in front of moto, the CA file that verifies it)."""
    cert, key = _self_signed(tmp_path)
    front = _TlsFront(cert, key, int(moto_server.s3.endpoint_url.rsplit(":", 1)[1]))
    try:
        yield f"https://127.0.0.1:{front.port}", cert
    finally:
        front.close()


def _https_client(endpoint: str, s3: LocalS3, **verify: str | bool) -> S3Client:
    """A client of ``s3``'s credentials aimed at the TLS front ``endpoint`` (``verify=`` as
    boto3 takes it, when given)."""
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, proxies={}),
        **verify,  # type: ignore[arg-type]
    )
    return client


@pytest.mark.parametrize("verify", ["ca_file", False])
def test_https_reads_verify_as_the_client_says(
    tls: tuple[str, str],
    moto_server: RunningServer,
    s3_client: S3Client,
    bucket: str,
    verify: str | bool,
) -> None:
    endpoint, ca_file = tls
    client = _https_client(
        endpoint, moto_server.s3, verify=ca_file if verify == "ca_file" else verify
    )
    getter = FastGetter.for_client(client, bucket)
    assert getter is not None
    assert getter.target.scheme == "https"
    payload = _payload(16 * KiB, seed=5)
    entry = S3ExchangeStore(s3_client, bucket).put_object("tls.bin", payload)
    assert S3ExchangeStore(client, bucket).read_file_entry(entry) == payload


def test_https_with_an_untrusted_certificate_is_an_ssl_error(
    tls: tuple[str, str], moto_server: RunningServer, bucket: str
) -> None:
    endpoint, _ = tls
    client = _https_client(endpoint, moto_server.s3)
    began = time.monotonic()
    with pytest.raises(StorageError) as err:
        S3ExchangeStore(client, bucket).read_file_entry({"kind": "file", "key": "a.bin"})
    assert err.value.code == "SSLError"
    # not waited out as an unreachable server would be (reconnect_s, 30 s by default)
    assert time.monotonic() - began < 20


# --------------------------------------------------------------------------------------------
# credentials, checked by a moto server with IAM authentication on
# --------------------------------------------------------------------------------------------

_S3_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}'
_TRUST = (
    '{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
    '"Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}'
)
_AUTH_BUCKET = "auth-bucket"
_AUTH_PAYLOAD = _payload(16 * KiB, seed=7)


class _AuthMoto:
    def __init__(self, server: RunningServer, keys: dict[str, dict[str, str]]) -> None:
        self.server = server
        self.keys = keys

    def store(self, who: str, **overrides: str) -> S3ExchangeStore:
        keys = {**self.keys[who], **overrides}
        client = boto3.client(
            "s3",
            endpoint_url=self.server.s3.endpoint_url,
            region_name=self.server.s3.region,
            config=Config(s3={"addressing_style": "path"}, proxies={}),
            **keys,  # type: ignore[arg-type]
        )
        return S3ExchangeStore(client, _AUTH_BUCKET)


@pytest.fixture(scope="module")
def auth_moto() -> Iterator[_AuthMoto]:
    """A moto server of its own, set up without auth, then switched to checking every request."""
    with start_moto() as server:
        s3 = server.s3
        common: dict[str, Any] = {
            "endpoint_url": s3.endpoint_url,
            "region_name": s3.region,
            "aws_access_key_id": s3.access_key_id,
            "aws_secret_access_key": s3.secret_access_key,
        }
        iam, sts = boto3.client("iam", **common), boto3.client("sts", **common)
        admin = boto3.client("s3", **common, config=Config(s3={"addressing_style": "path"}))
        admin.create_bucket(Bucket=_AUTH_BUCKET)
        admin.put_object(Bucket=_AUTH_BUCKET, Key="a.bin", Body=_AUTH_PAYLOAD)
        keys: dict[str, dict[str, str]] = {}
        for user, policy in (("reader", _S3_ALL), ("nobody", None)):
            iam.create_user(UserName=user)
            if policy:
                iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=policy)
            made = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = {
                "aws_access_key_id": made["AccessKeyId"],
                "aws_secret_access_key": made["SecretAccessKey"],
            }
        role = iam.create_role(RoleName="reader-role", AssumeRolePolicyDocument=_TRUST)
        iam.put_role_policy(RoleName="reader-role", PolicyName="s3", PolicyDocument=_S3_ALL)
        assumed = sts.assume_role(RoleArn=role["Role"]["Arn"], RoleSessionName="test")
        creds = assumed["Credentials"]
        keys["session"] = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
        request = urllib.request.Request(
            f"{s3.endpoint_url}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would reach moto empty
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10):
            pass
        yield _AuthMoto(server, keys)


_AUTH_ENTRY = {
    "kind": "file",
    "key": "a.bin",
    "size_bytes": len(_AUTH_PAYLOAD),
    "sha256": hashlib.sha256(_AUTH_PAYLOAD).hexdigest(),
}


@pytest.mark.parametrize("who", ["reader", "session"])
def test_signed_requests_are_accepted(auth_moto: _AuthMoto, who: str) -> None:
    store = auth_moto.store(who)
    assert FastGetter.for_client(store.s3_client, _AUTH_BUCKET) is not None
    assert store.read_file_entry(_AUTH_ENTRY) == _AUTH_PAYLOAD  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("who", "overrides"),
    [
        ("nobody", {}),
        ("reader", {"aws_secret_access_key": "wrong"}),
        ("session", {"aws_session_token": "forged"}),
    ],
)
def test_rejected_credentials_are_access_denied(
    auth_moto: _AuthMoto, who: str, overrides: dict[str, str]
) -> None:
    store = auth_moto.store(who, **overrides)
    with pytest.raises(AccessDeniedError) as err:
        store.read_file_entry(_AUTH_ENTRY)  # type: ignore[arg-type]
    assert err.value.key == "a.bin"


def test_refreshable_credentials_are_refreshed_and_re_signed(auth_moto: _AuthMoto) -> None:
    """The first credentials are denied and enter botocore's 15-minute advisory refresh window
    two seconds later; the refreshed ones are allowed."""
    refreshed: list[int] = []

    def metadata(who: str, seconds: int) -> dict[str, str]:
        keys = auth_moto.keys[who]
        expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        return {
            "access_key": keys["aws_access_key_id"],
            "secret_key": keys["aws_secret_access_key"],
            "token": "",
            "expiry_time": expiry.isoformat(),
        }

    def refresh() -> dict[str, str]:
        refreshed.append(1)
        return metadata("reader", 3600)

    window = RefreshableCredentials._advisory_refresh_timeout  # 15 minutes
    credentials = RefreshableCredentials.create_from_metadata(
        metadata("nobody", window + 2), refresh_using=refresh, method="test"
    )
    session = botocore.session.Session()
    session._credentials = credentials
    client = session.create_client(
        "s3",
        endpoint_url=auth_moto.server.s3.endpoint_url,
        region_name=auth_moto.server.s3.region,
        config=Config(s3={"addressing_style": "path"}, proxies={}),
    )
    store = S3ExchangeStore(client, _AUTH_BUCKET)
    with pytest.raises(AccessDeniedError):
        store.read_file_entry(_AUTH_ENTRY)  # type: ignore[arg-type]
    assert FastGetter.for_client(client, _AUTH_BUCKET) is not None
    assert not refreshed
    time.sleep(2.5)
    assert store.read_file_entry(_AUTH_ENTRY) == _AUTH_PAYLOAD  # type: ignore[arg-type]
    assert refreshed


@dataclasses.dataclass(frozen=True)
class _CountingFactory(ClientFactory):
    """Builds clients as ClientFactory does, and says so through ``built`` (a pipe's end)."""

    built: Any = None

    def create(self) -> S3Client:
        self.built.send(os.getpid())
        return super().create()


def _reads_on_16_threads(bucket: Bucket, key: str, done: Any) -> None:
    """A fresh worker's first requests: 16 threads GET at once, as a map dataset's batch does."""
    barrier = threading.Barrier(16)

    def read() -> int:
        barrier.wait()
        return len(bucket.read_object(key, byte_range=(0, 1000))[0])

    threads = [threading.Thread(target=read) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.send("done")


def test_a_forked_process_builds_its_client_once_whatever_its_threads(
    server: tuple[S3Client, str, RunningServer],
) -> None:
    client, bucket_name, _ = server
    S3ExchangeStore(client, bucket_name).put_object("k.bin", _payload(5000))
    bucket, built = _counting_bucket(client, bucket_name)
    builders = _forked_reads(bucket, "k.bin", built)
    assert builders == ["child"]  # 16 threads, one client (it took 27 ms of GIL each)


def _counting_bucket(client: S3Client, name: str) -> tuple[Bucket, Any]:
    """A bucket whose factory reports each client it builds, and the pipe end reporting."""
    built_out, built_in = multiprocessing.Pipe(duplex=False)
    factory = _CountingFactory(ClientFactory.from_client(client).kwargs, built=built_in)
    return Bucket(client, name, KeySpace(), factory=factory), built_out


def _forked_reads(bucket: Bucket, key: str, built: Any) -> list[int | str]:
    """Which processes built a client while a forked child read ``key`` on 16 threads: the
    child as ``"child"``, any other by its pid."""
    context = multiprocessing.get_context("fork")
    done_out, done_in = context.Pipe(duplex=False)
    child = context.Process(target=_reads_on_16_threads, args=(bucket, key, done_in))
    child.start()
    assert done_out.poll(60), "the child's reads did not finish"
    assert done_out.recv() == "done"
    child.join(10)
    assert child.exitcode == 0
    builders: list[int | str] = []
    while built.poll(0.2):
        pid = built.recv()
        builders.append("child" if pid == child.pid else pid)
    return builders


def test_a_forked_process_copies_its_parents_fast_path_and_builds_no_client(
    server: tuple[S3Client, str, RunningServer],
) -> None:
    client, bucket_name, _ = server
    S3ExchangeStore(client, bucket_name).put_object("k.bin", _payload(5000))
    bucket, built = _counting_bucket(client, bucket_name)
    assert len(bucket.read_object("k.bin", byte_range=(0, 1000))[0]) == 1000  # parent's path
    assert _forked_reads(bucket, "k.bin", built) == []  # the child read with no client built


def test_a_forked_process_copies_a_tls_fast_path_unless_a_handshake_ran_at_the_fork(
    tls: tuple[str, str], moto_server: RunningServer, s3_client: S3Client, bucket: str
) -> None:
    endpoint, ca_file = tls
    client = _https_client(endpoint, moto_server.s3, verify=ca_file)
    S3ExchangeStore(s3_client, bucket).put_object("k.bin", _payload(5000))
    tls_bucket, built = _counting_bucket(client, bucket)
    assert len(tls_bucket.read_object("k.bin", byte_range=(0, 1000))[0]) == 1000
    assert _forked_reads(tls_bucket, "k.bin", built) == []
    http11._Handshakes.change(1)  # as if a thread were inside OpenSSL with the context
    try:
        builders = _forked_reads(tls_bucket, "k.bin", built)
    finally:
        http11._Handshakes.change(-1)
    assert builders == ["child"]  # that child built its own client, TLS context and all


def test_refreshable_credentials_are_not_carried_into_a_forked_process(
    s3_client: S3Client, bucket: str
) -> None:
    static = FastGetter.for_client(s3_client, bucket)
    assert static is not None
    copied = static.for_this_process()
    assert copied is not None
    assert copied._pool is not static._pool
    assert copied.target == static.target
    credentials = RefreshableCredentials.create_from_metadata(
        {
            "access_key": "a",
            "secret_key": "b",
            "token": "",
            "expiry_time": (
                datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
            ).isoformat(),
        },
        refresh_using=lambda: {},
        method="test",
    )
    session = botocore.session.Session()
    session._credentials = credentials
    client = session.create_client(
        "s3",
        endpoint_url=s3_client.meta.endpoint_url,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, proxies={}),
    )
    refreshable = FastGetter.for_client(client, bucket)
    assert refreshable is not None
    assert refreshable.for_this_process() is None  # the child builds its own client
