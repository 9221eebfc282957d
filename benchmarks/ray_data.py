"""``s3exchange.ray`` against Ray's own webdataset I/O, on one local Ray and a SeaweedFS server
on 127.0.0.1: the sink vs ``Dataset.write_webdataset`` and ``read_s3exchange`` vs
``ray.data.read_webdataset``, the same rows and the same number of tasks, at 1 and 2 Ray CPUs.

    python -m benchmarks.ray_data                       # 1,000 rows of 100 KiB, ~2 min on 2 cores
    python -m benchmarks.ray_data --rows 200 --rounds 1 # a quick look

Ray's side writes and reads through pyarrow's S3 filesystem (its C++ client); ours through
boto3. Each configuration runs in a fresh interpreter (``ray.init`` once per process); readers
and writers alternate within a round and the figures are medians. Reads are decoded by neither
side (``decoder=None``): both hand over bytes. Results go to ``benchmarks/results/ray_data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT

RESULT = "RAY-BENCH "


def _child(args: argparse.Namespace) -> None:
    """One configuration: ``args.cpus`` Ray CPUs, every reader and writer, ``args.rounds``."""
    import pyarrow.fs
    import ray

    from s3exchange import S3Settings
    from s3exchange.ray import S3ExchangeDatasink, read_s3exchange

    endpoint = os.environ["S3EXCHANGE_ENDPOINT_URL"]
    settings = S3Settings(bucket=args.bucket, addressing_style="path")
    key = settings.aws_access_key_id
    secret = settings.aws_secret_access_key
    fs = pyarrow.fs.S3FileSystem(
        access_key=key.get_secret_value() if key else None,
        secret_key=secret.get_secret_value() if secret else None,
        endpoint_override=endpoint.split("://", 1)[1],
        scheme="http",
        region=settings.region or "us-east-1",
    )
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        _node_ip_address="127.0.0.1",
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    payload = os.urandom(args.row_bytes)
    rows = [{"__key__": f"{i:08d}", "bin": payload, "cls": str(i % 1000)} for i in range(args.rows)]
    data = ray.data.from_items(rows, override_num_blocks=args.tasks).materialize()
    total = args.rows * (args.row_bytes + 4)

    def write_ours(run: int) -> None:
        sink = S3ExchangeDatasink(
            settings, f"ours/{run}/shard-{{task:05d}}-{{index:04d}}.tar", f"ours/{run}.jsonl"
        )
        data.write_datasink(sink)

    def write_ray(run: int) -> None:
        data.write_webdataset(f"{args.bucket}/ray/{run}/", filesystem=fs, encoder=None)

    def read_ours(run: int) -> None:
        dataset = read_s3exchange(settings, f"ours/{run}.jsonl", override_num_blocks=args.tasks)
        n = dataset.materialize().count()
        assert n == args.rows, n

    def read_ray(run: int) -> None:
        dataset = ray.data.read_webdataset(
            f"{args.bucket}/ray/{run}/",
            filesystem=fs,
            decoder=None,
            override_num_blocks=args.tasks,
        )
        n = dataset.materialize().count()
        assert n == args.rows, n

    writes = [("write_ours", write_ours), ("write_ray", write_ray)]
    reads = [("read_ours", read_ours), ("read_ray", read_ray)]
    times: dict[str, list[float]] = {}
    for run in range(-1, args.rounds):  # round -1 warms up: worker processes start, import
        flip = run % 2 == 0  # who goes first alternates
        for name, step in [*writes[:: -1 if flip else 1], *reads[:: -1 if flip else 1]]:
            started = time.perf_counter()
            step(run)
            if run >= 0:
                times.setdefault(name, []).append(time.perf_counter() - started)
    result = {
        name: {
            "seconds": statistics.median(ts),
            "rows_per_s": args.rows / statistics.median(ts),
            "mb_per_s": total / statistics.median(ts) / 1e6,
        }
        for name, ts in times.items()
    }
    print(RESULT + json.dumps({"cpus": args.cpus, **result}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--row-bytes", type=int, default=100 << 10)
    parser.add_argument("--tasks", type=int, default=4, help="blocks = write and read tasks")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpus", default="1,2", help="Ray CPUs, one configuration each")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ray_data.json")
    parser.add_argument("--child-cpus", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bucket", default="ray-bench", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_cpus is not None:
        args.cpus = args.child_cpus
        _child(args)
        return

    from s3exchange.testing import start_seaweedfs

    results: list[dict[str, Any]] = []
    with start_seaweedfs() as server:
        client = server.s3.client()
        # pyarrow's AWS SDK otherwise signs parts with checksum trailers SeaweedFS refuses
        # (INVALID_ACCESS_KEY_ID on UploadPart), as boto3 >= 1.36 would (see the README)
        env = {
            **os.environ,
            **server.s3.env(),
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
        for cpus in (int(c) for c in args.cpus.split(",")):
            bucket = f"ray-bench-{cpus}"
            client.create_bucket(Bucket=bucket)
            command = [
                sys.executable,
                "-m",
                "benchmarks.ray_data",
                "--child-cpus",
                str(cpus),
                "--bucket",
                bucket,
                "--rows",
                str(args.rows),
                "--row-bytes",
                str(args.row_bytes),
                "--tasks",
                str(args.tasks),
                "--rounds",
                str(args.rounds),
            ]
            out = subprocess.run(
                command,
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
                timeout=1800,
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith(RESULT)), None)
            if line is None:
                sys.exit(f"{cpus} CPUs: no result\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            results.append(json.loads(line[len(RESULT) :]))
    print(f"{args.rows} rows x {args.row_bytes} B, {args.tasks} tasks, median of {args.rounds}")
    print(
        f"{'cpus':>4} {'step':<6} {'ours rows/s':>12} {'ours MB/s':>10} "
        f"{'ray rows/s':>11} {'ray MB/s':>9} {'ours/ray':>9}"
    )
    for result in results:
        for step in ("write", "read"):
            ours, theirs = result[f"{step}_ours"], result[f"{step}_ray"]
            print(
                f"{result['cpus']:>4} {step:<6} {ours['rows_per_s']:>12.0f} "
                f"{ours['mb_per_s']:>10.1f} {theirs['rows_per_s']:>11.0f} "
                f"{theirs['mb_per_s']:>9.1f} {ours['mb_per_s'] / theirs['mb_per_s']:>8.2f}x"
            )
    if len(results) > 1:
        first, last = results[0], results[-1]
        for name in ("write_ours", "write_ray", "read_ours", "read_ray"):
            growth = last[name]["mb_per_s"] / first[name]["mb_per_s"]
            print(f"{name}: {first['cpus']} -> {last['cpus']} CPUs: {growth:.2f}x")
    args.out.write_text(
        json.dumps(
            {
                "rows": args.rows,
                "row_bytes": args.row_bytes,
                "tasks": args.tasks,
                "rounds": args.rounds,
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
