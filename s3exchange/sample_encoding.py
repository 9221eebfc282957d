"""Encoding webdataset-style samples (``{"__key__": "0001", "jpg": b"...", "json": {...}}``) into
tar members with their internal manifest lines, checked before anything is written. No I/O.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import crc32c

from .shard_format import member_path_problem
from .types import INTERNAL_MANIFEST_PATH

__all__ = ["Member", "encode_sample"]


@dataclass(frozen=True, slots=True)
class Member:
    """One encoded field: its member path, its bytes and its internal manifest line."""

    path: str
    data: bytes | memoryview
    line: bytes


def _sample_problem(key: str, field: str, reason: str) -> str:
    return f"sample {key!r} field {field!r}: {reason}"


def _encode_value(value: Any, key: str, field: str) -> bytes | memoryview:
    """A field's bytes: bytes-likes as they are, str as UTF-8, dict/list as JSON, ndarray as .npy.

    numpy is never imported here: an ndarray can only exist once its caller imported numpy.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        view = memoryview(value)
        if not view.c_contiguous:
            raise ValueError(_sample_problem(key, field, "memoryview is not C-contiguous"))
        return view.cast("B")
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(_sample_problem(key, field, f"str is not valid UTF-8: {exc}")) from exc
    if isinstance(value, dict | list):
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(_sample_problem(key, field, f"is not JSON: {exc}")) from exc
        return text.encode("utf-8")
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        out = io.BytesIO()
        try:
            numpy.save(out, value, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(_sample_problem(key, field, f"cannot save as .npy: {exc}")) from exc
        return out.getvalue()
    raise TypeError(
        _sample_problem(
            key,
            field,
            f"cannot encode {type(value).__name__}; give bytes, str, dict or list (JSON) "
            "or a numpy array",
        )
    )


def _check_key(sample: Mapping[str, Any]) -> str:
    if "__key__" not in sample:
        fields = ", ".join(repr(field) for field in sample)
        raise ValueError(f"sample has no '__key__' (fields: {fields or 'none'})")
    key = sample["__key__"]
    if not isinstance(key, str):
        raise TypeError(f"sample '__key__' must be a str, got {type(key).__name__} {key!r}")
    problem = member_path_problem(key)
    if problem is None and "." in key.rpartition("/")[2]:
        problem = "the last path component holds a '.', where readers would split the field"
    if problem is not None:
        raise ValueError(f"sample {key!r}: invalid key: {problem}")
    return key


def encode_sample(sample: Mapping[str, Any]) -> tuple[str, list[Member]]:
    """The key and members of ``sample``, checked and encoded before anything is written.

    Fields starting with ``_`` (``__url__``, ``__local_path__``) are metadata and skipped, as
    webdataset's writer skips them. Readers lower-case fields, so two that differ only in case
    would collide and are refused.
    """
    if not isinstance(sample, Mapping):
        raise TypeError(f"a sample is a dict with '__key__', got {type(sample).__name__}")
    key = _check_key(sample)
    members: list[Member] = []
    seen: set[str] = set()
    for field, value in sample.items():
        if not isinstance(field, str):
            raise TypeError(f"sample {key!r}: field names are str, got {field!r}")
        if field.startswith("_"):
            continue
        problem = None
        if not field or "/" in field or "\0" in field:
            problem = "a field is a non-empty name without '/'"
        elif field.lower() in seen:
            problem = "repeats another field but for case (readers lower-case fields)"
        path = f"{key}.{field}"
        if problem is None and path == INTERNAL_MANIFEST_PATH:
            problem = "the member path is reserved for the internal manifest"
        if problem is None:
            problem = member_path_problem(path)
        if problem is not None:
            raise ValueError(_sample_problem(key, field, problem))
        seen.add(field.lower())
        data = _encode_value(value, key, field)
        entry = {
            "kind": "file",
            "key": path,
            "member_path": path,
            "size_bytes": len(data),
            "crc32c": f"{crc32c.crc32c(data):08x}",
        }
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        members.append(Member(path, data, line))
    if not members:
        raise ValueError(f"sample {key!r} has no fields to write")
    return key, members
