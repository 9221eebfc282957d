"""What every command shares: exit codes, the store from settings, output, progress, prompts."""

from __future__ import annotations

import argparse
import enum
import json
import re
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ..store import S3ExchangeStore

CHUNK = 1 << 20


class ExitCode(enum.IntEnum):
    """The process exit status; what each means is :data:`EXIT_MEANINGS`."""

    OK = 0
    PROBLEMS = 1
    USAGE = 2
    NOT_FOUND = 3
    INVALID = 4
    DENIED = 5
    STORAGE = 6
    CONFLICT = 7
    PLACEHOLDER = 8
    INTERRUPTED = 130
    BROKEN_PIPE = 141


EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.PROBLEMS: "`verify` found problems (listed on stdout)",
    ExitCode.USAGE: "usage error, invalid settings (an endpoint URL without a scheme or with a "
    "path, a bad key template, an `s3://` bucket other than `--bucket`), an unreadable local "
    "file or directory (one line naming it), or refused (`rm` without `--yes` and no terminal, "
    "or declined)",
    ExitCode.NOT_FOUND: "not found: object, manifest, shard member or bucket (named with the "
    "endpoint)",
    ExitCode.INVALID: "invalid manifest, shard or input data (bad JSONL line, corrupt archive, "
    "checksum)",
    ExitCode.DENIED: "access denied (on any request, an upload's included), or missing / "
    "rejected credentials",
    ExitCode.STORAGE: "other storage error (unreachable endpoint, failed upload, failed deletes)",
    ExitCode.CONFLICT: "conflict: `pack` found a manifest written from other files or options, "
    "or a concurrent manifest update kept failing",
    ExitCode.PLACEHOLDER: "a key template names a `{placeholder}` that no `--var NAME=VALUE` fills",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C); an interrupted `pack` finishes when the same "
    "command runs again",
    ExitCode.BROKEN_PIPE: "stdout closed early (e.g. piped into `head`)",
}
"""The one table of exit codes: ``--help`` prints it and the README's table must equal it
(``tests/test_exit_codes.py``). Written in Markdown; :func:`exit_code_table` drops the
backticks."""


def exit_code_table(width: int = 79) -> str:
    """:data:`EXIT_MEANINGS` as ``--help`` prints it: one code a row, meanings wrapped."""
    import textwrap

    rows = ["exit codes:"]
    for code, meaning in EXIT_MEANINGS.items():
        lines = textwrap.wrap(meaning.replace("`", ""), width - 7)
        rows.append(f"  {code.value:>3}  {lines[0]}")
        rows.extend(f"       {line}" for line in lines[1:])
    return "\n".join(rows) + "\n"


class CliError(Exception):
    """A failure the command explains itself, with the exit code to end with."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


CONNECTION_OPTIONS = ("endpoint_url", "bucket", "base_prefix", "region")

KEY_ARGUMENTS = ("key", "prefix", "manifest_key", "manifest", "src", "dst", "wids")
"""The attributes of a parsed command line that hold a key or a key prefix."""

CREATED_KEYS = {
    ("pack", "manifest_key"),
    ("pack", "prefix"),
    ("compact", "dst"),
    ("index", "manifest"),
    ("index", "wids"),
}
"""Keys a command creates: templates even without ``--var``, so ``{name}`` is never silent."""

_INTEGER = re.compile(r"-?[1-9][0-9]*|0")


def parse_var(text: str) -> tuple[str, str | int]:
    """``NAME=VALUE`` for argparse; a canonical integer (``7``, not ``007``) becomes an int."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {text!r}")
    return name, int(value) if _INTEGER.fullmatch(value) else value


def _template_error(key: str, error: Exception) -> CliError:
    from ..errors import InvalidKeyError, MissingPlaceholderError

    if isinstance(error, MissingPlaceholderError):
        name = error.placeholder
        return CliError(
            ExitCode.PLACEHOLDER,
            f"missing placeholder {{{name}}} in key {key!r}: pass --var {name}=VALUE "
            "(or write {{ and }} for literal braces)",
        )
    if isinstance(error, InvalidKeyError):
        return CliError(ExitCode.USAGE, str(error))
    return CliError(ExitCode.USAGE, f"invalid key template {key!r}: {error}")


