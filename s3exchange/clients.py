"""Building boto3 S3 clients: one warm session per process, and :class:`ClientFactory`, which
rebuilds an equivalent client in another process (a :class:`~s3exchange.bucket.Bucket` pickles
without its client).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from .settings import S3Settings

__all__ = ["DEFAULT_POOL_CONNECTIONS", "ClientFactory"]

DEFAULT_POOL_CONNECTIONS = 10
"""botocore's ``max_pool_connections`` when the client's configuration does not say."""


@dataclass(frozen=True)
class ClientFactory:
    """How to build an equivalent S3 client in another process; never holds a live client."""

    kwargs: dict[str, Any] = field(repr=False)

    @classmethod
    def from_settings(cls, settings: S3Settings) -> ClientFactory:
        return cls(settings.client_kwargs())

    @classmethod
    def from_client(cls, client: S3Client) -> ClientFactory:
        """Capture endpoint, region, config and (static) credentials of an existing client.

        Refreshable credentials (instance roles, SSO, assume-role) are not copied: the new
        process resolves them through boto3's normal chain, as the original did.
        """
        from botocore.credentials import RefreshableCredentials

        kwargs: dict[str, Any] = {
            "endpoint_url": client.meta.endpoint_url,
            "region_name": client.meta.region_name,
            "config": client.meta.config,
        }
        signer = getattr(client, "_request_signer", None)
        credentials = getattr(signer, "_credentials", None)
        if credentials is not None and not isinstance(credentials, RefreshableCredentials):
            frozen = credentials.get_frozen_credentials()
            kwargs["aws_access_key_id"] = frozen.access_key
            kwargs["aws_secret_access_key"] = frozen.secret_key
            if frozen.token:
                kwargs["aws_session_token"] = frozen.token
        return cls(kwargs)

    @property
    def max_pool_connections(self) -> int:
        """The clients' connection pool size (botocore's default, 10, when not configured)."""
        size = getattr(self.kwargs.get("config"), "max_pool_connections", None)
        return size if isinstance(size, int) and size > 0 else DEFAULT_POOL_CONNECTIONS

    def create(self) -> S3Client:
        client: S3Client = _session().client("s3", **self.kwargs)
        return client


_SESSIONS: dict[int, Any] = {}
_LOADERS: list[Any] = []


def _session() -> Any:
    """One boto3 session per process: building one re-parses botocore's models (~100 ms of CPU
    per DataLoader worker); clients made from it are independent and thread-safe.

    A forked child gets a session of its own but shares its parent's botocore data loader,
    which holds nothing but the JSON models it has already parsed: a forked DataLoader worker
    then builds its client in ~10 ms instead of ~145 ms, every epoch.
    """
    import boto3
    import botocore.session

    pid = os.getpid()
    session = _SESSIONS.get(pid)
    if session is None:
        _SESSIONS.clear()  # a forked child must not reuse its parent's session
        core = botocore.session.get_session()
        loader = _warm_loader()
        if loader is not None:
            core.register_component("data_loader", loader)
        else:
            _LOADERS.append(core.get_component("data_loader"))
        session = _SESSIONS[pid] = boto3.session.Session(botocore_session=core)
    return session


def _warm_loader() -> Any:
    """A data loader that has parsed S3's models already: ours, or boto3's default session's
    (the one a ``boto3.client(...)`` the caller handed us came from); None if neither exists."""
    if _LOADERS:
        return _LOADERS[0]
    import boto3

    default = getattr(boto3.DEFAULT_SESSION, "_session", None)
    return None if default is None else default.get_component("data_loader")
