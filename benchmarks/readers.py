"""The readers the suite compares; each measurement runs in its own interpreter.

``python -m benchmarks.readers '<json spec>'`` runs ``READERS[spec["reader"]]`` and prints one
``BENCH-RESULT {json}`` line. Timing starts after imports and covers everything a training job
would pay for: client creation, manifest read (ours), DataLoader worker start-up, every GET and
the hand-over of every sample to the main process.

DataLoader readers use ``num_workers=spec["workers"]`` (``--workers``, 2), the platform's default
start method (fork on Linux), ``batch_size=spec["batch_size"]`` and a collate function that only
lists the samples (or ``pack_bytes`` with ``"pack"``), so what is measured is data movement, not
tensor conversion. With ``spec["device"] == "cuda"`` (the suite's GPU mode) every batch is copied
to the GPU in the main process before it counts; the first batch's arrival is recorded too.
"""

from __future__ import annotations

import gc
import io
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from benchmarks.common import MIB, RESULT_PREFIX
from benchmarks.datagen import loose_keys
from s3exchange import S3ExchangeStore, TransferConfig
from s3exchange.shard import write_shard
from s3exchange.testing.servers import LocalS3
from s3exchange.types import ShardItem
from s3exchange_torch import EpochPlan, PackedBatch, S3ExchangeIterableDataset, pack_bytes

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

Spec = dict[str, Any]
Result = dict[str, Any]

POOL_CONNECTIONS = 32
"""``max_pool_connections`` of every boto3 client: above the 19 requests ours keeps in flight."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _s3(spec: Spec) -> LocalS3:
    return LocalS3(**spec["s3"])


def _client(s3: LocalS3, pool: int = POOL_CONNECTIONS) -> S3Client:
    return s3.client(max_pool_connections=pool)


def _store(spec: Spec) -> S3ExchangeStore:
    """Our store; ``spec["pool"]`` overrides the client's connection pool size, and
    ``spec["transfer"]`` (a dict) fields of its :class:`~s3exchange.TransferConfig`."""
    client = _client(_s3(spec), int(spec.get("pool", POOL_CONNECTIONS)))
    config = TransferConfig(**spec["transfer"]) if spec.get("transfer") else None
    return S3ExchangeStore(client, spec["bucket"], config=config)


def _as_list(batch: list[Any]) -> list[Any]:
    """Collate that keeps the samples as they are."""
    return batch


def _as_one_list(sample: Any) -> list[Any]:
    """Collate without batching: a list of one sample, so that tallying stays the same."""
    return [sample]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _loader(
    dataset: Any, spec: Spec, batched: bool = True, *, persistent: bool = False
) -> Iterable[Any]:
    """A DataLoader over ``dataset``, iterated ``spec["epochs"]`` times (default 1); its workers
    are forked again each epoch, as a plain ``DataLoader`` does, unless ``persistent``."""
    workers = int(spec.get("workers", 2))
    batch_size = spec.get("batch_size", 32) if batched else None
    collate: Callable[[Any], Any] = _as_list if batch_size is not None else _as_one_list
    if spec.get("pack"):
        collate = pack_bytes
    if spec.get("collate") == "default":  # what a plain DataLoader(ds, batch_size) does
        loader: Iterable[Any] = DataLoader(dataset, num_workers=workers, batch_size=batch_size)
        return chain.from_iterable(loader for _ in range(int(spec.get("epochs", 1))))
    loader = DataLoader(
        dataset,
        num_workers=workers,
        batch_size=batch_size,
        collate_fn=collate,
        persistent_workers=persistent and workers > 0,
    )
    return chain.from_iterable(loader for _ in range(int(spec.get("epochs", 1))))


def _throughput(
    samples: int, nbytes: int, elapsed: float, *, first_samples: int = 0, **extra: Any
) -> Result:
    """Rates over the whole run; ``steady_samples_per_s`` too when the first batch's time and
    size are given: the samples after it over the time after it, start-up left out."""
    first = extra.get("first_batch_s")
    if first_samples and first is not None and elapsed > first and samples > first_samples:
        extra["steady_samples_per_s"] = (samples - first_samples) / (elapsed - first)
    return {
        "samples": samples,
        "bytes": nbytes,
        "elapsed_s": round(elapsed, 4),
        "samples_per_s": samples / elapsed,
        "mb_per_s": nbytes / elapsed / 1e6,
        **extra,
    }


def _payload(sample: Any) -> Any:
    """A sample's data (``bytes`` or tensor), whatever the reader yields; None for a non-sample.

    Ours yields ``(data, entry)``, webdataset a dict whose ``bin`` holds the member (its dict for
    our internal manifest has none), the GET loops and s3torchconnector plain ``bytes``.
    """
    if isinstance(sample, tuple):
        return sample[0]
    if isinstance(sample, dict):
        return sample.get("bin")
    return sample


def _device(spec: Spec) -> torch.device | None:
    """Where batches are copied (``spec["device"]``); None keeps them in host memory."""
    name = spec.get("device") or "cpu"
    if name == "cpu":
        return None
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but torch.cuda.is_available() is False")
    return torch.device(name)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(datas: list[Any], device: torch.device) -> None:
    """Copy one batch of samples to ``device`` as one contiguous uint8 tensor, as a user would."""
    if all(isinstance(data, torch.Tensor) for data in datas):
        torch.cat([data.reshape(-1).view(torch.uint8) for data in datas]).to(device)
    else:
        joined = bytearray().join(datas)
        torch.frombuffer(joined, dtype=torch.uint8).to(device)


def _consume(batches: Iterable[Any], spec: Spec, began: float, **extra: Any) -> Result:
    """Count every batch's samples and payload bytes, in GPU mode after copying it to the GPU.

    ``first_batch_s`` is when the first batch was in hand (on the device, in GPU mode), from
    ``began``; a :class:`PackedBatch` (``pack_bytes``, the loader) moves as its one tensor.
    """
    device = _device(spec)
    samples = nbytes = first_samples = 0
    first: float | None = None
    for batch in batches:
        if isinstance(batch, PackedBatch):
            count, size = len(batch), batch.offsets[-1]
            if device is not None:
                batch.data[:size].to(device)
        else:
            datas = [data for data in map(_payload, batch) if data is not None]
            count, size = len(datas), sum(len(data) for data in datas)
            if device is not None and datas:
                _to_device(datas, device)
        del batch  # a loader's batch is a view of its ring: let the worker reuse it
        samples += count
        nbytes += size
        if first is None and count:
            _sync(device)
            first = time.perf_counter() - began
            first_samples = samples
    _sync(device)
    return _throughput(
        samples,
        nbytes,
        time.perf_counter() - began,
        first_batch_s=first,
        first_samples=first_samples,
        device=str(device or "cpu"),
        **extra,
    )


def _vm_hwm() -> int | None:
    """The kernel's peak RSS of this process (``VmHWM``), in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` 5); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


