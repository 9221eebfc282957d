"""Key templates with ``{placeholders}`` and the mapping between logical and physical keys."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidKeyError, MissingPlaceholderError

_FORMATTER = string.Formatter()


class LiteralKey(str):
    """A key taken as it is, braces included: never filled from placeholders.

    ``list_keys``/``list_objects`` return their keys as ``LiteralKey`` so they open whatever
    they hold (``weird/{raw}.txt``); wrap a stored key you hold as a plain ``str`` the same
    way. It is a ``str`` in every other respect (equality, hashing, JSON, printing).
    """

    __slots__ = ()


def resolve_template(template: str, variables: Mapping[str, Any]) -> str:
    """Fill every ``{name}`` of ``template`` from ``variables``; ``{{``/``}}`` are literal braces.

    Format specs work as in ``str.format`` (``{shard:05d}``); attribute and index access do not,
    because a key template is data, not code. A :class:`LiteralKey` is returned unchanged.
    """
    if isinstance(template, LiteralKey):
        return template
    parts: list[str] = []
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise InvalidKeyError(key=template, reason=f"malformed template: {exc}") from None
    for literal, field, spec, conversion in parsed:
        parts.append(literal)
        if field is None:
            continue
        if not field.isidentifier():
            raise InvalidKeyError(
                key=template, reason=f"placeholder {{{field}}} is not a plain name"
            )
        if field not in variables:
            raise MissingPlaceholderError(placeholder=field, template=template)
        value = variables[field]
        if conversion:
            value = _FORMATTER.convert_field(value, conversion)
        parts.append(format(value, spec or ""))
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Maps logical keys (what users and manifests see) to physical keys under ``base_prefix``."""

    base_prefix: str = ""

    def __post_init__(self) -> None:
        prefix = self.base_prefix.strip("/")
        object.__setattr__(self, "base_prefix", f"{prefix}/" if prefix else "")

    def physical(self, key: str) -> str:
        """The key as stored in the bucket."""
        if not key:
            raise InvalidKeyError(key=key, reason="empty key")
        return self.physical_prefix(key)

    def physical_prefix(self, prefix: str) -> str:
        """A listing prefix as stored in the bucket (an empty prefix means everything).

        The same rule as for keys: relative. ``"/"`` is refused rather than read as "the
        root", which once made ``delete_prefix("/")`` delete everything under the base prefix.
        """
        if prefix.startswith("/"):
            raise InvalidKeyError(key=prefix, reason="keys are relative; drop the leading '/'")
        return self.base_prefix + prefix

    def logical(self, physical_key: str) -> str:
        """The key without the base prefix, so it round-trips into :meth:`physical`."""
        if self.base_prefix and physical_key.startswith(self.base_prefix):
            return physical_key[len(self.base_prefix) :]
        return physical_key


def split_virtual_key(key: str) -> tuple[str, str | None]:
    """Split ``archive.tar#member`` into its parts; a plain key gives ``(key, None)``."""
    archive, sep, member = key.partition("#")
    if sep and member:
        return archive, member
    return key, None


def virtual_key(archive_key: str, member_path: str) -> str:
    """The key a shard member is known by: ``archive_key#member_path``."""
    return f"{archive_key}#{member_path}"
