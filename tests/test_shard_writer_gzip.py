"""The ShardWriter's gzip framing, without a server: one gzip member whose head is made last."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from s3exchange.gzip_frame import GzipFrame, crc32_combine


def tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.PAX_FORMAT) + data + bytes(-len(data) % 512)


@settings(max_examples=200)
@given(st.binary(max_size=3000), st.binary(max_size=3000))
def test_crc32_combine_agrees_with_zlib(a: bytes, b: bytes) -> None:
    assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_crc32_combine_past_the_table_period() -> None:
    """Length bit j uses table entry (3 + j) mod 32, which wraps from 512 MiB (2^29 bytes) up:
    checked against zlib over 512 MiB + 12345 zero bytes."""
    length = (1 << 29) + 12345
    chunk = bytes(1 << 24)
    crc_zeros, crc_whole = 0, zlib.crc32(b"head")
    left = length
    while left:
        piece = chunk[: min(left, len(chunk))]
        crc_zeros = zlib.crc32(piece, crc_zeros)
        crc_whole = zlib.crc32(piece, crc_whole)
        left -= len(piece)
    assert crc32_combine(zlib.crc32(b"head"), crc_zeros, length) == crc_whole


def test_a_head_made_last_reads_as_one_gzip_member_everywhere() -> None:
    manifest = tar_member("__manifest__.jsonl", b'{"kind":"file"}\n')
    data = tar_member("k.txt", b"hello" * 1000) + bytes(1024)
    frame = GzipFrame(6)
    middle = frame.compress(data[:700]) + frame.compress(data[700:])
    first, last = frame.finish(manifest)
    archive = first + middle + last
    assert gzip.decompress(archive) == manifest + data  # CRC and size trailer checked
    inflater = zlib.decompressobj(31)
    assert inflater.decompress(archive) == manifest + data
    assert inflater.eof
    assert inflater.unused_data == b""  # one member, not two
    for mode in ("r|gz", "r:gz"):
        with tarfile.open(fileobj=io.BytesIO(archive), mode=mode) as tar:
            assert [m.name for m in tar] == ["__manifest__.jsonl", "k.txt"]


def test_tarfile_stream_mode_stops_after_a_first_gzip_member() -> None:
    """Why the manifest is not simply a gzip member of its own: webdataset reads with
    ``r|*``, which would then see the manifest and nothing else."""

    def member(data: bytes) -> bytes:
        deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
        return deflate.compress(data) + deflate.flush()

    two = member(tar_member("__manifest__.jsonl", b"{}\n")) + member(
        tar_member("k.txt", b"x") + bytes(1024)
    )
    with tarfile.open(fileobj=io.BytesIO(two), mode="r|*") as tar:
        assert [m.name for m in tar] == ["__manifest__.jsonl"]
