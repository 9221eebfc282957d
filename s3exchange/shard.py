"""Shard archives: a tar (or tar.gz) whose first member is a JSONL manifest of the other members.

The public face of the shard format, kept in five modules with no I/O:
:mod:`~s3exchange.shard_format` (layout, limits, checksums, the member path rule),
:mod:`~s3exchange.samples` (webdataset sample keys, splitting items into shards),
:mod:`~s3exchange.tar_writer` (:func:`write_shard`), :mod:`~s3exchange.tar_parser` and
:mod:`~s3exchange.tar_reader` (:func:`iter_shard`, the internal manifest).
"""

from __future__ import annotations

from .samples import Shard, key_and_field, sample_key, split_items
from .shard_format import MAX_INTERNAL_MANIFEST_BYTES
from .tar_reader import (
    ShardMember,
    ShardMemberStream,
    iter_internal_manifest,
    iter_shard,
    read_internal_manifest,
)
from .tar_writer import ShardWriteResult, write_shard

__all__ = [
    "MAX_INTERNAL_MANIFEST_BYTES",
    "Shard",
    "ShardMember",
    "ShardMemberStream",
    "ShardWriteResult",
    "iter_internal_manifest",
    "iter_shard",
    "key_and_field",
    "read_internal_manifest",
    "sample_key",
    "split_items",
    "write_shard",
]
