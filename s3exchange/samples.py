"""Webdataset samples and cutting items into shards: which items go together.

:func:`key_and_field` is webdataset's rule for the sample a member path belongs to;
:func:`split_items` cuts items into shard-sized batches without splitting a sample (also
:meth:`Shard.split_items`, next to :class:`Shard`, an uploaded shard's entry and members). No I/O
beyond sizing a path source (``os.path.getsize``) when ``max_bytes`` asks for it.

Names taken from a path, all written here and nowhere else. Two meanings, two names:

============================  ==========================  ======================================
``a/b/x.seg.png`` gives       rule                        used for
============================  ==========================  ======================================
``sample_key``: ``a/b/x``     up to the first dot of the  the webdataset sample a file belongs
(``key_and_field`` adds the   basename (webdataset's      to: ``group_by="key"``, and the files
field ``seg.png``)            ``base_plus_ext``)          a shard never splits
``entry_id``: ``a/b/x.seg``   without the last extension  the ``id`` of a file's manifest entry:
                              (``posixpath.splitext``)    ``pack`` gives it the member path's,
                                                          ``put_object`` the key's basename's
                                                          (``x.seg``; ``infer_id=`` replaces it)
============================  ==========================  ======================================

An ``id`` labels one file and keeps every dot but the extension's (``2024.01.05.wav`` is
``2024.01.05``); a sample key groups files, so ``x.jpg`` and ``x.json`` share ``x``. A path
without an extension is its own id and its own sample key.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .tar_writer import item_size
from .types import FileEntry, ShardEntry, ShardItem

__all__ = ["Shard", "entry_id", "key_and_field", "sample_key", "split_items"]

_KEY_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""webdataset's ``base_plus_ext``: key up to the first dot of the basename, then the field."""


def key_and_field(path: str) -> tuple[str, str] | None:
    """``(key, field)`` of a path as webdataset splits it, or ``None`` without an extension.

    ``"a/b/x.seg.PNG"`` gives ``("a/b/x", "seg.png")``: the field is lower-cased, as
    webdataset's ``group_by_keys`` does. The same regular expression, so edge cases agree too.
    """
    match = _KEY_FIELD.match(path)
    if match is None:
        return None
    return match.group(1), match.group(2).lower()


def sample_key(member_path: str) -> str:
    """The webdataset sample ``member_path`` belongs to; a path without extension is its own."""
    split = key_and_field(member_path)
    return split[0] if split else member_path


def entry_id(path: str) -> str:
    """The default ``id`` of a file entry: ``path`` without its last extension (a dotfile, or a
    name without an extension, is its own id)."""
    stem, _ = posixpath.splitext(path)
    return stem or path


def split_items(
    items: Iterable[ShardItem], max_entries: int | None = None, max_bytes: int | None = None
) -> list[list[ShardItem]]:
    """Cut ``items`` into batches of at most ``max_entries`` items and ``max_bytes``.

    Files of one webdataset sample (:func:`sample_key`: ``x.jpg`` and ``x.json``) always land
    in one batch, next to each other where the first of them stood, so a reader grouping by key
    never sees a sample split. Otherwise order is kept. Sizes are member sizes (tar headers not
    counted); a sample larger than the limits gets a batch of its own. No batch is empty. Sizes
    are only looked up when ``max_bytes`` is given; a non-seekable stream without
    ``size_bytes`` then raises ValueError.
    """
    for name, limit in (("max_entries", max_entries), ("max_bytes", max_bytes)):
        if limit is not None and limit <= 0:
            raise ValueError(f"{name} must be positive, got {limit}")
    samples: dict[str, list[ShardItem]] = {}
    for item in items:
        samples.setdefault(sample_key(item["member_path"]), []).append(item)
    batches: list[list[ShardItem]] = []
    batch: list[ShardItem] = []
    batch_bytes = 0
    for sample in samples.values():
        size = sum(item_size(item) for item in sample) if max_bytes is not None else 0
        full = max_entries is not None and len(batch) + len(sample) > max_entries
        over = max_bytes is not None and batch_bytes + size > max_bytes
        if batch and (full or over):
            batches.append(batch)
            batch, batch_bytes = [], 0
        batch += sample
        batch_bytes += size
    if batch:
        batches.append(batch)
    return batches


@dataclass(frozen=True, slots=True)
class Shard:
    """An uploaded shard: its outer manifest entry and the members its internal manifest lists."""

    entry: ShardEntry
    members: list[FileEntry]

    @staticmethod
    def split_items(
        items: Iterable[ShardItem], max_entries: int | None = None, max_bytes: int | None = None
    ) -> list[list[ShardItem]]:
        """Same as the module-level :func:`split_items`."""
        return split_items(items, max_entries, max_bytes)
