"""Domain errors: one hierarchy under :class:`S3ExchangeError`, each naming what it is about.

Message first, context keyword-only (httpx's style): ``ObjectNotFoundError(key="a.wav")``
words its own message from the context; ``ObjectNotFoundError("text")`` keeps the text as
given, context ``None``. So ``type(exc)(str(exc))`` rebuilds any of them with type and text
intact, which is what PyTorch's DataLoader does when it re-raises a worker's exception in the
main process, and what unpickling does (``args`` is always ``(message,)``). Nothing is ever
guessed from the text::

    S3ExchangeError
    ├── MissingPlaceholderError      (also KeyError)   a {placeholder} no variable fills
    ├── InvalidKeyError              (also ValueError) a key that cannot name an object
    ├── ObjectNotFoundError          (also KeyError)   no object at the key
    │   └── ManifestNotFoundError                      no manifest at the key
    ├── InvalidManifestError         (also ValueError) a bad manifest line or graph
    ├── ShardWriteError                                an archive that cannot be built
    ├── ShardReadError                                 a corrupt or disagreeing archive
    ├── IntegrityError                                 bytes that disagree with their entry
    ├── ObjectChangedError                             replaced while (or since) listed
    ├── ReadInterruptedError                           a read past its retry budget
    ├── UploadError                                    an upload failed and was aborted
    ├── ConcurrentModificationError                    a conditional write kept losing
    ├── DeleteError                                    some keys of a batch delete failed
    ├── StorageError                                   any other failed S3 request
    │   └── AccessDeniedError                          rejected or missing credentials
    ├── PackError                                      a pack job that cannot start
    └── PackConflictError                              a pack that disagrees with the bucket

``s3exchange_torch.SampleTooLargeError`` derives from :class:`S3ExchangeError` too. The CLI
maps these to exit codes (``s3exchange.cli._common.EXIT_MEANINGS``).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AccessDeniedError",
    "ConcurrentModificationError",
    "DeleteError",
    "IntegrityError",
    "InvalidKeyError",
    "InvalidManifestError",
    "ManifestNotFoundError",
    "MissingPlaceholderError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "PackConflictError",
    "PackError",
    "ReadInterruptedError",
    "S3ExchangeError",
    "ShardReadError",
    "ShardWriteError",
    "StorageError",
    "UploadError",
]


class S3ExchangeError(Exception):
    """Base class of every error this library raises on purpose; ``cls(message)`` builds any."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class _KeyedError(S3ExchangeError):
    """An error about one key, with a reason; ``_wording`` words the message."""

    _wording = "{key!r}: {reason}"

    def __init__(
        self, message: str | None = None, *, key: str | None = None, reason: str | None = None
    ) -> None:
        self.key = key
        self.reason = reason
        if message is None:
            message = self._wording.format(key=key, reason=reason)
        super().__init__(message)


class MissingPlaceholderError(S3ExchangeError, KeyError):
    """A key template names a ``{placeholder}`` that no variable fills."""

    def __init__(
        self,
        message: str | None = None,
        *,
        placeholder: str | None = None,
        template: str | None = None,
    ) -> None:
        self.placeholder = placeholder
        self.template = template
        if message is None:
            message = f"missing placeholder {{{placeholder}}} in key template {template!r}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InvalidKeyError(_KeyedError, ValueError):
    """A key or key template cannot name an S3 object."""

    _wording = "invalid key {key!r}: {reason}"


class ObjectNotFoundError(S3ExchangeError, KeyError):
    """The object at ``key`` does not exist (any key, a newline in it included)."""

    _what = "object"

    def __init__(
        self, message: str | None = None, *, key: str | None = None, bucket: str | None = None
    ) -> None:
        self.key = key
        self.bucket = bucket
        if message is None:
            where = f" in bucket {bucket!r}" if bucket else ""
            message = f"{self._what} not found: {key!r}{where}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ManifestNotFoundError(ObjectNotFoundError):
    """The manifest at ``key`` does not exist."""

    _what = "manifest"


class InvalidManifestError(S3ExchangeError, ValueError):
    """A manifest line (or the manifest graph) is not valid; names the key and 1-based line."""

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | None = None,
        reason: str | None = None,
        line: int | None = None,
    ) -> None:
        self.key = key
        self.reason = reason
        self.line = line
        if message is None:
            where = key if key is not None else "<entries>"
            at = f" line {line}" if line is not None else ""
            message = f"invalid manifest {where!r}{at}: {reason}"
        super().__init__(message)


