"""S3Settings: env prefix, secrets kept out of repr, checksum defaults for custom endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3exchange import S3Settings


def test_reads_env_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3EXCHANGE_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("S3EXCHANGE_AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    monkeypatch.setenv("S3EXCHANGE_AWS_SECRET_ACCESS_KEY", "super-secret-value")
    monkeypatch.setenv("S3EXCHANGE_BUCKET", "b1")
    settings = S3Settings()
    assert settings.endpoint_url == "http://127.0.0.1:9"
    assert settings.bucket == "b1"
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert "super-secret-value" not in text
        assert "AKIAEXAMPLEKEY" not in text


def test_custom_endpoint_defaults_checksums_to_when_required() -> None:
    client = S3Settings(endpoint_url="http://127.0.0.1:9", region="us-east-1").create_client()
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"


def test_aws_default_keeps_botocore_checksums() -> None:
    client = S3Settings(region="us-east-1").create_client()
    assert client.meta.config.request_checksum_calculation == "when_supported"


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("S3EXCHANGE_BUCKET=from-dotenv\n")
    assert S3Settings().bucket == "from-dotenv"


def test_secrets_stay_out_of_store_reprs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from s3exchange import S3ExchangeStore

    secret = "never-print-this-secret"
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9",
        region="us-east-1",
        bucket="b",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key=secret,
    )
    with caplog.at_level(logging.DEBUG, logger="s3exchange"):
        store = S3ExchangeStore.from_settings(settings)
        texts = [repr(store), str(store), repr(store._bucket), repr(store._bucket._factory)]
    texts.append(caplog.text)
    for text in texts:
        assert secret not in text
