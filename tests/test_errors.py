"""Domain errors: one hierarchy, each naming its subject, each rebuildable from one message."""

from __future__ import annotations

import inspect

import s3exchange
from s3exchange import errors


def test_every_error_is_exported_and_derives_from_the_base() -> None:
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.S3ExchangeError) and not name.startswith("_"):
            assert getattr(s3exchange, name) is cls


def test_errors_survive_a_dataloader_style_reraise() -> None:
    """torch re-raises a worker's exception as ``type(exc)(message)``."""
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.S3ExchangeError):
            rebuilt = cls("Caught in DataLoader worker 0.\nOriginal: 'shards/a.tar' is corrupt")
            assert "shards/a.tar" in str(rebuilt)


def test_messages_name_their_subject() -> None:
    assert "m.jsonl" in str(errors.InvalidManifestError("m.jsonl", "bad json", line=3))
    assert "line 3" in str(errors.InvalidManifestError("m.jsonl", "bad json", line=3))
    shard = errors.ShardReadError("s.tar", "sha256 mismatch", member_path="0001.wav")
    assert "s.tar" in str(shard)
    assert "0001.wav" in str(shard)
    assert errors.ObjectNotFoundError("k.wav").key == "k.wav"
