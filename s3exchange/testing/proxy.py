"""A fault-injecting TCP proxy on 127.0.0.1 for reliability tests and latency benchmarks.

Each accepted connection gets an upstream connection and two pump threads, one per direction.
A *response* is everything upstream sends after the client last sent something: with HTTP/1.1
keep-alive that is one response per request (a ``100 Continue`` counts as its own response).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Fault", "FaultProxy"]

_LOOPBACK = "127.0.0.1"
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Fault:
    """What to do to the next ``count`` responses that reach ``min_response_bytes``.

    After forwarding ``after_bytes`` bytes of such a response (status line and headers
    included): ``"reset"`` sends the client a TCP RST, ``"truncate"`` closes the connection
    cleanly, ``"stall"`` stops forwarding for ``stall_s`` seconds and then carries on.
    A response hits at most one fault; one that ends before ``after_bytes`` uses up its turn
    without firing (:attr:`FaultProxy.fired` counts only faults that happened).
    """

    kind: Literal["reset", "truncate", "stall"]
    after_bytes: int = 0
    count: int = 1
    min_response_bytes: int = 0
    stall_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("reset", "truncate", "stall"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.after_bytes < 0 or self.count < 1 or self.min_response_bytes < 0:
            raise ValueError("after_bytes and min_response_bytes must be >= 0, count >= 1")
        if self.stall_s < 0:
            raise ValueError("stall_s must be >= 0")


class _Connection:
    """One client connection, its upstream connection, and the state of the current response."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.request_sent = False  # client sent bytes since the last response began
        self.closed = False
        self._lock = threading.Lock()
        name = f"FaultProxy-{proxy.port}-{client.fileno()}"
        self.threads = [
            threading.Thread(target=self._pump_requests, name=f"{name}-up", daemon=True),
            threading.Thread(target=self._pump_responses, name=f"{name}-down", daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self, *, reset: bool = False) -> None:
        """Close both sides once; ``reset`` makes the client side send RST instead of FIN."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        if reset:
            with contextlib.suppress(OSError):
                linger = struct.pack("ii", 1, 0)
                self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        # shutdown() wakes a thread blocked in recv/send on the same socket; SHUT_RD sends
        # nothing, so with SO_LINGER 0 the close() below is the RST.
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.upstream.shutdown(socket.SHUT_RDWR)
        self.client.close()
        self.upstream.close()
        self.proxy._forget(self)

    def _pump_requests(self) -> None:
        """Client to upstream, unchanged; marks that the next upstream bytes start a response."""
        try:
            while True:
                data = self.client.recv(_CHUNK)
                if not data:
                    break
                self.request_sent = True  # before sending, so the response cannot beat it
                self.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def _pump_responses(self) -> None:
        """Upstream to client, with the time-to-first-byte delay and any armed fault."""
        received = forwarded = 0
        armed: Fault | None = None
        may_arm = True  # at most one fault per response
        try:
            while True:
                data = self.upstream.recv(_CHUNK)
                if not data:
                    break
                if self.request_sent:  # a new response begins
                    self.request_sent = False
                    received = forwarded = 0
                    armed, may_arm = None, True
                    delay = self.proxy.ttfb_ms / 1000.0
                    if delay > 0 and self.proxy._stopping.wait(delay):
                        break
                received += len(data)
                if may_arm:
                    armed = self.proxy._take_fault(received)
                    may_arm = armed is None
                while armed is not None and forwarded + len(data) > armed.after_bytes:
                    fault, armed = armed, None
                    head = max(fault.after_bytes - forwarded, 0)
                    self.client.sendall(data[:head])
                    forwarded += head
                    data = data[head:]
                    self.proxy._count_fired()
                    if fault.kind != "stall":
                        self.close(reset=fault.kind == "reset")
                        return
                    if self.proxy._stopping.wait(fault.stall_s):
                        return
                self.client.sendall(data)
                forwarded += len(data)
        except OSError:
            pass
        finally:
            self.close()


@dataclass
class _Pending:
    fault: Fault
    remaining: int


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that can delay responses and break them on purpose.

    ``ttfb_ms`` and :meth:`inject` may be changed while traffic flows; ``fired`` counts the
    faults that actually happened.
    """

    def __init__(
        self, upstream_host: str = _LOOPBACK, upstream_port: int = 0, listen_port: int = 0
    ) -> None:
        if not upstream_port:
            raise ValueError("upstream_port is required")
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._listen_port = listen_port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._threads: list[threading.Thread] = []
        self._faults: collections.deque[_Pending] = collections.deque()
        self._ttfb_ms = 0.0
        self._fired = 0

    # --- knobs ---------------------------------------------------------------------------------

    @property
    def ttfb_ms(self) -> float:
        """Delay in milliseconds before the first byte of each response is forwarded."""
        with self._lock:
            return self._ttfb_ms

    @ttfb_ms.setter
    def ttfb_ms(self, value: float) -> None:
        if value < 0:
            raise ValueError("ttfb_ms must be >= 0")
        with self._lock:
            self._ttfb_ms = float(value)

    def inject(self, fault: Fault) -> None:
        """Queue ``fault`` for the next ``fault.count`` large-enough responses (FIFO)."""
        with self._lock:
            self._faults.append(_Pending(fault, fault.count))

    def clear_faults(self) -> None:
        """Drop every queued fault that has not fired yet."""
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> int:
        """How many more responses the queued faults will hit."""
        with self._lock:
            return sum(pending.remaining for pending in self._faults)

    @property
    def fired(self) -> int:
        """How many faults actually happened."""
        with self._lock:
            return self._fired

    @property
    def active_connections(self) -> int:
        """Client connections currently open."""
        with self._lock:
            return len(self._connections)

    # --- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the proxy listens on (known after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("the proxy is not started")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``, to use as an S3 endpoint."""
        return f"http://{_LOOPBACK}:{self.port}"

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind 127.0.0.1 and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError("the proxy is already started")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((_LOOPBACK, self._listen_port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"FaultProxy-{self.port}-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection, then join all threads. Idempotent."""
        self._stopping.set()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for connection in connections:
            connection.close()
        for thread in threads:
            thread.join(timeout)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        if self._listener is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                upstream = socket.create_connection(
                    (self.upstream_host, self.upstream_port), timeout=5.0
                )
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, client, upstream)
            with self._lock:
                if self._stopping.is_set():
                    client.close()
                    upstream.close()
                    break
                self._connections.add(connection)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.extend(connection.threads)
            connection.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _take_fault(self, response_bytes: int) -> Fault | None:
        """Arm the head of the queue for this response if the response is large enough."""
        with self._lock:
            if not self._faults:
                return None
            pending = self._faults[0]
            if response_bytes < pending.fault.min_response_bytes:
                return None
            pending.remaining -= 1
            if pending.remaining == 0:
                self._faults.popleft()
            return pending.fault

    def _count_fired(self) -> None:
        with self._lock:
            self._fired += 1
