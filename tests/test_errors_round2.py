"""Issue 10, item 9: errors keep their context as given, whatever the text holds."""

from __future__ import annotations

from s3exchange import errors


def test_a_key_with_a_newline_is_kept_not_taken_for_a_reraised_message() -> None:
    error = errors.ObjectNotFoundError(key="missing\nkey", bucket="b")
    assert error.key == "missing\nkey"
    assert str(error) == "object not found: 'missing\\nkey' in bucket 'b'"
    assert errors.ManifestNotFoundError(key="m\n.jsonl").key == "m\n.jsonl"
    assert errors.IntegrityError(key="a\nb", reason="size").key == "a\nb"
