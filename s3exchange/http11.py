"""HTTP/1.1 on pooled keep-alive sockets: the connection pool, the response head and the body.

Just what :class:`~s3exchange.fastget.FastGetter` needs, written here because ``http.client``
spends a quarter of its time in ``email``'s header parser (figures in :mod:`s3exchange.fastget`).
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from typing import cast

__all__ = [
    "CHUNK",
    "Broken",
    "Connection",
    "Pool",
    "Response",
    "StreamedBody",
    "read_body",
    "read_head",
    "tls_survived_fork",
]

CHUNK = 1 << 20  # body read size: progress is kept per chunk when a body breaks
_MAX_LINE = 65536
_MAX_HEADERS = 100


class Broken(Exception):
    """A request failed before its response head arrived; ``connecting``: while connecting."""

    def __init__(self, cause: BaseException, connecting: bool) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        self.connecting = connecting


class Connection:
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
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    keep_alive: bool


class _Handshakes:
    """TLS handshakes in progress in this process, as a fork sees them.

    OpenSSL takes locks of the ``SSLContext`` (its certificate store) while it verifies a
    handshake; a fork in that moment leaves the child a lock nobody will release. The count
    changes under ``lock``, which a fork holds from before to after, so a child knows whether
    its copy of a context is safe to use (:func:`tls_survived_fork`).
    """

    lock = threading.Lock()
    running = 0
    at_fork = 0
    survived = True
    """In this process: no handshake ran at its fork, nor at any fork of its ancestors since
    the first (a context it inherited may have come down unused through several)."""

    @classmethod
    def change(cls, by: int) -> None:
        with cls.lock:
            cls.running += by

    @classmethod
    def before_fork(cls) -> None:
        cls.lock.acquire()
        cls.at_fork = cls.running

    @classmethod
    def after_fork_in_parent(cls) -> None:
        cls.lock.release()

    @classmethod
    def after_fork_in_child(cls) -> None:
        cls.survived = cls.survived and cls.at_fork == 0
        cls.lock = threading.Lock()
        cls.running = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_Handshakes.before_fork,
        after_in_parent=_Handshakes.after_fork_in_parent,
        after_in_child=_Handshakes.after_fork_in_child,
    )


def tls_survived_fork() -> bool:
    """Whether no handshake of this module was running when this process (or an ancestor
    since the first) was forked, so the SSL contexts it inherited are whole; always true in a
    process that was not forked."""
    return _Handshakes.survived


class Pool:
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
        self.size = self._capacity = size
        self.keepalive = keepalive
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def empty_copy(self) -> Pool:
        """A pool to the same host with the same settings and no connections (a forked
        process's: the sockets of this one are its parent's)."""
        return Pool(
            self.host,
            self.port,
            self.tls,
            self.connect_timeout,
            self.read_timeout,
            self._capacity,
            self.keepalive,
        )

    def take(self) -> Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self.connect()
            if not conn.dropped():
                conn.reused = True
                return conn
            conn.close()

    def give(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close_idle(self) -> None:
        """Close the idle connections and keep no more."""
        self.size = 0
        while True:
            with self._lock:
                if not self._idle:
                    return
                conn = self._idle.pop()
            conn.close()

    def connect(self) -> Connection:
        """A new connection (TLS handshake done); raises :class:`Broken`."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise Broken(exc, connecting=True) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.tls is not None:
                _Handshakes.change(1)
                try:
                    sock = self.tls.wrap_socket(sock, server_hostname=self.host)
                finally:
                    _Handshakes.change(-1)
            sock.settimeout(self.read_timeout)
        except OSError as exc:
            sock.close()
            raise Broken(exc, connecting=True) from exc
        return Connection(sock)


def _read_line(conn: Connection) -> bytes:
    line = conn.file.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise ConnectionError("HTTP line too long")
    return line


def read_head(conn: Connection) -> Response:
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
        return Response(status, reason, headers, keep_alive)


def read_body(conn: Connection, response: Response, sink: list[bytes], limit: int | None) -> bool:
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
                chunk = conn.file.read(min(size, CHUNK))
                if not chunk:
                    raise ConnectionResetError("chunked body ended early")
                sink.append(chunk)
                size -= len(chunk)
            _read_line(conn)
    length = headers.get("content-length")
    if length is None:
        total = 0
        while chunk := conn.file.read1(CHUNK):
            sink.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                raise ConnectionError("response body too large")
        return False  # delimited by closing the connection
    remaining = int(length)
    while remaining:
        chunk = conn.file.read(min(remaining, CHUNK))
        if not chunk:
            raise ConnectionResetError(f"body ended {remaining} bytes short")
        sink.append(chunk)
        remaining -= len(chunk)
    return response.keep_alive


class StreamedBody:
    """A body of known length read as the caller asks, straight from its socket's reader.

    The connection goes back to ``pool`` once the last byte is read (when the server keeps
    it alive and nothing is left unread); a body closed early closes its connection. A short
    body raises ``ConnectionResetError``, a failing socket its ``OSError``: the caller (an
    :class:`~s3exchange.body.ObjectStream`) resumes with a ranged GET.
    """

    __slots__ = ("_conn", "_pool", "_remaining", "_reusable", "_skip")

    def __init__(
        self, pool: Pool, conn: Connection, length: int, skip: int = 0, *, reusable: bool
    ) -> None:
        """``length`` bytes are read after skipping ``skip`` (a server that ignored ``Range``);
        ``reusable``: the server keeps the connection alive and they end its body."""
        self._pool = pool
        self._conn: Connection | None = conn
        self._remaining = length
        self._skip = skip
        self._reusable = reusable
        if not length and not skip:
            self._release()

    @property
    def remaining(self) -> int:
        """Bytes of the body not yet read."""
        return self._remaining

    def read(self, amt: int | None = None) -> bytes:
        conn = self._conn
        if conn is None or not self._remaining:
            return b""
        try:
            while self._skip:
                dropped = conn.file.read(min(self._skip, CHUNK))
                if not dropped:
                    raise ConnectionResetError(f"body ended {self._skip} bytes before the range")
                self._skip -= len(dropped)
            n = self._remaining if amt is None or amt < 0 else min(amt, self._remaining)
            chunk = conn.file.read(n)
            if not chunk:
                raise ConnectionResetError(f"body ended {self._remaining} bytes short")
        except (OSError, ValueError):
            self.close()
            raise
        self._remaining -= len(chunk)
        if not self._remaining:
            self._release()
        return chunk

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._reusable:
                self._pool.give(conn)
            else:
                conn.close()

    def close(self) -> None:
        """Closes the connection unless the body was read to its end (then it was reused)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
