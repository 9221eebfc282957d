"""GETs at a fraction of botocore's CPU: whole small objects (:meth:`FastGetter.read`) and
streams (:meth:`FastGetter.open`, what shard reads and ``get_object`` stream from).

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

The HTTP/1.1 connection pool and response parsing live in :mod:`~s3exchange.http11`; reading the
client's configuration (the probe, TLS, checksums, when to step aside) in
:mod:`~s3exchange.client_probe`. This module signs, sends, retries and resumes.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import os
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from http.client import responses as REASONS
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
    SSLError,
)

from .body import OpenedBody, RetryPolicy
from .client_probe import (
    Target,
    Unsupported,
    botocore_checksums,
    probe,
    tls_context,
    unsupported,
)
from .errors import IntegrityError, ObjectChangedError, ReadInterruptedError
from .http11 import (
    Broken,
    Connection,
    Pool,
    Response,
    StreamedBody,
    read_body,
    read_head,
    tls_survived_fork,
)
from .sigv4 import Credentials, SigV4Signer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["FastGetter"]

log = logging.getLogger(__name__)

_MAX_ERROR_BODY = 1 << 20
_META = "x-amz-meta-"
_RETRY_BACKOFF = RetryPolicy(backoff_s=0.05, max_backoff_s=20.0)
_THROTTLED_BACKOFF = RetryPolicy(backoff_s=1.0, max_backoff_s=20.0)
"""Pauses between the client's retries as botocore's standard mode makes them (full jitter,
doubling, at most 20 s; botocore/retries/standard.py ``ExponentialBackoff``): from 50 ms for
connection errors, timeouts and 5xx, from 1 s when throttled. With 1 s for everything a frozen
server took 4-7 s to fail against botocore's 4.1 s (read timeout 1 s, 3 attempts)."""

# botocore's standard retry mode (botocore/retries/standard.py): throttling, then transient
_THROTTLED_CODES = frozenset(
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
    }
)
_RETRY_CODES = _THROTTLED_CODES | {"RequestTimeout", "RequestTimeoutException"}
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_DEFAULT_ATTEMPTS = {"standard": 3, "legacy": 5}


class _CredentialSource(Protocol):
    """botocore's ``Credentials`` (refreshable or not)."""

    def get_frozen_credentials(self) -> Credentials: ...


