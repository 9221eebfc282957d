"""``S3ExchangeDatasink``: a Ray Data sink writing s3exchange shards and one manifest, atomically.

Each write task streams its rows through a :class:`~s3exchange.shard_writer.ShardWriter` into
shards named from the task's index (``pattern.format(task=, index=)``) and returns their entries;
the driver writes the manifest *last*, in one request, from every task's entries
(``on_write_complete``). So a reader sees the whole dataset or no manifest at all.

Failures: a task that raises aborts its open upload (the writer's ``__exit__``); Ray reruns a
task under the same index, so a retried task overwrites its own shards instead of adding more,
and deletes any shard of an earlier attempt past its last one. When the write fails for good,
``on_write_failed`` aborts every pending upload whose key the pattern produces (a task killed
outright runs no ``finally``) and no manifest is written. Shards completed before the failure
stay stored but unlisted; rerunning the same write replaces them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

from ..errors import ShardWriteError
from ..keys import LiteralKey
from ..shard_index import index_key_for
from ..shard_writer import DEFAULT_MAX_BYTES, ShardWriter, shard_compression
from ..store import S3ExchangeStore
from ..types import Compression, ShardEntry, UpdateMode
from .clients import store_for

if TYPE_CHECKING:
    import pyarrow as pa
    from ray.data._internal.execution.interfaces import TaskContext

    from ..settings import S3Settings

__all__ = ["S3ExchangeDatasink", "TaskShards"]

_PLACEHOLDERS = ("task", "index")


@dataclass(frozen=True, slots=True)
class TaskShards:
    """What one write task returns to the driver: its index, its shards and its row count."""

    task: int
    entries: list[ShardEntry]
    rows: int


def _check_pattern(pattern: str) -> tuple[re.Pattern[str], str]:
    """A regular expression matching every key ``pattern`` gives, and the text before its first
    placeholder; ValueError unless it holds the placeholders ``{task}`` and ``{index}`` and no
    other (format specs allowed)."""
    regex: list[str] = []
    found: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"shard pattern {pattern!r} is malformed: {exc}") from None
    for literal, field, _spec, _conversion in parsed:
        regex.append(re.escape(literal))
        if field is None:
            continue
        if field not in _PLACEHOLDERS:
            raise ValueError(
                f"shard pattern {pattern!r}: {{{field}}} is not one of {{task}} and {{index}} "
                "(fill other parts of the key before giving the pattern)"
            )
        found.add(field)
        regex.append(r"\s*-?[0-9]+")
    missing = [name for name in _PLACEHOLDERS if name not in found]
    if missing:
        raise ValueError(
            f"shard pattern {pattern!r} lacks {{{missing[0]}}}: shard names come from the "
            "write task's index ({task}) and the shard's index within the task ({index})"
        )
    return re.compile("".join(regex) + r"\Z"), parsed[0][0]


def _sample(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as a ShardWriter sample: null fields dropped (a block holding samples of other
    fields fills the missing ones with null, as Ray's ``write_webdataset`` skips them)."""
    return {field: value for field, value in row.items() if value is not None}


