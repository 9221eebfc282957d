"""A write-only file object over an S3 multipart upload: bounded memory, all or nothing.

Bytes are cut into fixed-size parts and uploaded by a small thread pool while the caller keeps
writing, so building a tar stream overlaps with the network. ``close()`` completes the upload;
``abort()`` (or leaving the ``with`` block by an exception) aborts it, so a failure leaves no
object and no pending upload behind. A stream that ends below one part size is sent with a single
``PutObject`` instead.

With ``hold_head`` the first bytes are held back as part 1 and uploaded at close, after
:meth:`MultipartWriter.prepend` has put what is known only at the end in front of them (a shard's
internal manifest): S3 assembles parts by number whatever the upload order, and only the last
may be under 5 MiB, so a head of at least that much can go last.

Every request goes through a :class:`~s3exchange.transport.Transport` (a
:class:`~s3exchange.bucket.Bucket`, or :class:`~s3exchange.testing.MemoryBucket` in unit tests);
a failed one raises :class:`~s3exchange.errors.UploadError` naming the key.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import S3ExchangeError, UploadError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .transport import Transport

_T = TypeVar("_T")

MIN_PART_SIZE = 5 * 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000


class MultipartWriter(io.RawIOBase):
    """Write bytes to ``key`` (logical) in ``bucket``; the object appears only when
    :meth:`close` succeeds.

    Up to ``2 * concurrency`` full parts wait for the pool, so its threads never idle while the
    next part is built; memory is bounded by ``part_size * (2 * concurrency + 1) + hold_head``.
    """

    def __init__(
        self,
        bucket: Transport,
        key: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = 2,
        content_type: str | None = None,
        hold_head: int = 0,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be >= {MIN_PART_SIZE} bytes (S3's minimum)")
        if hold_head and hold_head < MIN_PART_SIZE:
            raise ValueError(f"hold_head must be 0 or >= {MIN_PART_SIZE} bytes (S3's minimum)")
        self._bucket = bucket
        self._key = key
        self._part_size = part_size
        self._concurrency = max(1, concurrency)
        self._content_type = content_type
        self._part = bytearray(part_size)
        self._fill = 0
        self._hold = hold_head
        self._head = bytearray()  # part 1, with hold_head: sent at close
        self._prefix = b""
        self._upload_id: str | None = None
        self._pending: set[Future[tuple[int, str]]] = set()
        self._parts: list[tuple[int, str]] = []  # (number, etag)
        self._pool: ThreadPoolExecutor | None = None
        self._bytes_written = 0
        self._done = False
        self.etag: str | None = None

    @property
    def bytes_written(self) -> int:
        """Bytes accepted so far (the object's size once closed)."""
        return self._bytes_written

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Copy ``data`` into the current part (the only copy); a full part goes to the pool."""
        if self._done:
            raise ValueError("write to a closed MultipartWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        if len(self._head) < self._hold:
            take = self._hold - len(self._head)
            self._head += view[:take]
            view = view[take:]
        while view:
            take = min(len(view), self._part_size - self._fill)
            self._part[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == self._part_size:
                full, self._part, self._fill = self._part, bytearray(self._part_size), 0
                self._submit(full)
        self._bytes_written += size
        return size

    def prepend(self, data: bytes | bytearray) -> None:
        """Put ``data`` in front of everything written (with ``hold_head``, before close)."""
        if not self._hold:
            raise ValueError("prepend needs a MultipartWriter made with hold_head")
        if self._done:
            raise ValueError("prepend to a closed MultipartWriter")
        self._prefix = bytes(data) + self._prefix
        self._bytes_written += len(data)

    def _submit(self, body: bytearray, number: int | None = None) -> None:
        if self._upload_id is None:
            self._upload_id = self._call(
                lambda: self._bucket.create_multipart_upload(
                    self._key, content_type=self._content_type
                )
            )
            self._pool = ThreadPoolExecutor(self._concurrency, thread_name_prefix="s3x-part")
        if number is None:  # parts 2.. when part 1 is the held head
            number = len(self._parts) + len(self._pending) + 1 + (1 if self._hold else 0)
        if number > MAX_PARTS:
            raise UploadError(key=self._key, reason=f"more than {MAX_PARTS} parts; raise part_size")
        while len(self._pending) >= 2 * self._concurrency:
            self._collect(FIRST_COMPLETED)
        assert self._pool is not None
        self._pending.add(self._pool.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytearray) -> tuple[int, str]:
        assert self._upload_id is not None
        upload_id = self._upload_id
        etag = self._call(
            lambda: self._bucket.upload_part(self._key, upload_id, number, body), f"part {number}"
        )
        return number, etag

    def _collect(self, until: str) -> None:
        """Wait for uploads (the first to finish, or all) and record their parts."""
        done, self._pending = wait(self._pending, return_when=until)
        self._parts.extend(future.result() for future in done)

    def _call(self, request: Callable[[], _T], where: str = "") -> _T:
        try:
            return request()
        except S3ExchangeError as exc:
            reason = f"{where}: {exc}" if where else str(exc)
            raise UploadError(key=self._key, reason=reason) from exc

    def close(self) -> None:
        """Upload what is left and complete the upload; on failure abort and raise."""
        if self._done:
            return
        try:
            self._finish()
        except BaseException:
            self.abort()
            raise
        finally:
            self._done = True
            super().close()

    def _finish(self) -> None:
        tail = self._part[: self._fill]
        self._part, self._fill = bytearray(), 0
        head, self._head = self._prefix + self._head, bytearray()
        self._prefix = b""
        if self._upload_id is None:
            body = head + tail
            self.etag = self._call(
                lambda: self._bucket.put(self._key, body, content_type=self._content_type)
            )
            return
        if tail:
            self._submit(tail)
        if self._hold:
            self._submit(bytearray(head), 1)
        del head
        self._collect("ALL_COMPLETED")
        self._parts.sort()
        self._shutdown_pool()
        upload_id = self._upload_id
        self.etag = self._call(
            lambda: self._bucket.complete_multipart_upload(self._key, upload_id, self._parts)
        )

    def abort(self) -> None:
        """Drop everything: pending parts are cancelled and the upload is aborted server-side."""
        self._done = True
        self._part, self._fill = bytearray(), 0
        self._head, self._prefix = bytearray(), b""
        for future in self._pending:
            future.cancel()
        self._shutdown_pool()
        self._pending.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._bucket.abort_multipart_upload(self._key, upload_id)
            except S3ExchangeError as exc:
                # The original error matters more; a lifecycle rule reaps what is left.
                log.warning("could not abort the upload of %r: %s", self._key, exc)
        super().close()

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()
