"""Connection settings from ``S3EXCHANGE_*`` environment variables or a ``.env`` file."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class S3Settings(BaseSettings):
    """Where the bucket lives and how to talk to it.

    With ``endpoint_url`` set (MinIO, Garage, Ceph, SeaweedFS ...) the checksum behaviour defaults
    to ``when_required``: boto3 >= 1.36 otherwise sends CRC trailers many S3-compatible servers
    reject. Without credentials here, boto3's normal credential chain applies.
    """

    model_config = SettingsConfigDict(
        env_prefix="S3EXCHANGE_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    endpoint_url: str | None = None
    region: str | None = None
    bucket: str | None = None
    base_prefix: str = ""
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    max_pool_connections: int = Field(default=32, ge=1)
    retry_mode: Literal["legacy", "standard", "adaptive"] = "standard"
    max_attempts: int = Field(default=5, ge=1)
    connect_timeout: float = Field(default=10.0, gt=0)
    read_timeout: float = Field(default=60.0, gt=0)
    read_budget: float | None = Field(default=None, gt=0)
    """Most seconds one read waits on a server that stopped answering. A frozen server costs a
    read ``read_timeout x (1 + max_attempts)`` plus backoff (the stalled body, then each
    attempt of the resuming GET): 360 s with the defaults, 4.1 s measured at 1 s x 2. With a
    budget the read timeout becomes ``min(read_timeout, read_budget / (1 + max_attempts))``."""
    reconnect_timeout: float = Field(default=30.0, ge=0)
    """Seconds a read keeps retrying a server it cannot reach (a restart, a network blip)."""
    request_checksum_calculation: Literal["when_supported", "when_required"] | None = None
    response_checksum_validation: Literal["when_supported", "when_required"] | None = None

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``boto3.client("s3", ...)``; secrets are unwrapped only here."""
        from botocore.config import Config

        default_checksum: Literal["when_supported", "when_required"] = (
            "when_required" if self.endpoint_url else "when_supported"
        )
        config = Config(
            region_name=self.region,
            s3={"addressing_style": self.addressing_style},
            max_pool_connections=self.max_pool_connections,
            retries={"mode": self.retry_mode, "max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout,
            read_timeout=self.effective_read_timeout(),
            request_checksum_calculation=self.request_checksum_calculation or default_checksum,
            response_checksum_validation=self.response_checksum_validation or default_checksum,
        )
        kwargs: dict[str, Any] = {"config": config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.region:
            kwargs["region_name"] = self.region
        for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            secret: SecretStr | None = getattr(self, name)
            if secret is not None:
                kwargs[name] = secret.get_secret_value()
        redact_secrets_in_logs(kwargs.get(name, "") for name in _SECRET_NAMES)
        return kwargs

    def effective_read_timeout(self) -> float:
        """The socket read timeout the client gets: ``read_timeout``, lowered to fit
        ``read_budget`` when one is set."""
        if self.read_budget is None:
            return self.read_timeout
        return min(self.read_timeout, self.read_budget / (1 + self.max_attempts))

    def create_client(self) -> S3Client:
        """A boto3 S3 client built from these settings."""
        import boto3

        client: S3Client = boto3.client("s3", **self.client_kwargs())
        return client


# -- secrets out of botocore's DEBUG logs ------------------------------------------------------

_SECRET_NAMES = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
_LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.hooks", "botocore.parsers")
"""Where botocore writes requests at DEBUG: ``endpoint`` dumps the signed headers (session
token, ``Credential=<access key id>``), ``auth`` the canonical request (the token again)."""
_SECRET_FIELDS = re.compile(
    r"(?i)((?:x-amz-security-token|credential)['\"]?\s*[:=]\s*b?['\"]?)([^'\"\s,}&/%]+)"
)
_REDACTED = "<redacted>"


class _RedactSecrets(logging.Filter):
    """Rewrites a record whose text holds a credential: the token and key id header fields by
    pattern (credentials botocore found itself too), and every secret the settings handed out
    by value."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is logging's own problem to report
            return True
        clean = _SECRET_FIELDS.sub(lambda m: m.group(1) + _REDACTED, text)
        for secret in self.secrets:
            clean = clean.replace(secret, _REDACTED)
        if clean != text:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactSecrets()


def redact_secrets_in_logs(secrets: Iterable[str] = ()) -> None:
    """Keep credentials out of botocore's DEBUG logs (filters run only for enabled levels, so
    this costs nothing otherwise). Idempotent; ``secrets`` are added to those redacted."""
    _FILTER.secrets.update(s for s in secrets if len(s) >= 4)
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
