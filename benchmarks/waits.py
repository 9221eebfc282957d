"""Where the loader's time goes: what its workers and main process wait on (a diagnostic).

``python -m benchmarks.sweep ... "loader waits=true"`` runs the loader with these counters
installed (monkeypatches, in the reader's own interpreter; forked workers inherit them):

- ``data_wait``: a worker's consumer waiting for its shard thread: the GET's opening, then
  each read-ahead chunk (the thread parses nothing since the raw read-ahead; before, this
  was the wait for its next sample list, tar parse included);
- ``ring_wait``: a worker waiting for ring room (the main process behind, or busy with another
  worker in round-robin order);
- ``main_wait``: the main process waiting for the worker whose batch is next;
- each process's CPU seconds and wall seconds, from its start to its end.

The figures are seconds summed over a worker's threads of one kind, then the median and max
over workers. Not for timing runs: the counters add a few microseconds per wait.
"""

from __future__ import annotations

import json
import multiprocessing.connection as mpc
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["collect", "install"]

_TOTALS: dict[str, float] = {}
"""Seconds waited, by kind, in this process (a worker starts its own)."""
_STARTED: dict[str, float] = {}
"""The main process's CPU and wall clock when the counters were installed."""
_LOCK = threading.Lock()


def _add(kind: str, seconds: float) -> None:
    with _LOCK:
        _TOTALS[kind] = _TOTALS.get(kind, 0.0) + seconds


def _timed(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(kind, time.perf_counter() - began)

    return wrapper


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def install() -> Path:
    """Patch the loader's wait points; returns the folder where each worker leaves its figures."""
    from s3exchange_torch import loader, prefetch_threads, ring

    folder = Path(tempfile.mkdtemp(prefix="loader-waits-"))
    ring.RingWriter._wait_room = _timed("ring_wait", ring.RingWriter._wait_room)  # type: ignore[method-assign]
    prefetch_threads.ShardRead._take = _timed("data_wait", prefetch_threads.ShardRead._take)  # type: ignore[method-assign]
    worker_loop = loader.worker_loop

    def counted_loop(args: Any) -> None:
        began, cpu = time.perf_counter(), _cpu()
        _TOTALS.clear()
        try:
            worker_loop(args)
        finally:
            figures = {**_TOTALS, "cpu": _cpu() - cpu, "wall": time.perf_counter() - began}
            (folder / f"{os.getpid()}.json").write_text(json.dumps(figures), encoding="utf-8")

    loader.worker_loop = counted_loop  # type: ignore[assignment]
    loader.mpc.wait = _timed("main_wait", mpc.wait)  # type: ignore[attr-defined]
    _STARTED.update(cpu=_cpu(), wall=time.perf_counter())
    return folder


def collect(folder: Path) -> dict[str, Any]:
    """The main process's figures and the workers' medians and maxima (after the loader closed);
    the workers' folder is removed."""
    out: dict[str, Any] = {
        "main_wait_s": round(_TOTALS.get("main_wait", 0.0), 3),
        "main_cpu_s": round(_cpu() - _STARTED["cpu"], 3),
        "main_wall_s": round(time.perf_counter() - _STARTED["wall"], 3),
    }
    workers = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    shutil.rmtree(folder, ignore_errors=True)
    out["workers_reported"] = len(workers)
    for kind in ("data_wait", "ring_wait", "cpu", "wall"):
        values = [worker.get(kind, 0.0) for worker in workers] or [0.0]
        out[f"worker_{kind}_s"] = {
            "median": round(statistics.median(values), 3),
            "max": round(max(values), 3),
        }
    return out
