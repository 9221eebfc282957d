"""How many loose GETs a dataset worker keeps in flight, when the user does not say."""

from __future__ import annotations

import logging
import os

from s3exchange import S3ExchangeStore

__all__ = ["AUTO_IO_THREADS_MAX", "io_threads_for", "loose_requests_per_worker"]

log = logging.getLogger("s3exchange_torch.dataset")

AUTO_IO_THREADS_MAX = 32
"""Ceiling of the automatic ``io_threads``: past it more threads only contend for the GIL."""
_POOL_WARNED: set[int] = set()
"""Processes that already logged the small connection pool warning."""


def loose_requests_per_worker(
    num_workers: int, pool: int, shard_streams: int, cpu_count: int | None = None
) -> int:
    """Loose GETs one worker keeps in flight when the user did not choose.

    Requests in flight hide latency: at 30 ms TTFB a worker spending ~250 us of CPU per
    sample needs ~120 in flight to stay busy, so the connection pool (less the shard streams)
    and 32 bound it, as before. Threads do not thrash: a worker's CPU per sample measured
    flat from 2 to 29 io_threads (250-320 us at 2 workers, 400-450 us at 6 workers on 2
    cores); what cost CPU at 12 workers was botocore's ~1.5 ms per GET, now ~130 us (the
    store's fast GET). Only when workers outnumber cores is the total held to 32 per core (at
    least 8 per worker), bounding threads and sockets: 12 workers on 16 cores keep 29 each.
    """
    cores = cpu_count or os.cpu_count() or 1
    share = max(8, 32 * cores // max(1, num_workers))
    return max(1, min(pool - shard_streams, AUTO_IO_THREADS_MAX, share))


def io_threads_for(
    store: S3ExchangeStore, requested: int | None, shard_streams: int, num_workers: int
) -> int:
    """Loose requests in flight per worker: ``requested``, or what the connection pool allows.

    Automatic sizing keeps every request on a pooled connection (urllib3 otherwise opens and
    drops an extra connection per request, and logs each); an explicit number above the pool
    is honoured with one warning per process.
    """
    pool = store.max_pool_connections  # not s3_client's: that builds a client in a new worker
    if requested is None:
        return loose_requests_per_worker(num_workers, pool, shard_streams)
    needed = requested + shard_streams
    if needed > pool and os.getpid() not in _POOL_WARNED:
        _POOL_WARNED.add(os.getpid())
        log.warning(
            "the S3 client keeps %d connections but up to %d requests run at once; create it "
            "with botocore.config.Config(max_pool_connections=%d) to avoid reconnecting",
            pool,
            needed,
            needed,
        )
    return requested
