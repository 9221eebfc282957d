"""Domain errors: one hierarchy under :class:`S3ExchangeError`, each naming what it is about."""

from __future__ import annotations


class S3ExchangeError(Exception):
    """Base class of every error this library raises on purpose.

    Context first, as each class names it (``ObjectNotFoundError(key)``); the context is kept
    as given, never guessed from its text. ``cls(message=text)`` rebuilds any of them from
    one finished message, context ``None``: PyTorch's DataLoader does exactly that when it
    re-raises a worker's exception in the main process (it calls ``type(exc)(message=...)``
    for classes with a ``message`` attribute), so the domain type and the text survive.
    """

    def __init__(self, *args: object, message: str | None = None) -> None:
        super().__init__(*((message,) if message is not None else args))

    @property
    def message(self) -> str:
        """The error's text (its presence makes the DataLoader re-raise with ``message=``)."""
        return str(self)


class _KeyedError(S3ExchangeError):
    """An error about one key, with a reason; ``template`` words the message."""

    template = "{key!r}: {reason}"

    def __init__(
        self, key: str | None = None, reason: str | None = None, *, message: str | None = None
    ) -> None:
        self.key = key
        self.reason = reason
        if message is None:
            message = key if reason is None else self.template.format(key=key, reason=reason)
        super().__init__(message)


class MissingPlaceholderError(S3ExchangeError, KeyError):
    """A key template names a ``{placeholder}`` that no variable fills."""

    def __init__(
        self,
        placeholder: str | None = None,
        template: str | None = None,
        *,
        message: str | None = None,
    ) -> None:
        self.placeholder = placeholder
        self.template = template
        if message is None:
            message = placeholder
            if template is not None:
                message = f"missing placeholder {{{placeholder}}} in key template {template!r}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InvalidKeyError(_KeyedError, ValueError):
    """A key or key template cannot name an S3 object."""

    template = "invalid key {key!r}: {reason}"


class ObjectNotFoundError(S3ExchangeError, KeyError):
    """The object at ``key`` does not exist (any key, a newline in it included)."""

    def __init__(
        self, key: str | None = None, bucket: str | None = None, *, message: str | None = None
    ) -> None:
        self.key = key
        self.bucket = bucket
        if message is None:
            where = f" in bucket {bucket!r}" if bucket else ""
            message = f"{self._what} not found: {key!r}{where}"
        super().__init__(message)

    _what = "object"

    def __str__(self) -> str:
        return str(self.args[0])


class ManifestNotFoundError(ObjectNotFoundError):
    """The manifest at ``key`` does not exist."""

    _what = "manifest"


class InvalidManifestError(S3ExchangeError, ValueError):
    """A manifest line (or the manifest graph) is not valid; names the key and 1-based line."""

    def __init__(
        self,
        key: str | None = None,
        reason: str | None = None,
        line: int | None = None,
        *,
        message: str | None = None,
    ) -> None:
        self.key = key
        self.line = line
        self.reason = reason
        if message is None:
            where = key if key is not None else "<entries>"
            at = f" line {line}" if line is not None else ""
            message = f"invalid manifest {where!r}{at}: {reason}" if reason else key
        super().__init__(message)


class _ShardError(S3ExchangeError):
    """An error about one archive and, where known, one of its members."""

    verb = "use"

    def __init__(
        self,
        archive_key: str | None = None,
        reason: str | None = None,
        member_path: str | None = None,
        *,
        message: str | None = None,
    ) -> None:
        self.archive_key = archive_key
        self.member_path = member_path
        self.reason = reason
        if message is None:
            member = f" member {member_path!r}" if member_path is not None else ""
            message = archive_key
            if reason is not None:
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

    template = "integrity check failed for {key!r}: {reason}"


class ObjectChangedError(S3ExchangeError):
    """An object was replaced while it was being read (resuming would mix two versions), or
    since the manifest that lists it was written (its ETag differs from the entry's)."""

    def __init__(
        self,
        key: str | None = None,
        etag: str | None = None,
        *,
        reason: str | None = None,
        message: str | None = None,
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
        key: str | None = None,
        offset: int | None = None,
        attempts: int | None = None,
        cause: BaseException | None = None,
        *,
        message: str | None = None,
    ) -> None:
        self.key = key
        self.offset = offset
        self.attempts = attempts
        if message is None:
            message = key
            if offset is not None:
                message = (
                    f"reading {key!r} failed at byte {offset} after {attempts} attempts: {cause!r}"
                )
        super().__init__(message)


class UploadError(_KeyedError):
    """An upload failed; the partial upload was aborted and nothing was written."""

    template = "upload of {key!r} failed and was aborted: {reason}"


class ConcurrentModificationError(_KeyedError):
    """A conditional write lost its race too many times, or the server ignores conditions."""

    template = "concurrent update of {key!r} failed: {reason}"


class DeleteError(S3ExchangeError):
    """Some keys of a batch delete failed; ``errors`` lists (key, code, message)."""

    def __init__(
        self, errors: list[tuple[str, str, str]] | str | None = None, *, message: str | None = None
    ) -> None:
        if isinstance(errors, str):
            errors, message = None, errors
        self.errors: list[tuple[str, str, str]] = errors or []
        if message is None:
            first = "; ".join(f"{k!r}: {c} {m}" for k, c, m in self.errors[:5])
            more = f" (+{len(self.errors) - 5} more)" if len(self.errors) > 5 else ""
            message = f"{len(self.errors)} keys could not be deleted: {first}{more}"
        super().__init__(message)


class StorageError(S3ExchangeError):
    """An S3 request failed for a reason the library cannot map to a narrower error."""

    def __init__(
        self,
        key: str | None = None,
        operation: str | None = None,
        code: str | None = None,
        reason: str | None = None,
        *,
        message: str | None = None,
    ) -> None:
        self.key = key
        self.operation = operation
        self.code = code
        if message is None:
            message = key if operation is None else f"{operation} {key!r} failed: {code} {reason}"
        super().__init__(message)


class AccessDeniedError(StorageError):
    """The credentials were rejected or lack permission for the request."""
