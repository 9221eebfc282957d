"""The README and reliability suites again, against SeaweedFS (``weed mini`` on 127.0.0.1).

moto is an emulator; SeaweedFS is a production object store with its own multipart, range,
conditional-write and listing code. Importing the test modules re-collects their tests here,
where ``s3_server`` (behind ``s3_client``, ``bucket`` and ``store``) is SeaweedFS.
"""

from __future__ import annotations

import pytest
from test_reliability_reads import *  # noqa: F403
from test_reliability_writes import *  # noqa: F403
from test_store_readme import *  # noqa: F403

from s3exchange.testing import RunningServer

pytestmark = pytest.mark.seaweedfs


@pytest.fixture
def s3_server(seaweedfs_server: RunningServer) -> RunningServer:
    """Every store fixture of the imported tests now talks to SeaweedFS."""
    return seaweedfs_server
