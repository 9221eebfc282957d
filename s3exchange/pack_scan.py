"""Finding the files of a local source directory to pack: the rules for hidden names, ``--exclude``
globs and symlinks, and one-line errors naming an unreadable path. Local reads only, no requests.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from .errors import PackError
from .pack_plan import SourceFile

__all__ = ["Skipped", "describe_skipped", "scan_directory", "unreadable"]


def _raise(error: OSError) -> None:
    raise error


def unreadable(error: OSError) -> PackError:
    """One line naming the path, for any file-system error on the source side."""
    where = error.filename if error.filename is not None else "the source directory"
    return PackError(f"cannot read {os.fspath(where)!r}: {error.strerror or error}")


class Skipped(TypedDict):
    """What a scan left out, by reason (a skipped directory counts once)."""

    hidden: int
    symlinks: int
    excluded: int


@dataclass
class _Scan:
    """One walk of a source directory: the rules, what was found and what was left out."""

    root: Path
    exclude: Sequence[str]
    hidden: bool
    follow_symlinks: bool

    def __post_init__(self) -> None:
        self.real_root = os.path.realpath(self.root)
        self.found: list[SourceFile] = []
        self.skipped: Skipped = {"hidden": 0, "symlinks": 0, "excluded": 0}

    def keep(self, path: str, member: str, *, directory: bool) -> bool:
        """Whether to pack (or walk into) ``path``; counts what it leaves out."""
        name = posixpath.basename(member)
        if name.startswith(".") and not self.hidden:
            self.skipped["hidden"] += 1
            return False
        if any(fnmatch.fnmatchcase(p, g) for g in self.exclude for p in (member, name)):
            self.skipped["excluded"] += 1
            return False
        if not os.path.islink(path):
            return directory or os.path.isfile(path)  # no FIFOs, sockets or devices
        if not self.follow_symlinks:
            self.skipped["symlinks"] += 1
            return False
        target = os.path.realpath(path)
        if os.path.commonpath([self.real_root, target]) != self.real_root:
            raise PackError(
                f"{path!r} is a symlink to {target!r}, outside the source directory "
                f"{os.fspath(self.root)!r}: it is never followed there (--exclude it)"
            )
        if directory:
            parent = os.path.realpath(os.path.dirname(path))
            if os.path.commonpath([parent, target]) == target:  # a loop: it points up
                self.skipped["symlinks"] += 1
                return False
            return True
        return os.path.isfile(path)

    def run(self) -> None:
        walk = os.walk(self.root, onerror=_raise, followlinks=self.follow_symlinks)
        for dirpath, dirnames, filenames in walk:
            base = Path(dirpath).relative_to(self.root).as_posix()
            prefix = "" if base == "." else f"{base}/"
            dirnames[:] = [
                d
                for d in sorted(dirnames)
                if self.keep(os.path.join(dirpath, d), prefix + d, directory=True)
            ]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if self.keep(path, prefix + name, directory=False):
                    self.found.append(SourceFile(path, prefix + name, os.path.getsize(path)))
        self.found.sort(key=lambda f: f.member_path)


def describe_skipped(skipped: Skipped) -> str:
    """``"skipped 2 hidden, 1 symlink, 3 excluded"``, or ``""`` when nothing was left out."""
    parts = [
        f"{n} {what}" + ("s" if n != 1 and what == "symlink" else "")
        for n, what in (
            (skipped["hidden"], "hidden"),
            (skipped["symlinks"], "symlink"),
            (skipped["excluded"], "excluded"),
        )
        if n
    ]
    return "skipped " + ", ".join(parts) if parts else ""


def scan_directory(
    src_dir: str | os.PathLike[str],
    *,
    exclude: Sequence[str] = (),
    hidden: bool = False,
    follow_symlinks: bool = False,
    skipped: Skipped | None = None,
) -> list[SourceFile]:
    """The regular files under ``src_dir`` to pack, sorted by member path.

    Left out: names starting with ``.`` (unless ``hidden``), paths or names matching an
    ``exclude`` glob (fnmatch; ``*`` crosses ``/``), and symlinks unless ``follow_symlinks``;
    a followed symlink leading outside ``src_dir`` raises PackError naming it, one pointing up
    to its own directory (a loop) is left out. The counts go into ``skipped``. Unreadable
    directories raise PackError naming them instead of being skipped.
    """
    root = Path(src_dir)
    if not root.is_dir():
        raise PackError(f"{os.fspath(src_dir)!r} is not a directory")
    scan = _Scan(root, exclude, hidden, follow_symlinks)
    try:
        scan.run()
    except OSError as exc:
        raise unreadable(exc) from None
    if skipped is not None:
        skipped.update(scan.skipped)
    return scan.found
