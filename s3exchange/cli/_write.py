"""Commands that write or delete: ``pack``, ``compact`` and ``rm``."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from .. import packing
from ._common import (
    CliError,
    ExitCode,
    Progress,
    confirm,
    emit,
    emit_json,
    human_size,
    open_store,
    plural,
)

if TYPE_CHECKING:
    from ..store import S3ExchangeStore


def cmd_pack(args: argparse.Namespace) -> int:
    """Pack a local directory into shards and list them in a manifest (see :mod:`..packing`)."""
    options = {"conditional_writes": "off"} if args.no_conditional_writes else {}
    on_ray = args.engine == "ray"
    if on_ray:
        args.src = args.src_dir  # a prefix in the bucket: an s3:// URL or a key, as for compact
    elif args.ray_address is not None:
        raise CliError(ExitCode.USAGE, "--ray-address goes with --engine ray")
    store = open_store(args, **options)
    try:
        with Progress(f"pack {args.manifest_key}") as bar:
            if on_ray:
                report = _pack_on_ray(store, args, bar)
            else:
                report = packing.pack(
                    store,
                    args.src_dir,
                    args.manifest_key,
                    max_entries=args.max_entries,
                    max_bytes=args.max_bytes,
                    compression=args.compression,
                    prefix=args.prefix,
                    jobs=args.jobs or 1,
                    dry_run=args.dry_run,
                    shuffle=args.shuffle,
                    exclude=args.exclude,
                    hidden=args.hidden,
                    follow_symlinks=args.follow_symlinks,
                    progress=bar,
                )
    except KeyboardInterrupt:
        manifest = store.resolve(args.manifest_key)
        sys.stderr.write(
            f"s3exchange: interrupted: the shards finished so far are kept and listed in "
            f"{packing.unfinished_key(manifest)!r}; run the same command again to finish the "
            f"job ({manifest!r} is written only then)\n"
        )
        return ExitCode.INTERRUPTED
    if args.json:
        emit_json(report)
        return ExitCode.OK
    actions = [
        (report["uploaded"], "new"),
        (report["replaced"], "re-uploaded (stored but not listed)"),
        (report["restored"], "restored (listed but missing)"),
        (report["skipped"], "already done"),
    ]
    done = ", ".join(f"{n} {what}" for n, what in actions if n) or "nothing to do"
    verb = "would pack" if report["dry_run"] else "packed"
    emit(
        f"{verb} {plural(report['files'], 'file')} ({human_size(report['member_bytes'])}) into "
        f"{plural(report['shards'], 'shard')} under {report['prefix']}/ for "
        f"{report['manifest_key']}: {done}"
    )
    if not report["dry_run"]:
        emit(
            f"uploaded {human_size(report['uploaded_bytes'])} in {report['seconds']:.1f} s; "
            f"{plural(len(report['parts']), 'manifest part')} appended"
        )
    left_out = packing.describe_skipped(report["skipped_files"])
    if left_out:
        emit(f"{left_out} (see --hidden, --follow-symlinks, --exclude)")
    if report["aborted_uploads"]:
        verb = "would abort" if report["dry_run"] else "aborted"
        emit(f"{verb} {plural(report['aborted_uploads'], 'stale shard upload')} (a killed run's)")
    return ExitCode.OK


def _pack_on_ray(
    store: S3ExchangeStore, args: argparse.Namespace, bar: Progress
) -> packing.PackReport:
    """``pack --engine ray``: the objects under the prefix SRC_DIR, packed by Ray tasks."""
    if args.follow_symlinks:
        raise CliError(ExitCode.USAGE, "--follow-symlinks applies to a directory, not a bucket")
    try:
        from ..ray import pack_objects
    except ImportError as exc:
        raise CliError(
            ExitCode.USAGE, f"--engine ray needs Ray: pip install 's3exchange[ray]' ({exc})"
        ) from None
    return pack_objects(
        store,
        args.src,
        args.manifest_key,
        max_entries=args.max_entries,
        max_bytes=args.max_bytes,
        compression=args.compression,
        prefix=args.prefix,
        jobs=args.jobs,
        dry_run=args.dry_run,
        shuffle=args.shuffle,
        exclude=args.exclude,
        hidden=args.hidden,
        progress=bar,
        address=args.ray_address,
    )


def cmd_gc(args: argparse.Namespace) -> int:
    """Abort multipart uploads under a prefix pending longer than ``--older-than``."""
    store = open_store(args)  # first: an s3://bucket/ PREFIX becomes its key, ""
    if not args.prefix.strip("/"):
        raise CliError(ExitCode.USAGE, "PREFIX must not be empty (that would be every writer)")
    stale = store.abort_stale_uploads(args.prefix, args.older_than, dry_run=args.dry_run)
    if args.json and args.dry_run:
        for upload in stale:
            emit_json(
                {
                    "key": upload.key,
                    "upload_id": upload.upload_id,
                    "initiated": upload.initiated.isoformat(),
                }
            )
    elif args.json:
        emit_json({"prefix": args.prefix, "aborted": len(stale)})
    else:
        for upload in stale:
            emit(f"{upload.initiated.isoformat()}  {upload.key}  {upload.upload_id}")
        emit(f"{'would abort' if args.dry_run else 'aborted'} {plural(len(stale), 'stale upload')}")
    return ExitCode.OK


def cmd_compact(args: argparse.Namespace) -> int:
    """Flatten a manifest and its parts into one manifest."""
    store = open_store(args)
    report = store.compact_manifest(args.src, args.dst, expand_shards=args.expand_shards)
    if args.json:
        emit_json(report)
    else:
        emit(
            f"compacted {report['src_manifest_key']} into {report['dst_manifest_key']}: "
            f"{plural(report['total_entries'], 'entry', 'entries')} "
            f"({plural(report['file_entries'], 'file')}, "
            f"{plural(report['shard_entries'], 'shard')})"
        )
    return ExitCode.OK


def cmd_rm(args: argparse.Namespace) -> int:
    """Delete by manifest or by prefix; ``--dry-run`` lists, otherwise confirm (or ``--yes``)."""
    if args.regex is not None and args.manifest is not None:
        raise CliError(ExitCode.USAGE, "--regex goes with --prefix, not --manifest")
    store = open_store(args)
    if args.manifest is not None:
        return _rm_manifest(store, args)
    return _rm_prefix(store, args)


def _rm_manifest(store: S3ExchangeStore, args: argparse.Namespace) -> int:
    # one plan, shown by --dry-run and the prompt, then deleted as shown
    plan = store.plan_delete_manifest(args.manifest)
    if args.dry_run:
        for role, key in plan.targets():
            if args.json:
                emit_json({"role": role, "key": key})
            else:
                emit(f"{role:<10}{key}")
        for archive, why in plan.kept:
            if args.json:
                emit_json({"role": "kept", "key": archive, "reason": why})
            else:
                emit(f"{'kept':<10}{archive}  ({why}; not deleted)")
        return ExitCode.OK
    kept = f", keeping {plural(len(plan.kept), 'partly listed archive')}" if plan.kept else ""
    confirm(
        f"delete {plural(len(plan.objects), 'object')}, {plural(len(plan.archives), 'archive')} "
        f"and {plural(len(plan.manifests), 'manifest')} of {plan.root}{kept}?",
        yes=args.yes,
    )
    report = store.delete_manifest(args.manifest, plan=plan)
    if args.json:
        emit_json({**report, "kept": [{"key": k, "reason": why} for k, why in plan.kept]})
    else:
        emit(
            f"deleted {plural(report['deleted_object_count'], 'object')}, "
            f"{plural(report['deleted_archive_count'], 'archive')}, "
            f"{plural(report['deleted_manifest_count'], 'manifest')}"
        )
        for archive, why in plan.kept:
            emit(f"kept {archive}: {why}")
    for failure in report["errors"]:
        sys.stderr.write(f"{failure['key']}: {failure['code']} {failure['message']}\n")
    if report["errors"]:
        sys.stderr.write("the manifests were kept so the deletion can be run again\n")
        return ExitCode.STORAGE
    return ExitCode.OK


def _rm_prefix(store: S3ExchangeStore, args: argparse.Namespace) -> int:
    if not args.prefix.strip("/"):
        raise CliError(ExitCode.USAGE, "--prefix must not be empty (that would be everything)")
    try:
        pattern = re.compile(args.regex) if args.regex is not None else None
    except re.error as exc:
        raise CliError(ExitCode.USAGE, f"invalid --regex {args.regex!r}: {exc}") from None
    matched = [
        obj
        for obj in store.list_objects(args.prefix)
        if pattern is None or pattern.search(obj["key"])
    ]
    if args.dry_run:
        for obj in matched:
            if args.json:
                emit_json({"key": obj["key"], "size": obj["size"]})
            else:
                emit(obj["key"])
        return ExitCode.OK
    deleted = 0
    if matched:
        where = f" matching {args.regex!r}" if args.regex is not None else ""
        size = human_size(sum(obj["size"] for obj in matched))
        question = f"delete {plural(len(matched), 'object')} ({size}) under {args.prefix!r}{where}?"
        confirm(question, yes=args.yes)
        deleted = store.delete_prefix(args.prefix, args.regex)
    if args.json:
        emit_json({"prefix": args.prefix, "regex": args.regex, "deleted": deleted})
    else:
        emit(f"deleted {plural(deleted, 'object')}")
    return ExitCode.OK
