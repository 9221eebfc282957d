"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only NAME] [--workers N]``.

Starts SeaweedFS on 127.0.0.1, writes synthetic data, measures every reader in its own process
and prints one table of medians, ratios and PASS/FAIL per target. Writes
``<out>/latest.json`` and ``<out>/latest.png`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import sys

if not __package__:  # run as a file, ``benchmarks`` is not importable: say how to run it
    sys.exit("run the suite from the repository root as: python -m benchmarks.run [options]")

from benchmarks.suite import main

if __name__ == "__main__":
    sys.exit(main())
