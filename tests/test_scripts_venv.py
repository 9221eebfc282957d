"""scripts/demo runs pip only when the venv lacks this checkout (issue 11, item 10: 7 s a run).

The venv is a temporary one whose ``python`` is the test's interpreter behind a wrapper that
logs, instead of running, ``-m pip`` and the demo itself; everything else (the install checks)
runs for real against the packages of the test's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = """#!/usr/bin/env bash
if [ "${{1-}}" = "-m" ] && [ "${{2-}}" = "pip" ]; then echo "pip ${{*:3}}" >> "{log}"; exit 0; fi
case "${{1-}}" in */examples/demo.py) echo demo >> "{log}"; exit 0 ;; esac
exec "{python}" "$@"
"""


def _venv(tmp_path: Path) -> tuple[Path, Path]:
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(WRAPPER.format(log=log, python=sys.executable))
    python.chmod(0o755)
    return venv, log


def _demo(venv: Path, log: Path, **env: str) -> list[str]:
    """Run scripts/demo; the calls it made (pip, demo) since the last run."""
    log.unlink(missing_ok=True)
    environ = {k: v for k, v in os.environ.items() if k != "S3EXCHANGE_REINSTALL"}
    environ |= {"S3EXCHANGE_VENV": str(venv), **env}
    subprocess.run(["bash", str(ROOT / "scripts" / "demo")], env=environ, check=True, timeout=60)
    return log.read_text().splitlines() if log.exists() else []


def test_demo_installs_once_then_skips_pip(tmp_path: Path) -> None:
    venv, log = _venv(tmp_path)
    first = _demo(venv, log)
    assert first == [f"pip install --quiet -e {ROOT}[torch,cli,demo]", "demo"]
    assert _demo(venv, log) == ["demo"]
    assert _demo(venv, log) == ["demo"]


def test_a_stale_stamp_or_reinstall_runs_pip_again(tmp_path: Path) -> None:
    venv, log = _venv(tmp_path)
    _demo(venv, log)
    install = f"pip install --quiet -e {ROOT}[torch,cli,demo]"
    assert _demo(venv, log, S3EXCHANGE_REINSTALL="1") == [install, "demo"]
    (stamp,) = venv.glob(".s3exchange-install-*")
    stamp.write_text("an older pyproject.toml\n")
    assert _demo(venv, log) == [install, "demo"]
    assert _demo(venv, log) == ["demo"]
