"""JSONL manifest format: round trips, line handling, precise errors, stream splitting, fuzzing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3exchange.errors import InvalidManifestError
from s3exchange.manifest import (
    dumps_entries,
    dumps_entry,
    iter_entries,
    iter_entries_from_stream,
    parse_line,
    validate_entry,
)

FILE: dict[str, Any] = {
    "kind": "file",
    "key": "training/123/samples/0001.wav",
    "id": "0001",
    "meta": {"sr": 16000, "lang": "fr", "tags": ["a", None, 1.5]},
    "size_bytes": 123456,
    "etag": '"abc"',
    "sha256": "0" * 64,
    "content_type": "audio/wav",
}
MEMBER: dict[str, Any] = {
    "kind": "file",
    "key": "training/shards/shard-00001.tar#0001.wav",
    "archive_key": "training/shards/shard-00001.tar",
    "member_path": "0001.wav",
    "size_bytes": 0,
}
SHARD: dict[str, Any] = {
    "kind": "shard",
    "archive_key": "training/123/samples/shards/shard-00001.tar.gz",
    "format": "tar",
    "compression": "gzip",
    "internal_manifest_path": "__manifest__.jsonl",
    "count": 10000,
    "size_bytes": 987654321,
    "members_size_bytes": 1234567890,
    "etag": '"def-2"',
}
PLAIN_SHARD: dict[str, Any] = {"kind": "shard", "archive_key": "s/shard-1.tar", "compression": None}
REF: dict[str, Any] = {"kind": "manifest_ref", "key": "training/123/manifests/part-00001.jsonl"}
MINIMAL = [
    {"kind": "file", "key": "k"},
    {"kind": "shard", "archive_key": "a.tar"},
    {"kind": "manifest_ref", "key": "m.jsonl"},
]
ALL = [FILE, MEMBER, SHARD, PLAIN_SHARD, REF, *MINIMAL]


def lines_of(entries: list[dict[str, Any]]) -> bytes:
    return b"".join(dumps_entries(entries))


class Chunked:
    """A readable that returns at most ``size`` bytes per read, like a slow HTTP body."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data = data
        self.size = size
        self.pos = 0
        self.reads = 0

    def read(self, n: int, /) -> bytes:
        self.reads += 1
        take = min(n, self.size)
        out = self.data[self.pos : self.pos + take]
        self.pos += len(out)
        return out


def outcome(entries: Iterator[Any]) -> tuple[list[Any], InvalidManifestError | None]:
    """The entries read before the first error, and that error (None if all were valid)."""
    got: list[Any] = []
    try:
        got.extend(entries)
    except InvalidManifestError as err:
        return got, err
    return got, None


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ALL, ids=lambda e: f"{e['kind']}-{len(e)}")
def test_each_kind_round_trips_through_dumps_and_parse(entry: dict[str, Any]) -> None:
    line = dumps_entry(entry)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    parsed = parse_line(line, key="m.jsonl", lineno=1)
    assert parsed == entry
    assert list(parsed) == list(entry)  # field order kept too
    assert dumps_entry(parsed) == line
    assert parse_line(line.decode(), key="m.jsonl", lineno=1) == entry
    assert validate_entry(entry) == entry


def test_dumps_is_compact_utf8_and_keeps_non_ascii_unescaped() -> None:
    line = dumps_entry({"kind": "file", "key": "données/é.wav", "meta": {"t": "日本"}})
    assert line == '{"kind":"file","key":"données/é.wav","meta":{"t":"日本"}}\n'.encode()


def test_dumps_accepts_any_mapping_and_dumps_entries_is_lazy() -> None:
    assert dumps_entry(MappingProxyType(REF)) == dumps_entry(REF)

    def gen() -> Iterator[dict[str, Any]]:
        yield REF
        raise AssertionError("read too far")

    assert next(dumps_entries(gen())) == dumps_entry(REF)


def test_lone_surrogates_are_escaped_and_round_trip() -> None:
    entry = {"kind": "file", "key": "bad\udc80name", "meta": {"\ud800": "x"}}
    line = dumps_entry(entry)
    line.decode("utf-8")  # still valid UTF-8 (ASCII, escaped)
    assert b"\\udc80" in line
    assert parse_line(line, key=None, lineno=1) == entry


