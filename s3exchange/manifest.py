"""JSONL manifest format: parse, validate and serialise entry lines (no I/O).

A manifest is UTF-8 JSONL: one JSON object per line, each an entry of kind ``file``, ``shard`` or
``manifest_ref`` (see :mod:`s3exchange.types`). Lines are split on ``"\\n"`` only; a trailing
``"\\r"``, surrounding JSON whitespace and a UTF-8 BOM on line 1 are ignored, and blank lines are
skipped. Parsed entries are the plain dicts the JSON decoder built, so unknown fields (and the
order of all fields) are preserved.

Validation choices:

* Strict RFC 8259 JSON: ``NaN``/``Infinity`` literals and numbers that overflow a float are
  rejected on read, and non-finite floats on write, so every entry read can be written back.
  Duplicate object keys keep the last value, as :func:`json.loads` does.
* Integers are JSON integers (``5.0`` and ``true`` are not); sizes are ``0 ..``
  :data:`MAX_SIZE_BYTES` and counts ``0 ..`` :data:`MAX_COUNT`, so no sum of them overflows
  what an index (``len()``, a tensor) holds.
* A shard's ``compression`` is ``null`` or ``"gzip"``; ``"none"`` is accepted and normalised to
  ``None`` (the only rewriting done); ``format``, if present, is ``"tar"``.
* Errors are :class:`~s3exchange.errors.InvalidManifestError` with ``key`` and a 1-based ``line``.
  For :func:`validate_entry`, ``line`` is ``index + 1`` (the line the entry will occupy) and the
  reason starts with ``entries[index]:``.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, cast

import msgspec

from .errors import InvalidManifestError, ManifestNotFoundError, S3ExchangeError
from .types import ManifestEntry, Readable

__all__ = [
    "ENTRY_KINDS",
    "MAX_COUNT",
    "MAX_LINE_BYTES",
    "MAX_REF_DEPTH",
    "MAX_SIZE_BYTES",
    "dumps_entries",
    "dumps_entry",
    "iter_entries",
    "iter_entries_from_stream",
    "parse_line",
    "validate_entry",
    "walk_graph",
]

ENTRY_KINDS: Final = ("file", "shard", "manifest_ref")
MAX_LINE_BYTES: Final = 64 << 20
"""Longest line :func:`iter_entries_from_stream` accepts (bytes, without the ``"\\n"``)."""

MAX_SIZE_BYTES: Final = (1 << 53) - 1
"""Largest ``size_bytes`` / ``members_size_bytes``: the largest integer a JSON number holds
exactly in every reader (a double), 8 PiB, far above S3's 5 TiB object limit."""
MAX_COUNT: Final = 1 << 32
"""Largest shard ``count``: a shard of 2**32 members would hold 2 TiB of tar headers alone. A
``count`` of 2**63 once overflowed ``len(dataset)`` (OverflowError, not a domain error)."""

MAX_REF_DEPTH: Final = 64
"""Deepest ``manifest_ref`` nesting :func:`walk_graph` follows (the root is level 0).
``append_parts`` makes one level; each open level holds one HTTP body, so a hostile chain of
1,000 levels (once a RecursionError) stops here, at 64 GETs."""

_MAX_DEPTH: Final = 512
"""Deepest nesting :func:`validate_entry` accepts in a value (the reader's limit is ~900)."""

_WS: Final = " \t\r\n"
_BOM: Final = "\ufeff"
_BOM_BYTES: Final = b"\xef\xbb\xbf"


class _NonFiniteNumberError(ValueError):
    """Raised from the decoder hooks for ``NaN``/``Infinity`` and out-of-range floats."""


def _reject_constant(literal: str) -> float:
    raise _NonFiniteNumberError(f"{literal} is not valid JSON (RFC 8259 has no NaN/Infinity)")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NonFiniteNumberError(f"number {text[:40]} is out of range for a float")
    return value


