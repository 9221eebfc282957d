"""Every S3 request the library makes, against one bucket and key space, errors translated once.

:class:`Bucket` implements :class:`~s3exchange.transport.Transport`, the one seam every request
passes through (the multipart writer's included). It pickles without its client and rebuilds
one lazily in a new process (spawned DataLoader workers) or after a fork (boto3 clients are
neither picklable nor fork-safe; building clients is :mod:`~s3exchange.clients`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from .body import ObjectStream, OpenedBody, Opener, RetryPolicy
from .clients import ClientFactory
from .errors import (
    AccessDeniedError,
    ObjectChangedError,
    ObjectNotFoundError,
    StorageError,
)
from .fastget import FastGetter
from .keys import KeySpace
from .transport import DELETE_BATCH, PendingUpload
from .types import DeleteFailure, ListedObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


__all__ = [
    "CONFLICT_CODES",
    "DENIED_CODES",
    "NOT_FOUND_CODES",
    "PRECONDITION_CODES",
    "REDIRECT_CODES",
    "Bucket",
    "ClientFactory",
    "error_code",
    "translate",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "409", "OperationAborted"})
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",  # a session token that is malformed or not the one issued
    }
)
REDIRECT_CODES = frozenset(
    {"PermanentRedirect", "TemporaryRedirect", "301", "307", "AuthorizationHeaderMalformed"}
)
"""Answers to a request sent to the wrong region: botocore's redirector knows what to do."""


class _ProcessSetup:
    """Held while a process builds a bucket's client and fast GET path, so its threads build
    them once. Without it the 16 I/O threads of a fresh DataLoader worker each built their own
    (27 ms of client creation and 6 ms of probe, all holding the GIL): a map-style dataset's
    first batch in a worker took 0.26-0.51 s where the batches after it took 0.05 s."""

    lock = threading.RLock()

    @classmethod
    def reset(cls) -> None:
        """A forked child starts with the lock free, whatever its parent's threads held."""
        cls.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ProcessSetup.reset)


def error_code(exc: ClientError) -> str:
    """The S3 error code of a client error (``"NoSuchKey"``, ``"412"`` ...)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def translate(exc: BaseException, key: str | None, operation: str) -> Exception:
    """Map a botocore failure to the library's own error; the one place this is done."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        message = str(exc.response.get("Error", {}).get("Message", ""))
        if code in NOT_FOUND_CODES and key is not None:
            return ObjectNotFoundError(key=key)
        if code in DENIED_CODES:
            return AccessDeniedError(
                key=key, operation=operation, code=code, reason=message or "access denied"
            )
        return StorageError(key=key, operation=operation, code=code, reason=message)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDeniedError(
            key=key, operation=operation, code=type(exc).__name__, reason=str(exc)
        )
    return StorageError(key=key, operation=operation, code=type(exc).__name__, reason=str(exc))