def test_unknown_fields_are_preserved_unchanged() -> None:
    extra = {"producer": {"v": [1, 2, {"x": None}]}, "weight": 0.25, "flag": False, "n": 10**30}
    for base in MINIMAL:
        entry = {**base, **extra}
        parsed = parse_line(dumps_entry(entry), key="m", lineno=1)
        assert parsed == entry
        assert validate_entry(entry) == entry
    line = b'{"zz":1,"kind":"file","a":[],"key":"k"}'
    parsed = parse_line(line, key="m", lineno=1)
    assert list(parsed or {}) == ["zz", "kind", "a", "key"]


def test_compression_none_string_is_normalised_to_null() -> None:
    line = b'{"kind":"shard","archive_key":"a.tar","compression":"none"}'
    assert parse_line(line, key="m", lineno=1) == {
        "kind": "shard",
        "archive_key": "a.tar",
        "compression": None,
    }
    user = {"kind": "shard", "archive_key": "a.tar", "compression": "none"}
    assert validate_entry(user)["compression"] is None  # type: ignore[typeddict-item]
    assert user["compression"] == "none"  # the caller's dict is not modified


# --- line handling -----------------------------------------------------------------------------


def test_blank_and_whitespace_lines_are_skipped_but_counted() -> None:
    assert parse_line(b"", key="m", lineno=1) is None
    assert parse_line(" \t\r\n", key="m", lineno=1) is None
    data = b"\n  \n" + dumps_entry(REF) + b"\t\r\n\n" + b"  " + dumps_entry(FILE) + b"\n{oops\n"
    got: list[Any] = []
    with pytest.raises(InvalidManifestError) as info:
        got.extend(iter_entries(data.split(b"\n"), key="m.jsonl"))
    assert got == [REF, FILE]
    assert info.value.line == 8


def test_crlf_lines_and_missing_final_newline() -> None:
    data = lines_of(ALL).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    assert list(iter_entries(data.splitlines(keepends=True), key="m")) == ALL
    assert list(iter_entries(data.decode().split("\n"), key="m")) == ALL
    assert list(iter_entries_from_stream(io.BytesIO(data), key="m")) == ALL


def test_utf8_bom_on_first_line_is_ignored() -> None:
    data = b"\xef\xbb\xbf" + lines_of([REF, FILE])
    assert list(iter_entries(data.splitlines(), key="m")) == [REF, FILE]
    assert list(iter_entries(data.decode().splitlines(), key="m")) == [REF, FILE]
    assert list(iter_entries([bytearray(data.splitlines()[0])], key="m")) == [REF]
    assert list(iter_entries_from_stream(Chunked(data, 1), key="m")) == [REF, FILE]
    assert list(iter_entries([b"\xef\xbb\xbf\n", dumps_entry(REF)], key="m")) == [REF]


def test_bom_after_the_first_line_is_an_error() -> None:
    data = dumps_entry(REF) + b"\xef\xbb\xbf" + dumps_entry(REF)
    with pytest.raises(InvalidManifestError) as info:
        list(iter_entries_from_stream(io.BytesIO(data), key="m"))
    assert (info.value.key, info.value.line) == ("m", 2)


def test_iter_entries_is_lazy() -> None:
    def lines() -> Iterator[bytes]:
        yield dumps_entry(REF)
        raise AssertionError("read too far")

    assert next(iter_entries(lines(), key="m")) == REF
    assert list(iter_entries([], key="m")) == []


# --- errors ------------------------------------------------------------------------------------

