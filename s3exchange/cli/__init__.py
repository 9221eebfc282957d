"""The ``s3exchange`` command: inspect, verify, pack and clean up data in an S3 bucket.

Connection settings come from ``S3EXCHANGE_*`` environment variables or a ``.env`` file in the
working directory (see :class:`~s3exchange.S3Settings`); ``--endpoint-url``, ``--bucket``,
``--base-prefix`` and ``--region`` override them. ``--json`` output is JSON Lines for records
(``ls``, ``manifest show``, ``rm --dry-run``) and one JSON object for reports (``manifest
stats``, ``verify``, ``pack``, ``compact``, ``rm``). Progress bars (tqdm, the ``cli`` extra) go
to stderr, only when it is a terminal. Errors are one line on stderr.

Exit codes: :data:`~s3exchange.cli._common.EXIT_MEANINGS`, the one table, which ``--help``
prints and the README repeats (a test holds them equal).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import (
    AccessDeniedError,
    ConcurrentModificationError,
    IntegrityError,
    InvalidKeyError,
    InvalidManifestError,
    MissingPlaceholderError,
    ObjectNotFoundError,
    PackConflictError,
    PackError,
    S3ExchangeError,
    ShardReadError,
    ShardWriteError,
    StorageError,
)
from ..store import STALE_UPLOAD_SECONDS
from ._common import (
    CliError,
    ExitCode,
    exit_code_table,
    parse_duration,
    parse_size,
    parse_var,
    positive_int,
)
from ._index import cmd_index
from ._read import cmd_cat, cmd_ls, cmd_manifest_show, cmd_manifest_stats
from ._verify import cmd_verify
from ._write import cmd_compact, cmd_gc, cmd_pack, cmd_rm

__all__ = ["ExitCode", "build_parser", "main"]

EPILOG = f"""\
{exit_code_table()}
settings: S3EXCHANGE_ENDPOINT_URL, S3EXCHANGE_BUCKET, S3EXCHANGE_BASE_PREFIX, S3EXCHANGE_REGION,
S3EXCHANGE_AWS_ACCESS_KEY_ID, S3EXCHANGE_AWS_SECRET_ACCESS_KEY (or the AWS credential chain),
from the environment or a .env file; the flags override them.
"""


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # On subcommands the default is SUPPRESS, so a flag given before the subcommand survives.
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection (override S3EXCHANGE_* settings)")
    group.add_argument("--endpoint-url", default=default, metavar="URL")
    group.add_argument("--bucket", default=default)
    group.add_argument("--base-prefix", default=default, metavar="PREFIX")
    group.add_argument("--region", default=default)
    group.add_argument(
        "--var",
        action="append",
        type=parse_var,
        default=default,
        metavar="NAME=VALUE",
        help="fill {NAME} in key templates (repeatable); keys are templates only with --var, "
        "except those pack and compact create",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="s3exchange",
        description="Inspect, verify, pack and clean up s3exchange data in an S3 bucket.",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        summary: str,
        *,
        json: str | None = None,
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name, help=summary, description=summary, epilog=EPILOG, formatter_class=formatter
        )
        if json is not None:
            cmd.add_argument("--json", action="store_true", help=json)
        _connection_options(cmd, suppress=True)
        return cmd

    ls = command(
        commands, "ls", "list keys under a prefix with their sizes", json="output JSON Lines"
    )
    ls.add_argument("prefix", nargs="?", default="", metavar="PREFIX")
    ls.set_defaults(handler=cmd_ls)

    cat = command(commands, "cat", "stream an object or an archive#member key to stdout")
    cat.add_argument("key", metavar="KEY")
    cat.set_defaults(handler=cmd_cat)

    manifest = commands.add_parser("manifest", help="show a manifest or its statistics")
    manifest_commands = manifest.add_subparsers(dest="manifest_command", required=True)
    show = command(manifest_commands, "show", "print manifest entries as JSON Lines")
    show.add_argument("key", metavar="KEY")
    show.add_argument(
        "--resolve",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow manifest_ref entries into their parts (default: yes)",
    )
    show.set_defaults(handler=cmd_manifest_show)
    stats = command(
        manifest_commands,
        "stats",
        "count files, shards, members, refs and bytes",
        json="output one JSON object",
    )
    stats.add_argument("key", metavar="KEY")
    stats.set_defaults(handler=cmd_manifest_stats)

    verify = command(
        commands,
        "verify",
        "check that everything a manifest references exists and matches it",
        json="output one JSON report",
    )
    verify.add_argument("key", metavar="KEY")
    verify.add_argument(
        "--no-data",
        dest="data",
        action="store_false",
        help="existence, size and ETag only (HEAD requests); no checksums",
    )
    verify.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="check a manifest whose pack has not finished (a warning, not a problem)",
    )
    verify.set_defaults(handler=cmd_verify)

    pack = command(
        commands,
        "pack",
        "pack a local directory into tar shards listed in a manifest (resumable)",
        json="output one JSON report",
    )
    pack.add_argument("src_dir", metavar="SRC_DIR")
    pack.add_argument("manifest_key", metavar="MANIFEST_KEY")
    pack.add_argument(
        "--max-entries",
        type=positive_int,
        metavar="N",
        help="files per shard (default: no limit); a sample's files are never split",
    )
    pack.add_argument(
        "--max-bytes",
        type=parse_size,
        default=parse_size("256MiB"),
        metavar="B",
        help="member bytes per shard, e.g. 64MiB, 1G (default: 256MiB)",
    )
    pack.add_argument(
        "--compression",
        choices=("none", "gzip"),
        default="none",
        help="shard compression (default: none)",
    )
    pack.add_argument(
        "--prefix", metavar="P", help="where shards go (default: <manifest dir>/shards)"
    )
    pack.add_argument(
        "--jobs",
        type=positive_int,
        metavar="N",
        help="shards in parallel (default: 1; with --engine ray, the cluster's CPUs)",
    )
    pack.add_argument(
        "--shuffle",
        type=int,
        metavar="SEED",
        help="pack the samples in an order drawn from SEED (default: sorted by path); "
        "rerun with the same SEED to resume",
    )
    pack.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out files or directories whose path (relative to SRC_DIR) or name "
        "matches GLOB (repeatable; * crosses /)",
    )
    pack.add_argument(
        "--hidden",
        action="store_true",
        help="pack names starting with '.' too (default: skipped, like .DS_Store)",
    )
    pack.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="pack what symlinks point to (default: skipped); never outside SRC_DIR",
    )
    pack.add_argument("--dry-run", action="store_true", help="plan and report; write nothing")
    pack.add_argument(
        "--no-conditional-writes",
        action="store_true",
        help="for servers without If-Match/If-None-Match; only one writer at a time then",
    )
    pack.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: SRC_DIR is a directory here; ray: SRC_DIR is a prefix in the bucket "
        "(s3://bucket/raw/) and Ray tasks build the shards (the ray extra)",
    )
    pack.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="the Ray cluster for --engine ray (default: RAY_ADDRESS, else a local Ray)",
    )
    pack.set_defaults(handler=cmd_pack)

    compact = command(
        commands,
        "compact",
        "flatten a manifest and its parts into one",
        json="output one JSON report",
    )
    compact.add_argument("src", metavar="SRC")
    compact.add_argument("dst", metavar="DST")
    compact.add_argument(
        "--expand-shards", action="store_true", help="list every shard member as its own entry"
    )
    compact.set_defaults(handler=cmd_compact)
    index = command(
        commands,
        "index",
        "store shard indexes (member offsets for ranged reads) beside existing archives",
        json="output one JSON report",
    )
    index.add_argument(
        "src",
        metavar="MANIFEST_OR_PREFIX",
        help="a manifest (.jsonl): index its shards; or a prefix: index every .tar/.tar.gz "
        "under it and list them in a new manifest",
    )
    index.add_argument(
        "--manifest",
        metavar="KEY",
        help="the manifest written for a prefix (default: <prefix>/manifest.jsonl)",
    )
    index.add_argument(
        "--wids", metavar="KEY", help="also write a wids shard list (JSON) of the plain tars"
    )
    index.add_argument(
        "--force", action="store_true", help="index again shards whose index is current"
    )
    index.set_defaults(handler=cmd_index)

    rm = command(
        commands,
        "rm",
        "delete a manifest with everything it references, or keys under a prefix",
        json="output JSON Lines (--dry-run) or one JSON report",
    )
    target = rm.add_mutually_exclusive_group(required=True)
    target.add_argument("--manifest", metavar="KEY")
    target.add_argument("--prefix", metavar="P")
    rm.add_argument("--regex", metavar="R", help="with --prefix: only keys matching (re.search)")
    rm.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(handler=cmd_rm)

    gc = command(
        commands,
        "gc",
        "abort multipart uploads under a prefix left pending by killed writers",
        json="output JSON Lines (--dry-run) or one JSON report",
    )
    gc.add_argument("prefix", metavar="PREFIX")
    gc.add_argument(
        "--older-than",
        type=parse_duration,
        default=STALE_UPLOAD_SECONDS,
        metavar="AGE",
        help="only uploads started longer ago than this, e.g. 30m, 2d (default 1h)",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be aborted")
    gc.set_defaults(handler=cmd_gc)
    return parser


def exit_code(error: BaseException) -> ExitCode | None:
    """The exit code for an error the CLI explains in one line; None for a bug."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    codes: list[tuple[type[BaseException] | tuple[type[BaseException], ...], ExitCode]] = [
        # OSError: a local file or directory (storage failures arrive as StorageError)
        ((PackError, InvalidKeyError, ValidationError, OSError), ExitCode.USAGE),
        (ObjectNotFoundError, ExitCode.NOT_FOUND),
        ((InvalidManifestError, ShardReadError, ShardWriteError, IntegrityError), ExitCode.INVALID),
        (AccessDeniedError, ExitCode.DENIED),
        ((PackConflictError, ConcurrentModificationError), ExitCode.CONFLICT),
        ((S3ExchangeError, BotoCoreError, ClientError), ExitCode.STORAGE),
    ]
    if isinstance(error, CliError):
        return error.code
    if isinstance(error, MissingPlaceholderError):
        return ExitCode.PLACEHOLDER
    if _no_credentials(error) or _denied(error):
        return ExitCode.DENIED
    if isinstance(error, StorageError) and error.code in ("NoSuchBucket", "NoSuchUpload"):
        return ExitCode.NOT_FOUND
    for types, code in codes:
        if isinstance(error, types):
            return code
    return None