class Bucket:
    """One bucket through a :class:`KeySpace`; methods take logical keys (a
    :class:`~s3exchange.transport.Transport`)."""

    _fast: FastGetter | None

    def __init__(
        self,
        client: S3Client,
        name: str,
        keyspace: KeySpace,
        *,
        factory: ClientFactory | None = None,
    ) -> None:
        """``factory`` rebuilds the client in another process (default: captured from it)."""
        self.name = name
        self.keyspace = keyspace
        self._client: S3Client | None = client
        self._factory = factory or ClientFactory.from_client(client)
        self._pid = os.getpid()
        self._fast_init()

    @property
    def client(self) -> S3Client:
        """The boto3 client, rebuilt after a fork or unpickling."""
        client = self._client
        if client is None or self._pid != os.getpid():
            with _ProcessSetup.lock:
                client = self._client
                if client is None or self._pid != os.getpid():
                    client = self._client = self._factory.create()
                    self._pid = os.getpid()
        return client

    @property
    def max_pool_connections(self) -> int:
        """The client's connection pool size, read without building a client."""
        return self._factory.max_pool_connections

    @property
    def endpoint(self) -> str | None:
        """The client's endpoint URL."""
        return self.client.meta.endpoint_url

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "keyspace": self.keyspace, "factory": self._factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name, self.keyspace = state["name"], state["keyspace"]
        self._factory, self._client, self._pid = state["factory"], None, os.getpid()
        self._fast_init()

    def __repr__(self) -> str:
        return f"Bucket({self.name!r}, base_prefix={self.keyspace.base_prefix!r})"

    # -- reads ---------------------------------------------------------------------------------

    def open(
        self, key: str, offset: int = 0, etag: str | None = None, *, stop: int | None = None
    ) -> OpenedBody:
        """GET ``key`` from ``offset`` (to ``stop``, exclusive, if given); with ``etag``, fail
        with ObjectChangedError if replaced.

        Through :meth:`FastGetter.open <s3exchange.fastget.FastGetter.open>` where it can honour
        the client's configuration (as :meth:`read_object`): botocore's ``get_object`` cost a
        loader worker 9.5 % of its time opening 16 MB shards (py-spy, 1 worker, 2 cores).
        """
        physical = self.keyspace.physical(key)
        opened = self._fast_get(
            key,
            lambda fast: fast.open(key, physical, offset=offset, stop=stop, if_match=etag),
            lambda exc: self._open_error(exc, key, offset, etag),
        )
        if opened is not None:
            return opened
        args: dict[str, Any] = {"Bucket": self.name, "Key": physical}
        if offset or stop is not None:
            args["Range"] = f"bytes={offset}-{'' if stop is None else stop - 1}"
        if etag:
            args["IfMatch"] = etag
        try:
            response = self.client.get_object(**args)
        except ClientError as exc:
            error = self._open_error(exc, key, offset, etag)
            raise error from (None if isinstance(error, ObjectChangedError) else exc)
        except BotoCoreError as exc:
            raise translate(exc, key, "GetObject") from exc
        length = response.get("ContentLength")
        return OpenedBody(
            body=response["Body"],
            size=None if length is None else offset + int(length),
            etag=response.get("ETag"),
            content_type=response.get("ContentType"),
            metadata=dict(response.get("Metadata") or {}),
        )

    @staticmethod
    def _open_error(exc: ClientError, key: str, offset: int, etag: str | None) -> Exception:
        """A GET's error response as ours: a failed ``If-Match``, or a range past the end of
        a resumed read, means the object changed."""
        if etag and error_code(exc) in PRECONDITION_CODES:
            return ObjectChangedError(key=key, etag=etag)
        if error_code(exc) == "InvalidRange" and offset:
            return ObjectChangedError(key=key, etag=etag)
        return translate(exc, key, "GetObject")

    def read_object(
        self,
        key: str,
        *,
        retry: RetryPolicy | None = None,
        byte_range: tuple[int, int] | None = None,
        if_match: str | None = None,
    ) -> tuple[bytes, str | None]:
        """The whole object and its ETag in one GET, for many small objects.

        Goes through :class:`~s3exchange.fastget.FastGetter` (~10x less client CPU than
        botocore per 16 KiB GET) where it can honour the client's configuration, else through
        botocore; either way a body that breaks is resumed under ``retry`` and errors are
        translated as for :meth:`open`. ``byte_range`` (start, stop; not empty) reads only
        those bytes, one shard member's (:mod:`~s3exchange.shard_index`); ``if_match`` refuses
        an object whose ETag differs (ObjectChangedError).
        """
        if byte_range is not None and not 0 <= byte_range[0] < byte_range[1]:
            raise ValueError(f"byte_range must be a non-empty (start, stop), got {byte_range}")
        physical = self.keyspace.physical(key)
        read = self._fast_get(
            key,
            lambda fast: fast.read(key, physical, retry, byte_range=byte_range, if_match=if_match),
            lambda exc: translate(exc, key, "GetObject"),
        )
        if read is not None:
            return read
        start, stop = byte_range if byte_range is not None else (0, None)
        opener = self.range_opener(key, start, stop, if_match)
        with ObjectStream(key, opener, retry=retry) as stream:
            return stream.read(), stream.etag

    def range_opener(
        self, key: str, start: int = 0, stop: int | None = None, if_match: str | None = None
    ) -> Opener:
        """``opener(offset, etag)`` for an :class:`~s3exchange.body.ObjectStream` over bytes
        ``[start, stop)`` of ``key``: offsets and size count from ``start``."""

        def opener(offset: int, etag: str | None) -> OpenedBody:
            opened = self.open(key, start + offset, etag or if_match, stop=stop)
            size = None if opened.size is None else opened.size - start
            return dataclasses.replace(opened, size=size)

        return opener

    def _fast_get(
        self,
        key: str,
        call: Callable[[FastGetter], _T | None],
        mapped: Callable[[ClientError], Exception],
    ) -> _T | None:
        """``call`` on this process's fast GET path, its error responses raised as ``mapped``
        says; None when there is no fast path, ``call`` gave None, or the bucket redirected
        (botocore's redirector learns the bucket's region: the caller goes through it)."""
        fast = self._fast_getter()
        if fast is None:
            return None
        try:
            return call(fast)
        except ClientError as exc:
            if error_code(exc) not in REDIRECT_CODES:
                error = mapped(exc)
                raise error from (None if isinstance(error, ObjectChangedError) else exc)
            log.debug("fast GET of %r redirected (%s); using botocore", key, error_code(exc))
            self._fast = None
        except BotoCoreError as exc:
            raise translate(exc, key, "GetObject") from exc
        return None

    def _fast_init(self) -> None:
        self._fast = None
        self._fast_pid = -1  # the process _fast was built in; -1: not decided yet

    def _fast_getter(self) -> FastGetter | None:
        """This process's fast GET path for this bucket, or None to use botocore.

        Decided once per process, like :attr:`client`, by the first thread to ask; a forked
        process copies its parent's (:meth:`FastGetter.for_this_process`) where it can.
        """
        if self._fast_pid != os.getpid():
            with _ProcessSetup.lock:
                if self._fast_pid != os.getpid():
                    inherited = self._fast.for_this_process() if self._fast is not None else None
                    self._fast = inherited or FastGetter.for_client(self.client, self.name)
                    self._fast_pid = os.getpid()
        return self._fast

    def read_bytes(self, key: str) -> tuple[bytes, str | None]:
        """The whole (small) object and its ETag, e.g. a root manifest about to be replaced."""
        opened = self.open(key)
        try:
            return opened.body.read(), opened.etag
        finally:
            opened.body.close()

    def head(self, key: str) -> dict[str, Any]:
        """Size, ETag, content type and metadata of ``key``."""
        try:
            response = self.client.head_object(Bucket=self.name, Key=self.keyspace.physical(key))
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, key, "HeadObject") from exc
        return dict(response)

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    def list_objects(self, prefix: str = "") -> Iterator[ListedObject]:
        """Every object under ``prefix`` (logical), page by page, lazily."""
        paginator = self.client.get_paginator("list_objects_v2")
        physical = self.keyspace.physical_prefix(prefix)
        try:
            for page in paginator.paginate(Bucket=self.name, Prefix=physical):
                for obj in page.get("Contents", []):
                    listed: ListedObject = {
                        "key": self.keyspace.logical(obj["Key"]),
                        "size": int(obj.get("Size", 0)),
                    }
                    if "ETag" in obj:
                        listed["etag"] = obj["ETag"]
                    if "LastModified" in obj:
                        listed["last_modified"] = obj["LastModified"].isoformat()
                    yield listed
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, prefix, "ListObjectsV2") from exc

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
        """PUT a small object in one request; returns its ETag. Conditions raise ClientError."""
        args: dict[str, Any] = {
            "Bucket": self.name,
            "Key": self.keyspace.physical(key),
            "Body": body,
        }
        if content_type:
            args["ContentType"] = content_type
        if if_match:
            args["IfMatch"] = if_match
        if if_none_match:
            args["IfNoneMatch"] = "*"
        if metadata:
            args["Metadata"] = metadata
        try:
            response = self.client.put_object(**args)
        except ClientError as exc:
            if if_match or if_none_match:
                raise  # the caller tells a lost race from a failure
            raise translate(exc, key, "PutObject") from exc
        except BotoCoreError as exc:
            raise translate(exc, key, "PutObject") from exc
        etag: str | None = response.get("ETag")
        return etag

    def delete(self, key: str) -> None:
        """Delete one key (S3 answers success for a key that does not exist)."""
        try:
            self.client.delete_object(Bucket=self.name, Key=self.keyspace.physical(key))
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, key, "DeleteObject") from exc

    def delete_many(
        self, keys: Iterable[str], *, batch_size: int = DELETE_BATCH
    ) -> tuple[int, list[DeleteFailure]]:
        """Delete ``batch_size`` keys a request; returns (deleted count, per-key failures)."""
        deleted = 0
        failures: list[DeleteFailure] = []
        batch: list[str] = []

        def flush() -> None:
            nonlocal deleted
            if not batch:
                return
            objects = [{"Key": self.keyspace.physical(k)} for k in batch]
            try:
                response = self.client.delete_objects(
                    Bucket=self.name,
                    Delete={"Objects": objects, "Quiet": True},  # type: ignore[typeddict-item]
                )
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, batch[0], "DeleteObjects") from exc
            errors = response.get("Errors", [])
            for err in errors:
                failures.append(
                    {
                        "key": self.keyspace.logical(err.get("Key", "")),
                        "code": err.get("Code", ""),
                        "message": err.get("Message", ""),
                    }
                )
            deleted += len(batch) - len(errors)
            batch.clear()

        for key in keys:
            batch.append(key)
            if len(batch) >= batch_size:
                flush()
        flush()
        return deleted, failures

    # -- multipart uploads ---------------------------------------------------------------------

    def _request(self, operation: str, key: str, method: Any, **args: Any) -> Any:
        """``method(Bucket=..., Key=physical key, **args)``, errors translated."""
        try:
            return method(Bucket=self.name, Key=self.keyspace.physical(key), **args)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, key, operation) from exc

    def create_multipart_upload(self, key: str, *, content_type: str | None = None) -> str:
        """Start an upload of ``key``; returns its id."""
        extra = {"ContentType": content_type} if content_type else {}
        create = self.client.create_multipart_upload
        response = self._request("CreateMultipartUpload", key, create, **extra)
        return str(response["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, body: bytes | bytearray) -> str:
        """Upload part ``number`` (1-based); returns its ETag."""
        response = self._request(
            "UploadPart",
            key,
            self.client.upload_part,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return str(response["ETag"])

    def complete_multipart_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str | None:
        """Assemble the ``(number, etag)`` parts in number order; returns the object's ETag."""
        listed = [{"PartNumber": number, "ETag": etag} for number, etag in sorted(parts)]
        response = self._request(
            "CompleteMultipartUpload",
            key,
            self.client.complete_multipart_upload,
            UploadId=upload_id,
            MultipartUpload={"Parts": listed},
        )
        etag: str | None = response.get("ETag")
        return etag

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Drop an upload and its stored parts; one completed or aborted meanwhile is no error."""
        try:
            self.client.abort_multipart_upload(
                Bucket=self.name, Key=self.keyspace.physical(key), UploadId=upload_id
            )
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":
                raise translate(exc, key, "AbortMultipartUpload") from exc
        except BotoCoreError as exc:
            raise translate(exc, key, "AbortMultipartUpload") from exc

    def list_multipart_uploads(self, prefix: str) -> Iterator[PendingUpload]:
        """Uploads under ``prefix`` (logical) neither completed nor aborted, lazily."""
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            pages = paginator.paginate(
                Bucket=self.name, Prefix=self.keyspace.physical_prefix(prefix)
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    yield PendingUpload(
                        key=self.keyspace.logical(upload["Key"]),
                        upload_id=upload["UploadId"],
                        initiated=upload["Initiated"],
                    )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, prefix, "ListMultipartUploads") from exc
