"""Domain errors: one hierarchy under :class:`S3ExchangeError`, each naming what it is about."""

from __future__ import annotations


class S3ExchangeError(Exception):
    """Base class of every error this library raises on purpose.

    Every subclass can also be built from one pre-formatted message (its other arguments
    default to ``None``): PyTorch's DataLoader re-raises a worker's exception in the main
    process as ``type(exc)(message)``, and this keeps the domain type across that boundary.
    """


class _KeyedError(S3ExchangeError):
    """An error about one key, with a reason; ``template`` words the message."""

    template = "{key!r}: {reason}"

    def __init__(self, key: str, reason: str | None = None) -> None:
        self.key = key
        self.reason = reason
        super().__init__(key if reason is None else self.template.format(key=key, reason=reason))


class MissingPlaceholderError(S3ExchangeError, KeyError):
    """A key template names a ``{placeholder}`` that no variable fills."""

    def __init__(self, placeholder: str, template: str | None = None) -> None:
        self.placeholder = placeholder
        self.template = template
        if template is None:
            super().__init__(placeholder)
        else:
            super().__init__(f"missing placeholder {{{placeholder}}} in key template {template!r}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InvalidKeyError(_KeyedError, ValueError):
    """A key or key template cannot name an S3 object."""

    template = "invalid key {key!r}: {reason}"


class ObjectNotFoundError(S3ExchangeError, KeyError):
    """The object at ``key`` does not exist.

    Built from a multi-line text (a DataLoader worker's re-raised traceback), the text is the
    message verbatim and ``key`` is None.
    """

    def __init__(self, key: str, bucket: str | None = None) -> None:
        reraised = "\n" in key
        self.key: str | None = None if reraised else key
        self.bucket = bucket
        where = f" in bucket {bucket!r}" if bucket else ""
        super().__init__(key if reraised else f"{self._what} not found: {key!r}{where}")

    _what = "object"

    def __str__(self) -> str:
        return str(self.args[0])


class ManifestNotFoundError(ObjectNotFoundError):
    """The manifest at ``key`` does not exist."""

    _what = "manifest"


class InvalidManifestError(S3ExchangeError, ValueError):
    """A manifest line (or the manifest graph) is not valid; names the key and 1-based line."""

    def __init__(self, key: str | None, reason: str | None = None, line: int | None = None) -> None:
        self.key = key
        self.line = line
        self.reason = reason
        where = key if key is not None else "<entries>"
        at = f" line {line}" if line is not None else ""
        super().__init__(f"invalid manifest {where!r}{at}: {reason}" if reason else key)


class _ShardError(S3ExchangeError):
    """An error about one archive and, where known, one of its members."""

    verb = "use"

    def __init__(
        self, archive_key: str, reason: str | None = None, member_path: str | None = None
    ) -> None:
        self.archive_key = archive_key
        self.member_path = member_path
        self.reason = reason
        member = f" member {member_path!r}" if member_path is not None else ""
        text = f"cannot {self.verb} shard {archive_key!r}{member}: {reason}"
        super().__init__(archive_key if reason is None else text)


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

    def __init__(self, key: str, etag: str | None = None, *, reason: str | None = None) -> None:
        self.key = key
        self.etag = etag
        self.reason = reason
        why = reason or "changed while it was read"
        super().__init__(f"object {key!r} {why} (expected ETag {etag})")


class ReadInterruptedError(S3ExchangeError):
    """A streamed read failed and could not be resumed within the retry budget."""

    def __init__(
        self,
        key: str,
        offset: int | None = None,
        attempts: int | None = None,
        cause: BaseException | None = None,
    ) -> None:
        self.key = key
        self.offset = offset
        self.attempts = attempts
        text = f"reading {key!r} failed at byte {offset} after {attempts} attempts: {cause!r}"
        super().__init__(key if offset is None else text)


class UploadError(_KeyedError):
    """An upload failed; the partial upload was aborted and nothing was written."""

    template = "upload of {key!r} failed and was aborted: {reason}"


class ConcurrentModificationError(_KeyedError):
    """A conditional write lost its race too many times, or the server ignores conditions."""

    template = "concurrent update of {key!r} failed: {reason}"


class DeleteError(S3ExchangeError):
    """Some keys of a batch delete failed; ``errors`` lists (key, code, message)."""

    def __init__(self, errors: list[tuple[str, str, str]] | str) -> None:
        if isinstance(errors, str):
            self.errors: list[tuple[str, str, str]] = []
            super().__init__(errors)
            return
        self.errors = errors
        first = "; ".join(f"{k!r}: {c} {m}" for k, c, m in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{len(errors)} keys could not be deleted: {first}{more}")


class StorageError(S3ExchangeError):
    """An S3 request failed for a reason the library cannot map to a narrower error."""

    def __init__(
        self,
        key: str | None,
        operation: str | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        self.key = key
        self.operation = operation
        self.code = code
        text = f"{operation} {key!r} failed: {code} {message}"
        super().__init__(key if operation is None else text)


class AccessDeniedError(StorageError):
    """The credentials were rejected or lack permission for the request."""
