"""Run the benchmark suite: ``python benchmarks/run.py [--quick] [--ttfb-ms 30] [--only NAME]``.

Starts SeaweedFS on 127.0.0.1, writes synthetic data, measures every reader in its own process
and prints one table of medians, ratios and PASS/FAIL per target. Writes
``<out>/latest.json`` and ``<out>/latest.png`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory is sys.path[0]: swap it for the repository root so that the
# suite's modules import as ``benchmarks.*`` and cannot shadow anything.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from benchmarks.suite import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
