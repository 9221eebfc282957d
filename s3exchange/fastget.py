"""Whole-object GETs at a fraction of botocore's CPU, for many small objects.

A 16 KiB GET through botocore costs ~1,300-1,700 us of client CPU on the 2-core benchmark VM
(events, request and response objects, a fresh SigV4 HMAC chain, response parsing). Per GET
on the same machine and server (/tmp scratch, 2,000 sequential GETs, CPU time of the client
process, threads included; the VM was shared, hence the ranges):

- botocore ``get_object`` + ``read``: 1,300-1,700 us; through ``open_file_entry``'s streams
  1,770-2,190 us;
- presigned URL + urllib3 ``PoolManager``: 580-970 us;
- own SigV4 + urllib3 ``HTTPConnectionPool``: 300-530 us; + ``http.client``: 185-355 us;
- awscrt's ``S3Client`` (C, its own threads): 300-480 us; awscrt signer + HTTP: 210-330 us;
- s3torchconnector's client: 380-400 us;
- own SigV4 + HTTP/1.1 on a pooled socket (this module, through ``read_file_entry``):
  120-135 us.

Through DataLoader workers (2 workers, 16 io_threads, 4 alternating rounds) a loose sample
costs 311 us of worker CPU instead of 1,561 us, and arrives at 1.9x the rate.

So this module signs with :mod:`s3exchange.sigv4` (signing key cached per day) and speaks
HTTP/1.1 itself over pooled keep-alive sockets (``http.client`` spends a quarter of its time in
``email``'s header parser). It still does what the client was configured to do:

- **where**: the URL, host, addressing style and signing region come from botocore itself, by
  running one real ``GetObject`` through the client's pipeline and stopping it in
  ``before-send`` (:meth:`FastGetter.for_client`);
- **credentials**: read from the client's own credentials object on every request, so
  refreshable credentials are refreshed and a session token is sent;
- **retries**: connection errors, timeouts, 5xx and throttling are retried up to the client's
  ``total_max_attempts`` with its exponential backoff and full jitter (no retry quota);
  a body that breaks mid-way is resumed from the byte where it broke with ``Range`` +
  ``If-Match`` under the store's :class:`~s3exchange.body.RetryPolicy`, as
  :class:`~s3exchange.body.ObjectStream` does;
- **timeouts**: the client's ``connect_timeout`` and ``read_timeout`` (per socket operation,
  as urllib3 applies them);
- **TLS**: https with the client's ``verify`` setting (CA bundle path, or off);
- **checksums**: with ``response_checksum_validation="when_supported"`` the response's
  full-object ``x-amz-checksum-*`` is checked as botocore would.

Where it cannot honour the configuration it steps aside and the caller uses botocore:
proxies (configured or from the environment), client certificates, adaptive retries, a
signature other than SigV4 (anonymous, SigV4a, S3 Express sessions), request headers added by
the user's event handlers, handlers from outside botocore on ``GetObject`` (botocore's
``Stubber``, moto's in-process mock), a redirect to another region; and when
``S3EXCHANGE_FAST_GET=0`` is set.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import select
import socket
import ssl
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from http.client import responses as REASONS
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import quote, urlsplit

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)

from .body import RetryPolicy
from .errors import IntegrityError, ObjectChangedError, ReadInterruptedError
from .sigv4 import Credentials, SigV4Signer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["FastGetter"]

log = logging.getLogger(__name__)

_ENV_SWITCH = "S3EXCHANGE_FAST_GET"
_CHUNK = 1 << 20  # body read size: progress is kept per chunk when a body breaks
_MAX_LINE = 65536
_MAX_HEADERS = 100
_MAX_ERROR_BODY = 1 << 20
_RETRY_BACKOFF = RetryPolicy(backoff_s=1.0, max_backoff_s=20.0)
"""Pauses between the client's retries: botocore's standard mode (full jitter, 1 s doubling,
at most 20 s), in the one formula the library uses (``RetryPolicy.delay``)."""

# botocore's standard retry mode (botocore/retries/standard.py), throttling and transient
_RETRY_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DEFAULT_ATTEMPTS = {"standard": 3, "legacy": 5}

# headers botocore may put on a plain GetObject that this module reproduces or may drop
_SIGNED_OK = frozenset(
    {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "x-amz-checksum-mode"}
)
_UNSIGNED_OK = frozenset(
    {"user-agent", "authorization", "amz-sdk-invocation-id", "amz-sdk-request", "expect"}
)


class _CredentialSource(Protocol):
    """botocore's ``Credentials`` (refreshable or not)."""

    def get_frozen_credentials(self) -> Credentials: ...


