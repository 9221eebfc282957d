"""What every command shares: exit codes, the store from settings, output, progress, prompts."""

from __future__ import annotations

import argparse
import enum
import json
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import S3ExchangeStore

CHUNK = 1 << 20


class ExitCode(enum.IntEnum):
    """The process exit status; documented in the package docstring and ``--help``."""

    OK = 0
    PROBLEMS = 1
    USAGE = 2
    NOT_FOUND = 3
    INVALID = 4
    DENIED = 5
    STORAGE = 6
    CONFLICT = 7
    INTERRUPTED = 130
    BROKEN_PIPE = 141


class CliError(Exception):
    """A failure the command explains itself, with the exit code to end with."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


CONNECTION_OPTIONS = ("endpoint_url", "bucket", "base_prefix", "region")


def open_store(args: argparse.Namespace, **kwargs: Any) -> S3ExchangeStore:
    """A store from ``S3EXCHANGE_*`` settings (environment, ``.env``) and the command's flags."""
    from pydantic import ValidationError

    from ..settings import S3Settings
    from ..store import S3ExchangeStore

    overrides = {
        name: value
        for name in CONNECTION_OPTIONS
        if (value := getattr(args, name, None)) is not None
    }
    try:
        settings = S3Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise CliError(ExitCode.USAGE, f"invalid settings: {problems}") from None
    if not settings.bucket:
        raise CliError(ExitCode.USAGE, "no bucket: set S3EXCHANGE_BUCKET or pass --bucket")
    return S3ExchangeStore.from_settings(settings, **kwargs)


# -- output ------------------------------------------------------------------------------------


def emit_json(obj: Any) -> None:
    """One JSON value on one line of stdout (records are JSON Lines, reports one object)."""
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")


def emit(text: str) -> None:
    """One line of human-readable output on stdout."""
    sys.stdout.write(text + "\n")


def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def plural(n: int, noun: str) -> str:
    """``1 shard``, ``2 shards``, ``1,000 files``: the count with its noun agreeing."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


_SIZE = re.compile(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count for argparse: ``1000``, ``64K``, ``256MiB``, ``1G`` (multiples of 1024)."""
    match = _SIZE.fullmatch(text)
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (e.g. 1000, 64K, 256MiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds for argparse: ``90``, ``30m``, ``1h``, ``2d``."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90, 30m, 1h, 2d)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def positive_int(text: str) -> int:
    """An integer >= 1 for argparse."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


# -- progress and prompts ----------------------------------------------------------------------


class Progress:
    """A tqdm bar on stderr, only when stderr is a terminal and tqdm is installed.

    Quiet otherwise, so scripts and logs get no control characters. The bar appears only after
    half a second, so quick commands never show one.
    """

    def __init__(
        self, desc: str, total: int | None = None, *, unit: str = "B", enabled: bool | None = None
    ) -> None:
        self._bar: Any = None
        if not (sys.stderr.isatty() if enabled is None else enabled):
            return
        try:
            from tqdm import tqdm
        except ImportError:  # the ``cli`` extra is not installed
            return
        scaled = unit == "B"
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=scaled,
            unit_divisor=1024 if scaled else 1000,
            delay=0.5,
            file=sys.stderr,
            leave=False,
        )

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def start(self, total_bytes: int, total_shards: int = 0) -> None:
        """Set the total (the pack workflow calls this once its plan is known)."""
        if self._bar is not None:
            self._bar.reset(total=total_bytes)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def confirm(question: str, *, yes: bool) -> None:
    """Ask on the terminal; raise CliError (exit 2) when declined or when there is no terminal."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            ExitCode.USAGE,
            "refusing to delete without confirmation: stdin is not a terminal; "
            "pass --yes (or --dry-run to only list)",
        )
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError(ExitCode.USAGE, "aborted: nothing was deleted")
