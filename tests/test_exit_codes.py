"""The exit-code table is kept once: the CLI's ``EXIT_MEANINGS``, which ``--help`` prints and
the README's table repeats word for word."""

from __future__ import annotations

import re
from pathlib import Path

from s3exchange.cli import build_parser
from s3exchange.cli._common import EXIT_MEANINGS, ExitCode

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_exit_codes() -> list[tuple[int, str]]:
    """The rows of the README table headed ``| exit code | meaning |``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| exit code | meaning |")
    assert re.fullmatch(r"\|-+\|-+\|", lines[start + 1])
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        code, meaning = (cell.strip() for cell in line.strip("|").split("|", 1))
        rows.append((int(code), meaning))
    return rows


def test_every_exit_code_has_one_meaning() -> None:
    assert list(EXIT_MEANINGS) == sorted(ExitCode)


def test_the_readme_table_is_the_cli_table() -> None:
    assert readme_exit_codes() == [(code.value, meaning) for code, meaning in EXIT_MEANINGS.items()]


def test_help_prints_every_code_with_its_meaning() -> None:
    text = " ".join(build_parser().format_help().split())
    for code, meaning in EXIT_MEANINGS.items():
        assert f" {code.value} {meaning.replace('`', '')}" in text