class _ShardError(S3ExchangeError):
    """An error about one archive and, where known, one of its members."""

    verb = "use"

    def __init__(
        self,
        message: str | None = None,
        *,
        archive_key: str | None = None,
        reason: str | None = None,
        member_path: str | None = None,
    ) -> None:
        self.archive_key = archive_key
        self.reason = reason
        self.member_path = member_path
        if message is None:
            member = f" member {member_path!r}" if member_path is not None else ""
            message = f"cannot {self.verb} shard {archive_key!r}{member}: {reason}"
        super().__init__(message)


class ShardWriteError(_ShardError):
    """A shard archive could not be built from its items; nothing was uploaded."""

    verb = "write"


class ShardReadError(_ShardError):
    """A shard archive is corrupt, truncated or disagrees with its manifest."""

    verb = "read"


class IntegrityError(_KeyedError):
    """An object's bytes disagree with the size or checksum its manifest entry records."""

    _wording = "integrity check failed for {key!r}: {reason}"


class ObjectChangedError(S3ExchangeError):
    """An object was replaced while it was being read (resuming would mix two versions), or
    since the manifest that lists it was written (its ETag differs from the entry's)."""

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | None = None,
        etag: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.key = key
        self.etag = etag
        self.reason = reason
        if message is None:
            why = reason or "changed while it was read"
            message = f"object {key!r} {why} (expected ETag {etag})"
        super().__init__(message)


class ReadInterruptedError(S3ExchangeError):
    """A streamed read failed and could not be resumed within the retry budget."""

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | None = None,
        offset: int | None = None,
        attempts: int | None = None,
        cause: BaseException | None = None,
    ) -> None:
        self.key = key
        self.offset = offset
        self.attempts = attempts
        if message is None:
            message = (
                f"reading {key!r} failed at byte {offset} after {attempts} attempts: {cause!r}"
            )
        super().__init__(message)


class UploadError(_KeyedError):
    """An upload failed; the partial upload was aborted and nothing was written."""

    _wording = "upload of {key!r} failed and was aborted: {reason}"


class ConcurrentModificationError(_KeyedError):
    """A conditional write lost its race too many times, or the server ignores conditions."""

    _wording = "concurrent update of {key!r} failed: {reason}"


class DeleteError(S3ExchangeError):
    """Some keys of a batch delete failed; ``errors`` lists (key, code, message)."""

    def __init__(
        self, message: str | None = None, *, errors: Sequence[tuple[str, str, str]] = ()
    ) -> None:
        self.errors = list(errors)
        if message is None:
            first = "; ".join(f"{k!r}: {c} {m}" for k, c, m in self.errors[:5])
            more = f" (+{len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
            message = f"{len(self.errors)} keys could not be deleted: {first}{more}"
        super().__init__(message)


class StorageError(S3ExchangeError):
    """An S3 request failed for a reason the library cannot map to a narrower error."""

    def __init__(
        self,
        message: str | None = None,
        *,
        key: str | None = None,
        operation: str | None = None,
        code: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.key = key
        self.operation = operation
        self.code = code
        self.reason = reason
        if message is None:
            message = f"{operation} {key!r} failed: {code} {reason}"
        super().__init__(message)


class AccessDeniedError(StorageError):
    """The credentials were rejected or lack permission for the request."""


class PackError(S3ExchangeError):
    """The pack job cannot start: no source directory, no files, or bad options."""


class PackConflictError(S3ExchangeError):
    """What the manifest or bucket holds disagrees with this plan; nothing is mixed.

    ``problems`` lists each disagreement (the message shows the first two), ``hint`` says what
    to do about them."""

    def __init__(
        self,
        message: str | None = None,
        *,
        problems: Sequence[str] = (),
        hint: str | None = None,
    ) -> None:
        self.problems = list(problems)
        self.hint = hint
        if message is None:
            shown = "; ".join(self.problems[:2])
            more = f" (+{len(self.problems) - 2} more)" if len(self.problems) > 2 else ""
            message = f"{shown}{more}" + (f". {hint}" if hint else "")
        super().__init__(message)
