"""The AWS KMS External Key Store (XKS) proxy API v1 over the same key core as :class:`EkmServer`.

Every call must carry a valid SigV4 signature (service ``kms-xks-proxy``) made with one of the
configured access keys; an unsigned, stale or mis-signed call gets 401 before any key is touched.
AES-GCM runs in the backend (``A256GCM``), so key bytes never leave it; only exported key ids with
their allowed operations (``encrypt``/``decrypt``) are reachable.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

from .. import audit
from ..errors import (
    IntegrityError,
    InvalidArgument,
    KeybridgeError,
    KeyDisabled,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)
from ..keys import KeyType
from ..provider import KeyProvider
from ._server import ClientRule, ExportedKey, _Listening, _load, linger, peer_cn, send_json, within
from ._sigv4 import Headers, SigV4Error, verify

__all__ = ["SERVICE", "XksServer", "full_aad"]

SERVICE = "kms-xks-proxy"
logger = logging.getLogger("keybridge.ekm")
_PATH = re.compile(
    r"^(?P<prefix>(/[A-Za-z0-9._-]+)*)/kms/xks/v1/"
    r"(?:health|keys/(?P<key>[A-Za-z0-9._-]{1,128})/(?P<op>metadata|encrypt|decrypt))$"
)
_MAX_PLAINTEXT, _MAX_AAD, _IV, _TAG = 4300, 8192, 12, 16
_USAGE = {"encrypt": "ENCRYPT", "decrypt": "DECRYPT"}
# requestMetadata fields the spec marks REQUIRED, per route (kmsOperation values are never checked).
_REQUIRED = {
    None: ("kmsRequestId", "kmsOperation"),
    "metadata": ("kmsRequestId", "kmsOperation", "awsPrincipalArn"),
    "encrypt": ("kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn"),
    "decrypt": ("kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn"),
}
_T = TypeVar("_T")


class _XksFail(Exception):
    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.name, self.message = status, name, message


def _bad(message: str) -> _XksFail:
    return _XksFail(400, "ValidationException", message)


class XksServer(_Listening):
    """Serves ``keys`` (AES-256, ops ``encrypt``/``decrypt``) from ``provider`` as an XKS proxy.

    ``credentials`` maps SigV4 access key id to secret (give two during a rotation); ``region`` is
    the KMS region the external key store lives in; routes are under ``url`` + ``/kms/xks/v1``.
    TLS 1.2 or later with ``cert_file``/``key_file``.
    The spec's optional mTLS: with ``client_ca_file`` and ``clients``, a client certificate chaining
    to that root is required in the handshake, and its subject CN must be listed (else 401).
    """

    def __init__(
        self,
        provider: KeyProvider,
        keys: list[ExportedKey],
        *,
        cert_file: str,
        key_file: str,
        credentials: Mapping[str, str],
        region: str,
        prefix: str = "",
        port: int = 0,
        host: str = "127.0.0.1",
        deadline: float = 0.25,
        max_body: int = 32768,
        client_ca_file: str | None = None,
        clients: list[ClientRule] | None = None,
    ) -> None:
        if not credentials:
            raise InvalidArgument("give at least one SigV4 access key id and secret: XKS requires SigV4")
        if (client_ca_file is None) != (not clients):
            raise InvalidArgument("mTLS needs both client_ca_file and clients (allowed CNs), or neither")
        self.allowed = {c.common_name for c in clients or ()}
        self.provider, self.prefix, self.deadline, self.max_body = provider, prefix.rstrip("/"), deadline, max_body
        self.keys = {k.key_id: k for k in keys}
        self.credentials, self.region = dict(credentials), region
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        _load(ctx.load_cert_chain, "server certificate/key", cert_file, key_file)
        if client_ca_file is not None:
            _load(ctx.load_verify_locations, "client root CA", client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED  # the spec's negative mTLS tests expect a failed handshake
        self._listen(ctx, host, port, _handler(self))

    def handle(self, raw_path: str, headers: Headers, body: bytes) -> dict[str, Any]:
        """Answer one POST; raises :class:`_XksFail` with the spec's status and error name."""
        try:
            akid = verify(
                "POST", raw_path, headers, body, credentials=self.credentials, region=self.region, service=SERVICE
            )
        except SigV4Error as exc:
            logger.warning("xks %s refused: %s", raw_path.partition("?")[0], exc)
            raise _XksFail(401, "AuthenticationFailedException", str(exc)) from None
        m = _PATH.match(raw_path.partition("?")[0])
        if m is None or m["prefix"] != self.prefix:
            raise _XksFail(404, "InvalidUriPathException", "use {prefix}/kms/xks/v1/health or .../keys/{id}/{op}")
        try:
            req = json.loads(body)
        except ValueError:
            raise _bad("request body is not JSON") from None
        if not isinstance(req, dict) or not isinstance(req.get("requestMetadata"), dict):
            raise _bad("request body must be a JSON object with a requestMetadata object")
        md = req["requestMetadata"]
        missing = [f for f in _REQUIRED[m["op"]] if not isinstance(md.get(f), str)]
        if missing:
            raise _bad(f"requestMetadata lacks {', '.join(missing)}")
        # kmsRequestId is what AWS support correlates on; plaintext and AAD are never logged.
        logger.info(
            "xks %s akid=%s kmsRequestId=%s kmsOperation=%s kmsKeyArn=%s",
            m["op"] or "health",
            akid,
            md.get("kmsRequestId"),
            md.get("kmsOperation"),
            md.get("kmsKeyArn"),
        )
        if m["key"] is None:
            return self._health()
        key = self.keys.get(m["key"])
        if key is None:
            raise _XksFail(404, "KeyNotFoundException", f"external key {m['key']!r} is not exported by this proxy")
        op: Callable[[ExportedKey, dict[str, Any]], dict[str, Any]] = getattr(self, f"_{m['op']}")
        request_id = md.get("kmsRequestId")

        def correlated() -> dict[str, Any]:  # in the pool's thread, where the HSM calls are audited
            with audit.correlated(request_id if isinstance(request_id, str) else None):
                return op(key, req)

        return self._timed(correlated)

    def _timed(self, fn: Callable[[], _T]) -> _T:
        try:
            return within(self._pool, fn, self.deadline)
        except concurrent.futures.TimeoutError:
            msg = f"the HSM did not answer within {self.deadline * 1000:.0f} ms"
            raise _XksFail(503, "DependencyTimeoutException", msg) from None

    def _health(self) -> dict[str, Any]:
        status = "ACTIVE"
        probe = next(iter(self.keys.values()), None)
        try:
            if probe is not None:
                self._timed(lambda: self.provider.get_key(probe.ref))
        except (_XksFail, ProviderUnavailable):
            status = "UNAVAILABLE"
        except KeybridgeError:
            status = "DEGRADED"  # the backend answered, but the probe key is gone or unusable
        name = type(self.provider).__name__
        return {
            "xksProxyFleetSize": 1,
            "xksProxyVendor": "keybridge",
            "xksProxyModel": "keybridge-xks",
            "ekmVendor": "keybridge",
            "ekmFleetDetails": [{"id": "ekm-1", "model": name, "healthStatus": status}],
        }

    def _metadata(self, key: ExportedKey, req: dict[str, Any]) -> dict[str, Any]:
        info = _call(lambda: self.provider.get_key(key.ref))
        if info.spec.kty is not KeyType.OCT or info.spec.size != 256:
            raise _XksFail(400, "InvalidKeyUsageException", "the exported key is not an AES-256 key")
        usable = {str(o) for o in info.ops} & key.ops
        return {
            "keySpec": "AES_256",
            "keyUsage": sorted(_USAGE[o] for o in usable if o in _USAGE),
            "keyStatus": "ENABLED" if info.enabled else "DISABLED",
        }

    def _encrypt(self, key: ExportedKey, req: dict[str, Any]) -> dict[str, Any]:
        _allowed(key, "encrypt")
        _algorithm(req)
        plaintext = _b64(req, "plaintext", _MAX_PLAINTEXT)
        aad = _b64(req, "additionalAuthenticatedData", _MAX_AAD, optional=True)
        cdiv = req.get("ciphertextDataIntegrityValueAlgorithm")
        if cdiv not in (None, "SHA_256"):
            raise _bad("ciphertextDataIntegrityValueAlgorithm must be SHA_256")
        if cdiv:
            # The spec wants the ciphertext decrypt-verified before a CDIV vouches for it.
            _allowed(key, "decrypt", "a ciphertextDataIntegrityValue needs decrypt on the key too")
        sealed = _call(lambda: self.provider.encrypt(key.ref, "A256GCM", plaintext, aad=full_aad(aad)))
        iv, ct, tag = sealed[:_IV], sealed[_IV:-_TAG], sealed[-_TAG:]
        out = {"ciphertext": _enc(ct), "initializationVector": _enc(iv), "authenticationTag": _enc(tag)}
        if cdiv:
            if _call(lambda: self.provider.decrypt(key.ref, "A256GCM", sealed, aad=full_aad(aad))) != plaintext:
                raise _XksFail(500, "InternalException", "the HSM's ciphertext did not decrypt to the plaintext")
            out["ciphertextDataIntegrityValue"] = _enc(hashlib.sha256((aad or b"") + sealed).digest())
        return out

    def _decrypt(self, key: ExportedKey, req: dict[str, Any]) -> dict[str, Any]:
        _allowed(key, "decrypt")
        _algorithm(req)
        ct = _b64(req, "ciphertext", _MAX_PLAINTEXT)
        iv = _b64(req, "initializationVector", 16)
        tag = _b64(req, "authenticationTag", _TAG)
        aad = _b64(req, "additionalAuthenticatedData", _MAX_AAD, optional=True)
        # This proxy returns no ciphertextMetadata and 12-byte IVs, so anything else is not ours.
        if len(iv) != _IV or len(tag) != _TAG or _b64(req, "ciphertextMetadata", 20, optional=True):
            raise _XksFail(400, "InvalidCiphertextException", "IV, tag or ciphertextMetadata were not made here")
        data = iv + ct + tag
        return {"plaintext": _enc(_call(lambda: self.provider.decrypt(key.ref, "A256GCM", data, aad=full_aad(aad))))}