# msgspec decodes a line in 0.30 us, the standard library in 0.94 (a 1M-entry manifest from
# memory: 478k -> 785k entries/s). What it refuses goes to the standard library's decoder,
# which words the error, or reads what only it takes (lone surrogate escapes): so what a
# manifest may hold, and every error, stay as they were.
_fast_decode: Final = msgspec.json.Decoder().decode
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)
_raw_decode: Final = _DECODER.raw_decode
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_ASCII_ENCODER: Final = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False)

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxdict = _repr.maxtuple = 4


def _show(value: Any) -> str:
    """A short, safe description of an offending value for an error message."""
    return f"{_repr.repr(value)} ({type(value).__name__})"


# Field rules: one code per known field of each kind; fields not listed are kept unchecked.
_NONEMPTY_STR, _STR, _UINT, _OBJECT, _TAR, _COMPRESSION, _COUNT = range(7)
_RULE_TEXT: Final = {
    _NONEMPTY_STR: "a non-empty string",
    _STR: "a string",
    _UINT: f"an integer >= 0 and <= {MAX_SIZE_BYTES}",
    _COUNT: f"an integer >= 0 and <= {MAX_COUNT}",
    _OBJECT: "a JSON object",
    _TAR: "'tar'",
    _COMPRESSION: "null, 'gzip' or 'none'",
}
_FILE_RULES: Final = {
    "key": _NONEMPTY_STR,
    "id": _STR,
    "meta": _OBJECT,
    "size_bytes": _UINT,
    "etag": _STR,
    "sha256": _STR,
    "content_type": _STR,
    "archive_key": _STR,
    "member_path": _STR,
}
_SHARD_RULES: Final = {
    "archive_key": _NONEMPTY_STR,
    "format": _TAR,
    "compression": _COMPRESSION,
    "internal_manifest_path": _STR,
    "count": _COUNT,
    "size_bytes": _UINT,
    "members_size_bytes": _UINT,
    "etag": _STR,
    "index_key": _NONEMPTY_STR,
}
_REF_RULES: Final = {"key": _NONEMPTY_STR}
_KIND_RULES: Final = {
    "file": ("key", _FILE_RULES),
    "shard": ("archive_key", _SHARD_RULES),
    "manifest_ref": ("key", _REF_RULES),
}


def _check_fields(entry: dict[str, Any]) -> str | None:
    """Check ``entry``'s kind and known fields; return the reason it is invalid, or None.

    Normalises ``compression: "none"`` to ``None`` in place.
    """
    kind = entry.get("kind")
    spec = _KIND_RULES.get(kind) if isinstance(kind, str) else None
    if spec is None:
        if "kind" not in entry:
            return "missing field 'kind'"
        return f"unknown kind {_show(kind)}; expected 'file', 'shard' or 'manifest_ref'"
    required, rules = spec
    if required not in entry:
        return f"{kind} entry is missing required field {required!r}"
    for name, value in entry.items():
        rule = rules.get(name)
        if rule is None:
            continue
        # exact-type fast paths for what JSON produces (a third of the parse time before)
        cls = value.__class__
        if rule == _STR:
            if cls is str:
                continue
        elif rule == _UINT:
            if cls is int and 0 <= value <= MAX_SIZE_BYTES:
                continue
        elif rule == _NONEMPTY_STR and cls is str and value:
            continue
        problem = _check_field(name, value, rule)
        if problem is not None:
            return problem
    if kind == "shard" and entry.get("compression") == "none":
        entry["compression"] = None
    return None


def _check_field(name: str, value: Any, rule: int) -> str | None:
    """The reason ``value`` breaks ``rule`` for field ``name``, or None."""
    if rule == _STR:
        ok = isinstance(value, str)
    elif rule in (_UINT, _COUNT):
        top = MAX_COUNT if rule == _COUNT else MAX_SIZE_BYTES
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top
    elif rule == _NONEMPTY_STR:
        ok = isinstance(value, str) and value != ""
    elif rule == _OBJECT:
        ok = isinstance(value, dict)
    elif rule == _TAR:
        ok = isinstance(value, str) and value == "tar"
    else:  # _COMPRESSION
        ok = value is None or (isinstance(value, str) and value in ("gzip", "none"))
    return None if ok else f"field {name!r} must be {_RULE_TEXT[rule]}, got {_show(value)}"