class FastGetter:
    """Whole-object GETs of one bucket through one client's configuration (see module doc).

    Thread-safe; belongs to the process that built it (its sockets do not survive a fork:
    build a new one there).
    """

    def __init__(
        self,
        target: Target,
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
        self._pool = Pool(
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
        reason = unsupported(client)
        if reason is None:
            try:
                return cls._build(client, bucket)
            except Unsupported as exc:
                reason = str(exc)
        log.debug("fast GET off for bucket %r: %s; using botocore", bucket, reason)
        return None

    @classmethod
    def _build(cls, client: S3Client, bucket: str) -> FastGetter:
        config: Any = client.meta.config  # botocore's Config: attributes set dynamically
        credentials = getattr(getattr(client, "_request_signer", None), "_credentials", None)
        if credentials is None or not hasattr(credentials, "get_frozen_credentials"):
            raise Unsupported("no credentials (anonymous or not found)")
        target = probe(client, bucket)
        tls: ssl.SSLContext | None = None
        if target.scheme == "https":
            tls = tls_context(client)
        retries: dict[str, Any] = dict(config.retries or {})
        mode = str(retries.get("mode") or "legacy")
        attempts = retries.get("total_max_attempts") or target.max_attempts
        checksums: dict[str, Callable[[], Any]] | None = None
        if target.checksum_mode:
            checksums = botocore_checksums(client)
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

    def for_this_process(self) -> FastGetter | None:
        """This getter for a forked child: the same configuration, no connections (its
        sockets are the parent's). A child that starts this way builds no boto3 client before
        its first GET: client, probe and TLS context took 20-60 ms of each loader worker's
        start (2 cores). None where only a new client is safe: refreshable credentials (their
        lock and HTTP pool are the parent's), or a TLS handshake running at the fork."""
        from botocore.credentials import RefreshableCredentials

        if isinstance(self._credentials, RefreshableCredentials):
            return None
        if self._pool.tls is not None and not tls_survived_fork():
            return None
        getter = copy.copy(self)
        getter._signer = SigV4Signer(self.target.region, self.target.service)
        getter._pool = self._pool.empty_copy()
        getter.pid = os.getpid()
        return getter

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
                conn, response = self._respond(path, extra, key)
            except ClientError as error:
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if (received or if_match) and status in (412, 416):
                    raise ObjectChangedError(key=key, etag=etag or if_match) from error
                raise
            if response.status == 200 and (received or (byte_range is not None and not sliced)):
                parts.clear()  # the server ignored Range: start over (and slice at the end)
                received = 0
                sliced = byte_range is not None
            if not received:
                etag = response.headers.get("etag")
                checksum = self._checksum_header(response)
            before = len(parts)
            try:
                reusable = read_body(conn, response, parts, None)
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

    def open(
        self,
        key: str,
        physical: str,
        *,
        offset: int = 0,
        stop: int | None = None,
        if_match: str | None = None,
    ) -> OpenedBody | None:
        """A streaming GET of bytes ``[offset, stop)`` of ``physical`` (what botocore's
        ``get_object`` gives :meth:`Bucket.open <s3exchange.bucket.Bucket.open>`), or None for
        a response without a length (the caller asks botocore).

        Requests are retried as :meth:`read` retries them and errors raised alike; a body that
        breaks is for the caller to resume (:class:`~s3exchange.body.ObjectStream`). A whole
        object's ``x-amz-checksum-*`` is checked as its last byte is read.
        """
        path = self.target.prefix + quote(physical, safe="/~")
        extra: dict[str, str] = {}
        if offset or stop is not None:
            extra["Range"] = f"bytes={offset}-{'' if stop is None else stop - 1}"
        if if_match:
            extra["If-Match"] = if_match
        conn, response = self._respond(path, extra, key)
        headers = response.headers
        header = headers.get("content-length")
        if header is None or "chunked" in headers.get("transfer-encoding", "").lower():
            conn.close()
            return None
        length = int(header)
        skip, end = 0, length
        if response.status == 200 and extra.get("Range"):  # the server ignored Range
            skip = offset
            end = min(length, stop) if stop is not None else length
        wanted = max(0, end - skip)
        streamed = StreamedBody(
            self._pool, conn, wanted, skip, reusable=response.keep_alive and end == length
        )
        body: StreamedBody | _CheckedBody = streamed
        checksum = None if extra.get("Range") else self._checksum_header(response)
        if checksum is not None:
            body = _CheckedBody(streamed, key, self._checksums[checksum[0]](), checksum)
        return OpenedBody(
            body=body,
            size=offset + wanted,
            etag=headers.get("etag"),
            content_type=headers.get("content-type"),
            metadata={
                name[len(_META) :]: value
                for name, value in headers.items()
                if name.startswith(_META)
            },
        )

    def _respond(self, path: str, extra: dict[str, str], key: str) -> tuple[Connection, Response]:
        """A successful response head, after the client's retries: botocore's ``ClientError``
        for an error response, its connection errors once the attempts are spent."""
        attempts = 0
        while True:
            try:
                conn, response = self._request(path, extra)
            except Broken as broken:
                attempts += 1
                if attempts >= self.max_attempts or not _retryable(broken.cause):
                    raise self._connection_error(broken) from broken.cause
                time.sleep(_RETRY_BACKOFF.delay(attempts))
                continue
            if response.status < 300:
                return conn, response
            error = self._error(conn, response, key)
            attempts += 1
            if attempts >= self.max_attempts or not _retry_response(response, error):
                raise error
            throttled = response.status == 429 or _code(error) in _THROTTLED_CODES
            time.sleep((_THROTTLED_BACKOFF if throttled else _RETRY_BACKOFF).delay(attempts))

    def _request(self, path: str, extra: dict[str, str]) -> tuple[Connection, Response]:
        """Send one signed GET and read the response head; raises :class:`Broken`.

        A pooled connection the server closed meanwhile is replaced once by a new one without
        using up an attempt, as urllib3 does; a timeout uses one up (a frozen server cost two
        read timeouts per attempt otherwise).
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
            return conn, read_head(conn)
        except OSError as exc:
            conn.close()
            # a timeout is not a socket the server dropped: it gets no free second try
            if not conn.reused or isinstance(exc, TimeoutError):
                raise Broken(exc, connecting=False) from exc
        conn = self._pool.connect()
        try:
            conn.sock.sendall(request)
            return conn, read_head(conn)
        except OSError as exc:
            conn.close()
            raise Broken(exc, connecting=False) from exc

    def _error(self, conn: Connection, response: Response, key: str) -> ClientError:
        """The error response as botocore's ClientError (same code and message)."""
        parts: list[bytes] = []
        try:
            reusable = read_body(conn, response, parts, _MAX_ERROR_BODY)
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

    def _connection_error(self, broken: Broken) -> Exception:
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

    def _checksum_header(self, response: Response) -> tuple[str, str] | None:
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
        self._pool.close_idle()


class _CheckedBody:
    """A whole object's body whose full-object checksum is checked at its last byte."""

    __slots__ = ("_body", "_digest", "_expected", "_key")

    def __init__(
        self, body: StreamedBody, key: str, digest: Any, checksum: tuple[str, str]
    ) -> None:
        self._body, self._key, self._digest, self._expected = body, key, digest, checksum

    def read(self, amt: int | None = None) -> bytes:
        chunk = self._body.read(amt)
        self._digest.update(chunk)
        if chunk and not self._body.remaining:  # the last byte: raise before returning it
            algorithm, expected = self._expected
            if self._digest.digest() != base64.b64decode(expected):
                raise IntegrityError(
                    key=self._key, reason=f"x-amz-checksum-{algorithm} does not match the body"
                )
        return chunk

    def close(self) -> None:
        self._body.close()


def _retryable(cause: BaseException) -> bool:
    return not isinstance(cause, ssl.SSLCertVerificationError)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _retry_response(response: Response, error: ClientError) -> bool:
    return response.status in _RETRY_STATUSES or _code(error) in _RETRY_CODES