def full_aad(aad: bytes, ciphertext_metadata: bytes = b"") -> bytes:
    """The AAD the HSM sees: 2-byte length ‖ AAD ‖ 1-byte length ‖ ciphertextMetadata, as the spec
    recommends (and AWS's reference proxy does), so metadata can never pass for AAD or back."""
    return len(aad).to_bytes(2, "big") + aad + len(ciphertext_metadata).to_bytes(1, "big") + ciphertext_metadata


def _allowed(key: ExportedKey, op: str, why: str = "") -> None:
    if op not in key.ops:
        raise _XksFail(400, "InvalidKeyUsageException", why or f"{op} is not allowed on this key by the proxy")


def _algorithm(req: dict[str, Any]) -> None:
    if req.get("encryptionAlgorithm") != "AES_GCM":
        raise _bad("encryptionAlgorithm must be AES_GCM")


def _enc(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64(req: dict[str, Any], field: str, limit: int, *, optional: bool = False) -> bytes:
    """A standard (padded) base64 field of at most ``limit`` bytes."""
    text = req.get(field)
    if text is None and optional:
        return b""
    if not isinstance(text, str):
        raise _bad(f"field {field} must be a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"field {field} is not valid base64 (standard alphabet, with padding)") from None
    if len(data) > limit:
        raise _bad(f"field {field} is over {limit} bytes")
    return data


def _call(fn: Callable[[], _T]) -> _T:
    """Run a provider call, turning its errors into the XKS error names."""
    try:
        return fn()
    except IntegrityError:
        raise _XksFail(400, "InvalidCiphertextException", "ciphertext, IV, tag or AAD do not authenticate") from None
    except KeyNotFound:
        raise _XksFail(404, "KeyNotFoundException", "the exported key is missing from the HSM") from None
    except KeyDisabled:
        raise _XksFail(400, "InvalidStateException", "the key is disabled in the HSM") from None
    except OperationNotPermitted as exc:
        raise _XksFail(400, "InvalidKeyUsageException", str(exc)) from None
    except InvalidArgument as exc:
        raise _bad(str(exc)) from None
    except UnsupportedAlgorithm as exc:
        raise _XksFail(501, "UnsupportedOperationException", str(exc)) from None
    except ProviderUnavailable as exc:
        raise _XksFail(503, "DependencyTimeoutException", str(exc)) from None
    except KeybridgeError as exc:
        raise _XksFail(500, "InternalException", f"{type(exc).__name__}: {exc}") from None


def _handler(server: XksServer) -> type[BaseHTTPRequestHandler]:
    class XksHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # KMS keeps connections open; see EkmServer's handler
        timeout = 60
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _answer(self, status: int, answer: dict[str, Any]) -> None:
            send_json(self, status, answer)

        def _not_post(self) -> None:
            # The spec asks for 405 on anything but POST; the body is left unread, so close.
            self.close_connection = True
            self._answer(405, {"errorName": "ValidationException", "errorMessage": "XKS proxy API calls are POST"})

        do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_post

        def do_POST(self) -> None:
            if server.closed:
                self.close_connection = True
                return
            start, status, answer, body_read, oversize = time.perf_counter(), 200, {}, False, 0
            try:
                if server.allowed and peer_cn(self.connection) not in server.allowed:
                    raise _XksFail(401, "AuthenticationFailedException", "client certificate CN is not allow-listed")
                length = int(self.headers.get("Content-Length") or 0)
                if length > server.max_body or length < 0:
                    oversize = length
                    raise _bad(f"request body over {server.max_body} bytes")
                body, body_read = self.rfile.read(length), True
                answer = server.handle(self.path, self.headers, body)
            except _XksFail as f:
                status, answer = f.status, {"errorName": f.name, "errorMessage": f.message[:500]}
            except ValueError:
                status, answer = 400, {"errorName": "ValidationException", "errorMessage": "bad Content-Length"}
            logger.debug("xks answered %d in %.1f ms", status, (time.perf_counter() - start) * 1000)
            self.close_connection = self.close_connection or not body_read
            self._answer(status, answer)
            linger(self, oversize)

    return XksHandler