ERROR_CASES = [
    (b'{"kind":"file","key":"a"', "invalid JSON: Expecting ',' delimiter"),
    (b"{oops}", "invalid JSON: Expecting property name"),
    (b'{"kind":"file","key":"a"} {}', "extra data after the object at column 26"),
    (b'{"kind":"file","key":"a"}x', "extra data"),
    (b'{"kind":"file","key":"a\x01"}', "invalid JSON: Invalid control character"),
    (b'{"kind":"file","key":"\xff"}', "not valid UTF-8 at byte 22"),
    (b"[1, 2]", "expected a JSON object, got an array"),
    (b'"file"', "expected a JSON object, got a string"),
    (b"42", "expected a JSON object, got a number"),
    (b"null", "expected a JSON object, got null"),
    (b"true", "expected a JSON object, got a boolean"),
    (b'{"key":"a"}', "missing field 'kind'"),
    (b'{"kind":"blob","key":"a"}', "unknown kind 'blob'"),
    (b'{"kind":7,"key":"a"}', "unknown kind 7"),
    (b'{"kind":"file"}', "file entry is missing required field 'key'"),
    (b'{"kind":"file","key":""}', "field 'key' must be a non-empty string, got ''"),
    (b'{"kind":"file","key":3}', "field 'key' must be a non-empty string, got 3"),
    (b'{"kind":"file","key":"a","id":1}', "field 'id' must be a string, got 1"),
    (b'{"kind":"file","key":"a","meta":[]}', "field 'meta' must be a JSON object, got []"),
    (b'{"kind":"file","key":"a","size_bytes":-1}', "field 'size_bytes' must be an integer >= 0"),
    (b'{"kind":"file","key":"a","size_bytes":true}', "field 'size_bytes' must be an integer"),
    (b'{"kind":"file","key":"a","size_bytes":5.0}', "field 'size_bytes' must be an integer"),
    (b'{"kind":"file","key":"a","size_bytes":"5"}', "field 'size_bytes' must be an integer"),
    (b'{"kind":"file","key":"a","etag":null}', "field 'etag' must be a string, got None"),
    (b'{"kind":"file","key":"a","sha256":1}', "field 'sha256' must be a string"),
    (b'{"kind":"file","key":"a","content_type":{}}', "field 'content_type' must be a string"),
    (b'{"kind":"file","key":"a","archive_key":[]}', "field 'archive_key' must be a string"),
    (b'{"kind":"file","key":"a","member_path":0}', "field 'member_path' must be a string"),
    (b'{"kind":"shard","key":"a"}', "shard entry is missing required field 'archive_key'"),
    (b'{"kind":"shard","archive_key":""}', "field 'archive_key' must be a non-empty string"),
    (b'{"kind":"shard","archive_key":"a","format":"zip"}', "field 'format' must be 'tar'"),
    (b'{"kind":"shard","archive_key":"a","compression":"bz2"}', "field 'compression' must be"),
    (b'{"kind":"shard","archive_key":"a","compression":false}', "field 'compression' must be"),
    (b'{"kind":"shard","archive_key":"a","count":-2}', "field 'count' must be an integer >= 0"),
    (b'{"kind":"shard","archive_key":"a","size_bytes":1.5}', "field 'size_bytes' must be"),
    (b'{"kind":"shard","archive_key":"a","members_size_bytes":"1"}', "'members_size_bytes'"),
    (b'{"kind":"shard","archive_key":"a","internal_manifest_path":1}', "'internal_manifest_path'"),
    (b'{"kind":"shard","archive_key":"a","etag":1}', "field 'etag' must be a string"),
    (b'{"kind":"manifest_ref"}', "manifest_ref entry is missing required field 'key'"),
    (b'{"kind":"manifest_ref","key":null}', "field 'key' must be a non-empty string, got None"),
    (b'{"kind":"file","key":"a","meta":{"x":NaN}}', "NaN is not valid JSON"),
    (b'{"kind":"file","key":"a","meta":{"x":-Infinity}}', "-Infinity is not valid JSON"),
    (b'{"kind":"file","key":"a","meta":{"x":1e999}}', "number 1e999 is out of range"),
    (b'{"kind":"file","key":"a","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "too deeply"),
    (b'{"kind":"file","key":"a","x":' + b"9" * 5000 + b"}", "invalid JSON: Exceeds the limit"),
]


@pytest.mark.parametrize(("line", "reason"), ERROR_CASES, ids=[r for _, r in ERROR_CASES])
def test_invalid_line_error_names_key_line_and_reason(line: bytes, reason: str) -> None:
    for form in (line, line.decode("utf-8", "surrogateescape")):
        if isinstance(form, str) and "UTF-8" in reason:
            continue
        with pytest.raises(InvalidManifestError) as info:
            parse_line(form, key="training/m.jsonl", lineno=12)
        err = info.value
        assert (err.key, err.line) == ("training/m.jsonl", 12)
        assert reason in str(err.reason)
        assert str(err).startswith("invalid manifest 'training/m.jsonl' line 12: ")
        assert reason in str(err)


@pytest.mark.parametrize(("line", "reason"), ERROR_CASES[:12], ids=[r for _, r in ERROR_CASES[:12]])
def test_stream_error_counts_lines_from_one(line: bytes, reason: str) -> None:
    data = dumps_entry(REF).rstrip(b"\n") + b"\r\n\n" + line + b"\n" + dumps_entry(REF)
    got: list[Any] = []
    with pytest.raises(InvalidManifestError) as info:
        got.extend(iter_entries_from_stream(Chunked(data, 5), key="m.jsonl"))
    assert got == [REF]
    assert (info.value.key, info.value.line) == ("m.jsonl", 3)
    assert reason in str(info.value)


def test_error_without_a_manifest_key() -> None:
    with pytest.raises(InvalidManifestError) as info:
        parse_line("{}", key=None, lineno=1)
    assert info.value.key is None
    assert str(info.value) == "invalid manifest '<entries>' line 1: missing field 'kind'"


def test_long_line_is_rejected_with_its_number() -> None:
    short = dumps_entry(REF)
    data = short + short + b'{"kind":"file","key":"' + b"x" * 200 + b'"}\n' + short
    for chunk in (1, 7, 64, 1000):
        got: list[Any] = []
        with pytest.raises(InvalidManifestError) as info:
            got.extend(iter_entries_from_stream(Chunked(data, chunk), key="m", max_line_bytes=100))
        assert got == [REF, REF]
        assert (info.value.key, info.value.line) == ("m", 3)
        assert "longer than 100 bytes" in str(info.value)
    tail = short + b"y" * 101  # the last line has no newline
    with pytest.raises(InvalidManifestError) as info:
        list(iter_entries_from_stream(io.BytesIO(tail), key="m", max_line_bytes=100))
    assert info.value.line == 2
    exact = b'{"kind":"file","key":"' + b"x" * 76 + b'"}'  # exactly 100 bytes is allowed
    assert len(exact) == 100
    assert (
        len(list(iter_entries_from_stream(Chunked(exact + b"\n", 3), key="m", max_line_bytes=100)))
        == 1
    )


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 100, 101, 4096])
def test_long_line_is_rejected_whatever_the_read_size(chunk_size: int) -> None:
    ok = b'{"kind":"file","key":"' + b"x" * 76 + b'"}'  # 100 bytes
    bad = b'{"kind":"file","key":"' + b"x" * 77 + b'"}'  # 101 bytes
    for first in (b"", ok + b"\n"):
        stream = io.BytesIO(first + ok + b"\n" + bad + b"\n" + ok)
        it = iter_entries_from_stream(stream, key="m", chunk_size=chunk_size, max_line_bytes=100)
        got, err = outcome(it)
        assert len(got) == 1 + bool(first)
        assert err is not None
        assert err.line == 2 + bool(first)


