"""The public names of both packages, pinned (httpx's ``tests/test_exported_members.py``).

Adding or removing a public name is a deliberate change: it edits the expected list here and
gets a line in ``CHANGELOG.md``.
"""

from __future__ import annotations

import re
import tomllib
import types
from pathlib import Path

import pytest

import s3exchange
import s3exchange.ray
import s3exchange_torch

ROOT = Path(__file__).resolve().parent.parent

S3EXCHANGE = [
    "AccessDeniedError",
    "CompactReport",
    "ConcurrentModificationError",
    "DeleteError",
    "DeleteFailure",
    "DeleteReport",
    "FileEntry",
    "IntegrityError",
    "InvalidKeyError",
    "InvalidManifestError",
    "LiteralKey",
    "ManifestEntry",
    "ManifestNotFoundError",
    "ManifestRefEntry",
    "MissingPlaceholderError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "ObjectStream",
    "PackConflictError",
    "PackError",
    "ReadInterruptedError",
    "RetryPolicy",
    "S3ExchangeError",
    "S3ExchangeStore",
    "S3Settings",
    "Shard",
    "ShardEntry",
    "ShardItem",
    "ShardMember",
    "ShardReadError",
    "ShardWriteError",
    "ShardWriter",
    "StorageError",
    "TransferConfig",
    "UploadError",
    "__version__",
]

S3EXCHANGE_TORCH = [
    "Balance",
    "EpochPlan",
    "GroupBy",
    "LoaderWorkerError",
    "PackedBatch",
    "S3ExchangeIterableDataset",
    "S3ExchangeLoader",
    "S3ExchangeMapDataset",
    "Sample",
    "SampleTooLargeError",
    "Segment",
    "Source",
    "collate_into",
    "key_and_field",
    "pack_bytes",
]

S3EXCHANGE_RAY = ["S3ExchangeDatasink", "S3ExchangeDatasource", "pack_objects", "read_s3exchange"]

each_package = pytest.mark.parametrize(
    ("package", "expected"),
    [
        pytest.param(s3exchange, S3EXCHANGE, id="s3exchange"),
        pytest.param(s3exchange_torch, S3EXCHANGE_TORCH, id="s3exchange_torch"),
        pytest.param(s3exchange.ray, S3EXCHANGE_RAY, id="s3exchange.ray"),
    ],
)


@each_package
def test_all_is_exactly_the_expected_list(package: types.ModuleType, expected: list[str]) -> None:
    assert package.__all__ == expected


@each_package
def test_every_exported_name_exists(package: types.ModuleType, expected: list[str]) -> None:
    missing = [name for name in expected if not hasattr(package, name)]
    assert missing == []


@each_package
def test_every_public_name_the_package_binds_is_exported(
    package: types.ModuleType, expected: list[str]
) -> None:
    # submodules become attributes of the package when imported; they are not exports
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(public - set(package.__all__)) == []


def test_the_version_is_written_once() -> None:
    # pyproject.toml reads it from the package; the installed metadata follows on reinstall
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "s3exchange.__version__"
    }
    assert re.fullmatch(r"\d+\.\d+\.\d+", s3exchange.__version__)


def test_the_changelog_has_an_entry_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"\n## {s3exchange.__version__}\n" in changelog
