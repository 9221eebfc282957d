"""The one seam every S3 request passes through: what a bucket must do for the rest of the library.

:class:`~s3exchange.bucket.Bucket` implements it with botocore against a server;
:class:`~s3exchange.testing.MemoryBucket` implements it in memory for fast unit tests of the logic
above it (the multipart writer, ``append_parts``, deletion, compaction). Methods take logical
keys (the base prefix is the implementation's business) and raise the library's errors
(:class:`~s3exchange.errors.ObjectNotFoundError`, :class:`~s3exchange.errors.StorageError` ...),
with one exception: a ``put`` with a condition that fails raises botocore's ``ClientError``
(code ``PreconditionFailed`` / 412, or ``ConditionalRequestConflict`` / 409), because the caller
tells a lost race from a failure (:mod:`~s3exchange.parts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .body import OpenedBody, RetryPolicy
    from .keys import KeySpace
    from .types import DeleteFailure, ListedObject

__all__ = ["DELETE_BATCH", "PendingUpload", "Transport"]

DELETE_BATCH = 1000
"""S3's most keys in one ``DeleteObjects`` request; ``TransferConfig.delete_batch``'s default."""


@dataclass(frozen=True, slots=True)
class PendingUpload:
    """A multipart upload started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: datetime


class Transport(Protocol):
    """One bucket, seen through a key space; every request the library makes."""

    name: str
    keyspace: KeySpace

    @property
    def endpoint(self) -> str | None:
        """Where the requests go (with :attr:`name`, what a per-server cache is keyed on)."""
        ...

    # reads

    def open(
        self, key: str, offset: int = 0, etag: str | None = None, *, stop: int | None = None
    ) -> OpenedBody:
        """GET from ``offset`` to ``stop`` (exclusive; ``Range``); with ``etag``
        (``If-Match``) a replaced object raises ObjectChangedError."""
        ...

    def read_object(
        self,
        key: str,
        *,
        retry: RetryPolicy | None = None,
        byte_range: tuple[int, int] | None = None,
        if_match: str | None = None,
    ) -> tuple[bytes, str | None]:
        """The whole object (or ``byte_range``, start and stop) and its ETag, a broken body
        resumed under ``retry``; ``if_match`` refuses another version (ObjectChangedError)."""
        ...

    def read_bytes(self, key: str) -> tuple[bytes, str | None]:
        """The whole (small) object and its ETag in one GET."""
        ...

    def head(self, key: str) -> dict[str, Any]:
        """The HEAD response: ``ContentLength``, ``ETag``, ``ContentType``, ``Metadata``."""
        ...

    def exists(self, key: str) -> bool: ...

    def list_objects(self, prefix: str = "") -> Iterator[ListedObject]:
        """Every object under ``prefix``, in key order, lazily."""
        ...

    # writes

    def put(
        self,
        key: str,
        body: bytes | bytearray,
        *,
        content_type: str | None = None,
        if_match: str | None = None,
        if_none_match: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> str | None:
        """PUT in one request; returns the ETag. ``if_match`` sends ``If-Match``,
        ``if_none_match`` sends ``If-None-Match: *``."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_many(
        self, keys: Iterable[str], *, batch_size: int = DELETE_BATCH
    ) -> tuple[int, list[DeleteFailure]]:
        """Delete ``batch_size`` keys a request; returns (deleted count, per-key failures)."""
        ...

    # multipart uploads

    def create_multipart_upload(self, key: str, *, content_type: str | None = None) -> str:
        """Start an upload; returns its id."""
        ...

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes | bytearray) -> str:
        """Upload part ``number`` (1-based); returns its ETag."""
        ...

    def complete_multipart_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str | None:
        """Assemble ``(number, etag)`` parts, in number order; returns the object's ETag."""
        ...

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Drop an upload and its parts; one already completed or aborted is no error."""
        ...

    def list_multipart_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Uploads under ``prefix`` neither completed nor aborted."""
        ...
