"""Process plumbing for the embedded servers: spawning children that die with their parent,
draining their output, free ports on 127.0.0.1, and telling whether a listener is our own.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

__all__ = [
    "GRPC_OFFSET",
    "LOOPBACK",
    "OutputTail",
    "ServerStartError",
    "free_port",
    "free_port_pairs",
    "http_ok",
    "listeners",
    "remove",
    "serves_port",
    "spawn",
]

LOOPBACK = "127.0.0.1"
_LOG_LINES = 400
GRPC_OFFSET = 10000  # SeaweedFS derives some gRPC ports as http port + 10000


class ServerStartError(RuntimeError):
    """A local S3 server is not installed, exited early, or did not become ready in time."""


class OutputTail:
    """Drains a subprocess's merged stdout/stderr in a thread, keeping only the last lines."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self._lines: collections.deque[bytes] = collections.deque(maxlen=_LOG_LINES)
        self._stream = stream
        self._thread = threading.Thread(target=self._drain, name=f"{name}-output", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._stream:
                self._lines.append(line)

    def text(self) -> str:
        return b"".join(list(self._lines)).decode("utf-8", "replace")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._stream.close()


_spawner: concurrent.futures.ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _die_with_parent(parent_pid: int) -> None:  # pragma: no cover - runs in the child
    """``preexec_fn``: ask Linux to SIGTERM this child when the spawning thread exits."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def spawn(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``args`` with merged output on a pipe, in its own session (no terminal SIGINT).

    PDEATHSIG fires when the *thread* that forked exits, so children are spawned from one
    long-lived worker thread rather than from whichever thread called us.
    """
    global _spawner  # noqa: PLW0603
    parent_pid = os.getpid()
    preexec = (lambda: _die_with_parent(parent_pid)) if sys.platform == "linux" else None

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - only calls prctl
        )

    with _spawner_lock:
        if _spawner is None:
            _spawner = concurrent.futures.ThreadPoolExecutor(1, "s3exchange-spawner")
        spawner = _spawner
    return spawner.submit(popen).result()


def remove(paths: tuple[Path, ...]) -> None:
    """Best-effort removal of temporary files and directories a server left behind."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_pairs(count: int, exclude: set[int]) -> list[int]:
    """``count`` distinct ports P with P and P + 10000 both free on 127.0.0.1."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 200):
            if len(ports) == count:
                break
            first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            first.bind((LOOPBACK, 0))
            port = first.getsockname()[1]
            if port + GRPC_OFFSET > 65535 or port in exclude or port + GRPC_OFFSET in exclude:
                first.close()
                continue
            second = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                second.bind((LOOPBACK, port + GRPC_OFFSET))
            except OSError:
                first.close()
                second.close()
                continue
            held += [first, second]
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    if len(ports) < count:
        raise ServerStartError(f"could not find {count} free port pairs on {LOOPBACK}")
    return ports


# Listening addresses in /proc/net/tcp{,6} that a connection to 127.0.0.1 reaches: 127.0.0.1,
# 0.0.0.0, :: and ::ffff:127.0.0.1 (hex, as the kernel writes them).
_LOOPBACK_REACHING = frozenset(
    {"0100007F", "00000000", "0" * 32, "0000000000000000FFFF00000100007F"}
)


def listeners(port: int) -> set[str] | None:
    """Socket inodes listening where a connection to 127.0.0.1:``port`` lands; None without
    ``/proc`` (not Linux), where ownership cannot be checked."""
    found: set[str] = set()
    readable = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].rpartition(":")
            listening = fields[3] == "0A"
            if listening and int(hex_port, 16) == port and address in _LOOPBACK_REACHING:
                found.add(fields[9])
    return found if readable else None


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds open (empty once it has exited)."""
    inodes: set[str] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def serves_port(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether ``process`` is alive and every listener on 127.0.0.1:``port`` is its own.

    Answering HTTP on the port proves nothing: another server may hold it while ours has
    failed to bind (issue 11: writes once went to that other server).
    """
    if process.poll() is not None:
        return False
    listening = listeners(port)
    if listening is None:  # no /proc: alive and answering is the best evidence there is
        return True
    return bool(listening) and listening <= _socket_inodes(process.pid)


def http_ok(url: str, timeout: float) -> bool:
    """True if ``url`` answers any HTTP status (proxies from the environment are ignored)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
