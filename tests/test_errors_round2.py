"""Issue 10, item 9: errors keep their context as given and survive the DataLoader's re-raise."""

from __future__ import annotations

import inspect

import pytest
from torch._utils import ExceptionWrapper

from s3exchange import errors, packing


def _error_classes() -> list[type[errors.S3ExchangeError]]:
    found = {
        cls
        for module in (errors, packing)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, errors.S3ExchangeError)
    }
    return sorted(found, key=lambda cls: cls.__name__)


def test_a_key_with_a_newline_is_kept_not_taken_for_a_reraised_message() -> None:
    error = errors.ObjectNotFoundError("missing\nkey", "b")
    assert error.key == "missing\nkey"
    assert str(error) == "object not found: 'missing\\nkey' in bucket 'b'"
    assert errors.ManifestNotFoundError("m\n.jsonl").key == "m\n.jsonl"
    assert errors.IntegrityError("a\nb", "size").key == "a\nb"


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_the_dataloader_reraise_keeps_type_and_text(cls: type[errors.S3ExchangeError]) -> None:
    """torch's own ExceptionWrapper, as a DataLoader uses it to carry a worker's error."""
    text = "'shards/a.tar' is corrupt"
    try:
        raise cls(message=text)
    except errors.S3ExchangeError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(cls) as caught:
        wrapper.reraise()
    assert "in DataLoader worker process 0" in str(caught.value)
    assert text in str(caught.value)
    for name in ("key", "archive_key", "member_path", "bucket", "line", "etag", "placeholder"):
        assert getattr(caught.value, name, None) is None
