"""Key templates and the logical/physical key mapping."""

from __future__ import annotations

import pytest

from s3exchange.errors import InvalidKeyError, MissingPlaceholderError
from s3exchange.keys import KeySpace, resolve_template, split_virtual_key, virtual_key


def test_placeholders_are_filled_with_format_specs() -> None:
    assert resolve_template("t/{job}/{i:05d}.tar", {"job": "a b", "i": 7}) == "t/a b/00007.tar"


def test_double_braces_are_literal() -> None:
    assert resolve_template("t/{{raw}}/{x}", {"x": 1}) == "t/{raw}/1"


def test_missing_placeholder_names_it() -> None:
    with pytest.raises(MissingPlaceholderError) as err:
        resolve_template("training/{job_id}/samples", {})
    assert err.value.placeholder == "job_id"
    assert "job_id" in str(err.value)


@pytest.mark.parametrize("template", ["a/{x.y}", "a/{x[0]}", "a/{0}", "a/{", "a/}"])
def test_attribute_index_and_malformed_templates_are_refused(template: str) -> None:
    with pytest.raises(InvalidKeyError):
        resolve_template(template, {"x": 1})


def test_keyspace_round_trips_and_normalises_slashes() -> None:
    space = KeySpace("/prod/")
    assert space.base_prefix == "prod/"
    assert space.physical("a/b") == "prod/a/b"
    assert space.logical("prod/a/b") == "a/b"
    assert KeySpace("").physical("a") == "a"


@pytest.mark.parametrize("key", ["", "/abs"])
def test_keyspace_refuses_empty_and_absolute_keys(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        KeySpace("p").physical(key)


def test_virtual_keys() -> None:
    assert virtual_key("s/a.tar", "0.wav") == "s/a.tar#0.wav"
    assert split_virtual_key("s/a.tar#0.wav") == ("s/a.tar", "0.wav")
    assert split_virtual_key("plain") == ("plain", None)
