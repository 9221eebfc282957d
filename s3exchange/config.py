"""The tuning knobs of every transfer in one frozen object, checked once (s3transfer's
``TransferConfig`` is the model). Connection settings (endpoint, credentials, timeouts) stay in
:class:`~s3exchange.settings.S3Settings`, the pydantic edge; this is the dataclass inside."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .body import RetryPolicy
from .multipart import DEFAULT_PART_SIZE, MIN_PART_SIZE
from .transport import DELETE_BATCH

__all__ = ["TransferConfig"]

MiB = 1 << 20
_MAX_PART_SIZE = 5 << 30
"""S3's largest part."""


@dataclass(frozen=True, slots=True)
class TransferConfig:
    """How the library moves bytes: part sizes, concurrency, retries, read-ahead, batches.

    A store holds one (``S3ExchangeStore(config=)``, :attr:`S3ExchangeStore.config`); its
    keyword arguments (``part_size=``, ``upload_concurrency=``, ``read_retry=``,
    ``reconnect_s=``) and the dataset's (``io_threads=``, ``prefetch_shards=``,
    ``max_sample_bytes=``) override fields of it through :meth:`replace`, which checks them
    again. Every value is checked here, once; a bad one is a ``ValueError`` naming the field.

    Memory it implies, with the defaults in brackets:

    - **an upload** (``put_object`` of a path or stream, :class:`~s3exchange.ShardWriter`,
      ``pack``'s jobs each): ``part_size x (2 x upload_concurrency + 1)`` [40 MiB]: the part
      being filled and up to twice the concurrency queued or in flight, so the pool never
      idles. A shard writer adds its 5 MiB head and ~130 bytes of manifest a member (45 MiB;
      54 MiB tracemalloc peak measured with botocore's buffers).
    - **a reading worker** (``s3exchange_torch``): ``(1 + prefetch_shards) x (queue_chunks
      + 1) x chunk_bytes`` of shard bytes read ahead or samples being gathered [15 MiB,
      whatever the shard size], plus up to ``2 x io_threads`` loose files in flight, each
      held whole (so at most ``max_sample_bytes``), plus the dataset's ``shuffle_buffer``
      samples.
    - **a delete** holds ``delete_batch`` keys a request [1,000].

    Attributes:
        part_size: bytes a multipart upload sends per part (S3: 5 MiB to 5 GiB) [8 MiB].
        upload_concurrency: parts of one upload in flight at once [2].
        read_retry: how a broken GET body is resumed (attempts without progress, backoff).
        reconnect_s: seconds a read keeps retrying a server it cannot reach [30]
            (``S3EXCHANGE_RECONNECT_TIMEOUT`` through :meth:`S3ExchangeStore.from_settings`).
        io_threads: loose objects a reading worker requests at once; ``None`` sizes it to the
            client's connection pool less the shard streams, at most 32.
        prefetch_shards: shards a reading worker streams ahead of the one it consumes [2].
        chunk_samples, chunk_bytes: a shard's samples pass to the shuffle buffer in lists of
            at most ``chunk_samples`` samples, or once a list holds ``chunk_bytes`` [64, 1 MiB];
            ``chunk_bytes`` is also the read-ahead's unit.
        queue_chunks: ``chunk_bytes`` a shard's thread reads ahead, as they arrive (the
            consumer parses them); the consumer then reads the rest of the stream [4].
        max_sample_bytes: largest shard member or loose file a worker reads: a sample is held
            whole in memory, so a bigger one is refused before a byte of it is read [256 MiB;
            a 3 GiB member of a 3 MB .tar.gz once drove a worker to 6.4 GiB RSS].
        delete_batch: keys a ``DeleteObjects`` request deletes (S3 takes at most 1,000)
            [1,000]; fewer for a server with a lower limit.
    """

    part_size: int = DEFAULT_PART_SIZE
    upload_concurrency: int = 2
    read_retry: RetryPolicy = field(default_factory=RetryPolicy)
    reconnect_s: float = 30.0
    io_threads: int | None = None
    prefetch_shards: int = 2
    chunk_samples: int = 64
    chunk_bytes: int = 1 * MiB
    queue_chunks: int = 4
    max_sample_bytes: int = 256 * MiB
    delete_batch: int = DELETE_BATCH

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise ValueError(f"TransferConfig.{problem}")

    def _problem(self) -> str | None:
        if not MIN_PART_SIZE <= self.part_size <= _MAX_PART_SIZE:
            return f"part_size must be {MIN_PART_SIZE} to {_MAX_PART_SIZE}, got {self.part_size}"
        at_least = {
            "upload_concurrency": 1,
            "prefetch_shards": 0,
            "chunk_samples": 1,
            "chunk_bytes": 1,
            "queue_chunks": 1,
            "max_sample_bytes": 1,
            "delete_batch": 1,
        }
        for name, least in at_least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                return f"{name} must be an int >= {least}, got {value!r}"
        if self.io_threads is not None and self.io_threads < 1:
            return f"io_threads must be None or >= 1, got {self.io_threads}"
        if self.delete_batch > DELETE_BATCH:
            return f"delete_batch must be at most {DELETE_BATCH}, got {self.delete_batch}"
        if self.reconnect_s < 0:
            return f"reconnect_s must be >= 0, got {self.reconnect_s}"
        retry = self.read_retry
        if retry.max_attempts < 1 or retry.backoff_s < 0 or retry.max_backoff_s < 0:
            return f"read_retry needs max_attempts >= 1 and backoffs >= 0, got {retry}"
        return None

    def replace(self, **changes: Any) -> TransferConfig:
        """A copy with ``changes`` (``None`` values ignored: "not given"), checked again."""
        given = {name: value for name, value in changes.items() if value is not None}
        return replace(self, **given) if given else self