_JSON_TYPE_NAMES: Final = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def parse_line(line: bytes | str, *, key: str | None, lineno: int) -> ManifestEntry | None:
    """Parse one manifest line; None if it is blank (only spaces, tabs, ``\\r``, ``\\n``).

    Raises InvalidManifestError naming ``key`` and ``lineno`` for invalid UTF-8 or JSON, a value
    that is not an object, an unknown kind, or a missing or ill-typed field.
    """
    try:
        obj = _fast_decode(line)
    except (ValueError, RecursionError):
        obj = None
    if obj.__class__ is not dict:
        obj = _decode_object(line, key, lineno)
        if obj is None:
            return None
    problem = _check_fields(obj)
    if problem is not None:
        raise InvalidManifestError(key=key, reason=problem, line=lineno)
    return cast("ManifestEntry", obj)


def _decode_object(line: bytes | str, key: str | None, lineno: int) -> dict[str, Any] | None:
    """The line's JSON object by the standard library's decoder, None for a blank line; or
    InvalidManifestError saying what is wrong with it."""
    if isinstance(line, str):
        text = line
    else:
        try:
            text = str(line, "utf-8")
        except UnicodeDecodeError as exc:
            reason = f"not valid UTF-8 at byte {exc.start}: {exc.reason}"
            raise InvalidManifestError(key=key, reason=reason, line=lineno) from None
    try:
        try:
            obj, end = _raw_decode(text)
        except json.JSONDecodeError:
            start = len(text) - len(text.lstrip(_WS))
            if start == len(text):
                return None
            if start == 0:
                raise
            obj, end = _raw_decode(text, start)
    except json.JSONDecodeError as exc:
        reason = f"invalid JSON: {exc.msg} at column {exc.pos + 1}"
        raise InvalidManifestError(key=key, reason=reason, line=lineno) from None
    except RecursionError:
        raise InvalidManifestError(
            key=key, reason="invalid JSON: nested too deeply", line=lineno
        ) from None
    except ValueError as exc:  # NaN/Infinity, float overflow, integer with too many digits
        raise InvalidManifestError(key=key, reason=f"invalid JSON: {exc}", line=lineno) from None
    if end != len(text) and text[end:].strip(_WS):
        reason = f"invalid JSON: extra data after the object at column {end + 1}"
        raise InvalidManifestError(key=key, reason=reason, line=lineno)
    if type(obj) is not dict:
        reason = f"expected a JSON object, got {_JSON_TYPE_NAMES.get(type(obj), 'a value')}"
        raise InvalidManifestError(key=key, reason=reason, line=lineno)
    return obj


def iter_entries(lines: Iterable[bytes | str], *, key: str | None) -> Iterator[ManifestEntry]:
    """Parse ``lines`` lazily, numbering them from 1 and skipping blank ones.

    Lines may end in ``"\\n"`` or ``"\\r\\n"`` or not at all; a UTF-8 BOM on line 1 is ignored.
    """
    it = iter(lines)
    first = next(it, None)
    if first is None:
        return
    if isinstance(first, str):
        first = first.removeprefix(_BOM)
    else:
        first = bytes(first).removeprefix(_BOM_BYTES)
    entry = parse_line(first, key=key, lineno=1)
    if entry is not None:
        yield entry
    parse = parse_line
    for lineno, line in enumerate(it, 2):
        entry = parse(line, key=key, lineno=lineno)
        if entry is not None:
            yield entry