class S3ExchangeDatasink(Datasink[TaskShards]):
    """Writes a Ray Dataset of webdataset rows into s3exchange shards listed in one manifest.

    Rows are ``{"__key__": "0001", "jpg": bytes, "json": dict, "npy": ndarray, ...}``: each
    field becomes the member ``<key>.<field>`` as :class:`~s3exchange.shard_writer.ShardWriter`
    encodes it. ``pattern`` names shard ``index`` (0, 1, ...) of write task ``task``:
    ``"train/shards/shard-{task:05d}-{index:04d}.tar"``. ``manifest`` (None: none) is written
    by the driver after every task has finished, with ``update_mode``.

    ``settings`` travel to every task; each worker process builds one client from them and
    keeps it for the tasks it runs (:mod:`.clients`). The secrets stay
    :class:`~pydantic.SecretStr` (masked in every repr; this sink's repr names no setting but
    the bucket).

    A write task gets one block by default (Ray's target is 128 MiB at most, often far less), so
    each task ends in a shard filled only as far as its block goes. ``bytes_per_task`` (say
    ``max_bytes``) or ``rows_per_task`` has Ray bundle blocks until a task holds that much, for
    full shards.
    """

    def __init__(
        self,
        settings: S3Settings,
        pattern: str,
        manifest: str | None = None,
        *,
        max_entries: int | None = None,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        compression: Compression | Literal["none"] = None,
        compresslevel: int = 6,
        update_mode: UpdateMode = "overwrite",
        rows_per_task: int | None = None,
        bytes_per_task: int | None = None,
    ) -> None:
        self._keys, self._static_prefix = _check_pattern(pattern)
        if update_mode not in ("overwrite", "append_parts"):
            raise ValueError(
                f"update_mode must be 'overwrite' or 'append_parts', not {update_mode!r}"
            )
        for name, target in (("rows_per_task", rows_per_task), ("bytes_per_task", bytes_per_task)):
            if target is not None and target < 1:
                raise ValueError(f"{name} must be positive, got {target}")
        if rows_per_task is not None and bytes_per_task is not None:
            raise ValueError("give rows_per_task or bytes_per_task, not both (Ray takes one)")
        self._settings = settings
        self._pattern = pattern
        self._manifest = manifest
        self._options: dict[str, Any] = {
            "max_entries": max_entries,
            "max_bytes": max_bytes,
            "compression": shard_compression(compression),
            "compresslevel": compresslevel,
        }
        self._update_mode: UpdateMode = update_mode
        self._rows_per_task = rows_per_task
        self._bytes_per_task = bytes_per_task
        self.entries: list[ShardEntry] = []
        """Every shard written, in task order, once the write has completed."""
        self.manifest_key: str | None = None
        """The key the manifest was written to (a part, with ``append_parts``), once complete."""
        # every check the writer makes of its options and pattern, before any task starts
        self._writer(self._store(), 0).abort()

    def __repr__(self) -> str:
        return (
            f"S3ExchangeDatasink(bucket={self._settings.bucket!r}, pattern={self._pattern!r}, "
            f"manifest={self._manifest!r})"
        )

    def get_name(self) -> str:
        return "S3Exchange"

    @property
    def min_rows_per_write(self) -> int | None:
        return self._rows_per_task

    @property
    def min_bytes_per_write(self) -> int | None:
        return self._bytes_per_task

    def _store(self) -> S3ExchangeStore:
        return store_for(self._settings)

    def _writer(self, store: S3ExchangeStore, task: int) -> ShardWriter:
        # shards always overwrite: a retried task must replace what its first attempt wrote
        return store.shard_writer(
            self._pattern, None, update_mode="overwrite", vars={"task": task}, **self._options
        )

    def _key(self, store: S3ExchangeStore, task: int, index: int) -> str:
        return LiteralKey(store.resolve(self._pattern, {"task": task, "index": index}))

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        """With ``append_parts``, refuse a pattern whose first shard exists already: an earlier
        run's manifest lists it, and this run would replace it under that manifest."""
        if self._update_mode != "append_parts":
            return
        store = self._store()
        first = self._key(store, 0, 0)
        if store.exists(first):
            raise ShardWriteError(
                archive_key=first,
                reason="already exists; appending must not replace shards an earlier manifest "
                "part lists (give each run its own shard pattern)",
            )

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> TaskShards:
        """One write task: stream its rows into shards ``pattern(task=ctx.task_idx, index=...)``."""
        store = self._store()
        task = ctx.task_idx
        rows = 0
        with self._writer(store, task) as writer:
            for block in blocks:
                accessor = BlockAccessor.for_block(block)
                row: Mapping[str, Any]
                for row in accessor.iter_rows(public_row_format=False):
                    writer.write(_sample(row))
                    rows += 1
        entries = writer.entries
        self._delete_leftovers(store, task, len(entries))
        return TaskShards(task, entries, rows)

    def _delete_leftovers(self, store: S3ExchangeStore, task: int, written: int) -> None:
        """Delete this task's shards (and their indexes) past the last written: an earlier
        attempt's (or an earlier overwritten run's), which no manifest of this write lists. One
        HEAD when there are none."""
        index = written
        while store.exists(key := self._key(store, task, index)):
            store.delete_key(LiteralKey(index_key_for(key)))  # first: never an orphaned index
            store.delete_key(key)
            index += 1

    def on_write_complete(self, write_result: WriteResult[TaskShards]) -> None:
        """The commit: the manifest, written once every task has returned its shards."""
        returns = sorted(write_result.write_returns, key=lambda shards: shards.task)
        self.entries = [entry for shards in returns for entry in shards.entries]
        if self._manifest is None:
            return
        if not self.entries and self._update_mode == "append_parts":
            return  # nothing to append
        self.manifest_key = self._store().put_sharded(
            self._manifest, self.entries, update_mode=self._update_mode
        )

    def on_write_failed(self, error: Exception) -> None:
        """Abort every pending upload this write's pattern names: a task killed outright (a lost
        node, ``kill -9``) leaves its parts stored and billed otherwise. No manifest is written."""
        store = self._store()
        listed = store.list_uploads(LiteralKey(self._static_prefix))
        ours = [upload for upload in listed if self._keys.match(upload.key)]
        store.abort_uploads(ours)