def test_stream_reads_lazily_in_chunks() -> None:
    body = Chunked(lines_of([REF] * 1000), 1 << 30)
    it = iter_entries_from_stream(body, key="m", chunk_size=100)
    assert next(it) == REF
    assert body.reads == 1
    assert sum(1 for _ in it) == 999
    with pytest.raises(ValueError, match="chunk_size"):
        iter_entries_from_stream(body, key="m", chunk_size=0)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 6, 7])
def test_tiny_stream_chunks_give_identical_entries(chunk: int) -> None:
    data = b"\xef\xbb\xbf" + lines_of(ALL).replace(b"\n", b"\r\n", 3) + b"\n \n" + lines_of(ALL)
    expected = list(iter_entries(data.split(b"\n"), key="m"))
    assert len(expected) == 2 * len(ALL)
    assert list(iter_entries_from_stream(Chunked(data, chunk), key="m")) == expected
    assert list(iter_entries_from_stream(io.BytesIO(data), key="m", chunk_size=chunk)) == expected


# --- validate_entry ----------------------------------------------------------------------------


def test_validate_entry_returns_a_new_plain_dict() -> None:
    out = validate_entry(MappingProxyType(FILE))
    assert type(out) is dict
    assert out == FILE
    assert out is not FILE


VALIDATE_CASES: list[tuple[Any, str]] = [
    ({"kind": "file", "key": ""}, "field 'key' must be a non-empty string"),
    ({"kind": "file"}, "file entry is missing required field 'key'"),
    ({"key": "a"}, "missing field 'kind'"),
    ({"kind": "shard", "archive_key": "a", "count": True}, "field 'count' must be an integer"),
    ({"kind": "file", "key": "a", "meta": {"x": {1, 2}}}, "field 'meta'['x']: value of type set"),
    ({"kind": "file", "key": "a", "meta": {"x": [float("nan")]}}, "field 'meta'['x'][0]: nan"),
    ({"kind": "file", "key": "a", "w": float("inf")}, "field 'w': inf is not valid JSON"),
    ({"kind": "file", "key": "a", "meta": {1: "x"}}, "field 'meta': object key 1 (int)"),
    ({"kind": "file", "key": "a", "blob": b"\x00"}, "field 'blob': value of type bytes"),
    ({"kind": "file", "key": "a", 5: "x"}, "field name 5 (int) is not a string"),
    (["kind", "file"], "expected a mapping, got ['kind', 'file'] (list)"),
]