def _stream_lines(
    stream: Readable, key: str | None, chunk_size: int, max_line_bytes: int
) -> Iterator[bytes]:
    """Split ``stream`` into lines (without ``"\\n"``), holding at most one chunk + one line."""
    pending: list[bytes] = []  # pieces of the line that has not ended yet
    pending_len = 0
    lineno = 0  # lines yielded so far
    check_each = chunk_size > max_line_bytes  # else only a line joined from pieces can be long
    too_long = f"line is longer than {max_line_bytes} bytes"
    while chunk := stream.read(chunk_size):
        parts = chunk.split(b"\n")
        tail = parts.pop()
        if parts:
            if pending:
                pending.append(parts[0])
                parts[0] = b"".join(pending)
                pending.clear()
                pending_len = 0
            if check_each or len(parts[0]) > max_line_bytes:
                for part in parts:
                    lineno += 1
                    if len(part) > max_line_bytes:
                        raise InvalidManifestError(key=key, reason=too_long, line=lineno)
                    yield part
            else:
                lineno += len(parts)
                yield from parts
        if tail:
            pending.append(tail)
            pending_len += len(tail)
            if pending_len > max_line_bytes:
                raise InvalidManifestError(key=key, reason=too_long, line=lineno + 1)
    if pending:
        yield b"".join(pending)


