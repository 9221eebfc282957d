"""The tar reader's header fields: its fast byte sum agrees with ``sum`` on every block, its
numeric fields with the tar format's rules, and internal manifest lines parse as JSON does."""

from __future__ import annotations

import io
import json
import re
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s3exchange.errors import ShardReadError
from s3exchange.shard import iter_shard
from s3exchange.tar_parser import TarReader, _byte_sum
from s3exchange.tar_reader import _parse_line


@given(st.binary(min_size=512, max_size=512))
def test_byte_sum_is_the_sum_of_the_bytes(block: bytes) -> None:
    assert _byte_sum(block) == sum(block)


def test_byte_sum_at_its_extremes() -> None:
    assert _byte_sum(bytes(512)) == 0
    assert _byte_sum(b"\xff" * 512) == 512 * 255
    assert _byte_sum(b"\xff" * 256 + bytes(256)) == 256 * 255


def test_a_plain_tar_with_high_bytes_in_its_headers_still_parses() -> None:
    """GNU tar writes base-256 sizes and non-ASCII names: header bytes >= 0x80."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("é/ü.bin", "ß" * 40 + ".bin"):
            info = tarfile.TarInfo(name)
            info.size = 3
            info.uid = 0o7777777 + 1  # past the octal field: written base-256
            tar.addfile(info, io.BytesIO(b"abc"))
    out.seek(0)
    members = [(m.entry["member_path"], m.read()) for m in iter_shard(out, archive_key="t.tar")]
    assert members == [("é/ü.bin", b"abc"), ("ß" * 40 + ".bin", b"abc")]


def _reference_number(field: bytes) -> int | None:
    """A numeric field as the format defines it (None: malformed): GNU base-256 after a 0x80
    byte, else octal digits up to the first NUL, spaces around them allowed, empty as 0."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if field[0] == 0xFF or not re.fullmatch(rb"[0-7]*", digits):
        return None
    return int(digits, 8) if digits else 0


_FIELD_BYTES = st.sampled_from(b"0123456789 \0+-_\x80\xff\x9a")


@given(
    st.one_of(
        st.binary(min_size=8, max_size=12),
        st.lists(_FIELD_BYTES, min_size=8, max_size=12).map(bytes),
        st.integers(0, 8**11 - 1).map(lambda n: f"{n:011o}".encode() + b"\0"),
    )
)
def test_a_numeric_field_reads_as_the_format_defines_it(field: bytes) -> None:
    reader = TarReader(None, "t.tar")  # type: ignore[arg-type]  # parsing only
    expected = _reference_number(field)
    if expected is None:
        with pytest.raises(ShardReadError, match="malformed size field"):
            reader._number(field, "size")
    else:
        assert reader._number(field, "size") == expected


def test_internal_manifest_lines_parse_as_json_does() -> None:
    entry = {"kind": "file", "key": "a.bin", "member_path": "a.bin", "size_bytes": 1}
    text = json.dumps(entry).encode()
    for line in (text, b"\xef\xbb\xbf" + text, b" " + text + b" \r"):
        assert _parse_line(line, "t.tar", 1) == entry
    for line, error in (
        (text + b"x", "Extra data"),
        (b"\xef\xbb\xbf\xef\xbb\xbf" + text, "Expecting value"),
        (b"\xff" + text, "'utf-8' codec can't decode byte 0xff in position 0"),
        (b"", "Expecting value"),
    ):
        with pytest.raises(ShardReadError, match=f"'t.tar': internal manifest line 7: {error}"):
            _parse_line(line, "t.tar", 7)