class _PeakRss:
    """Peak resident set size of this process while the block runs.

    Exact on Linux: the kernel's high-water mark is reset at the start and read at the end.
    (``ru_maxrss`` would not do: it survives ``exec`` and so starts at the peak of whatever
    process forked us.) Elsewhere, RSS is sampled every 2 ms.
    """

    def __init__(self) -> None:
        import psutil  # type: ignore[import-untyped,unused-ignore]  # the memory scenario only

        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._kernel = False
        self.baseline = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        gc.collect()
        self._kernel = _reset_hwm()
        self.baseline = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        hwm = _vm_hwm() if self._kernel else None
        if hwm is not None:
            self.peak = max(self.peak, hwm)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.baseline)


# --------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------


def _data_only(data: bytes, entry: object) -> bytes:
    """A transform that drops the entry, to measure what shipping it to the main process costs."""
    return data


def _as_tensor(data: bytes, entry: object) -> torch.Tensor:
    """A transform to a uint8 tensor: DataLoader then moves it through shared memory."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _ours_dataset(spec: Spec, store: S3ExchangeStore) -> S3ExchangeIterableDataset:
    options: dict[str, Any] = {}
    for name in ("shuffle", "io_threads", "prefetch_shards", "verify", "shuffle_buffer"):
        if name in spec:
            options[name] = spec[name]
    if spec.get("data_only"):
        options["transform"] = _data_only
    if spec.get("tensor"):
        options["transform"] = _as_tensor
    dataset = S3ExchangeIterableDataset(store, spec["manifest"], **options)
    return dataset.resolve()  # before forking workers, as the dataset's docs advise


def ours(spec: Spec) -> Result:
    """S3ExchangeIterableDataset over a manifest of shards or loose files, in a DataLoader."""
    began = time.perf_counter()
    dataset = _ours_dataset(spec, _store(spec))
    setup_s = time.perf_counter() - began  # client + manifest resolved: part of first_batch_s
    return _consume(_loader(dataset, spec), spec, began, setup_s=setup_s)


def loader(spec: Spec) -> Result:
    """``S3ExchangeLoader`` (batches through shared-memory rings, copied to ``device`` by it).

    Skipped, with the reason, where this ``s3exchange_torch`` has no loader yet.
    """
    try:
        from s3exchange_torch import S3ExchangeLoader
    except ImportError as exc:
        return {"skipped": f"not available: {exc}"}
    waits = None
    if spec.get("waits"):
        from benchmarks import waits as wait_counters

        waits = wait_counters.install()
    began = time.perf_counter()
    dataset = _ours_dataset(spec, _store(spec))
    setup_s = time.perf_counter() - began
    device = _device(spec)
    with S3ExchangeLoader(
        dataset,
        batch_size=int(spec.get("batch_size", 32)),
        num_workers=int(spec.get("workers", 2)),
        device=device,
        drop_last=False,
        prefetch_batches=int(spec.get("prefetch_batches", 2)),
        in_order=bool(spec.get("in_order", True)),
    ) as batches:
        epochs = chain.from_iterable(batches for _ in range(int(spec.get("epochs", 1))))
        result = _consume(epochs, spec, began, setup_s=setup_s)
    if waits is not None:
        result["waits"] = wait_counters.collect(waits)
    return result


# --------------------------------------------------------------------------------------------
# webdataset through a boto3 streaming opener
# --------------------------------------------------------------------------------------------

_WDS_S3: LocalS3 | None = None
_WDS_CLIENT: tuple[int, S3Client] | None = None


def _wds_client() -> S3Client:
    """One boto3 client per process (a forked worker makes its own)."""
    global _WDS_CLIENT  # noqa: PLW0603
    if _WDS_CLIENT is None or _WDS_CLIENT[0] != os.getpid():
        assert _WDS_S3 is not None
        _WDS_CLIENT = (os.getpid(), _client(_WDS_S3))
    return _WDS_CLIENT[1]


class _RawBody(io.RawIOBase):
    """A botocore StreamingBody as a raw stream, so io.BufferedReader can sit on top."""

    def __init__(self, body: Any) -> None:
        super().__init__()
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> Any:
    """webdataset ``gopen`` handler for ``s3://bucket/key``: the GET's streaming body.

    ``WDS_BUFFER`` (bytes) puts an ``io.BufferedReader`` of that size in front of it.
    """
    parsed = urlparse(url)
    response = _wds_client().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))
    buffer = int(os.environ.get("WDS_BUFFER", "0"))
    if buffer:
        return io.BufferedReader(_RawBody(response["Body"]), buffer)
    return response["Body"]


def _wds_dataset(spec: Spec) -> Any:
    import webdataset as wds

    global _WDS_S3  # noqa: PLW0603
    _WDS_S3 = _s3(spec)
    wds.gopen_schemes["s3"] = gopen_s3  # the idiomatic hook for a URL scheme in webdataset 1.x
    if spec.get("wds_buffer"):
        os.environ["WDS_BUFFER"] = str(spec["wds_buffer"])
    urls = [f"s3://{spec['bucket']}/{key}" for key in spec["archive_keys"]]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    if spec.get("wds_shuffle"):  # the sample buffer webdataset's training examples add
        dataset = dataset.shuffle(int(spec["wds_shuffle"]))
    return dataset


def _wds_size(sample: dict[str, Any]) -> int | None:
    data = sample.get("bin")
    return None if data is None else len(data)  # the internal manifest is a sample of its own


def webdataset(spec: Spec) -> Result:
    """``webdataset.WebDataset`` over ``s3://`` URLs opened by :func:`gopen_s3`."""
    began = time.perf_counter()
    return _consume(_loader(_wds_dataset(spec), spec), spec, began)


