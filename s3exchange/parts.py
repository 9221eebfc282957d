"""``append_parts``: new entries go to a part manifest; the root gains a ``manifest_ref``.

Concurrent writers must not lose parts, so the root is replaced with a conditional write
(``IfMatch`` on its ETag, ``IfNoneMatch: *`` when creating it) and re-read on a lost race. The
update is idempotent: a retry after a request that had in fact succeeded finds its reference
already present and adds nothing. Servers that ignore conditional headers are detected once per
bucket with a probe and refused with ConcurrentModificationError, unless the store was built with
``conditional_writes="off"`` (a single writer accepts the race knowingly).
"""

from __future__ import annotations

import logging
import posixpath
import time
import uuid
from datetime import UTC, datetime
from typing import Literal

from botocore.exceptions import ClientError

from . import manifest
from .body import RetryPolicy
from .bucket import CONFLICT_CODES, PRECONDITION_CODES, error_code, translate
from .errors import ConcurrentModificationError, ObjectNotFoundError
from .transport import Transport
from .types import MANIFEST_CONTENT_TYPE

log = logging.getLogger(__name__)

MAX_ROOT_ATTEMPTS = 50
_ROOT_RETRY = RetryPolicy(max_attempts=MAX_ROOT_ATTEMPTS, backoff_s=0.04, max_backoff_s=1.0)
"""Pause after a lost race for the root: full jitter, 40 ms doubling up to 1 s."""
_PROBED: dict[tuple[str | None, str], bool] = {}
"""Whether each (endpoint, bucket) honours conditional writes: probed once per process, until
:func:`reset_probes`."""


def part_key(root_key: str) -> str:
    """A unique, time-ordered part key beside the root: ``<dir>/<stem>.parts/part-....jsonl``."""
    directory, name = posixpath.split(root_key)
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return posixpath.join(directory, f"{stem}.parts", f"part-{stamp}-{uuid.uuid4().hex[:12]}.jsonl")


def append_part(
    bucket: Transport, root_key: str, body: bytes, *, conditional: Literal["auto", "off"] = "auto"
) -> str:
    """Write ``body`` as a new part of ``root_key`` and reference it from the root."""
    use_conditions = conditional == "auto"
    if use_conditions:
        require_conditional_writes(bucket, root_key)
    key = part_key(root_key)
    _create(bucket, key, body, use_conditions)
    ref = manifest.dumps_entry({"kind": "manifest_ref", "key": key})
    for attempt in range(1, MAX_ROOT_ATTEMPTS + 1):
        try:
            current, etag = bucket.read_bytes(root_key)
        except ObjectNotFoundError:
            current, etag = None, None
        if current is not None and _references(current, key):
            return key
        updated = _join(current, ref)
        try:
            bucket.put(
                root_key,
                updated,
                content_type=MANIFEST_CONTENT_TYPE,
                if_match=etag if use_conditions else None,
                if_none_match=use_conditions and etag is None,
            )
            return key
        except ClientError as exc:
            if error_code(exc) not in PRECONDITION_CODES | CONFLICT_CODES:
                raise translate(exc, root_key, "PutObject") from exc
            log.debug("lost the race to update %r (attempt %d)", root_key, attempt)
            time.sleep(_ROOT_RETRY.delay(attempt))
    raise ConcurrentModificationError(
        key=root_key, reason=f"root manifest still contended after {MAX_ROOT_ATTEMPTS} attempts"
    )


def _create(bucket: Transport, key: str, body: bytes, conditional: bool) -> None:
    try:
        bucket.put(key, body, content_type=MANIFEST_CONTENT_TYPE, if_none_match=conditional)
    except ClientError as exc:
        raise translate(exc, key, "PutObject") from exc


def _references(root: bytes, key: str) -> bool:
    needle = manifest.dumps_entry({"kind": "manifest_ref", "key": key}).rstrip(b"\n")
    return any(line.strip() == needle for line in root.splitlines())


def _join(current: bytes | None, line: bytes) -> bytes:
    if not current:
        return line
    separator = b"" if current.endswith(b"\n") else b"\n"
    return current + separator + line


def require_conditional_writes(bucket: Transport, near_key: str) -> None:
    """Fail clearly when the server ignores ``IfNoneMatch`` / ``IfMatch`` (checked once)."""
    cache_key = (bucket.endpoint, bucket.name)
    supported = _PROBED.get(cache_key)
    if supported is None:
        supported = _probe(bucket, near_key)
        _PROBED[cache_key] = supported
    if not supported:
        raise ConcurrentModificationError(
            key=near_key,
            reason="this S3 server ignores conditional writes (If-None-Match / If-Match), so "
            "concurrent append_parts writers could lose parts; build the store with "
            "conditional_writes='off' if only one writer appends at a time",
        )


def reset_probes() -> None:
    """Forget which servers were probed, so the next ``append_parts`` probes again (a server
    upgraded in place; a test that changes how its server answers conditional writes)."""
    _PROBED.clear()


def _probe(bucket: Transport, near_key: str) -> bool:
    directory = posixpath.dirname(near_key)
    key = posixpath.join(directory, f".s3exchange-probe-{uuid.uuid4().hex}")
    try:
        bucket.put(key, b"1", if_none_match=True)
        try:
            bucket.put(key, b"2", if_none_match=True)
            return False
        except ClientError as exc:
            if error_code(exc) not in PRECONDITION_CODES | CONFLICT_CODES:
                raise translate(exc, key, "PutObject") from exc
        try:
            bucket.put(key, b"3", if_match='"0000000000000000000000000000dead"')
            return False
        except ClientError as exc:
            if error_code(exc) not in PRECONDITION_CODES | CONFLICT_CODES:
                raise translate(exc, key, "PutObject") from exc
        return True
    finally:
        bucket.delete(key)
