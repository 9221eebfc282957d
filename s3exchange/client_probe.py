"""What a botocore client sends for ``GetObject`` (URL, signing scope, headers, TLS, checksums),
read by running one real request through its pipeline, and whether the fast path of
:mod:`s3exchange.fastget` can honour that configuration (the rules are in its docstring).
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "ENV_SWITCH",
    "Target",
    "Unsupported",
    "botocore_checksums",
    "probe",
    "tls_context",
    "unsupported",
]

ENV_SWITCH = "S3EXCHANGE_FAST_GET"

# headers botocore may put on a plain GetObject that this module reproduces or may drop
_SIGNED_OK = frozenset(
    {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "x-amz-checksum-mode"}
)
_UNSIGNED_OK = frozenset(
    {"user-agent", "authorization", "amz-sdk-invocation-id", "amz-sdk-request", "expect"}
)


class _Probed(Exception):
    """Stops the probe request in ``before-send``, carrying what botocore would have sent."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(url)
        self.url = url
        self.headers = headers


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how a bucket's GETs go, as botocore resolved it."""

    scheme: str
    netloc: str
    host: str
    port: int
    prefix: str  # URL path up to the key, e.g. "/bucket/" or "/"
    region: str
    service: str
    user_agent: str
    checksum_mode: bool
    max_attempts: int | None  # from the probe's amz-sdk-request header


class Unsupported(Exception):
    """The client's configuration needs botocore's own request path."""


def unsupported(client: S3Client) -> str | None:
    """Why the fast path cannot stand in for ``client``, or None."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV_SWITCH} is off"
    config: Any = client.meta.config
    if config.proxies:
        return "proxies are configured"
    from botocore.utils import get_environ_proxies

    scheme = urlsplit(client.meta.endpoint_url).scheme
    if get_environ_proxies(client.meta.endpoint_url).get(scheme):
        return "a proxy is set in the environment"
    if config.client_cert:
        return "a client certificate is configured"
    mode = (config.retries or {}).get("mode") or "legacy"
    if mode not in ("legacy", "standard"):
        return f"retry mode {mode!r}"
    foreign = _foreign_handlers(client)
    if foreign:
        return f"event handlers from outside botocore: {', '.join(sorted(foreign))}"
    return None


_HOOKED_EVENTS = (
    "provide-client-params.s3.GetObject",
    "before-parameter-build.s3.GetObject",
    "before-call.s3.GetObject",
    "request-created.s3.GetObject",
    "choose-signer.s3.GetObject",
    "before-sign.s3.GetObject",
    "before-send.s3.GetObject",
    "needs-retry.s3.GetObject",
    "after-call.s3.GetObject",
    "after-call-error.s3.GetObject",
)


def _foreign_handlers(client: S3Client) -> set[str]:
    """Modules of handlers on GetObject's events that neither botocore nor boto3 registered
    (a user's header injector, botocore's Stubber, moto's in-process mock)."""
    emitter = getattr(client.meta.events, "_emitter", None)
    handlers = getattr(emitter, "_handlers", None)
    if handlers is None or not hasattr(handlers, "prefix_search"):
        return {"<unknown event system>"}
    foreign: set[str] = set()
    for event in _HOOKED_EVENTS:
        for handler in handlers.prefix_search(event):
            module = getattr(handler, "__module__", None) or type(handler).__module__
            ours = module.startswith(("botocore.", "boto3.", "s3transfer."))
            if not ours or module == "botocore.stub":  # a Stubber answers in-process
                foreign.add(module)
    return foreign


def probe(client: S3Client, bucket: str) -> Target:
    """Run a GetObject for a made-up key through botocore and stop it just before it is sent."""
    probe_key = f"s3exchange-probe-{uuid.uuid4().hex}"
    event = "before-send.s3.GetObject"
    unique = f"s3exchange-fastget-{probe_key}"

    def capture(request: Any, **_: Any) -> None:
        if urlsplit(request.url).path.endswith("/" + probe_key):
            headers = {
                str(name): value.decode("latin-1") if isinstance(value, bytes) else str(value)
                for name, value in request.headers.items()
            }
            raise _Probed(request.url, headers)

    client.meta.events.register_first(event, capture, unique_id=unique)
    try:
        client.get_object(Bucket=bucket, Key=probe_key)
    except _Probed as probed:
        return _target(probed, probe_key)
    except Exception as exc:
        raise Unsupported(f"the probe request failed: {exc!r}") from exc
    finally:
        client.meta.events.unregister(event, capture, unique_id=unique)
    raise Unsupported("the probe request was not sent")


def _target(probed: _Probed, probe_key: str) -> Target:
    url = urlsplit(probed.url)
    if url.query or url.fragment or url.scheme not in ("http", "https") or not url.hostname:
        raise Unsupported(f"unexpected request URL shape {url.scheme}://{url.netloc}")
    headers = {name.lower(): value for name, value in probed.headers.items()}
    auth = headers.get("authorization", "")
    prefix = "AWS4-HMAC-SHA256 Credential="
    if not auth.startswith(prefix):
        raise Unsupported(f"signature {auth.split(' ', 1)[0] or 'none'!r}")
    credential, _, rest = auth[len(prefix) :].partition(", SignedHeaders=")
    signed_names, _, _ = rest.partition(", Signature=")
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise Unsupported("unexpected credential scope")
    signed = set(signed_names.split(";"))
    extra = (signed - _SIGNED_OK) | (set(headers) - _SIGNED_OK - _UNSIGNED_OK)
    if extra:
        raise Unsupported(f"request headers it does not reproduce: {sorted(extra)}")
    max_attempts: int | None = None
    for field in headers.get("amz-sdk-request", "").split(";"):
        name, _, value = field.strip().partition("=")
        if name == "max" and value.isdigit():
            max_attempts = int(value)
    return Target(
        scheme=url.scheme,
        netloc=url.netloc,
        host=url.hostname,
        port=url.port or (443 if url.scheme == "https" else 80),
        prefix=url.path[: -len(probe_key)],
        region=scope[2],
        service=scope[3],
        user_agent=headers.get("user-agent", "s3exchange"),
        checksum_mode=headers.get("x-amz-checksum-mode", "").upper() == "ENABLED",
        max_attempts=max_attempts,
    )


def tls_context(client: S3Client) -> ssl.SSLContext:
    """An SSL context that verifies as the client's HTTP session does (``verify=``)."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if session is None or not hasattr(session, "_verify"):
        raise Unsupported("cannot see the client's TLS verification setting")
    verify = session._verify
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        if os.path.isdir(verify):
            return ssl.create_default_context(capath=verify)
        return ssl.create_default_context(cafile=verify)
    from botocore.httpsession import DEFAULT_CA_BUNDLE

    return ssl.create_default_context(cafile=DEFAULT_CA_BUNDLE)


def botocore_checksums(client: S3Client) -> dict[str, Callable[[], Any]]:
    """Response checksums botocore checks for GetObject here, in its order of preference."""
    try:
        from botocore import httpchecksum

        private = vars(httpchecksum)
        classes: dict[str, Callable[[], Any]] = dict(private["_CHECKSUM_CLS"])
        order: list[str] = list(private["_ALGORITHMS_PRIORITY_LIST"])
        model = client.meta.service_model.operation_model("GetObject")
        allowed = {name.lower() for name in model.http_checksum.get("responseAlgorithms", [])}
    except (ImportError, AttributeError, KeyError) as exc:
        raise Unsupported("cannot see botocore's response checksums") from exc
    return {name: classes[name] for name in order if name in classes and name in allowed}
