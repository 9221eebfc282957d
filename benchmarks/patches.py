"""Proposed library changes, applied as monkeypatches so that they can be measured in place.

Each function here changes the installed ``s3exchange`` / ``s3exchange_torch`` in the current
process only; ``benchmarks/proposed/*.patch`` holds the same change as a diff against the
sources. A reader spec names the patches to apply (``"patches": ["warm_session"]``);
:mod:`benchmarks.experiments` compares a reader with and without them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PATCHES: dict[str, Callable[[], None]] = {}


def _patch(function: Callable[[], None]) -> Callable[[], None]:
    PATCHES[function.__name__] = function
    return function


@_patch
def warm_session() -> None:
    """A forked process builds its boto3 session on its parent's botocore data loader.

    Same change as ``benchmarks/proposed/warm-session.patch`` (``s3exchange/bucket.py``,
    ``_session``). A new session parses the S3 service model, the endpoint ruleset and the
    partitions file again: ~145 ms in a freshly forked DataLoader worker here, per worker and
    per epoch. The data loader holds only those parsed models, so sharing it across ``fork``
    is safe; with it a worker builds its client in ~10 ms.
    """
    import os

    import boto3
    import botocore.session

    from s3exchange import bucket

    sessions: dict[int, Any] = {}
    loaders: list[Any] = []

    def warm_loader() -> Any:
        if loaders:
            return loaders[0]
        default = getattr(boto3.DEFAULT_SESSION, "_session", None)
        return None if default is None else default.get_component("data_loader")

    def session() -> Any:
        pid = os.getpid()
        found = sessions.get(pid)
        if found is None:
            sessions.clear()
            core = botocore.session.get_session()
            loader = warm_loader()
            if loader is not None:
                core.register_component("data_loader", loader)
            else:
                loaders.append(core.get_component("data_loader"))
            found = sessions[pid] = boto3.session.Session(botocore_session=core)
        return found

    def create(self: bucket.ClientFactory) -> Any:
        return session().client("s3", **self.kwargs)

    bucket.ClientFactory.create = create  # type: ignore[method-assign]


@_patch
def presigned_get() -> None:
    """Whole-object GETs (offset 0, no ETag pin) go through a presigned URL and urllib3.

    botocore spends ~680 us of client CPU per small GET here (event hooks, request and
    response objects, SigV4); presigning costs ~90 us and a pooled urllib3 GET ~190 us, so
    the same request costs about half the CPU. Ranged and ETag-pinned re-opens (resumes) keep
    the botocore path with its retries.
    """
    import os

    import urllib3

    from s3exchange import bucket
    from s3exchange.body import OpenedBody
    from s3exchange.errors import ObjectNotFoundError, StorageError

    pools: dict[int, urllib3.PoolManager] = {}
    original_open = bucket.Bucket.open

    def open_(self: bucket.Bucket, key: str, offset: int = 0, etag: str | None = None) -> Any:
        if offset or etag:
            return original_open(self, key, offset, etag)
        pool = pools.get(os.getpid())
        if pool is None:
            pool = pools[os.getpid()] = urllib3.PoolManager(maxsize=32, retries=False)
        url = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.name, "Key": self.keyspace.physical(key)},
            ExpiresIn=900,
        )
        response = pool.request("GET", url, preload_content=False)
        if response.status != 200:
            response.drain_conn()
            if response.status == 404:
                raise ObjectNotFoundError(key)
            raise StorageError(key, "GetObject", str(response.status), response.reason or "")
        length = response.headers.get("Content-Length")
        return OpenedBody(
            body=response,
            size=None if length is None else int(length),
            etag=response.headers.get("ETag"),
            content_type=response.headers.get("Content-Type"),
        )

    bucket.Bucket.open = open_  # type: ignore[method-assign]


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
