"""Manifest lines are decoded by msgspec first and by the standard library for what it refuses:
whatever msgspec accepts must be what the standard library makes of the same line."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3exchange import manifest, tar_reader
from s3exchange.errors import InvalidManifestError, ShardReadError

_text = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=12)
_number = st.from_regex(
    r"-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True
)
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_space = st.text(alphabet=" \t\r", max_size=2)


@st.composite
def _lines(draw: st.DrawFn) -> bytes:
    """JSON text of a value (an object most of the time), spaced and escaped at random."""
    value = draw(st.dictionaries(_text, _values, max_size=4) | _values)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), allow_nan=True)
    number = draw(_number)
    text = draw(st.sampled_from([text, f'{{"n":{number}}}', number]))
    if draw(st.booleans()):  # a cut or doubled byte: mostly invalid JSON
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["", text[at : at + 1], ","])) + text[at + 1 :]
    return (draw(_space) + text + draw(_space)).encode("utf-8", "surrogatepass")


def _typed(value: Any) -> Any:
    """``value`` with its types spelled out, so that 1, 1.0 and True do not compare equal."""
    if isinstance(value, dict):
        return ("dict", [(k, _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    return (type(value).__name__, repr(value))


_REFUSED = object()


def _fast(decode: Any, line: bytes) -> Any:
    """What msgspec makes of ``line``, or ``_REFUSED``."""
    try:
        return decode(line)
    except (ValueError, RecursionError):
        return _REFUSED


@settings(max_examples=1000, deadline=None)
@given(line=_lines())
def test_outer_lines_msgspec_takes_only_what_the_standard_library_reads_alike(line: bytes) -> None:
    fast = _fast(manifest._fast_decode, line)
    if fast is _REFUSED:
        return
    if isinstance(fast, dict):
        assert _typed(manifest._decode_object(line, "k", 1)) == _typed(fast)
    else:  # parse_line sends it to the standard library's decoder, which says why
        with pytest.raises(InvalidManifestError, match="expected a JSON object"):
            manifest._decode_object(line, "k", 1)


@settings(max_examples=1000, deadline=None)
@given(line=_lines())
def test_internal_lines_msgspec_takes_only_what_the_standard_library_reads_alike(
    line: bytes,
) -> None:
    fast = _fast(tar_reader._fast_decode, line)
    if fast is not _REFUSED:
        assert _typed(tar_reader._decode_std(line, "t.tar", 1)) == _typed(fast)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"kind":"file","key":"a","n":1e400}', "out of range for a float"),
        (b'{"kind":"file","key":"a","n":NaN}', "NaN is not valid JSON"),
        (b'{"kind":"file","key":"a",}', "invalid JSON: Expecting property name"),
        (b'{"kind":"file","key":"\xed\xa0\x80"}', "not valid UTF-8 at byte 22"),
        (b'[{"kind":"file","key":"a"}]', "expected a JSON object, got an array"),
        (b"\t \r", None),
    ],
)
def test_what_msgspec_refuses_is_worded_by_the_standard_library(
    line: bytes, reason: str | None
) -> None:
    if reason is None:
        assert manifest.parse_line(line, key="m.jsonl", lineno=4) is None
        return
    with pytest.raises(InvalidManifestError, match=f"'m.jsonl' line 4: .*{reason}"):
        manifest.parse_line(line, key="m.jsonl", lineno=4)


def test_lone_surrogate_escapes_and_big_integers_read_as_before() -> None:
    """msgspec refuses the first (the standard library takes it); the second stays an int."""
    big = 10**60
    for line, field in (
        (b'{"kind":"file","key":"a","n":"\\ud800"}', "\ud800"),
        (f'{{"kind":"file","key":"a","n":{big}}}'.encode(), big),
    ):
        assert manifest.parse_line(line, key="m", lineno=1) == {
            "kind": "file",
            "key": "a",
            "n": field,
        }
        entry = tar_reader._parse_line(line, "t.tar", 1)
        assert entry["n"] == field  # type: ignore[typeddict-item]
    with pytest.raises(ShardReadError, match=r"'t\.tar': internal manifest line 2: Expecting"):
        tar_reader._parse_line(b'{"kind":"file",', "t.tar", 2)


def test_a_duplicate_key_keeps_its_last_value_as_json_loads_does() -> None:
    line = b'{"kind":"file","key":"a","meta":{"n":1,"n":2},"key":"b"}'
    assert manifest.parse_line(line, key="m", lineno=1) == json.loads(line)
    assert tar_reader._parse_line(line, "t.tar", 1)["key"] == "b"