# --------------------------------------------------------------------------------------------
# raw boto3 baselines
# --------------------------------------------------------------------------------------------


class _WholeShards(IterableDataset[tuple[int, int]]):
    """Each worker GETs its share of whole shards and reads them fully (1 MiB reads)."""

    def __init__(self, s3: LocalS3, bucket: str, keys: list[str], members: int) -> None:
        self.s3, self.bucket, self.keys, self.members = s3, bucket, keys, members
        self.client: S3Client | None = None  # a worker's, made at its first epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        worker_id, workers = _worker()
        if self.client is None:
            self.client = _client(self.s3)
        client = self.client
        for key in self.keys[worker_id::workers]:
            body = client.get_object(Bucket=self.bucket, Key=key)["Body"]
            size = 0
            while chunk := body.read(MIB):
                size += len(chunk)
            yield self.members, size


def raw_shards(spec: Spec) -> Result:
    """The ceiling: whole-shard GETs read to the end, one small item per shard to the main.

    Nothing to copy to a GPU: only counts cross to the main process. Its workers persist
    across epochs (and keep their clients), as the loader's do.
    """
    began = time.perf_counter()
    dataset = _WholeShards(_s3(spec), spec["bucket"], spec["archive_keys"], spec["members"])
    samples = nbytes = first_samples = 0
    first: float | None = None
    for [(members, size)] in _loader(dataset, spec, batched=False, persistent=True):
        samples += members
        nbytes += size
        if first is None:
            first, first_samples = time.perf_counter() - began, samples
    elapsed = time.perf_counter() - began
    return _throughput(samples, nbytes, elapsed, first_batch_s=first, first_samples=first_samples)


