"""An in-memory bucket for fast unit tests of the logic above the request seam.

:class:`MemoryBucket` implements :class:`~s3exchange.transport.Transport` with dicts: the
multipart writer, ``append_parts``, deletion and compaction run against it in microseconds,
beside the real-server tests (moto, SeaweedFS) that stay the judge of behaviour on the wire.
It keeps S3's rules that this library relies on: conditional PUTs (``If-None-Match: *``,
``If-Match``), ETag-pinned ranged GETs, a part under 5 MiB only last, parts assembled by number.
Every call is recorded in :attr:`MemoryBucket.requests`; :meth:`MemoryBucket.fail` makes the
next calls of one operation fail; errors are botocore's answers run through the same
:func:`~s3exchange.bucket.translate` a real server's are.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ..body import OpenedBody, RetryPolicy
from ..bucket import translate
from ..errors import ObjectChangedError, ObjectNotFoundError
from ..keys import KeySpace
from ..multipart import MIN_PART_SIZE
from ..transport import DELETE_BATCH, PendingUpload
from ..types import DeleteFailure, ListedObject

__all__ = ["MemoryBucket", "Request", "StoredObject"]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as stored: its bytes and what a HEAD answers."""

    data: bytes
    etag: str
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    last_modified: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class Request:
    """One call through the seam: the operation (S3's name), the logical key and the
    arguments that shape the request (``{"offset": 10, "etag": '"..."'}`` ...)."""

    operation: str
    key: str | None
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Upload:
    key: str
    content_type: str | None
    initiated: datetime
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)


def _quoted_md5(data: bytes) -> str:
    return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'


