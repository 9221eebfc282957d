"""One store per settings in each Ray worker process, reused by every task it runs.

Building a boto3 client costs ~0.16 s of CPU here (botocore builds its endpoint rules per
client), as much as writing a 5 MiB shard: a task building its own would spend most of a small
task on it. Ray reuses worker processes, so each keeps one store per distinct settings.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import TYPE_CHECKING

from pydantic import SecretStr

from ..store import S3ExchangeStore

if TYPE_CHECKING:
    from ..settings import S3Settings

__all__ = ["clear_stores", "store_for"]

_STORES: dict[str, S3ExchangeStore] = {}
_LOCK = threading.Lock()


def _fingerprint(settings: S3Settings) -> str:
    """A digest of every setting, secrets included (never the secrets themselves as a key)."""
    values = {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value
        for name, value in settings
    }
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def store_for(settings: S3Settings) -> S3ExchangeStore:
    """This process's store for ``settings`` (built on first use)."""
    key = _fingerprint(settings)
    with _LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = S3ExchangeStore.from_settings(settings)
        return store


def clear_stores() -> None:
    """Forget every store (a test that changes what a server answers, a rotated credential)."""
    with _LOCK:
        _STORES.clear()
