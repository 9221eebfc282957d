"""One gzip member whose head is written last: the data is deflated as it arrives, the head
(a shard's internal manifest) deflated at the end and placed first, and the trailer's CRC-32
joined from both by :func:`crc32_combine` (zlib has it; Python's ``zlib`` module does not expose
it). Why a shard needs this is in :mod:`s3exchange.shard_writer`'s docstring. No I/O.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["GZIP_HEADER", "GzipFrame", "crc32_combine"]

GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""deflate, no flags, mtime 0, no extra flags, OS unknown: the same bytes on every run."""

_CRC32_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial, bit-reflected as zlib has it (``a`` nonzero)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC32_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) mod p for k = 0..31: x^1 first
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """``zlib.crc32(a + b)`` from ``crc1 = crc32(a)``, ``crc2 = crc32(b)`` and ``len(b)``.

    zlib's own ``crc32_combine`` (multiply ``crc1`` by x^(8 len2) modulo the polynomial), in
    O(log len2) steps: the manifest's CRC is joined to the data's without re-reading the data.
    """
    if len2 < 0:
        raise ValueError(f"len2 must be >= 0, got {len2}")
    p, n, k = 1 << 31, len2, 3  # x^0; bytes are 2^3 bits
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


class GzipFrame:
    """One gzip member whose first bytes (the manifest) are made after the rest (the data)."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._deflate = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self.compressed = 0
        """Deflated data bytes handed out so far (the head's excluded)."""

    def compress(self, data: bytes | memoryview) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        out = self._deflate.compress(data)
        self.compressed += len(out)
        return out

    def full_flush(self) -> bytes:
        """A full-flush point: inflating the data stream can start after these bytes."""
        out = self._deflate.flush(zlib.Z_FULL_FLUSH)
        self.compressed += len(out)
        return out

    def finish(self, head: bytes) -> tuple[bytes, bytes]:
        """(gzip header + ``head`` deflated, sync-flushed; final deflate block + trailer)."""
        deflate = zlib.compressobj(self._level, zlib.DEFLATED, -15)
        first = GZIP_HEADER + deflate.compress(head) + deflate.flush(zlib.Z_SYNC_FLUSH)
        crc = crc32_combine(zlib.crc32(head), self._crc, self._size)
        trailer = struct.pack("<II", crc, (len(head) + self._size) & 0xFFFFFFFF)
        return first, self._deflate.flush() + trailer
