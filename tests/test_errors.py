"""Domain errors: one hierarchy, each naming its subject, each rebuilt from its message alone
(``type(exc)(str(exc))``, what a DataLoader re-raise and unpickling do)."""

from __future__ import annotations

import inspect
import pickle

import pytest
import torch.utils.data

import s3exchange
import s3exchange_torch
from s3exchange import errors
from s3exchange.errors import S3ExchangeError

EXAMPLES: dict[type[S3ExchangeError], S3ExchangeError] = {
    errors.AccessDeniedError: errors.AccessDeniedError(
        key="a.wav", operation="GetObject", code="AccessDenied", reason="no"
    ),
    errors.ConcurrentModificationError: errors.ConcurrentModificationError(
        key="m.jsonl", reason="lost 50 races"
    ),
    errors.DeleteError: errors.DeleteError(errors=[("a.wav", "AccessDenied", "no")]),
    errors.IntegrityError: errors.IntegrityError(key="a.wav", reason="size is 3 bytes"),
    errors.InvalidKeyError: errors.InvalidKeyError(key="/a", reason="keys are relative"),
    errors.InvalidManifestError: errors.InvalidManifestError(
        key="m.jsonl", reason="bad json", line=3
    ),
    errors.ManifestNotFoundError: errors.ManifestNotFoundError(key="m.jsonl", bucket="b"),
    errors.MissingPlaceholderError: errors.MissingPlaceholderError(
        placeholder="split", template="{split}/m.jsonl"
    ),
    errors.ObjectChangedError: errors.ObjectChangedError(key="a.wav", etag='"e1"'),
    errors.ObjectNotFoundError: errors.ObjectNotFoundError(key="a.wav", bucket="b"),
    errors.PackConflictError: errors.PackConflictError(problems=["s/0.tar differs"], hint="h"),
    errors.PackError: errors.PackError("'src' is not a directory"),
    errors.ReadInterruptedError: errors.ReadInterruptedError(
        key="a.wav", offset=7, attempts=5, cause=ConnectionResetError()
    ),
    errors.S3ExchangeError: errors.S3ExchangeError("something failed"),
    errors.ShardReadError: errors.ShardReadError(
        archive_key="s.tar", reason="crc32c mismatch", member_path="0001.wav"
    ),
    errors.ShardWriteError: errors.ShardWriteError(
        archive_key="s.tar", reason="no items", member_path=None
    ),
    errors.StorageError: errors.StorageError(
        key="a.wav", operation="GetObject", code="SlowDown", reason="busy"
    ),
    errors.UploadError: errors.UploadError(key="a.wav", reason="connection reset"),
    s3exchange_torch.SampleTooLargeError: s3exchange_torch.SampleTooLargeError(
        key="s.tar", size=10, limit=5, member_path="0001.wav"
    ),
}
CONTEXT = (
    "key",
    "bucket",
    "reason",
    "line",
    "archive_key",
    "member_path",
    "etag",
    "offset",
    "attempts",
    "operation",
    "code",
    "placeholder",
    "template",
    "size",
    "limit",
    "hint",
)


def public_error_classes() -> list[type[S3ExchangeError]]:
    """Every error class either package exports."""
    found = {
        cls
        for package in (s3exchange, s3exchange_torch)
        for name in package.__all__
        if inspect.isclass(cls := getattr(package, name)) and issubclass(cls, S3ExchangeError)
    }
    return sorted(found, key=lambda cls: cls.__name__)


def test_every_error_is_exported_and_derives_from_the_base() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, S3ExchangeError)
        assert getattr(s3exchange, name) is cls


def test_every_public_error_has_an_example_here() -> None:
    assert set(public_error_classes()) == set(EXAMPLES)


@pytest.mark.parametrize("cls", public_error_classes(), ids=lambda cls: cls.__name__)
def test_message_alone_rebuilds_type_and_text(cls: type[S3ExchangeError]) -> None:
    error = EXAMPLES[cls]
    assert type(error) is cls
    rebuilt = type(error)(str(error))
    assert type(rebuilt) is cls
    assert str(rebuilt) == str(error)
    assert rebuilt.args == (str(error),)
    for name in CONTEXT:  # the context is given or None, never read back from the text
        assert getattr(rebuilt, name, None) in (None, [])


@pytest.mark.parametrize("cls", public_error_classes(), ids=lambda cls: cls.__name__)
def test_pickling_keeps_type_text_and_context(cls: type[S3ExchangeError]) -> None:
    error = EXAMPLES[cls]
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)


class _Raises(torch.utils.data.Dataset[int]):
    """Item ``i`` raises the ``i``-th error."""

    def __init__(self, errors: list[S3ExchangeError]) -> None:
        self.errors = errors

    def __len__(self) -> int:
        return len(self.errors)

    def __getitem__(self, index: int) -> int:
        raise self.errors[index]


def test_a_dataloader_worker_reraise_keeps_type_and_text() -> None:
    """A real worker process raises each; the main process gets the same class and text (the
    iterator goes on after a worker's error, so one worker serves every class)."""
    raised = [EXAMPLES[cls] for cls in public_error_classes()]
    batches = iter(torch.utils.data.DataLoader(_Raises(raised), batch_size=None, num_workers=1))
    try:
        for error in raised:
            with pytest.raises(type(error)) as caught:
                next(batches)
            assert type(caught.value) is type(error)
            assert "in DataLoader worker process 0" in str(caught.value)
            assert str(error) in str(caught.value)
        with pytest.raises(StopIteration):
            next(batches)
    finally:
        batches._shutdown_workers()  # type: ignore[attr-defined]


def test_messages_name_their_subject() -> None:
    manifest = str(EXAMPLES[errors.InvalidManifestError])
    assert manifest == "invalid manifest 'm.jsonl' line 3: bad json"
    shard = str(EXAMPLES[errors.ShardReadError])
    assert shard == "cannot read shard 's.tar' member '0001.wav': crc32c mismatch"
    assert str(EXAMPLES[errors.ObjectNotFoundError]) == "object not found: 'a.wav' in bucket 'b'"
    assert errors.ObjectNotFoundError(key="k.wav").key == "k.wav"
    conflict = errors.PackConflictError(problems=["a", "b", "c"], hint="pack elsewhere")
    assert str(conflict) == "a; b (+1 more). pack elsewhere"
    assert conflict.problems == ["a", "b", "c"]


def test_a_message_and_context_together_are_both_kept() -> None:
    error = errors.ObjectNotFoundError("no such member 's.tar#a.wav'", key="s.tar#a.wav")
    assert str(error) == "no such member 's.tar#a.wav'"
    assert error.key == "s.tar#a.wav"