def iter_entries_from_stream(
    stream: Readable,
    *,
    key: str | None,
    chunk_size: int = 1 << 20,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[ManifestEntry]:
    """Parse a manifest from any object with ``read(n)`` (a file, an HTTP body), lazily.

    Memory stays within about ``chunk_size`` plus the longest line; a line longer than
    ``max_line_bytes`` raises InvalidManifestError.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return iter_entries(_stream_lines(stream, key, chunk_size, max_line_bytes), key=key)


def _json_value_problem(value: Any, name: str) -> str | None:
    """Why ``value`` (field ``name``) cannot be written as JSON that reads back equal, or None.

    Allowed: None, bool, int, finite float, str, list/tuple (written as arrays), dict with str
    keys. Walks iteratively, so deep or circular values give an error, not a RecursionError.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    ancestors: set[int] = set()
    exits: list[tuple[int, int]] = []  # (stack length at which to leave, container id)
    while stack:
        while exits and len(stack) <= exits[-1][0]:
            ancestors.discard(exits.pop()[1])
        item, path, depth = stack.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if math.isfinite(item):
                continue
            return f"field {name!r}{path}: {item!r} is not valid JSON"
        if isinstance(item, list | tuple | dict):
            if id(item) in ancestors:
                return f"field {name!r}{path}: circular reference"
            if depth >= _MAX_DEPTH:
                return f"field {name!r}{path}: nested deeper than {_MAX_DEPTH} levels"
            exits.append((len(stack), id(item)))
            ancestors.add(id(item))
            if isinstance(item, dict):
                for k, v in item.items():
                    if not isinstance(k, str):
                        return f"field {name!r}{path}: object key {_show(k)} is not a string"
                    stack.append((v, f"{path}[{k!r}]", depth + 1))
            else:
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
            continue
        return f"field {name!r}{path}: value of type {type(item).__name__} is not JSON"
    return None


def validate_entry(
    entry: Mapping[str, Any], *, key: str | None = None, index: int | None = None
) -> ManifestEntry:
    """Validate a user-supplied entry and return it as a new plain dict, ready to write.

    Checks the same rules as :func:`parse_line`, and that every value can be written as JSON.
    Errors name ``key`` and ``line=index + 1``, and their reason starts with ``entries[index]:``.
    """
    line = None if index is None else index + 1
    where = "" if index is None else f"entries[{index}]: "
    if not isinstance(entry, Mapping):
        reason = f"{where}expected a mapping, got {_show(entry)}"
        raise InvalidManifestError(key=key, reason=reason, line=line)
    result: dict[str, Any] = dict(entry)
    problem = _check_fields(result)
    if problem is None:
        for name, value in result.items():
            if not isinstance(name, str):
                problem = f"field name {_show(name)} is not a string"
            else:
                problem = _json_value_problem(value, name)
            if problem is not None:
                break
    if problem is not None:
        raise InvalidManifestError(key=key, reason=where + problem, line=line)
    return cast("ManifestEntry", result)


def dumps_entry(entry: Mapping[str, Any]) -> bytes:
    """Serialise one entry as a compact UTF-8 JSON line ending in ``b"\\n"``.

    Does not check the entry's fields (call :func:`validate_entry` first); a value JSON cannot
    hold raises InvalidManifestError. Strings with lone surrogates are written ``\\u``-escaped.
    """
    obj = entry if isinstance(entry, dict) else dict(entry)
    try:
        text = _ENCODER.encode(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidManifestError(key=None, reason=f"cannot serialise entry: {exc}") from None
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (_ASCII_ENCODER.encode(obj) + "\n").encode("ascii")


def dumps_entries(entries: Iterable[Mapping[str, Any]]) -> Iterator[bytes]:
    """Serialise ``entries`` lazily, one line each (see :func:`dumps_entry`)."""
    for entry in entries:
        yield dumps_entry(entry)


# -- the manifest graph ------------------------------------------------------------------------

ManifestReader = Callable[[str], Iterable[ManifestEntry]]
"""``read(key)``: a manifest's own entries, lazily (its references not followed)."""
GraphErrorHandler = Callable[[str, S3ExchangeError], None]
"""``on_error(manifest_key, error)``: record a missing or invalid manifest, or re-raise."""


def walk_graph(
    read: ManifestReader,
    root: str | None,
    entries: Iterable[ManifestEntry] | None = None,
    *,
    on_error: GraphErrorHandler | None = None,
) -> Iterator[tuple[str | None, ManifestEntry]]:
    """``(manifest key, entry)`` for ``root`` and every manifest it references, depth-first.

    The one traversal behind reading, listing, compaction, ``verify``, ``manifest stats``,
    deletion and the dataset. ``manifest_ref`` entries are yielded, then followed, with an
    explicit stack (no recursion). Each manifest is read **once per walk**: a manifest
    referenced twice (a diamond, not a cycle) contributes its entries at its first reference
    only, so 13 manifests each referencing the next twice cost 13 GETs, not 8,191. A cycle,
    or nesting deeper than :data:`MAX_REF_DEPTH`, raises InvalidManifestError naming the
    manifest that holds the reference. ``entries`` in hand replace reading ``root`` (then
    ``None``). With ``on_error``, a missing or invalid manifest is reported and the walk goes
    on with the next entry of the manifest referencing it.
    """
    first = iter(entries) if entries is not None else iter(read(cast(str, root)))
    stack: list[tuple[str | None, Iterator[ManifestEntry]]] = [(root, first)]
    open_keys: list[str | None] = [root]
    seen: set[str | None] = {root}
    try:
        while stack:
            key, it = stack[-1]
            try:
                entry = next(it, None)
            except (ManifestNotFoundError, InvalidManifestError) as exc:
                if on_error is None:
                    raise
                on_error(cast(str, key), exc)
                entry = None
            if entry is None:
                _close(stack.pop()[1])
                open_keys.pop()
                continue
            yield key, entry
            if entry["kind"] != "manifest_ref":
                continue
            child = entry["key"]
            problem = None
            if child in open_keys:
                chain = " -> ".join(str(k) for k in (*open_keys, child))
                problem = InvalidManifestError(key=child, reason=f"manifest_ref cycle: {chain}")
            elif child in seen:
                continue  # a diamond: its entries were walked at its first reference
            elif len(stack) > MAX_REF_DEPTH:
                problem = InvalidManifestError(
                    key=key,
                    reason=f"manifest_ref nesting deeper than {MAX_REF_DEPTH} levels from {root!r}",
                )
            if problem is not None:
                if on_error is None:
                    raise problem
                on_error(cast(str, problem.key), problem)
                continue
            seen.add(child)
            stack.append((child, iter(read(child))))
            open_keys.append(child)
    finally:
        for _, it in reversed(stack):
            _close(it)


def _close(it: Iterator[ManifestEntry]) -> None:
    """Close a manifest's reader (its HTTP body) when it is a generator."""
    close = getattr(it, "close", None)
    if close is not None:
        close()