@pytest.mark.parametrize(("entry", "reason"), VALIDATE_CASES, ids=[r for _, r in VALIDATE_CASES])
def test_validate_entry_error_names_key_and_index(entry: Any, reason: str) -> None:
    with pytest.raises(InvalidManifestError) as info:
        validate_entry(entry, key="out.jsonl", index=4)
    err = info.value
    assert (err.key, err.line) == ("out.jsonl", 5)
    assert str(err.reason).startswith("entries[4]: ")
    assert reason in str(err)
    assert str(err).startswith("invalid manifest 'out.jsonl' line 5: entries[4]: ")
    with pytest.raises(InvalidManifestError) as info:
        validate_entry(entry)
    assert (info.value.key, info.value.line) == (None, None)
    assert reason in str(info.value)


def test_validate_entry_rejects_circular_and_too_deep_values() -> None:
    loop: list[Any] = [1]
    loop.append({"again": loop})
    with pytest.raises(InvalidManifestError, match=r"'x'\[1\]\['again'\]: circular reference"):
        validate_entry({"kind": "file", "key": "a", "x": loop})
    deep: Any = 1
    for _ in range(600):
        deep = [deep]
    with pytest.raises(InvalidManifestError, match="nested deeper than 512 levels"):
        validate_entry({"kind": "file", "key": "a", "x": deep})
    shared = [1, 2]
    ok = {"kind": "file", "key": "a", "x": [shared, shared, {"y": shared}], "t": (1, "2")}
    assert validate_entry(ok)["x"] == [shared, shared, {"y": shared}]  # type: ignore[typeddict-unknown-key]


def test_dumps_entry_reports_unserialisable_values() -> None:
    with pytest.raises(InvalidManifestError, match="cannot serialise entry"):
        dumps_entry({"kind": "file", "key": "a", "meta": {"x": object()}})
    with pytest.raises(InvalidManifestError, match="cannot serialise entry"):
        dumps_entry({"kind": "file", "key": "a", "meta": {"x": float("nan")}})


# --- fuzzing -----------------------------------------------------------------------------------


def assert_rewritable(entries: list[Any]) -> None:
    """Whatever was read can be written back and reads back equal."""
    for entry in entries:
        assert parse_line(dumps_entry(entry), key="fz", lineno=1) == entry


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 9))
def test_fuzz_any_bytes_yield_entries_or_invalid_manifest_error(data: bytes, chunk: int) -> None:
    stream = Chunked(data, chunk)
    got, err = outcome(iter_entries_from_stream(stream, key="fz", max_line_bytes=200))
    if err is not None:
        assert err.key == "fz"
        assert err.line is not None
        assert 1 <= err.line <= data.count(b"\n") + 1
        assert f"line {err.line}: " in str(err)
    assert_rewritable(got)


