"""Profile our reader with py-spy: where CPU time goes, per thread role and per cost category.

``python -m benchmarks.profiling --scenario shards|loose [--workers 2] [--set key=value ...]``

Starts SeaweedFS, writes the scenario's data (full sizes unless ``--quick``), runs the ``ours``
reader of :mod:`benchmarks.readers` (``--set reader=loader``: the ``S3ExchangeLoader``) under
``py-spy record --subprocesses --threads`` (the workers are forked, so they are sampled too)
and sorts every on-CPU sample:

- by *role*: the main process's main thread (receives batches), a worker's main thread
  (shuffle buffer, batching, hands batches to the feeder), a worker's feeder thread (pickles
  batches into the pipe), prefetch threads (GET, tar parsing, sha256), other;
- by *category*, from the innermost frame and its callers (see :data:`CATEGORIES`).

Writes the raw stacks and a JSON summary next to the suite's results.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

if not __package__:  # run as a file, ``benchmarks`` is not importable: say how to run it
    sys.exit("run from the repository root as: python -m benchmarks.profiling [options]")

from benchmarks import datagen
from benchmarks.common import BUCKET, FULL, NODE, QUICK, RESULT_PREFIX, ROOT, spec_overrides
from s3exchange import S3ExchangeStore
from s3exchange.testing import FaultProxy, start_seaweedfs

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+):(?P<line>\d+)\)$")

PRIORITY: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (category, substrings of a frame "func (file:line)"): a sample whose stack holds any
    # frame with one of these substrings belongs to the first such category, whatever it runs.
    ("startup: imports", ("_find_and_load",)),
    ("shutdown (after the measurement)", ("_exitfunc", "_del_library", "_python_exit")),
    ("startup: boto3 client creation", ("ClientFactory.create", "Session.create_client")),
    ("startup: DataLoader worker fork", ("Popen._launch",)),
    ("IPC send: pickle + pipe write (worker feeder thread)", ("Queue._feed",)),
    ("IPC receive: pipe read + unpickle (main)", ("_try_get_data",)),
    ("checksum verification (crc32c or sha256)", ("#checksum",)),
)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Otherwise the innermost frame that matches decides, in this order.
    ("HTTP body: socket reads", ("urllib3/response.py", "http/client.py", "socket.py")),
    ("HTTP request: botocore (sign, send, parse headers)", ("botocore/", "urllib3/")),
    ("body wrappers (ObjectStream, checked stream)", ("s3exchange/body.py", "s3exchange/store.py")),
    ("tar parsing + member copies", ("s3exchange/tar_parser.py", "s3exchange/tar_reader.py")),
    ("manifest / units / plan", ("s3exchange/manifest.py", "s3exchange_torch/units.py")),
    ("shuffle buffer", ("s3exchange_torch/shuffle.py",)),
    ("prefetch: thread hand-offs (queues, futures)", ("s3exchange_torch/prefetch",)),
    ("thread sync (locks, conditions, queues)", ("threading.py", "queue.py", "concurrent/")),
    (
        "loader: collate into shared memory, rings",
        (
            "s3exchange_torch/loader",
            "s3exchange_torch/ring.py",
            "collate.py",
            "shm.py",
        ),
    ),
    ("DataLoader / dataset glue", ("s3exchange_torch/dataset.py", "torch/utils/data")),
    ("benchmark loop", ("benchmarks/readers.py",)),
)


def _parse_stack(line: str) -> tuple[list[str], int] | None:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not count.isdigit():
        return None
    return stack.split(";"), int(count)


def _marks(frame: str) -> str:
    """The frame, plus ``#checksum`` when its source line feeds a checksum."""
    match = _FRAME.match(frame)
    if match is None:
        return frame
    text = _source_line(match["file"], int(match["line"]))
    if re.search(r"(hasher|digest|sha256|crc32c?)\w*\.update\(|hashlib\.sha256\(\w", text):
        return frame + " #checksum"
    return frame


def _source_line(short: str, line: int) -> str:
    """py-spy shortens paths to package/module.py; look them up in sys.path."""
    for base in [str(ROOT), *sys.path]:
        path = os.path.join(base, short)
        if os.path.exists(path):
            return linecache.getline(path, line)
    return ""


def _role(thread: str, frames: list[str], main_tid: str) -> str:
    if any("Queue._feed" in frame for frame in frames):
        return "worker feeder thread (pickle + pipe)"
    if any("_worker_loop" in frame for frame in frames):
        return "worker main thread"
    if any("s3exchange_torch/prefetch" in frame for frame in frames):
        return "prefetch threads (GET, tar, checksum)"
    if thread.startswith(f"thread ({main_tid})"):
        return "main process (receives batches)"
    return "other threads"


def _category(frames: list[str]) -> str:
    marked = [_marks(frame) for frame in frames]
    for category, needles in PRIORITY:
        if any(needle in frame for frame in marked for needle in needles):
            return category
    for frame in reversed(marked):
        for category, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
    return "other"


