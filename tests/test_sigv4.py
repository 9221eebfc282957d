"""Our SigV4 header signing matches botocore's S3 signer byte for byte."""

from __future__ import annotations

import calendar
import time
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from s3exchange.sigv4 import SigV4Signer


@pytest.mark.parametrize("key", ["plain.bin", "a b/ü+x=&~.bin", "dir/sub dir/%41?.bin"])
@pytest.mark.parametrize("token", [None, "session-token/with+chars="])
@pytest.mark.parametrize(
    "extra", [{}, {"Range": "bytes=5-", "If-Match": '"0123abcd"', "x-amz-checksum-mode": "ENABLED"}]
)
def test_signature_equals_botocores(key: str, token: str | None, extra: dict[str, str]) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    credentials = ReadOnlyCredentials("AKIDEXAMPLE", secret, token)
    host = "127.0.0.1:9000"
    path = "/bucket/" + quote(key, safe="/~")
    request = AWSRequest(method="GET", url=f"http://{host}{path}", headers=dict(extra))
    S3SigV4Auth(credentials, "s3", "eu-west-3").add_auth(request)
    stamp = request.headers["X-Amz-Date"]
    now = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))

    ours = SigV4Signer("eu-west-3").sign("GET", path, {"host": host, **extra}, credentials, now)

    assert ours["X-Amz-Date"] == stamp
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours.get("X-Amz-Security-Token") == token


def test_signing_key_follows_the_secret_and_the_day() -> None:
    signer = SigV4Signer("us-east-1")
    first = signer.signing_key("secret-1", "20260101")
    assert signer.signing_key("secret-1", "20260101") is first
    assert signer.signing_key("secret-2", "20260101") != first  # refreshed credentials
    assert signer.signing_key("secret-1", "20260102") != first  # a new day
