"""The writer's tar header is ``tarfile``'s PAX header, byte for byte, whichever way it is built."""

from __future__ import annotations

import io
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from s3exchange.tar_writer import _tarfile_header, tar_header

_names = (
    st.text(st.characters(codec="ascii"), max_size=110)
    | st.text(max_size=110)
    | st.integers(95, 105).map(lambda n: "d/" + "n" * (n - 2))
)
_numbers = st.integers(0, 2**40) | st.sampled_from([0, 1, 8**11 - 1, 8**11, 8**11 + 1])


@settings(max_examples=500)
@given(name=_names, size=_numbers, mtime=_numbers)
def test_the_header_is_tarfiles(name: str, size: int, mtime: int) -> None:
    assert tar_header(name, size, mtime) == _tarfile_header(name, size, mtime)


def test_tarfile_reads_back_name_size_and_time() -> None:
    data = b"x" * 700
    archive = tar_header("a/b.bin", len(data), 1_700_000_000) + data + bytes(-len(data) % 512)
    with tarfile.open(fileobj=io.BytesIO(archive + bytes(1024))) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.size, member.mtime) == ("a/b.bin", 700, 1_700_000_000)
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == data
