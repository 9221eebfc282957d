"""s3exchange.ray: the Ray Data sink and source on a local Ray (2 CPUs) against real S3 servers.

The sink's commit (manifest last, none on failure, no pending upload left, retries overwrite
their own shards) and the source's exactly-once, checksum-verified reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import ray
import ray.cloudpickle

from s3exchange import S3ExchangeStore, S3Settings, ShardReadError
from s3exchange.ray import S3ExchangeDatasink, read_s3exchange
from s3exchange.ray.source import _Unit, balance

if TYPE_CHECKING:
    from ray.data._internal.execution.interfaces import TaskContext
    from ray.data.block import Block

    from s3exchange.ray.sink import TaskShards
    from s3exchange.testing import RunningServer

ray.cloudpickle.register_pickle_by_value(__import__(__name__))  # the sinks below, in workers

PATTERN = "train/shards/shard-{task:05d}-{index:04d}.tar"
MANIFEST = "train/manifest.jsonl"


@pytest.fixture
def settings(s3_server: RunningServer, bucket: str) -> S3Settings:
    s3 = s3_server.s3
    return S3Settings(
        endpoint_url=s3.endpoint_url,
        region=s3.region,
        bucket=bucket,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        addressing_style="path",
        max_attempts=2,
    )


def _rows(n: int, size: int = 100) -> list[dict[str, Any]]:
    return [
        {
            "__key__": f"{i:05d}",
            "bin": bytes([i % 251]) * (size + i),
            "txt": f"text {i}",
            "json": {"label": i, "name": f"n{i}"},
            "npy": np.arange(i % 7 + 1, dtype=np.int32),
        }
        for i in range(n)
    ]


def _listed(store: S3ExchangeStore) -> list[str]:
    return [e["archive_key"] for e in store.iter_manifest_entries(MANIFEST) if "archive_key" in e]


def _stored(store: S3ExchangeStore) -> list[str]:
    """The archives under the shard prefix (sidecar objects beside them left out)."""
    return sorted(k for k in store.list_keys("train/shards/") if k.endswith(".tar"))


# -- planning and arguments, no Ray job --------------------------------------------------------


def test_units_are_dealt_once_each_balanced_by_bytes_in_manifest_order() -> None:
    sizes = [100, 5, 60, 40, 30, 30, 20, 10, 5, 100]
    units = [_Unit(i, [], size) for i, size in enumerate(sizes)]
    groups = balance(units, 3)
    assert sorted(u.position for g in groups for u in g) == list(range(len(sizes)))
    loads = [sum(u.size for u in g) for g in groups]
    assert max(loads) - min(loads) <= 10, loads  # 400 bytes as 130/135/135
    for group in groups:
        assert [u.position for u in group] == sorted(u.position for u in group)
    assert len(balance(units[:2], 8)) == 2  # never an empty task
    assert balance([], 4) == []


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("shards/shard-{index:04d}.tar", "lacks {task}"),
        ("shards/shard-{task:05d}.tar", "lacks {index}"),
        ("shards/{run}/shard-{task}-{index}.tar", "{run} is not one of"),
    ],
)
def test_a_pattern_without_task_and_index_is_refused(pattern: str, problem: str) -> None:
    settings = S3Settings(endpoint_url="http://127.0.0.1:9", bucket="b", region="us-east-1")
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        S3ExchangeDatasink(settings, pattern, MANIFEST)


def test_bad_options_are_refused_before_any_task() -> None:
    settings = S3Settings(endpoint_url="http://127.0.0.1:9", bucket="b", region="us-east-1")
    with pytest.raises(ValueError, match="update_mode must be"):
        S3ExchangeDatasink(settings, PATTERN, MANIFEST, update_mode="append")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_entries must be positive"):
        S3ExchangeDatasink(settings, PATTERN, MANIFEST, max_entries=0)
    with pytest.raises(ValueError, match="rows_per_task must be positive"):
        S3ExchangeDatasink(settings, PATTERN, MANIFEST, rows_per_task=0)
    with pytest.raises(ValueError, match="not both"):
        S3ExchangeDatasink(settings, PATTERN, MANIFEST, rows_per_task=9, bytes_per_task=9)


def test_a_shard_name_disagreeing_with_the_compression_is_refused() -> None:
    settings = S3Settings(endpoint_url="http://127.0.0.1:9", bucket="b", region="us-east-1")
    with pytest.raises(ValueError, match=r"named for compression None but compression is 'gzip'"):
        S3ExchangeDatasink(settings, PATTERN, MANIFEST, compression="gzip")


# -- the sink ----------------------------------------------------------------------------------

BOTH_SERVERS = pytest.mark.parametrize(
    "s3_server", ["moto", pytest.param("seaweedfs", marks=pytest.mark.seaweedfs)], indirect=True
)


@BOTH_SERVERS
def test_sink_round_trip_manifest_written_last(
    ray_local: None, settings: S3Settings, s3_client: Any, bucket: str
) -> None:
    rows = _rows(40)
    store = S3ExchangeStore.from_settings(settings)
    sink = _ManifestAbsentSink(settings, PATTERN, MANIFEST, max_entries=25)
    ray.data.from_items(rows, override_num_blocks=4).write_datasink(sink)

    # every task saw no manifest while it wrote (it raises otherwise); the driver wrote it last
    listed = _listed(store)
    assert listed == [e["archive_key"] for e in sink.entries]
    assert listed == _stored(store)  # nothing unlisted, nothing listed twice
    assert len({key.rsplit("-", 2)[1] for key in listed}) == 4  # one shard name per task...
    assert sum(e["count"] for e in sink.entries) == 40 * 4  # ...and every field of every row
    assert sink.manifest_key == MANIFEST

    by_path = {e["member_path"]: stream.read() for stream, e in store.iter_objects(MANIFEST)}
    for row in rows:
        key = row["__key__"]
        assert by_path[f"{key}.bin"] == row["bin"]
        assert by_path[f"{key}.txt"] == row["txt"].encode()
        assert json.loads(by_path[f"{key}.json"]) == row["json"]
        assert np.load(__import__("io").BytesIO(by_path[f"{key}.npy"])).tolist() == (
            row["npy"].tolist()
        )
    assert not list(store.list_uploads("train/"))


class _ManifestAbsentSink(S3ExchangeDatasink):
    """Fails a task that finds the manifest already written while it streams its rows."""

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> TaskShards:
        store = S3ExchangeStore.from_settings(self._settings)
        if store.exists(MANIFEST):
            raise AssertionError("the manifest exists before every task has finished")
        return super().write(blocks, ctx)


class _FailingSink(S3ExchangeDatasink):
    """Fails its task after ``after`` rows: raising (``kill=False``) or dying outright, with no
    ``finally`` run (``kill=True``), once only when ``marker`` is given (a retry then succeeds)."""

    def __init__(
        self, *args: Any, after: int, kill: bool = False, marker: str | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._after, self._kill, self._marker = after, kill, marker

    def write(self, blocks: Iterable[Block], ctx: TaskContext) -> TaskShards:
        if self._marker is not None and os.path.exists(self._marker):
            return super().write(blocks, ctx)
        return super().write(self._failing(blocks), ctx)

    def _failing(self, blocks: Iterable[Block]) -> Iterator[Block]:
        from ray.data.block import BlockAccessor

        seen = 0
        for block in blocks:
            accessor = BlockAccessor.for_block(block)
            for i in range(accessor.num_rows()):
                if seen == self._after:
                    if self._marker is not None:
                        Path(self._marker).touch()
                    if self._kill:
                        os._exit(1)
                    raise RuntimeError("a transformation failed mid-task")
                yield accessor.slice(i, i + 1)
                seen += 1


@pytest.mark.parametrize(
    ("kill", "error"),
    [(False, "a transformation failed mid-task"), (True, r"(?i)died|crash")],
    ids=["raises", "killed"],
)
def test_a_failing_task_leaves_no_manifest_and_no_pending_upload(
    ray_local: None, settings: S3Settings, kill: bool, error: str
) -> None:
    # 1 MiB rows, 20 of them before the failure: the open shard is a multipart upload by then
    # (5 MiB held back, parts of 8 MiB), so only an abort removes it
    rows = [{"__key__": f"{i:03d}", "bin": bytes(1 << 20)} for i in range(24)]
    store = S3ExchangeStore.from_settings(settings)
    sink = _FailingSink(settings, PATTERN, MANIFEST, after=20, kill=kill)
    with pytest.raises(Exception, match=error):
        ray.data.from_items(rows, override_num_blocks=1).write_datasink(
            sink, ray_remote_args={"max_retries": 0}
        )
    assert not store.exists(MANIFEST)
    assert not list(store.list_uploads("train/"))
    assert sink.entries == []


def test_a_retried_task_overwrites_its_own_shards(
    ray_local: None, settings: S3Settings, tmp_path: Path
) -> None:
    rows = _rows(10)
    store = S3ExchangeStore.from_settings(settings)
    sink = _FailingSink(
        settings, PATTERN, MANIFEST, max_entries=10, after=7, marker=str(tmp_path / "failed")
    )
    # the first attempt completes shard 0 (rows 0-1) and fails in shard 3; the retry writes all
    ray.data.from_items(rows, override_num_blocks=1).write_datasink(
        sink, ray_remote_args={"max_retries": 1, "retry_exceptions": True}
    )
    assert (tmp_path / "failed").exists()
    listed = _listed(store)
    assert listed == _stored(store) == [PATTERN.format(task=0, index=i) for i in range(5)]
    keys = [e["key"] for _, e in store.iter_objects(MANIFEST)]
    assert len(keys) == len(set(keys)) == 40  # every field of every row, once
    assert not list(store.list_uploads("train/"))


def test_a_task_deletes_its_shards_past_the_last_it_wrote(
    ray_local: None, settings: S3Settings
) -> None:
    store = S3ExchangeStore.from_settings(settings)
    for index in (1, 2):  # an earlier, longer run (or attempt) of task 0, and the indexes
        store.put_object(PATTERN.format(task=0, index=index), b"stale")
        store.put_object(PATTERN.format(task=0, index=index) + ".index.jsonl", b"stale")
    store.put_object(PATTERN.format(task=0, index=4), b"not contiguous: never reached")
    sink = S3ExchangeDatasink(settings, PATTERN, MANIFEST)
    ray.data.from_items(_rows(3), override_num_blocks=1).write_datasink(sink)
    assert _stored(store) == [PATTERN.format(task=0, index=i) for i in (0, 4)]
    assert not [k for k in store.list_keys("train/shards/") if "-0001" in k or "-0002" in k]
    assert _listed(store) == [PATTERN.format(task=0, index=0)]


def test_append_parts_refuses_a_pattern_already_written(
    ray_local: None, settings: S3Settings
) -> None:
    sink = S3ExchangeDatasink(settings, PATTERN, MANIFEST, update_mode="append_parts")
    ray.data.from_items(_rows(3), override_num_blocks=1).write_datasink(sink)
    store = S3ExchangeStore.from_settings(settings)
    assert len(_listed(store)) == 1
    again = S3ExchangeDatasink(settings, PATTERN, MANIFEST, update_mode="append_parts")
    with pytest.raises(Exception, match="already exists; appending must not replace"):
        ray.data.from_items(_rows(3), override_num_blocks=1).write_datasink(again)
    assert len(_listed(store)) == 1


def test_secrets_stay_out_of_reprs_and_ray_logs(ray_local: None, settings: S3Settings) -> None:
    secret = settings.aws_secret_access_key
    assert secret is not None
    sink = S3ExchangeDatasink(settings, PATTERN, MANIFEST)
    ray.data.from_items(_rows(4), override_num_blocks=2).write_datasink(sink)
    dataset = read_s3exchange(settings, MANIFEST)
    assert len(dataset.take_all()) == 4
    for text in (repr(sink), str(sink), repr(dataset), str(dataset)):
        assert secret.get_secret_value() not in text
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    for path in session.rglob("*"):
        if path.is_file() and path.stat().st_size < 64 << 20:
            assert secret.get_secret_value().encode() not in path.read_bytes(), path


# -- the source --------------------------------------------------------------------------------


@BOTH_SERVERS
def test_source_reads_every_sample_once(ray_local: None, settings: S3Settings) -> None:
    rows = _rows(30)
    sink = S3ExchangeDatasink(settings, PATTERN, MANIFEST, max_entries=12)
    ray.data.from_items(rows, override_num_blocks=3).write_datasink(sink)
    assert len(sink.entries) >= 6

    samples = read_s3exchange(settings, MANIFEST, override_num_blocks=4).take_all()
    assert sorted(s["__key__"] for s in samples) == [r["__key__"] for r in rows]
    by_key = {s["__key__"]: s for s in samples}
    for row in rows:
        sample = by_key[row["__key__"]]
        assert sample["bin"] == row["bin"]
        assert sample["txt"] == row["txt"].encode()
        assert json.loads(sample["json"]) == row["json"]
        assert sample["__url__"].startswith("train/shards/shard-")

    files = read_s3exchange(settings, MANIFEST, group_by=None).take_all()
    assert len(files) == 4 * len(rows)
    assert {f["path"] for f in files} == {
        f"{r['__key__']}.{field}" for r in rows for field in ("bin", "txt", "json", "npy")
    }


def test_source_reads_loose_files_and_samples_of_other_fields(
    ray_local: None, settings: S3Settings
) -> None:
    store = S3ExchangeStore.from_settings(settings)
    entries = [
        store.put_object(f"raw/{i:03d}.{field}", f"{i}{field}".encode())
        for i in range(5)
        for field in ("jpg", "cls")
    ]
    store.write_manifest(MANIFEST, entries)
    with store.shard_writer("train/shards/other-{index}.tar", "train/other.jsonl") as writer:
        writer.write({"__key__": "x", "wav": b"audio"})
    store.write_manifest(
        "train/both.jsonl",
        [
            {"kind": "manifest_ref", "key": MANIFEST},
            {"kind": "manifest_ref", "key": "train/other.jsonl"},
        ],
    )
    samples = read_s3exchange(settings, "train/both.jsonl").take_all()
    by_key = {s["__key__"]: s for s in samples}
    assert sorted(by_key) == ["raw/000", "raw/001", "raw/002", "raw/003", "raw/004", "x"]
    assert by_key["raw/003"]["jpg"] == b"3jpg"
    assert by_key["raw/003"]["cls"] == b"3cls"
    assert by_key["x"]["wav"] == b"audio"
    assert by_key["x"].get("jpg") is None


def test_source_verifies_each_member_checksum(
    ray_local: None, settings: S3Settings, s3_client: Any, bucket: str
) -> None:
    store = S3ExchangeStore.from_settings(settings)
    with store.shard_writer("train/shards/s-{index}.tar", None) as writer:
        for i in range(3):
            writer.write({"__key__": f"k{i}", "bin": b"A" * 1000})
    # listed without its ETag, so the read gets past the archive's identity to its members
    store.write_manifest(MANIFEST, [{k: v for k, v in writer.entries[0].items() if k != "etag"}])
    key = "train/shards/s-0.tar"
    data = bytearray(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    at = data.rindex(b"A" * 1000)
    data[at] = ord("B")  # the last member's first byte: size unchanged, crc32c not
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    with pytest.raises(ShardReadError, match=r"k2\.bin"):
        read_s3exchange(settings, MANIFEST, verify=True).take_all()


@pytest.mark.parametrize("target", [{"rows_per_task": 40}, {"bytes_per_task": 1 << 20}])
def test_a_task_target_bundles_blocks_into_fewer_tasks(
    ray_local: None, settings: S3Settings, target: dict[str, int]
) -> None:
    sink = S3ExchangeDatasink(settings, PATTERN, MANIFEST, **target)  # type: ignore[arg-type]
    ray.data.from_items(_rows(40), override_num_blocks=4).write_datasink(sink)
    assert [e["archive_key"] for e in sink.entries] == [PATTERN.format(task=0, index=0)]
    assert sink.entries[0]["count"] == 40 * 4


def test_source_refuses_a_manifest_whose_pack_has_not_finished(
    ray_local: None, settings: S3Settings
) -> None:
    from s3exchange import InvalidManifestError
    from s3exchange.packing import unfinished_key

    store = S3ExchangeStore.from_settings(settings)
    with store.shard_writer("train/shards/s-{index}.tar", None) as writer:
        writer.write({"__key__": "k", "bin": b"data"})
    store.put_sharded(unfinished_key(MANIFEST), writer.entries)  # a pack still under way
    with pytest.raises(InvalidManifestError, match="has not finished"):
        read_s3exchange(settings, MANIFEST)
    rows = read_s3exchange(settings, MANIFEST, allow_unfinished=True).take_all()
    assert [(r["__key__"], r["bin"]) for r in rows] == [("k", b"data")]