class _SequentialGets(IterableDataset[bytes]):
    """Each worker GETs its share of the keys one after the other."""

    def __init__(self, s3: LocalS3, bucket: str, keys: list[str]) -> None:
        self.s3, self.bucket, self.keys = s3, bucket, keys

    def __iter__(self) -> Iterator[bytes]:
        worker_id, workers = _worker()
        client = _client(self.s3)
        for key in self.keys[worker_id::workers]:
            yield client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


def sequential_gets(spec: Spec) -> Result:
    """A per-object GET loop in each DataLoader worker (the usual hand-written Dataset)."""
    began = time.perf_counter()
    keys = loose_keys(spec["prefix"], spec["count"])
    dataset = _SequentialGets(_s3(spec), spec["bucket"], keys)
    return _consume(_loader(dataset, spec), spec, began)


class _InMemorySamples(IterableDataset[tuple[bytes, dict[str, Any]]]):
    """No storage at all: each worker yields its share of ready-made samples."""

    def __init__(self, samples: int, sample_bytes: int) -> None:
        self.samples, self.sample_bytes = samples, sample_bytes

    def __iter__(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        worker_id, workers = _worker()
        data = random.Random(worker_id).randbytes(self.sample_bytes)
        view = memoryview(data)
        for index in range(worker_id, self.samples, workers):
            # a new object per sample (one copy, as a real reader makes): pickle would send
            # a repeated object only once per batch
            yield view.tobytes(), {"key": f"shard#{index:06d}.bin", "size_bytes": len(data)}


def dataloader_only(spec: Spec) -> Result:
    """The DataLoader's own ceiling: samples made in the workers, no S3, same hand-over.

    With ``"pack"`` the batches cross as ``pack_bytes`` tensors: the packed ceiling.
    """
    began = time.perf_counter()
    dataset = _InMemorySamples(int(spec["samples"]), int(spec["sample_bytes"]))
    return _consume(_loader(dataset, spec), spec, began)


# --------------------------------------------------------------------------------------------
# s3torchconnector
# --------------------------------------------------------------------------------------------


def _read_all(reader: Any) -> bytes:
    data: bytes = reader.read()
    return data


def s3torchconnector(spec: Spec) -> Result:
    """``S3IterableDataset.from_objects`` (AWS CRT client) pointed at the local endpoint."""
    from s3torchconnector import S3IterableDataset

    options = _crt_options(spec)
    began = time.perf_counter()
    dataset = S3IterableDataset.from_objects(
        _loose_uris(spec),
        **options,
        enable_sharding=True,  # otherwise every worker reads every object
    )
    return _consume(_loader(dataset, spec), spec, began)


def _crt_options(spec: Spec) -> dict[str, Any]:
    """s3torchconnector's ``from_objects`` options for the local endpoint. The CRT resolves
    credentials through the default chain: the dummy keys go in the environment."""
    from s3torchconnector import S3ClientConfig

    s3 = _s3(spec)
    os.environ["AWS_ACCESS_KEY_ID"] = s3.access_key_id
    os.environ["AWS_SECRET_ACCESS_KEY"] = s3.secret_access_key
    os.environ["AWS_REGION"] = s3.region
    os.environ.pop("AWS_PROFILE", None)
    return {
        "region": s3.region,
        "endpoint": s3.endpoint_url,
        "transform": _read_all,
        "s3client_config": S3ClientConfig(force_path_style=True, max_attempts=2),
    }


def _loose_uris(spec: Spec) -> list[str]:
    return [f"s3://{spec['bucket']}/{key}" for key in loose_keys(spec["prefix"], spec["count"])]


# --------------------------------------------------------------------------------------------
# random access (map-style datasets)
# --------------------------------------------------------------------------------------------


def _map_loader(dataset: Any, spec: Spec) -> Iterable[Any]:
    """Every item once in a random order (seeded), ``batch_size`` per fetch: what a training
    loop over a map-style dataset with ``shuffle=True`` does."""
    generator = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    return DataLoader(
        dataset,
        batch_size=spec.get("batch_size", 32),
        shuffle=True,
        generator=generator,
        num_workers=int(spec.get("workers", 2)),
        collate_fn=_as_list,
    )


def map_ours(spec: Spec) -> Result:
    """``S3ExchangeMapDataset`` (one ranged GET per member, a batch's GETs concurrent)."""
    from s3exchange_torch import S3ExchangeMapDataset

    began = time.perf_counter()
    dataset = S3ExchangeMapDataset(
        _store(spec), spec["manifest"], io_threads=spec.get("io_threads")
    )
    return _consume(_map_loader(dataset, spec), spec, began)


def map_s3torchconnector(spec: Spec) -> Result:
    """``S3MapDataset.from_objects`` (AWS CRT client) over the same samples as loose objects."""
    from s3torchconnector import S3MapDataset

    options = _crt_options(spec)
    began = time.perf_counter()
    dataset = S3MapDataset.from_objects(_loose_uris(spec), **options)
    return _consume(_map_loader(dataset, spec), spec, began)


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def memory_ours(spec: Spec) -> Result:
    """Peak RSS growth while one big shard streams through ours in this process (no workers)."""
    store = _store(spec)
    store.s3_client.list_buckets()  # warm the client up before the baseline
    dataset = _ours_dataset({**spec, "shuffle": False}, store)
    samples = nbytes = 0
    began = time.perf_counter()
    with _PeakRss() as rss:
        for data, _ in dataset:
            samples += 1
            nbytes += len(data)
            del data
    return _throughput(
        samples, nbytes, time.perf_counter() - began, rss_growth=rss.growth, rss_base=rss.baseline
    )


def memory_webdataset(spec: Spec) -> Result:
    """The same for webdataset (reference only)."""
    dataset = _wds_dataset(spec)
    _wds_client().list_buckets()
    samples = nbytes = 0
    began = time.perf_counter()
    with _PeakRss() as rss:
        for sample in dataset:
            size = _wds_size(sample)
            if size is not None:
                samples += 1
                nbytes += size
            del sample
    return _throughput(
        samples, nbytes, time.perf_counter() - began, rss_growth=rss.growth, rss_base=rss.baseline
    )


# --------------------------------------------------------------------------------------------
# write path
# --------------------------------------------------------------------------------------------


def _write_items(spec: Spec) -> list[ShardItem]:
    rng = random.Random(1)
    size = int(spec["member_bytes"])
    count = int(spec["total_bytes"]) // size
    return [{"member_path": f"{i:07d}.bin", "source": rng.randbytes(size)} for i in range(count)]


def write_ours(spec: Spec) -> Result:
    """``store.put_shard_archive``: hash, tar and multipart-upload the items."""
    items = _write_items(spec)
    store = _store(spec)
    store.s3_client.list_buckets()
    began = time.perf_counter()
    entry = store.put_shard_archive(f"write/ours-{os.getpid()}.tar", items).entry
    elapsed = time.perf_counter() - began
    archive = int(entry.get("size_bytes", 0))
    return _throughput(len(items), archive, elapsed, part_size=store.part_size)


def write_raw(spec: Spec) -> Result:
    """The same archive bytes (built before timing) through a bare boto3 multipart upload.

    Same part size and the same number of part uploads in flight as the store.
    """
    items = _write_items(spec)
    store = _store(spec)
    buffer = io.BytesIO()
    write_shard(items, buffer, archive_key="raw")
    data = memoryview(buffer.getbuffer())
    client = store.s3_client
    client.list_buckets()
    bucket, key = spec["bucket"], f"write/raw-{os.getpid()}.tar"
    part_size, concurrency = store.part_size, store.upload_concurrency
    began = time.perf_counter()
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def upload(number: int) -> dict[str, Any]:
        body = bytes(data[(number - 1) * part_size : number * part_size])
        response = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    numbers = range(1, -(-len(data) // part_size) + 1)
    with ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(upload, numbers))
    client.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
    )
    elapsed = time.perf_counter() - began
    return _throughput(len(items), len(data), elapsed, part_size=part_size)


# --------------------------------------------------------------------------------------------
# manifest scale and planning
# --------------------------------------------------------------------------------------------


def manifest_iter(spec: Spec) -> Result:
    """``store.iter_manifest_entries`` over a big manifest on the server: entries/s and RSS."""
    store = _store(spec)
    store.s3_client.list_buckets()
    count = 0
    began = time.perf_counter()
    with _PeakRss() as rss:
        for _ in store.iter_manifest_entries(spec["manifest"]):
            count += 1
    elapsed = time.perf_counter() - began
    return {
        "entries": count,
        "elapsed_s": round(elapsed, 4),
        "entries_per_s": count / elapsed,
        "rss_growth": rss.growth,
    }


def plan(spec: Spec) -> Result:
    """``EpochPlan`` for many shards, then the segments of every (rank, worker)."""
    rng = random.Random(0)
    counts = [rng.randint(64, 1024) for _ in range(int(spec["shards"]))]
    ranks, workers = int(spec["ranks"]), int(spec["workers"])
    began = time.perf_counter()
    epoch_plan = EpochPlan(counts, seed=0, epoch=0, shuffle=True, world_size=ranks, balance="pad")
    built = time.perf_counter()
    segments = 0
    for rank in range(ranks):
        for worker in range(workers):
            segments += len(epoch_plan.segments(rank, worker, workers))
    done = time.perf_counter()
    return {
        "shards": len(counts),
        "ranks": ranks,
        "workers": workers,
        "segments": segments,
        "build_s": round(built - began, 4),
        "segments_s": round(done - built, 4),
        "elapsed_s": round(done - began, 4),
    }


READERS: dict[str, Callable[[Spec], Result]] = {
    "ours": ours,
    "loader": loader,
    "webdataset": webdataset,
    "raw_shards": raw_shards,
    "sequential_gets": sequential_gets,
    "dataloader_only": dataloader_only,
    "s3torchconnector": s3torchconnector,
    "map_ours": map_ours,
    "map_s3torchconnector": map_s3torchconnector,
    "memory_ours": memory_ours,
    "memory_webdataset": memory_webdataset,
    "write_ours": write_ours,
    "write_raw": write_raw,
    "manifest_iter": manifest_iter,
    "plan": plan,
}


_CPU_FIELDS = ("user", "system", "children_user", "children_system")
"""CPU of the reader's process and its reaped workers: ``cores`` = that over ``elapsed_s`` says
whether a reader was CPU-bound (about ``workers`` + 1) or waiting."""


def _node_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine from ``/proc/stat``: with the server on the
    same node, ``node_cores`` says whether the machine, not just the reader, was saturated."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def _warm_device(spec: Spec) -> None:
    """Create the CUDA context before timing starts, as a training job has (its model is on the
    GPU before its first batch): 0.2-0.4 s a GPU reader would otherwise pay inside its run and
    the raw GET ceiling, which copies nothing to the GPU, would not."""
    device = _device(spec)
    if device is not None and device.type == "cuda":
        torch.ones(1).to(device)
        torch.cuda.synchronize(device)


def _minor_faults() -> int:
    """Page faults of this process and its reaped workers (fresh memory touched)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt


def main(argv: list[str]) -> int:
    spec: Spec = json.loads(argv[1])
    torch.set_num_threads(1)
    if "switch_interval" in spec:  # inherited by forked DataLoader workers
        sys.setswitchinterval(float(spec["switch_interval"]))
    _warm_device(spec)
    before = os.times()
    faults = _minor_faults()
    node_before = _node_busy()
    result = READERS[spec["reader"]](spec)
    after = os.times()  # DataLoader workers are joined by now: their CPU is in children_*
    node_after = _node_busy()
    cpu_s = sum(getattr(after, f) - getattr(before, f) for f in _CPU_FIELDS)
    if result.get("elapsed_s"):
        result["cpu_s"] = round(cpu_s, 3)
        result["cores"] = round(cpu_s / result["elapsed_s"], 2)
        result["minor_faults"] = _minor_faults() - faults
        result["node_cores"] = round((node_after[0] - node_before[0]) / result["elapsed_s"], 2)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
