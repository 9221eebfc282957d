"""s3exchange.testing servers refuse a port another server holds, instead of reporting it as theirs.

Issue 11, item 9: ``start_seaweedfs(port=...)`` on a port taken by another S3 server returned
"started" while its own process had exited, and the caller's writes went to the other server.
"""

from __future__ import annotations

import re
import uuid

import pytest

from s3exchange.testing import RunningServer, ServerStartError, start_moto, start_seaweedfs


def _still_serves(server: RunningServer) -> None:
    """The server holding the port keeps answering (it was not disturbed)."""
    client = server.s3.client()
    bucket = f"held-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.delete_bucket(Bucket=bucket)


def test_moto_on_a_port_held_by_another_s3_server_fails_naming_the_port(
    moto_server: RunningServer,
) -> None:
    port = moto_server.port
    with pytest.raises(ServerStartError, match=rf"\b{port}\b") as caught:
        start_moto(port=port, timeout=30).stop()
    assert re.search("exit(ed)? (with )?code", str(caught.value))
    _still_serves(moto_server)


@pytest.mark.seaweedfs
def test_seaweedfs_on_a_port_held_by_another_s3_server_fails_naming_the_port(
    moto_server: RunningServer,
) -> None:
    port = moto_server.port
    with pytest.raises(ServerStartError, match=rf"\b{port}\b") as caught:
        start_seaweedfs(port=port, timeout=30).stop()
    assert "moto" not in str(caught.value).split("output:")[0]
    _still_serves(moto_server)


def test_a_started_server_is_the_process_that_serves_its_port() -> None:
    with start_moto() as server:
        assert server.process.poll() is None
        _still_serves(server)
