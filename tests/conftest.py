"""Shared fixtures: local S3 servers on 127.0.0.1 (moto, SeaweedFS) and a fresh bucket per test."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from s3exchange.testing import RunningServer, ServerStartError, start_moto, start_seaweedfs

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

    from s3exchange import S3ExchangeStore

# A suite started in the background without job control (`nohup cmd &`) inherits SIGINT
# ignored, and so would every process it starts: the Ctrl-C tests (pack, the loader) then see
# no KeyboardInterrupt. Restore the default so they test what a user's Ctrl-C does.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _new_bucket(client: S3Client) -> str:
    name = f"test-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    return name


def _delete_bucket(client: S3Client, bucket: str) -> None:
    """Best effort: abort uploads, delete every object, then the bucket."""
    try:
        for uploads in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
            for upload in uploads.get("Uploads", []):
                client.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": o["Key"]} for o in page.get("Contents", [])
            ]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError):
        pass  # the server is per session; a leftover bucket harms nothing


@pytest.fixture(scope="session")
def moto_server() -> Iterator[RunningServer]:
    """moto's S3 server in a subprocess on 127.0.0.1, for the whole session."""
    with start_moto() as server:
        yield server


@pytest.fixture
def s3_server(request: pytest.FixtureRequest) -> RunningServer:
    """The server behind ``s3_client``/``store``: moto, or moto and SeaweedFS in turn where a
    module parametrises it (``indirect=True``) with ``"moto"`` and ``"seaweedfs"``: moto is an
    emulator, SeaweedFS a production object store with its own multipart, range,
    conditional-write and listing code."""
    server: RunningServer = request.getfixturevalue(f"{getattr(request, 'param', 'moto')}_server")
    return server


@pytest.fixture
def s3_client(s3_server: RunningServer) -> S3Client:
    """A boto3 client for the session's server (moto by default)."""
    return s3_server.s3.client()


@pytest.fixture
def bucket(s3_client: S3Client) -> Iterator[str]:
    """A fresh, uniquely named bucket, deleted afterwards."""
    name = _new_bucket(s3_client)
    yield name
    _delete_bucket(s3_client, name)


@pytest.fixture
def store(s3_client: S3Client, bucket: str) -> S3ExchangeStore:
    """An S3ExchangeStore over the fresh bucket."""
    from s3exchange import S3ExchangeStore

    return S3ExchangeStore(s3_client=s3_client, bucket=bucket)


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[RunningServer]:
    """``weed mini`` on 127.0.0.1 for the whole session; fails (never skips) if it cannot start."""
    try:
        server = start_seaweedfs()
    except ServerStartError as error:
        pytest.fail(f"SeaweedFS could not start: {error}", pytrace=False)
    with server:
        yield server


@pytest.fixture
def seaweed_client(seaweedfs_server: RunningServer) -> S3Client:
    """A boto3 client for the session's SeaweedFS server."""
    return seaweedfs_server.s3.client()


@pytest.fixture
def seaweed_bucket(seaweed_client: S3Client) -> Iterator[str]:
    """A fresh, uniquely named bucket on SeaweedFS, deleted afterwards."""
    name = _new_bucket(seaweed_client)
    yield name
    _delete_bucket(seaweed_client, name)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs for the whole session (starting one costs ~4 s), for the
    ``s3exchange.ray`` tests; shut down at the end."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",  # tests stay on the loopback
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
