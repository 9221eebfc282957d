"""The tar reader's header checksum: its fast byte sum agrees with ``sum`` on every block."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given
from hypothesis import strategies as st

from s3exchange.shard import iter_shard
from s3exchange.tar_parser import _byte_sum


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