_json_bits = st.sampled_from(
    [b'{"kind":"file","key":"a"}', b'{"kind":"shard","archive_key":"a","count":1}', b"\n", b"\r"]
)


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(_json_bits | st.binary(max_size=8), max_size=12), chunk=st.integers(1, 7))
def test_fuzz_near_valid_streams_match_line_parsing(parts: list[bytes], chunk: int) -> None:
    data = b"".join(parts)
    got, err = outcome(iter_entries_from_stream(Chunked(data, chunk), key="fz"))
    want, want_err = outcome(iter_entries(data.split(b"\n"), key="fz"))
    assert got == want
    assert_rewritable(got)
    if err is None or want_err is None:
        assert err is want_err is None
    else:
        assert (err.key, err.line, err.reason) == (want_err.key, want_err.line, want_err.reason)


_jsonish = st.text(
    alphabet='{}[]":,. -+eE0123456789\\ukindfleyshardtruNaI\t\r\n\ufeff', max_size=80
)


@settings(max_examples=500, deadline=None)
@given(line=st.text(max_size=200) | _jsonish)
def test_fuzz_any_text_line_parses_or_raises_invalid_manifest_error(line: str) -> None:
    got, err = outcome(parse_line(line, key="fz", lineno=n) for n in [3])
    if err is not None:
        assert (err.key, err.line) == ("fz", 3)
    assert_rewritable([e for e in got if e is not None])


_any_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=12)  # + surrogates
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text, inner, max_size=4),
    max_leaves=12,
)
_key = _any_text.filter(bool)
_uint = st.integers(0, 2**32)  # within MAX_COUNT and MAX_SIZE_BYTES (issue 10, item 8)
_KNOWN = (
    {"kind", "key", "id", "meta", "size_bytes", "etag", "sha256", "content_type"}
    | {"archive_key", "member_path", "format", "compression", "internal_manifest_path", "count"}
    | {"members_size_bytes", "index_key"}
)
_extra = st.dictionaries(_any_text.filter(lambda k: k not in _KNOWN), _json_values, max_size=3)


def _entry(kind: str, required: dict[str, Any], optional: dict[str, Any]) -> Any:
    return st.builds(
        lambda req, opt, extra: {**extra, "kind": kind, **req, **opt},
        st.fixed_dictionaries(required),
        st.fixed_dictionaries({}, optional=optional),
        _extra,
    )


_entries = st.one_of(
    _entry(
        "file",
        {"key": _key},
        {
            "id": _any_text,
            "meta": st.dictionaries(_any_text, _json_values, max_size=4),
            "size_bytes": _uint,
            "etag": _any_text,
            "sha256": _any_text,
            "content_type": _any_text,
            "archive_key": _any_text,
            "member_path": _any_text,
        },
    ),
    _entry(
        "shard",
        {"archive_key": _key},
        {
            "format": st.just("tar"),
            "compression": st.sampled_from([None, "gzip"]),
            "internal_manifest_path": _any_text,
            "count": _uint,
            "size_bytes": _uint,
            "members_size_bytes": _uint,
            "etag": _any_text,
        },
    ),
    _entry("manifest_ref", {"key": _key}, {}),
)


@settings(max_examples=500, deadline=None)
@given(entries=st.lists(_entries, max_size=5), chunk=st.integers(1, 64))
def test_fuzz_valid_entries_round_trip_exactly(entries: list[dict[str, Any]], chunk: int) -> None:
    validated = [validate_entry(e, key="fz", index=i) for i, e in enumerate(entries)]
    assert validated == entries
    data = b"".join(dumps_entries(validated))
    assert data.count(b"\n") == len(entries)
    data.decode("utf-8")
    back = list(iter_entries_from_stream(Chunked(data, chunk), key="fz"))
    assert back == entries
    assert [list(e) for e in back] == [list(e) for e in entries]
    assert b"".join(dumps_entries(back)) == data
    assert [json.loads(line) for line in data.splitlines()] == entries