# --------------------------------------------------------------------------------------------
# HTTP/1.1 over pooled sockets
# --------------------------------------------------------------------------------------------


class _Broken(Exception):
    """A request failed before its response head arrived; ``connecting``: while connecting."""

    def __init__(self, cause: BaseException, connecting: bool) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        self.connecting = connecting


class _Connection:
    """One keep-alive socket and its buffered reader."""

    __slots__ = ("file", "reused", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = cast(io.BufferedReader, sock.makefile("rb", buffering=65536))
        self.reused = False

    def dropped(self) -> bool:
        """An idle keep-alive socket that is readable was closed (or spoke out of turn).

        ``poll`` where there is one: ``select`` fails for descriptors past FD_SETSIZE.
        """
        try:
            if hasattr(select, "poll"):
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                return bool(poller.poll(0))
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass(slots=True)
class _Response:
    status: int
    reason: str
    headers: dict[str, str]
    keep_alive: bool


class _Pool:
    """Idle connections to one host, most recently used first; at most ``size`` kept."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        connect_timeout: float | None,
        read_timeout: float | None,
        size: int,
        keepalive: bool,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.size = size
        self.keepalive = keepalive
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def take(self) -> _Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect()
            if not conn.dropped():
                conn.reused = True
                return conn
            conn.close()

    def give(self, conn: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def connect(self) -> _Connection:
        """A new connection (TLS handshake done); raises :class:`_Broken`."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise _Broken(exc, connecting=True) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.read_timeout)
        except OSError as exc:
            sock.close()
            raise _Broken(exc, connecting=True) from exc
        return _Connection(sock)


def _read_line(conn: _Connection) -> bytes:
    line = conn.file.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise ConnectionError("HTTP line too long")
    return line


def _read_head(conn: _Connection) -> _Response:
    """Status line and headers of the final (non-1xx) response."""
    while True:
        line = _read_line(conn)
        if not line:
            raise ConnectionResetError("connection closed before the response")
        version, _, rest = line.decode("latin-1").partition(" ")
        code, _, reason = rest.strip().partition(" ")
        if not version.startswith("HTTP/") or not code.isdigit():
            raise ConnectionError(f"malformed status line {line[:80]!r}")
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            raw = _read_line(conn)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, sep, value = raw.decode("latin-1").partition(":")
            if sep:
                name = name.strip().lower()
                value = value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        else:
            raise ConnectionError("too many response headers")
        status = int(code)
        if 100 <= status < 200:
            continue
        keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        return _Response(status, reason, headers, keep_alive)


def _read_body(
    conn: _Connection, response: _Response, sink: list[bytes], limit: int | None
) -> bool:
    """Append the body to ``sink`` in chunks; True when the connection may be reused.

    Raises on a short body (a reset, a truncation, a read timeout): bytes already appended
    stay in ``sink``, so the caller resumes from there. ``limit`` caps unframed bodies.
    """
    headers = response.headers
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = _read_line(conn).split(b";", 1)[0].strip()
            if not size_line:
                raise ConnectionResetError("chunked body ended early")
            size = int(size_line, 16)
            if size == 0:
                while _read_line(conn) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return response.keep_alive
            while size:
                chunk = conn.file.read(min(size, _CHUNK))
                if not chunk:
                    raise ConnectionResetError("chunked body ended early")
                sink.append(chunk)
                size -= len(chunk)
            _read_line(conn)
    length = headers.get("content-length")
    if length is None:
        total = 0
        while chunk := conn.file.read1(_CHUNK):
            sink.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise ConnectionError("response body too large")
        return False  # delimited by closing the connection
    remaining = int(length)
    while remaining:
        chunk = conn.file.read(min(remaining, _CHUNK))
        if not chunk:
            raise ConnectionResetError(f"body ended {remaining} bytes short")
        sink.append(chunk)
        remaining -= len(chunk)
    return response.keep_alive


# --------------------------------------------------------------------------------------------
# The getter
# --------------------------------------------------------------------------------------------


class _Probed(Exception):
    """Stops the probe request in ``before-send``, carrying what botocore would have sent."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(url)
        self.url = url
        self.headers = headers


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and how a bucket's GETs go, as botocore resolved it."""

    scheme: str
    netloc: str
    host: str
    port: int
    prefix: str  # URL path up to the key, e.g. "/bucket/" or "/"
    region: str
    service: str
    user_agent: str
    checksum_mode: bool
    max_attempts: int | None  # from the probe's amz-sdk-request header


class FastGetter:
    """Whole-object GETs of one bucket through one client's configuration (see module doc).

    Thread-safe; belongs to the process that built it (its sockets do not survive a fork:
    build a new one there).
    """

    def __init__(
        self,
        target: _Target,
        credentials: _CredentialSource,
        *,
        tls: ssl.SSLContext | None,
        connect_timeout: float | None,
        read_timeout: float | None,
        pool_size: int,
        max_attempts: int,
        keepalive: bool = False,
        checksums: dict[str, Callable[[], Any]] | None = None,
    ) -> None:
        self.target = target
        self.max_attempts = max(1, max_attempts)
        self._credentials = credentials
        self._signer = SigV4Signer(target.region, target.service)
        self._pool = _Pool(
            target.host, target.port, tls, connect_timeout, read_timeout, pool_size, keepalive
        )
        self._checksums = checksums or {}
        self._endpoint = f"{target.scheme}://{target.netloc}"
        self.pid = os.getpid()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def for_client(cls, client: S3Client, bucket: str) -> FastGetter | None:
        """A getter that sends what ``client`` would send for ``bucket``, or None (with the
        reason logged at DEBUG) where only botocore can honour the client's configuration."""
        reason = _unsupported(client)
        if reason is None:
            try:
                return cls._build(client, bucket)
            except _Unsupported as exc:
                reason = str(exc)
        log.debug("fast GET off for bucket %r: %s; using botocore", bucket, reason)
        return None

    @classmethod
    def _build(cls, client: S3Client, bucket: str) -> FastGetter:
        config: Any = client.meta.config  # botocore's Config: attributes set dynamically
        credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
        if credentials is None or not hasattr(credentials, "get_frozen_credentials"):
            raise _Unsupported("no credentials (anonymous or not found)")
        target = _probe(client, bucket)
        tls: ssl.SSLContext | None = None
        if target.scheme == "https":
            tls = _tls_context(client)
        retries: dict[str, Any] = dict(config.retries or {})
        mode = str(retries.get("mode") or "legacy")
        attempts = retries.get("total_max_attempts") or target.max_attempts
        checksums: dict[str, Callable[[], Any]] | None = None
        if target.checksum_mode:
            checksums = _botocore_checksums(client)
        return cls(
            target,
            credentials,
            tls=tls,
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            pool_size=max(1, int(config.max_pool_connections or 10)),
            max_attempts=int(attempts or _DEFAULT_ATTEMPTS.get(mode, 3)),
            keepalive=bool(config.tcp_keepalive),
            checksums=checksums,
        )

    # -- reading -------------------------------------------------------------------------------

    def read(
        self,
        key: str,
        physical: str,
        resume: RetryPolicy | None = None,
        *,
        byte_range: tuple[int, int] | None = None,
        if_match: str | None = None,
    ) -> tuple[bytes, str | None]:
        """The whole object at ``physical`` and its ETag; ``key`` names it in errors.

        With ``byte_range`` (start, stop) only those bytes (a server that ignores ``Range`` is
        sliced); with ``if_match`` an object whose ETag differs is ObjectChangedError.

        Raises botocore's ``ClientError`` for an error response and its connection errors
        once the client's attempts are spent (the caller translates both, as for botocore
        calls); :class:`ObjectChangedError` if the object is replaced during a resume;
        :class:`ReadInterruptedError` once ``resume`` gives up on a breaking body.
        """
        resume = resume or RetryPolicy()
        path = self.target.prefix + quote(physical, safe="/~")
        parts: list[bytes] = []
        received = 0
        etag: str | None = None
        checksum: tuple[str, str] | None = None
        attempts = 0  # failed requests since the last response (the client's budget)
        failures = 0  # broken bodies without progress (the resume budget)
        first, stop = byte_range if byte_range is not None else (0, None)
        sliced = False  # the server answered the ranged GET with the whole object
        while True:
            extra: dict[str, str] = {}
            if byte_range is not None and not sliced:
                extra["Range"] = f"bytes={first + received}-{'' if stop is None else stop - 1}"
            elif received:
                extra["Range"] = f"bytes={received}-"
            if received and etag:
                extra["If-Match"] = etag
            elif if_match:
                extra["If-Match"] = if_match
            try:
                conn, response = self._request(path, extra)
            except _Broken as broken:
                attempts += 1
                if attempts >= self.max_attempts or not _retryable(broken.cause):
                    raise self._connection_error(broken) from broken.cause
                time.sleep(_RETRY_BACKOFF.delay(attempts))
                continue
            if response.status >= 300:
                error = self._error(conn, response, key)
                if (received or if_match) and response.status in (412, 416):
                    raise ObjectChangedError(key=key, etag=etag or if_match) from error
                attempts += 1
                if attempts >= self.max_attempts or not _retry_response(response, error):
                    raise error
                time.sleep(_RETRY_BACKOFF.delay(attempts))
                continue
            attempts = 0
            if response.status == 200 and (received or (byte_range is not None and not sliced)):
                parts.clear()  # the server ignored Range: start over (and slice at the end)
                received = 0
                sliced = byte_range is not None
            if not received:
                etag = response.headers.get("etag")
                checksum = self._checksum_header(response)
            before = len(parts)
            try:
                reusable = _read_body(conn, response, parts, None)
            except (OSError, ValueError) as exc:
                conn.close()
                got = sum(len(p) for p in parts[before:])
                received += got
                failures = 1 if got else failures + 1
                if failures >= resume.max_attempts:
                    raise ReadInterruptedError(
                        key=key, offset=received, attempts=failures, cause=exc
                    ) from exc
                log.warning("resuming %r at byte %d after %r", key, received, exc)
                time.sleep(resume.delay(failures))
                continue
            if reusable:
                self._pool.give(conn)
            else:
                conn.close()
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if checksum is not None and (byte_range is None or sliced):
                self._verify_checksum(key, data, checksum)
            return (data[first:stop] if sliced else data), etag

    def _request(self, path: str, extra: dict[str, str]) -> tuple[_Connection, _Response]:
        """Send one signed GET and read the response head; raises :class:`_Broken`.

        A pooled connection the server closed meanwhile is replaced once by a new one without
        using up an attempt, as urllib3 does.
        """
        target = self.target
        frozen = self._credentials.get_frozen_credentials()
        headers = {"host": target.netloc, **extra}
        if target.checksum_mode:
            headers["x-amz-checksum-mode"] = "ENABLED"
        signed = self._signer.sign("GET", path, headers, frozen)
        lines = [f"GET {path} HTTP/1.1", f"User-Agent: {target.user_agent}"]
        lines.extend(f"{name}: {value}" for name, value in signed.items())
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn = self._pool.take()
        try:
            conn.sock.sendall(request)
            return conn, _read_head(conn)
        except OSError as exc:
            conn.close()
            if not conn.reused:
                raise _Broken(exc, connecting=False) from exc
        conn = self._pool.connect()
        try:
            conn.sock.sendall(request)
            return conn, _read_head(conn)
        except OSError as exc:
            conn.close()
            raise _Broken(exc, connecting=False) from exc

    def _error(self, conn: _Connection, response: _Response, key: str) -> ClientError:
        """The error response as botocore's ClientError (same code and message)."""
        parts: list[bytes] = []
        try:
            reusable = _read_body(conn, response, parts, _MAX_ERROR_BODY)
        except (OSError, ValueError):
            reusable = False
        if reusable:
            self._pool.give(conn)
        else:
            conn.close()
        code, message = str(response.status), REASONS.get(response.status, response.reason)
        body = b"".join(parts)
        if body.lstrip().startswith(b"<"):
            with contextlib.suppress(ET.ParseError):
                root = ET.fromstring(body)
                code = root.findtext("Code") or code
                message = root.findtext("Message") or message
        error = {
            "Error": {"Code": code, "Message": message, "Key": key},
            "ResponseMetadata": {
                "HTTPStatusCode": response.status,
                "HTTPHeaders": response.headers,
            },
        }
        return ClientError(error, "GetObject")  # type: ignore[arg-type]

    def _connection_error(self, broken: _Broken) -> Exception:
        """The botocore exception botocore raises for the same failure."""
        cause = broken.cause
        if isinstance(cause, ssl.SSLError):
            return SSLError(endpoint_url=self._endpoint, error=cause)
        if isinstance(cause, TimeoutError):
            if broken.connecting:
                return ConnectTimeoutError(endpoint_url=self._endpoint, error=cause)
            return ReadTimeoutError(endpoint_url=self._endpoint, error=cause)
        if broken.connecting:
            return EndpointConnectionError(endpoint_url=self._endpoint, error=cause)
        return ConnectionClosedError(endpoint_url=self._endpoint)

    def _checksum_header(self, response: _Response) -> tuple[str, str] | None:
        """The first full-object checksum botocore would check, in its order of preference."""
        for algorithm in self._checksums:
            value = response.headers.get(f"x-amz-checksum-{algorithm}")
            if value and "-" not in value:  # "-N": a checksum of part checksums
                return algorithm, value
        return None

    def _verify_checksum(self, key: str, data: bytes, checksum: tuple[str, str]) -> None:
        algorithm, expected = checksum
        digest = self._checksums[algorithm]()
        digest.update(data)
        if digest.digest() != base64.b64decode(expected):
            raise IntegrityError(
                key=key, reason=f"x-amz-checksum-{algorithm} does not match the body"
            )

    def close(self) -> None:
        """Close the idle connections."""
        self._pool.size = 0
        while True:
            with self._pool._lock:
                if not self._pool._idle:
                    return
                conn = self._pool._idle.pop()
            conn.close()


def _retryable(cause: BaseException) -> bool:
    return not isinstance(cause, ssl.SSLCertVerificationError)


def _retry_response(response: _Response, error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return response.status in _RETRY_STATUSES or code in _RETRY_CODES


# --------------------------------------------------------------------------------------------
# What the client is configured to do
# --------------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """The client's configuration needs botocore's own request path."""


def _unsupported(client: S3Client) -> str | None:
    """Why the fast path cannot stand in for ``client``, or None."""
    if os.environ.get(_ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{_ENV_SWITCH} is off"
    config: Any = client.meta.config
    if config.proxies:
        return "proxies are configured"
    from botocore.utils import get_environ_proxies

    scheme = urlsplit(client.meta.endpoint_url).scheme
    if get_environ_proxies(client.meta.endpoint_url).get(scheme):
        return "a proxy is set in the environment"
    if config.client_cert:
        return "a client certificate is configured"
    mode = (config.retries or {}).get("mode") or "legacy"
    if mode not in ("legacy", "standard"):
        return f"retry mode {mode!r}"
    foreign = _foreign_handlers(client)
    if foreign:
        return f"event handlers from outside botocore: {', '.join(sorted(foreign))}"
    return None


_HOOKED_EVENTS = (
    "provide-client-params.s3.GetObject",
    "before-parameter-build.s3.GetObject",
    "before-call.s3.GetObject",
    "request-created.s3.GetObject",
    "choose-signer.s3.GetObject",
    "before-sign.s3.GetObject",
    "before-send.s3.GetObject",
    "needs-retry.s3.GetObject",
    "after-call.s3.GetObject",
    "after-call-error.s3.GetObject",
)


def _foreign_handlers(client: S3Client) -> set[str]:
    """Modules of handlers on GetObject's events that neither botocore nor boto3 registered
    (a user's header injector, botocore's Stubber, moto's in-process mock)."""
    emitter = getattr(client.meta.events, "_emitter", None)
    handlers = getattr(emitter, "_handlers", None)
    if handlers is None or not hasattr(handlers, "prefix_search"):
        return {"<unknown event system>"}
    foreign: set[str] = set()
    for event in _HOOKED_EVENTS:
        for handler in handlers.prefix_search(event):
            module = getattr(handler, "__module__", None) or type(handler).__module__
            ours = module.startswith(("botocore.", "boto3.", "s3transfer."))
            if not ours or module == "botocore.stub":  # a Stubber answers in-process
                foreign.add(module)
    return foreign


def _probe(client: S3Client, bucket: str) -> _Target:
    """Run a GetObject for a made-up key through botocore and stop it just before it is sent."""
    probe_key = f"s3exchange-probe-{uuid.uuid4().hex}"
    event = "before-send.s3.GetObject"
    unique = f"s3exchange-fastget-{probe_key}"

    def capture(request: Any, **_: Any) -> None:
        if urlsplit(request.url).path.endswith("/" + probe_key):
            headers = {
                str(name): value.decode("latin-1") if isinstance(value, bytes) else str(value)
                for name, value in request.headers.items()
            }
            raise _Probed(request.url, headers)

    client.meta.events.register_first(event, capture, unique_id=unique)
    try:
        client.get_object(Bucket=bucket, Key=probe_key)
    except _Probed as probed:
        return _target(probed, probe_key)
    except Exception as exc:
        raise _Unsupported(f"the probe request failed: {exc!r}") from exc
    finally:
        client.meta.events.unregister(event, capture, unique_id=unique)
    raise _Unsupported("the probe request was not sent")


def _target(probed: _Probed, probe_key: str) -> _Target:
    url = urlsplit(probed.url)
    if url.query or url.fragment or url.scheme not in ("http", "https") or not url.hostname:
        raise _Unsupported(f"unexpected request URL shape {url.scheme}://{url.netloc}")
    headers = {name.lower(): value for name, value in probed.headers.items()}
    auth = headers.get("authorization", "")
    prefix = "AWS4-HMAC-SHA256 Credential="
    if not auth.startswith(prefix):
        raise _Unsupported(f"signature {auth.split(' ', 1)[0] or 'none'!r}")
    credential, _, rest = auth[len(prefix) :].partition(", SignedHeaders=")
    signed_names, _, _ = rest.partition(", Signature=")
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _Unsupported("unexpected credential scope")
    signed = set(signed_names.split(";"))
    extra = (signed - _SIGNED_OK) | (set(headers) - _SIGNED_OK - _UNSIGNED_OK)
    if extra:
        raise _Unsupported(f"request headers it does not reproduce: {sorted(extra)}")
    max_attempts: int | None = None
    for field in headers.get("amz-sdk-request", "").split(";"):
        name, _, value = field.strip().partition("=")
        if name == "max" and value.isdigit():
            max_attempts = int(value)
    return _Target(
        scheme=url.scheme,
        netloc=url.netloc,
        host=url.hostname,
        port=url.port or (443 if url.scheme == "https" else 80),
        prefix=url.path[: -len(probe_key)],
        region=scope[2],
        service=scope[3],
        user_agent=headers.get("user-agent", "s3exchange"),
        checksum_mode=headers.get("x-amz-checksum-mode", "").upper() == "ENABLED",
        max_attempts=max_attempts,
    )


def _tls_context(client: S3Client) -> ssl.SSLContext:
    """An SSL context that verifies as the client's HTTP session does (``verify=``)."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if session is None or not hasattr(session, "_verify"):
        raise _Unsupported("cannot see the client's TLS verification setting")
    verify = session._verify
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    from botocore.httpsession import DEFAULT_CA_BUNDLE

    return ssl.create_default_context(cafile=DEFAULT_CA_BUNDLE)


def _botocore_checksums(client: S3Client) -> dict[str, Callable[[], Any]]:
    """Response checksums botocore checks for GetObject here, in its order of preference."""
    try:
        from botocore import httpchecksum

        private = vars(httpchecksum)
        classes: dict[str, Callable[[], Any]] = dict(private["_CHECKSUM_CLS"])
        order: list[str] = list(private["_ALGORITHMS_PRIORITY_LIST"])
        model = client.meta.service_model.operation_model("GetObject")
        allowed = {name.lower() for name in model.http_checksum.get("responseAlgorithms", [])}
    except (ImportError, AttributeError, KeyError) as exc:
        raise _Unsupported("cannot see botocore's response checksums") from exc
    return {name: classes[name] for name in order if name in classes and name in allowed}
