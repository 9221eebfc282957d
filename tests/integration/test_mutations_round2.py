"""Issue 10, "done when": random byte-level mutations of real shards and manifests, read
through ``iter_objects``, ``verify`` and the dataset, give only documented errors, in bounded
time and memory. Against moto; one bucket for every example."""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3exchange import S3ExchangeError, S3ExchangeStore, ShardItem
from s3exchange.cli._verify import verify_manifest
from s3exchange_torch import S3ExchangeIterableDataset

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SECONDS_PER_EXAMPLE = 5.0
RSS_GROWTH_LIMIT = 256 << 20
"""Peak RSS may grow by this much over all examples: a shard here is 40 KiB."""


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@pytest.fixture
def originals(store: S3ExchangeStore, s3_client: S3Client, bucket: str) -> dict[str, bytes]:
    """A real gzip shard, a real tar shard, a loose file and a manifest listing them."""
    rng = random.Random(10)
    items: list[ShardItem] = [
        {"source": rng.randbytes(4000 + i), "member_path": f"d/{i}.bin", "meta": {"i": i}}
        for i in range(8)
    ]
    plain = store.put_shard_archive("s/plain.tar", items).entry
    packed = store.put_shard_archive("s/packed.tar.gz", items, compression="gzip").entry
    store.put_object("loose.bin", b"loose")
    store.write_manifest("part.jsonl", [{"kind": "file", "key": "loose.bin", "size_bytes": 5}])
    # no etags: a mutated upload gets a new one, and the parsers are what is under test here
    entries = [{k: v for k, v in e.items() if k != "etag"} for e in (plain, packed)]
    store.write_manifest("m.jsonl", [*entries, {"kind": "manifest_ref", "key": "part.jsonl"}])
    return {
        key: s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in ("s/plain.tar", "s/packed.tar.gz", "m.jsonl")
    }


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 flips a byte, 1 deletes one, 2 inserts one."""
    out = bytearray(data)
    for kind, position, value in edits:
        at = position % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] ^= value or 1
        elif kind == 1 and at < len(out):
            del out[at]
        else:
            out.insert(at, value)
    if edits and edits[-1][0] == 1:
        out = out[: edits[-1][1] % (len(out) + 1)]  # and sometimes a truncation
    return bytes(out)


def _drain(items: Iterator[Any]) -> None:
    for item in items:
        stream = item[0] if isinstance(item, tuple) else None
        if stream is not None and hasattr(stream, "read"):
            stream.read()


edits = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=st.sampled_from(["s/plain.tar", "s/packed.tar.gz", "m.jsonl"]), edits=edits)
def test_mutated_shards_and_manifests_give_only_documented_errors(
    store: S3ExchangeStore,
    s3_client: S3Client,
    bucket: str,
    originals: dict[str, bytes],
    target: str,
    edits: list[tuple[int, int, int]],
) -> None:
    rss_before = _peak_rss()
    for key, data in originals.items():
        body = _mutate(data, edits) if key == target else data
        s3_client.put_object(Bucket=bucket, Key=key, Body=body)
    started = time.monotonic()
    readers = {
        "iter_objects": lambda: _drain(store.iter_objects("m.jsonl")),
        "verify": lambda: verify_manifest(store, "m.jsonl"),
        "dataset": lambda: _drain(iter(S3ExchangeIterableDataset(store, "m.jsonl", shuffle=False))),
    }
    for name, read in readers.items():
        try:
            read()
        except S3ExchangeError:
            pass  # documented: names what is wrong
        except Exception as exc:  # pragma: no cover - the failure this test looks for
            pytest.fail(f"{name} over mutated {target} raised {type(exc).__name__}: {exc}")
    assert time.monotonic() - started < SECONDS_PER_EXAMPLE
    assert _peak_rss() - rss_before < RSS_GROWTH_LIMIT
