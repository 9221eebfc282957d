"""Nameless shared memory crossing processes (s3exchange_torch.shm)."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
from multiprocessing.connection import Connection

import pytest

from s3exchange_torch import shm


def _serve(conn: Connection) -> None:
    """Make shared memory, fill it, send it pickled, then keep it until told to stop."""
    memory = shm.SharedBytes(8192)
    memory.data[:5] = memory.data.new_tensor(list(b"hello"))
    conn.send_bytes(pickle.dumps(memory))
    conn.recv()  # the receiver's writes land in the same pages
    conn.send(bytes(memory.data[5:10].numpy()))


def test_memory_crosses_processes_both_ways() -> None:
    parent, child = mp.get_context("spawn").Pipe()
    process = mp.get_context("spawn").Process(target=_serve, args=(child,))
    process.start()
    try:
        received = pickle.loads(parent.recv_bytes())
        assert bytes(received.data[:5].numpy()) == b"hello"
        received.data[5:10] = received.data.new_tensor(list(b"world"))
        parent.send("written")
        assert parent.recv() == b"world"
    finally:
        process.join(10)


def _exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.skipif(not shm._PROC_FD, reason="no /proc: shared memory travels by DupFd")
def test_memory_of_an_exited_process_is_a_clear_error() -> None:
    memory = shm.SharedBytes(4096)
    _, (pid, fd, size) = memory.__reduce__()
    assert pid == os.getpid()
    with pytest.raises(OSError, match=r"process \d+ \(descriptor \d+\).*exited"):
        shm._reopen(_exited_pid(), fd, size)
    with pytest.raises(OSError, match="no longer there"):
        shm._reopen(pid, 0, size)  # a descriptor that is not this memory
