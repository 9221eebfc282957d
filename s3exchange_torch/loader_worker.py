"""The loader's worker process: run epochs on command, collate each batch into the ring.

Only a batch's structure goes into the pipe (tensors as ring references, see :mod:`.ring`),
with the dataset state after it; a batch the main process cannot take into the ring (the
caller holds every region) goes whole, in memory of its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import multiprocessing.connection as mpc
import pickle
import random
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .collate import collate_into
from .dataset import S3ExchangeIterableDataset
from .heap import settle_worker_memory
from .ring import Full, Restart, RingPickler, RingWriter, new_ring

__all__ = ["WorkerArgs", "worker_loop"]

log = logging.getLogger("s3exchange_torch.loader")


@dataclass
class WorkerArgs:
    dataset: S3ExchangeIterableDataset
    worker_id: int
    num_workers: int
    batch_size: int
    drop_last: bool
    collate: Callable[[list[Any]], Any] | None
    seed: int
    ring_bytes: int
    commands: mpc.Connection
    results: mpc.Connection
    parent: int
    first: tuple[Any, ...] | None = None
    """The first command, given at the start: a worker starts reading without waiting for
    the main process to finish forking the workers after it (~10 ms each on 2 cores)."""


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the main process dies (PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def worker_loop(args: WorkerArgs) -> None:
    """Run epochs on command; each batch goes into the ring, its structure into the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _die_with_parent()
    settle_worker_memory()
    torch.set_num_threads(1)
    random.seed(args.seed + args.worker_id)
    torch.manual_seed(args.seed + args.worker_id)
    with contextlib.suppress(Exception):  # user transforms may ask where they run
        from torch.utils.data._utils import worker as torch_worker

        torch_worker._worker_info = torch_worker.WorkerInfo(
            id=args.worker_id,
            num_workers=args.num_workers,
            seed=args.seed + args.worker_id,
            dataset=args.dataset,
        )
    # No ring yet: the first batch sizes one and sends it with itself.
    writer = RingWriter(None, args.parent)
    results = args.results
    command = args.first
    try:
        while True:
            if command is None:
                command = args.commands.recv()
            if command[0] == "stop":
                return
            _, state = command
            if state is not None:
                args.dataset.load_state_dict(state)
            writer = _run_epoch(args, writer)
            command = None
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return
    except BaseException as exc:
        with contextlib.suppress(Exception):
            results.send(("error", _portable(exc), traceback.format_exc()))
            # Stay until told to stop: the main process opens a ring sent earlier through this
            # process's descriptor (shm.py), which must still be there when it is unpickled.
            while args.commands.recv()[0] != "stop":
                pass


def _portable(exc: BaseException) -> BaseException | None:
    """``exc`` if it survives pickling, else None (the main process then reports the text)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return exc


def _run_epoch(args: WorkerArgs, writer: RingWriter) -> RingWriter:
    """One epoch's batches; returns the ring writer in use at its end (rings only grow)."""
    dataset, results = args.dataset, args.results
    batch: list[Any] = []
    for sample in dataset._iter_worker(args.worker_id, args.num_workers):
        batch.append(sample)
        if len(batch) == args.batch_size:
            writer = _send_batch(args, writer, batch, dataset.state_dict())
            batch = []
    if batch and not args.drop_last:
        writer = _send_batch(args, writer, batch, dataset.state_dict())
    results.send(("end", dataset.state_dict()))
    return writer


def _send_batch(
    args: WorkerArgs, writer: RingWriter, batch: list[Any], state: dict[str, Any]
) -> RingWriter:
    """Collate ``batch`` into the ring and send its structure; returns the ring now in use."""
    collate = args.collate
    writer.begin()
    while True:
        buffer = io.BytesIO()
        try:
            result = collate(batch) if collate is not None else collate_into(batch, writer.alloc)
            RingPickler(buffer, writer).dump(result)
        except Restart:
            writer.restart()
            continue
        except Full as full:
            writer.begin()  # nothing of this batch was sent: its room is free again
            if full.held:  # the caller keeps every batch alive: this one goes by itself
                result = collate(batch) if collate is not None else collate_into(batch)
                writer.sent += 1
                args.results.send(("whole", result, state))
                return writer
            log.info(
                "batch of %d bytes: loader worker %d grows its ring", full.need, args.worker_id
            )
            ring = new_ring(max(2 * writer.capacity, 2 * full.need, args.ring_bytes))
            args.results.send(("ring", ring))
            writer = RingWriter(ring, args.parent)
            writer.begin()
            continue
        writer.commit()
        args.results.send(("batch", writer.start, writer.head, buffer.getvalue(), state))
        return writer
