"""The house's layering, checked from the source (what the README's architecture paragraph says).

- format modules (manifests, tar writing and parsing, sample naming, keys, sources, errors) make
  no S3 or network requests: they import neither the request modules nor boto3, sockets or HTTP;
- the core ``s3exchange`` never imports ``s3exchange_torch``, torch or ray (``s3exchange.ray`` is
  the one extra that may import ray, and nothing else in the core imports it);
- ``s3exchange_torch`` imports the core, never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORMAT_MODULES = (
    "errors",
    "gzip_frame",
    "keys",
    "manifest",
    "pack_plan",
    "sample_encoding",
    "samples",
    "shard",
    "shard_format",
    "shard_index",
    "sources",
    "tar_parser",
    "tar_reader",
    "tar_writer",
    "types",
)
REQUEST_MODULES = {
    "body",
    "bucket",
    "client_probe",
    "clients",
    "compaction",
    "deletion",
    "fastget",
    "http11",
    "manifest_reads",
    "multipart",
    "parts",
    "pack_checks",
    "pack_unfinished",
    "packing",
    "shard_access",
    "store",
    "transport",
}
NETWORK_PACKAGES = {"boto3", "botocore", "urllib3", "socket", "http", "ssl", "requests"}


def _module_file(package: str, name: str) -> Path:
    path = ROOT / package / f"{name.replace('.', '/')}.py"
    return path if path.exists() else ROOT / package / name.replace(".", "/") / "__init__.py"


def _imports(package: str, name: str) -> tuple[set[str], set[str]]:
    """(modules of ``package`` imported by module ``name``, top-level outside packages)."""
    path = _module_file(package, name)
    tree = ast.parse(path.read_text(), str(path))
    if name == "__init__":
        base: list[str] = []
    elif path.name == "__init__.py":
        base = name.split(".")
    else:
        base = name.split(".")[:-1]
    inside: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == package:
                    inside.add(".".join(alias.name.split(".")[1:]) or "__init__")
                else:
                    outside.add(top)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                module = node.module or ""
                top = module.split(".")[0]
                if top == package:
                    inside.add(".".join(module.split(".")[1:]) or "__init__")
                else:
                    outside.add(top)
                continue
            anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = [*anchor, *(node.module.split(".") if node.module else [])]
            if node.module is None:  # from . import a, b
                inside.update(".".join([*target, alias.name]) for alias in node.names)
            else:
                inside.add(".".join(target))
    return {m for m in inside if m}, outside


def _closure(package: str, name: str) -> tuple[set[str], set[str]]:
    """Every module of ``package`` reachable from ``name`` by imports, and what they import
    from outside the package."""
    seen: set[str] = set()
    outside: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen or not _module_file(package, current).exists():
            continue
        seen.add(current)
        inside, out = _imports(package, current)
        outside |= out
        todo.extend(inside - seen)
    return seen, outside


def _core_modules() -> list[str]:
    core = ROOT / "s3exchange"
    names = []
    for path in core.rglob("*.py"):
        relative = path.relative_to(core).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join(parts))
    return sorted(names)


@pytest.mark.parametrize("name", FORMAT_MODULES)
def test_format_modules_make_no_requests(name: str) -> None:
    assert _module_file("s3exchange", name).exists(), f"format module {name} is gone: update"
    reached, outside = _closure("s3exchange", name)
    assert not reached & REQUEST_MODULES, f"{name} reaches {sorted(reached & REQUEST_MODULES)}"
    assert not outside & NETWORK_PACKAGES, f"{name} imports {sorted(outside & NETWORK_PACKAGES)}"


def test_the_core_never_imports_torch_or_the_torch_package() -> None:
    offenders = {}
    for name in _core_modules():
        _, outside = _imports("s3exchange", name)
        bad = outside & {"torch", "s3exchange_torch", "webdataset"}
        if not name.startswith("ray") and "ray" in outside:
            bad.add("ray")
        if bad:
            offenders[name] = sorted(bad)
    assert offenders == {}


def test_the_core_package_imports_without_ray() -> None:
    reached, outside = _closure("s3exchange", "__init__")
    assert {"store", "bucket", "manifest"} <= reached  # the walk does follow the imports
    assert "ray" not in outside
    assert not any(module == "ray" or module.startswith("ray.") for module in reached)


def test_the_torch_package_builds_on_the_core() -> None:
    _, outside = _closure("s3exchange_torch", "__init__")
    assert "s3exchange" in outside