def _error(code: str, operation: str, message: str = "") -> ClientError:
    """botocore's exception for an S3 error answer."""
    status = {"PreconditionFailed": 412, "NoSuchKey": 404, "NoSuchUpload": 404}.get(code, 400)
    response: Any = {
        "Error": {"Code": code, "Message": message or code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


class MemoryBucket:
    """A bucket held in memory (thread-safe), seen through ``base_prefix`` like a
    :class:`~s3exchange.bucket.Bucket`.

    ``conditional_writes=False`` acts like a server that ignores ``If-None-Match`` and
    ``If-Match`` (the ``append_parts`` probe must notice). ``refuse_delete`` names logical keys
    a batch delete reports as failed (``AccessDenied``), as a bucket policy would.
    """

    def __init__(
        self,
        name: str = "memory",
        base_prefix: str = "",
        *,
        conditional_writes: bool = True,
        refuse_delete: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.keyspace = KeySpace(base_prefix)
        self.conditional_writes = conditional_writes
        self.refuse_delete = set(refuse_delete)
        self.objects: dict[str, StoredObject] = {}
        """Stored objects by physical key (base prefix included)."""
        self.uploads: dict[str, _Upload] = {}
        self.requests: list[Request] = []
        self._faults: dict[str, list[BaseException]] = {}
        self._lock = threading.RLock()
        self._endpoint = f"memory://{uuid.uuid4().hex}"

    @property
    def endpoint(self) -> str:
        """Unique to this bucket, so per-server caches never mix two fakes."""
        return self._endpoint

    def __repr__(self) -> str:
        return f"MemoryBucket({self.name!r}, base_prefix={self.keyspace.base_prefix!r})"

    # -- test controls -------------------------------------------------------------------------

    def fail(self, operation: str, error: BaseException | None = None, *, times: int = 1) -> None:
        """Make the next ``times`` calls of ``operation`` (``"UploadPart"``, ``"PutObject"``
        ...) raise ``error``; by default a server error (``InternalError``) as translated."""
        with self._lock:
            default = translate(_error("InternalError", operation), None, operation)
            self._faults.setdefault(operation, []).extend([error or default] * times)

    def requests_of(self, operation: str) -> list[Request]:
        """The recorded calls of one operation, in order."""
        with self._lock:
            return [r for r in self.requests if r.operation == operation]

    def keys(self) -> list[str]:
        """Logical keys stored, sorted."""
        with self._lock:
            return sorted(self.keyspace.logical(k) for k in self.objects)

    def data(self, key: str) -> bytes:
        """The bytes stored at logical ``key`` (KeyError when absent)."""
        with self._lock:
            return self.objects[self.keyspace.physical(key)].data

    def _record(self, operation: str, key: str | None, **args: Any) -> None:
        """Log the call, then raise a fault queued for it (under the lock)."""
        self.requests.append(Request(operation, key, args))
        queue = self._faults.get(operation)
        if queue:
            raise queue.pop(0)

    def _stored(self, key: str, operation: str) -> StoredObject:
        stored = self.objects.get(self.keyspace.physical(key))
        if stored is None:
            raise translate(_error("NoSuchKey", operation), key, operation)
        return stored

    # -- reads ---------------------------------------------------------------------------------

    def open(
        self, key: str, offset: int = 0, etag: str | None = None, *, stop: int | None = None
    ) -> OpenedBody:
        with self._lock:
            self._record("GetObject", key, offset=offset, stop=stop, etag=etag)
            stored = self._stored(key, "GetObject")
            if etag and etag != stored.etag:
                raise ObjectChangedError(key=key, etag=etag)
            if offset and offset >= len(stored.data):
                raise ObjectChangedError(key=key, etag=etag)  # InvalidRange: it shrank
            data = stored.data[offset:stop]
            return OpenedBody(
                body=io.BytesIO(data),
                size=offset + len(data),  # as Bucket: where the answered bytes end
                etag=stored.etag,
                content_type=stored.content_type,
                metadata=dict(stored.metadata),
            )

    def read_object(
        self,
        key: str,
        *,
        retry: RetryPolicy | None = None,
        byte_range: tuple[int, int] | None = None,
        if_match: str | None = None,
    ) -> tuple[bytes, str | None]:
        if byte_range is not None and not 0 <= byte_range[0] < byte_range[1]:
            raise ValueError(f"byte_range must be a non-empty (start, stop), got {byte_range}")
        start, stop = byte_range if byte_range is not None else (0, None)
        opened = self.open(key, start, if_match, stop=stop)
        return opened.body.read(), opened.etag

    def read_bytes(self, key: str) -> tuple[bytes, str | None]:
        opened = self.open(key)
        return opened.body.read(), opened.etag

    def head(self, key: str) -> dict[str, Any]:
        with self._lock:
            self._record("HeadObject", key)
            stored = self._stored(key, "HeadObject")
            head: dict[str, Any] = {
                "ContentLength": len(stored.data),
                "ETag": stored.etag,
                "Metadata": dict(stored.metadata),
                "LastModified": stored.last_modified,
            }
            if stored.content_type:
                head["ContentType"] = stored.content_type
            return head

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    def list_objects(self, prefix: str = "") -> Iterator[ListedObject]:
        with self._lock:
            self._record("ListObjectsV2", prefix)
            physical = self.keyspace.physical_prefix(prefix)
            listed: list[ListedObject] = [
                {
                    "key": self.keyspace.logical(key),
                    "size": len(stored.data),
                    "etag": stored.etag,
                    "last_modified": stored.last_modified.isoformat(),
                }
                for key, stored in sorted(self.objects.items())
                if key.startswith(physical)
            ]
        yield from listed

    # -- writes --------------------------------------------------------------------------------

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
        with self._lock:
            self._record(
                "PutObject",
                key,
                size=len(body),
                content_type=content_type,
                if_match=if_match,
                if_none_match=if_none_match,
            )
            physical = self.keyspace.physical(key)
            current = self.objects.get(physical)
            if self.conditional_writes:
                if if_none_match and current is not None:
                    raise _error("PreconditionFailed", "PutObject")
                if if_match and current is None:
                    raise _error("NoSuchKey", "PutObject")
                if if_match and current is not None and current.etag != if_match:
                    raise _error("PreconditionFailed", "PutObject")
            data = bytes(body)
            stored = StoredObject(data, _quoted_md5(data), content_type, dict(metadata or {}))
            self.objects[physical] = stored
            return stored.etag

    def delete(self, key: str) -> None:
        with self._lock:
            self._record("DeleteObject", key)
            self.objects.pop(self.keyspace.physical(key), None)

    def delete_many(
        self, keys: Iterable[str], *, batch_size: int = DELETE_BATCH
    ) -> tuple[int, list[DeleteFailure]]:
        deleted = 0
        failures: list[DeleteFailure] = []
        batch: list[str] = []

        def flush() -> None:
            nonlocal deleted
            with self._lock:
                self._record("DeleteObjects", batch[0], keys=list(batch))
                for key in batch:
                    if key in self.refuse_delete:
                        failures.append({"key": key, "code": "AccessDenied", "message": "denied"})
                    else:
                        self.objects.pop(self.keyspace.physical(key), None)
                        deleted += 1
            batch.clear()

        for key in keys:
            batch.append(key)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        return deleted, failures

    # -- multipart uploads ---------------------------------------------------------------------

    def create_multipart_upload(self, key: str, *, content_type: str | None = None) -> str:
        with self._lock:
            self._record("CreateMultipartUpload", key, content_type=content_type)
            self.keyspace.physical(key)
            upload_id = uuid.uuid4().hex
            self.uploads[upload_id] = _Upload(key, content_type, datetime.now(UTC))
            return upload_id

    def _upload(self, key: str, upload_id: str, operation: str) -> _Upload:
        upload = self.uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise translate(_error("NoSuchUpload", operation), key, operation)
        return upload

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes | bytearray) -> str:
        with self._lock:
            self._record("UploadPart", key, upload_id=upload_id, number=number, size=len(body))
            upload = self._upload(key, upload_id, "UploadPart")
            data = bytes(body)
            etag = _quoted_md5(data)
            upload.parts[number] = (data, etag)
            return etag

    def complete_multipart_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str | None:
        operation = "CompleteMultipartUpload"
        with self._lock:
            self._record(operation, key, upload_id=upload_id, parts=list(parts))
            upload = self._upload(key, upload_id, operation)
            numbers = [number for number, _ in parts]
            if not parts or numbers != sorted(set(numbers)):
                raise translate(_error("InvalidPartOrder", operation), key, operation)
            chosen: list[bytes] = []
            for index, (number, etag) in enumerate(parts):
                stored = upload.parts.get(number)
                if stored is None or stored[1] != etag:
                    raise translate(_error("InvalidPart", operation), key, operation)
                if index < len(parts) - 1 and len(stored[0]) < MIN_PART_SIZE:
                    raise translate(_error("EntityTooSmall", operation), key, operation)
                chosen.append(stored[0])
            digest = hashlib.md5(usedforsecurity=False)
            for data in chosen:
                digest.update(hashlib.md5(data, usedforsecurity=False).digest())
            data = b"".join(chosen)
            etag = f'"{digest.hexdigest()}-{len(chosen)}"'
            stored_object = StoredObject(data, etag, upload.content_type)
            self.objects[self.keyspace.physical(key)] = stored_object
            del self.uploads[upload_id]
            return etag

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        with self._lock:
            self._record("AbortMultipartUpload", key, upload_id=upload_id)
            self.uploads.pop(upload_id, None)

    def list_multipart_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        with self._lock:
            self._record("ListMultipartUploads", prefix)
            listed = [
                PendingUpload(upload.key, upload_id, upload.initiated)
                for upload_id, upload in self.uploads.items()
                if upload.key.startswith(prefix)
            ]
        yield from sorted(listed, key=lambda u: (u.key, u.initiated))


if TYPE_CHECKING:
    from ..transport import Transport

    _CONFORMS: type[Transport] = MemoryBucket  # mypy holds the fake to the seam