def locate_keys(args: argparse.Namespace) -> str | None:
    """Turn the command's key arguments into literal keys; the bucket ``s3://`` URLs name.

    A key is taken as given (as ``ls`` prints it, braces included) unless ``--var`` is given
    or the command creates it (:data:`CREATED_KEYS`): then it is a template filled from the
    ``--var`` values. ``s3://bucket/key`` gives the bucket and the key.
    """
    from ..keys import LiteralKey, resolve_template

    variables = dict(getattr(args, "var", None) or ())
    buckets: dict[str, str] = {}
    for name in KEY_ARGUMENTS:
        key = getattr(args, name, None)
        if not isinstance(key, str):
            continue
        if variables or (args.command, name) in CREATED_KEYS:
            try:
                key = resolve_template(key, variables)
            except (KeyError, ValueError) as exc:
                raise _template_error(getattr(args, name), exc) from None
        if key.startswith("s3://"):
            bucket, _, key = key[len("s3://") :].partition("/")
            if not bucket:
                raise CliError(ExitCode.USAGE, f"no bucket in {getattr(args, name)!r}")
            buckets.setdefault(bucket, getattr(args, name))
        setattr(args, name, LiteralKey(key))
    if len(buckets) > 1:
        raise CliError(ExitCode.USAGE, f"keys in two buckets: {', '.join(buckets.values())}")
    named = next(iter(buckets), None)
    flag = getattr(args, "bucket", None)
    if named is not None and flag is not None and flag != named:
        raise CliError(
            ExitCode.USAGE,
            f"--bucket {flag} clashes with {buckets[named]!r} (bucket {named!r}): give one",
        )
    if named is not None and getattr(args, "base_prefix", None):
        raise CliError(ExitCode.USAGE, "--base-prefix does not apply to s3:// keys (full keys)")
    return named


def check_endpoint(url: str | None) -> None:
    """Refuse an endpoint URL without a scheme or with a path (a bucket), naming it."""
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(
            ExitCode.USAGE,
            f"invalid endpoint URL {url!r}: it needs a scheme, e.g. http://{url.split('//')[-1]}",
        )
    path = parts.path.strip("/")
    if path:
        bucket = path.split("/")[0]
        raise CliError(
            ExitCode.USAGE,
            f"endpoint URL {url!r} holds a path ({parts.path!r}); an S3 endpoint has none: "
            f"give {parts.scheme}://{parts.netloc} and the bucket as --bucket {bucket} "
            f"or in the key (s3://{bucket}/KEY)",
        )


def open_store(args: argparse.Namespace, **kwargs: Any) -> S3ExchangeStore:
    """A store from ``S3EXCHANGE_*`` settings (environment, ``.env``) and the command's flags.

    The key arguments become literal keys first (:func:`locate_keys`); the bucket and endpoint
    used are kept on ``args`` (``connection``) for error messages.
    """
    from pydantic import ValidationError

    from ..settings import S3Settings
    from ..store import S3ExchangeStore

    url_bucket = locate_keys(args)
    overrides = {
        name: value
        for name in CONNECTION_OPTIONS
        if (value := getattr(args, name, None)) is not None
    }
    if url_bucket is not None:
        overrides.update(bucket=url_bucket, base_prefix="")
    try:
        settings = S3Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise CliError(ExitCode.USAGE, f"invalid settings: {problems}") from None
    check_endpoint(settings.endpoint_url)
    if not settings.bucket:
        raise CliError(
            ExitCode.USAGE, "no bucket: set S3EXCHANGE_BUCKET, pass --bucket or an s3:// key"
        )
    args.connection = (settings.bucket, settings.endpoint_url or "AWS S3")
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


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 shard``, ``2 shards``, ``1,000 files``: the count with its noun agreeing."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {nouns or noun + 's'}"


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
