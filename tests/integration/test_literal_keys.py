"""Keys with braces round-trip: every key ``list_keys`` / ``ls`` prints opens (issue 11, item 6).

Key arguments are templates, so ``weird/{raw}.txt`` used to fail with a missing placeholder
when read back from a listing. Listings return :class:`LiteralKey`, which is never templated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from s3exchange import InvalidKeyError, LiteralKey, MissingPlaceholderError, S3ExchangeStore

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from s3exchange.testing import RunningServer

WEIRD = ["weird/{raw}.txt", "weird/{{double}}.bin", "weird/}{.dat", "weird/{0:05d}#x"]


@pytest.fixture
def weird(s3_client: S3Client, bucket: str) -> dict[str, bytes]:
    """Objects whose keys hold braces, written under ``prod/`` straight through boto3."""
    stored = {key: f"data of {key}".encode() for key in WEIRD}
    for key, data in stored.items():
        s3_client.put_object(Bucket=bucket, Key=f"prod/{key}", Body=data)
    return stored


@pytest.fixture
def prod(s3_client: S3Client, bucket: str) -> S3ExchangeStore:
    return S3ExchangeStore(s3_client, bucket, base_prefix="prod", default_vars={"raw": "no"})


def test_every_listed_key_opens(prod: S3ExchangeStore, weird: dict[str, bytes]) -> None:
    keys = list(prod.list_keys("weird/"))
    assert sorted(keys) == sorted(weird)
    assert all(isinstance(k, LiteralKey) for k in keys)
    assert {k: prod.get_object(k).read() for k in keys} == weird
    assert all(prod.exists(k) and prod.head_object(k)["ContentLength"] for k in keys)
    listed = list(prod.list_objects("weird/"))
    assert {o["key"]: prod.get_object(o["key"]).read() for o in listed} == weird


def test_a_literal_key_is_never_templated(prod: S3ExchangeStore, weird: dict[str, bytes]) -> None:
    assert prod.get_object(LiteralKey("weird/{raw}.txt")).read() == weird["weird/{raw}.txt"]
    assert prod.resolve(LiteralKey("weird/{raw}.txt"), {"raw": "x"}) == "weird/{raw}.txt"
    assert prod.resolve("weird/{raw}.txt") == "weird/no.txt"  # a plain str stays a template
    with pytest.raises(InvalidKeyError):  # as a template, {0} is no plain name
        prod.get_object("weird/{0:05d}#x")
    with pytest.raises(MissingPlaceholderError):
        prod.get_object("weird/{other}.txt")
    assert len(list(prod.list_keys(LiteralKey("weird/{")))) == 3
    prod.delete_key(LiteralKey("weird/}{.dat"))
    assert not prod.exists(LiteralKey("weird/}{.dat"))


def test_a_literal_key_writes_and_its_entry_reads_back(prod: S3ExchangeStore) -> None:
    entry = prod.put_object(LiteralKey("w/{raw}.txt"), b"abc")
    assert entry["key"] == "w/{raw}.txt"
    assert [s.read() for s, _ in prod.iter_objects([entry])] == [b"abc"]
    assert json.loads(json.dumps(list(prod.list_keys("w/")))) == ["w/{raw}.txt"]


def test_cli_cat_opens_every_key_ls_prints(
    moto_server: RunningServer, bucket: str, weird: dict[str, bytes], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3EXCHANGE_", "AWS_"))}
    env |= moto_server.s3.env() | {"S3EXCHANGE_BUCKET": bucket, "S3EXCHANGE_BASE_PREFIX": "prod"}

    def cli(*args: str) -> bytes:
        result = subprocess.run(
            [sys.executable, "-m", "s3exchange", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (args, result.stderr.decode())
        return result.stdout

    printed = [line.split(maxsplit=1)[1] for line in cli("ls", "weird/").decode().splitlines()]
    assert sorted(printed) == sorted(weird)
    assert {key: cli("cat", key) for key in printed} == weird
    assert len(cli("ls", "weird/{").splitlines()) == 3
