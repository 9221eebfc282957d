"""A data worker's memory: freed heap reused without faults, inherited objects frozen out of GC."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_REFAULTS = textwrap.dedent(
    """
    import resource, sys
    from s3exchange_torch.heap import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):  # the first round settles the heap's layout
        samples = [bytes(100 << 10) for _ in range(200)]  # 20 MiB at the heap's top
        del samples
    before = faults()
    samples = [bytes(100 << 10) for _ in range(200)]
    print(faults() - before)
    """
)


def _refaults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_samples_are_reused_without_faulting_pages_in_again() -> None:
    kept, default = _refaults("keep"), _refaults("default")
    # 20 MiB is 5,120 pages: trimmed by default and faulted in again, kept when asked
    assert default > 2_500, default
    assert kept < default / 4, (kept, default)


_FREEZES = textwrap.dedent(
    """
    import gc
    from s3exchange_torch.heap import settle_worker_memory
    inherited = [(i,) for i in range(100_000)]  # what a forked worker starts with
    settle_worker_memory()
    settle_worker_memory()  # once per process
    young = [[i] for i in range(1_000)]
    print(gc.get_freeze_count(), len(gc.get_objects()))
    """
)


def test_a_settled_worker_keeps_what_it_started_with_out_of_the_collectors_walks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FREEZES], capture_output=True, text=True, check=True
    )
    frozen, walked = map(int, done.stdout.split())
    assert frozen >= 100_000, frozen
    assert 1_000 <= walked < 20_000, walked  # the young objects, not the 100,000 inherited
