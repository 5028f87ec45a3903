"""AWS Signature Version 4 verification for the XKS proxy (standard library only).

AWS KMS signs every XKS call with SigV4 (service ``kms-xks-proxy``, the KMS region) using an access
key id and secret the proxy operator configured on both sides. The canonical request is rebuilt the
way AWS's signers build it (botocore ``SigV4Auth``), then compared in constant time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import parse_qsl, quote

__all__ = ["Headers", "SigV4Error", "verify"]

_ALGORITHM = "AWS4-HMAC-SHA256"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*SignedHeaders=(?P<sh>[^,\s]+)\s*,\s*"
    r"Signature=(?P<sig>[0-9a-f]{64})$"
)
_SPACES = re.compile(r"\s+")


class Headers(Protocol):
    """Case-insensitive header lookup, as ``http.client.HTTPMessage`` offers."""

    def get(self, name: str) -> str | None: ...


class SigV4Error(Exception):
    """A request whose SigV4 signature is missing, malformed, stale or wrong (the message says which,
    and never includes the secret or the expected signature)."""


def verify(
    method: str,
    raw_path: str,
    headers: Headers,
    body: bytes,
    *,
    credentials: Mapping[str, str],
    region: str,
    service: str,
    now: _dt.datetime | None = None,
    max_skew: float = 300.0,
) -> str:
    """Check one request's SigV4 ``Authorization`` header; return the access key id that signed it.

    ``credentials`` maps access key id to secret (two entries during a rotation). Raises :class:`SigV4Error`.
    """
    m = _AUTH.match((headers.get("Authorization") or "").strip())
    if m is None:
        raise SigV4Error("missing or malformed SigV4 Authorization header (AWS4-HMAC-SHA256 expected)")
    parts = m["cred"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SigV4Error("malformed SigV4 credential scope")
    akid, day, cred_region, cred_service, _ = parts
    if cred_service != service or cred_region != region:
        raise SigV4Error(f"request signed for {cred_service}/{cred_region}, this proxy is {service}/{region}")
    secret = credentials.get(akid)
    if secret is None:
        raise SigV4Error("unknown SigV4 access key id")
    amz_date = headers.get("X-Amz-Date") or ""
    try:
        when = _dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        raise SigV4Error("missing or malformed X-Amz-Date header (YYYYMMDDTHHMMSSZ expected)") from None
    if day != amz_date[:8]:
        raise SigV4Error("credential scope date does not match X-Amz-Date")
    skew = abs(((now or _dt.datetime.now(_dt.timezone.utc)) - when).total_seconds())
    if skew > max_skew:
        raise SigV4Error(f"request time is {skew:.0f} s off this proxy's clock (at most {max_skew:.0f} s allowed)")
    signed = m["sh"].split(";")
    if not {"host", "x-amz-date"} <= set(signed) or signed != sorted(signed):
        raise SigV4Error("SignedHeaders must be sorted and include host and x-amz-date")
    payload_hash = hashlib.sha256(body).hexdigest()
    claimed = headers.get("X-Amz-Content-Sha256")
    if claimed is not None and claimed != payload_hash:
        raise SigV4Error("X-Amz-Content-Sha256 does not match the body (unsigned payloads are refused)")
    canonical = "\n".join(
        [
            method,
            _canonical_uri(raw_path),
            _canonical_query(raw_path),
            "".join(f"{h}:{_header_value(headers, h)}\n" for h in signed),
            m["sh"],
            payload_hash,
        ]
    )
    scope = "/".join(parts[1:])
    to_sign = f"{_ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m["sig"]):
        raise SigV4Error("SigV4 signature does not match (wrong secret, or the request was altered)")
    return akid


def _header_value(headers: Headers, name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise SigV4Error(f"signed header {name!r} is missing from the request")
    return _SPACES.sub(" ", value.strip())


def _canonical_uri(raw_path: str) -> str:
    # Non-S3 services encode the already-encoded path once more, as botocore does.
    return quote(raw_path.partition("?")[0] or "/", safe="/~")


def _canonical_query(raw_path: str) -> str:
    pairs = parse_qsl(raw_path.partition("?")[2], keep_blank_values=True)
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(pairs))
