"""s3exchange: exchange training data through S3-compatible object storage.

Loose objects, JSONL manifests and streaming tar shards over an injected boto3 client. This
package never imports torch; the PyTorch dataset lives in :mod:`s3exchange_torch`.
"""

from .body import ObjectStream, RetryPolicy
from .config import TransferConfig
from .errors import (
    AccessDeniedError,
    ConcurrentModificationError,
    DeleteError,
    IntegrityError,
    InvalidKeyError,
    InvalidManifestError,
    ManifestNotFoundError,
    MissingPlaceholderError,
    ObjectChangedError,
    ObjectNotFoundError,
    PackConflictError,
    PackError,
    ReadInterruptedError,
    S3ExchangeError,
    ShardReadError,
    ShardWriteError,
    StorageError,
    UploadError,
)
from .keys import LiteralKey
from .samples import Shard
from .settings import S3Settings
from .shard_writer import ShardWriter
from .store import S3ExchangeStore
from .tar_reader import ShardMember
from .types import (
    CompactReport,
    DeleteFailure,
    DeleteReport,
    FileEntry,
    ManifestEntry,
    ManifestRefEntry,
    ShardEntry,
    ShardItem,
)

__version__ = "0.3.0"
"""The one place the version is written; ``pyproject.toml`` reads it (``dynamic``)."""

__all__ = [
    "AccessDeniedError",
    "CompactReport",
    "ConcurrentModificationError",
    "DeleteError",
    "DeleteFailure",
    "DeleteReport",
    "FileEntry",
    "IntegrityError",
    "InvalidKeyError",
    "InvalidManifestError",
    "LiteralKey",
    "ManifestEntry",
    "ManifestNotFoundError",
    "ManifestRefEntry",
    "MissingPlaceholderError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ObjectStream",
    "PackConflictError",
    "PackError",
    "ReadInterruptedError",
    "RetryPolicy",
    "S3ExchangeError",
    "S3ExchangeStore",
    "S3Settings",
    "Shard",
    "ShardEntry",
    "ShardItem",
    "ShardMember",
    "ShardReadError",
    "ShardWriteError",
    "ShardWriter",
    "StorageError",
    "TransferConfig",
    "UploadError",
    "__version__",
]