def _no_credentials(error: BaseException) -> bool:
    """Whether boto3 found no (or partial) credentials; the store wraps this in StorageError."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            return True
        cause = cause.__cause__
    return False


def _denied(error: BaseException) -> bool:
    """Whether S3 refused the request (an upload's failure carries the S3 error as its cause)."""
    from botocore.exceptions import ClientError

    from ..bucket import DENIED_CODES, error_code

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, AccessDeniedError):
            return True
        if isinstance(cause, ClientError) and error_code(cause) in DENIED_CODES:
            return True
        cause = cause.__cause__
    return False


def _message(error: BaseException, args: argparse.Namespace) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    bucket, endpoint = getattr(args, "connection", (getattr(args, "bucket", None), None))
    if isinstance(error, StorageError) and error.code == "NoSuchBucket":
        return f"bucket {bucket!r} not found at {endpoint or 'the endpoint'} ({text})"
    if _no_credentials(error):
        return (
            "no credentials: set S3EXCHANGE_AWS_ACCESS_KEY_ID and S3EXCHANGE_AWS_SECRET_ACCESS_KEY"
            " (or configure the AWS credential chain)"
        )
    if _denied(error):
        return f"{text} (check the credentials and the permissions on bucket {bucket!r})"
    if isinstance(error, ConcurrentModificationError) and "conditional_writes" in text:
        return f"{text} (with the CLI: pack --no-conditional-writes)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        sys.stderr.write("s3exchange: interrupted\n")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # the reader went away (``| head``): silence the final flush of stdout as well
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.BROKEN_PIPE
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise  # a bug: keep the traceback
        sys.stderr.write(f"s3exchange: error: {_message(error, args)}\n")
        return code