def summarize(raw: Path, top: int = 25) -> dict[str, Any]:
    """Samples per role, per category (overall and per role), and the hottest leaf lines."""
    roles: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    by_role: dict[str, Counter[str]] = {}
    leaves: Counter[str] = Counter()
    main_tid = ""
    lines = raw.read_text(encoding="utf-8").splitlines()
    for line in lines:
        parsed = _parse_stack(line)
        if parsed is None:
            continue
        frames, count = parsed
        process, thread, *stack = frames
        if not main_tid:
            main_tid = process.split(":", 1)[0].removeprefix("process ").strip()
        role = _role(thread, stack, main_tid)
        category = _category(stack)
        roles[role] += count
        categories[category] += count
        by_role.setdefault(role, Counter())[category] += count
        if stack:
            leaves[_marks(stack[-1])] += count
    total = sum(roles.values()) or 1
    measured = total - sum(n for c, n in categories.items() if c.startswith("startup: imports"))

    def share(counter: Counter[str], of: int) -> dict[str, float]:
        return {key: round(100 * n / of, 1) for key, n in counter.most_common()}

    return {
        "samples": total,
        "samples_after_imports": measured,
        "roles_pct": share(roles, total),
        "categories_pct": share(categories, total),
        "categories_by_role_pct": {
            role: share(counter, total) for role, counter in sorted(by_role.items())
        },
        "top_leaf_lines_pct": share(Counter(dict(leaves.most_common(top))), total),
    }


def _print(summary: dict[str, Any]) -> None:
    print(f"py-spy samples (all threads): {summary['samples']}")
    for title, key in (("roles", "roles_pct"), ("categories", "categories_pct")):
        print(f"\n{title} (% of all samples)")
        for name, pct in summary[key].items():
            print(f"  {pct:5.1f}  {name}")
    print("\ncategories by role")
    for role, shares in summary["categories_by_role_pct"].items():
        print(f"  {role}")
        for name, pct in shares.items():
            if pct >= 0.5:
                print(f"    {pct:5.1f}  {name}")
    print("\nhottest innermost lines")
    for name, pct in summary["top_leaf_lines_pct"].items():
        print(f"  {pct:5.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("--scenario", choices=("shards", "loose"), default="shards")
    sizes_group = parser.add_mutually_exclusive_group()
    sizes_group.add_argument("--quick", action="store_true")
    sizes_group.add_argument("--node", action="store_true", help="the GPU node's sizes")
    parser.add_argument("--ttfb-ms", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="count only samples holding the GIL (Python CPU; excludes blocking I/O waits that "
        "py-spy cannot tell from work, and C code that releases the GIL)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. reader=loader, shuffle=false, verify=false, pack=true, "
        "batch_size=null, data_only=true",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        parser.error("py-spy is not installed: pip install py-spy")
    sizes = QUICK if args.quick else NODE if args.node else FULL
    options = spec_overrides(args.set)
    server = start_seaweedfs()
    proxy: FaultProxy | None = None
    try:
        client = server.s3.client(max_pool_connections=32)
        datagen.ensure_bucket(client, BUCKET)
        store = S3ExchangeStore(client, BUCKET)
        if args.scenario == "shards":
            data: Any = datagen.write_shards(
                store, "shards", sizes.shards, sizes.shard_members, sizes.member_bytes
            )
        else:
            data = datagen.write_loose(store, "loose", sizes.loose_objects, sizes.loose_bytes)
        s3 = asdict(server.s3)
        if args.ttfb_ms:
            port = int(server.endpoint_url.rsplit(":", 1)[1])
            proxy = FaultProxy(upstream_port=port).start()
            proxy.ttfb_ms = args.ttfb_ms
            s3["endpoint_url"] = proxy.endpoint_url
        spec = {
            "reader": "ours",
            "s3": s3,
            "bucket": BUCKET,
            "manifest": data.manifest,
            "workers": args.workers,
            "batch_size": sizes.batch_size,
            **options,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        name = (
            f"profile-{args.scenario}{'-ttfb' if args.ttfb_ms else ''}{'-gil' if args.gil else ''}"
        )
        raw = args.out / f"{name}.txt"
        with tempfile.TemporaryDirectory() as scratch:
            path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
            env = dict(os.environ, PYTHONPATH=path)
            command = [py_spy, "record", "--subprocesses", "--threads", "--rate", str(args.rate)]
            command += ["--gil"] if args.gil else []
            command += ["--format", "raw", "--output", str(raw), "--"]
            command += [sys.executable, "-m", "benchmarks.readers", json.dumps(spec)]
            done = subprocess.run(
                command, cwd=scratch, env=env, capture_output=True, text=True, check=False
            )
        result = next(
            (
                json.loads(line[len(RESULT_PREFIX) :])
                for line in done.stdout.splitlines()
                if line.startswith(RESULT_PREFIX)
            ),
            None,
        )
        if result is None:
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
            return 1
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
    summary = {"spec": {k: v for k, v in spec.items() if k != "s3"}, "result": result}
    summary.update(summarize(raw))
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"{args.scenario}: {result['samples_per_s']:,.0f} samples/s, {result['mb_per_s']:.1f} MB/s "
        f"under py-spy (sampling slows it down)"
    )
    _print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
