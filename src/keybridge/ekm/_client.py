"""A client that calls an EKM proxy the way Managed HSM does: POST JSON over mutual TLS."""

from __future__ import annotations

import http.client
import json
import ssl
import uuid
from typing import Any
from urllib.parse import urlsplit

from ..errors import KeybridgeError
from ._wire import API_VERSION, b64u, unb64u

__all__ = ["Client", "EkmError"]


class EkmError(KeybridgeError):
    """The proxy answered with an error status; ``status`` and ``code`` are what it sent."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"EKM proxy answered {status} {code}: {message}")
        self.status = status
        self.code = code


class Client:
    """Calls one EKM proxy at ``url`` (``https://host:port[/prefix]``) with a client certificate."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: str,
        cert_file: str,
        key_file: str,
        pool_name: str = "keybridge",
        timeout: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self._pool = pool_name
        self._timeout = timeout
        self._ctx = ssl.create_default_context(cafile=ca_file)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self._ctx.load_cert_chain(cert_file, key_file)

    def __repr__(self) -> str:
        return f"Client(https://{self._host}:{self._port}{self._prefix})"

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` (plus a fresh ``request_context``) to ``path``; return the JSON answer."""
        payload = dict(body or {})
        payload["request_context"] = {
            "request_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
            "pool_name": self._pool,
        }
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._ctx, timeout=self._timeout)
        try:
            conn.request(
                "POST",
                f"{self._prefix}{path}?api-version={API_VERSION}",
                json.dumps(payload),
                {"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            answer = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status != 200:
            raise EkmError(resp.status, str(answer.get("code")), str(answer.get("message")))
        return dict(answer)

    def info(self) -> dict[str, Any]:
        """``/info``: the proxy's vendor, product and highest API version."""
        return self.call("/info")

    def metadata(self, key: str) -> dict[str, Any]:
        """``/{key}/metadata``: key type, size, allowed operations (and ``n``/``e`` for RSA)."""
        return self.call(f"/{key}/metadata")

    def wrap_key(self, key: str, alg: str, value: bytes) -> bytes:
        """``/{key}/wrapkey``: wrap ``value`` under the external key."""
        return unb64u(self.call(f"/{key}/wrapkey", {"alg": alg, "value": b64u(value)}).get("value"), "value")

    def unwrap_key(self, key: str, alg: str, value: bytes) -> bytes:
        """``/{key}/unwrapkey``: unwrap ``value`` with the external key."""
        return unb64u(self.call(f"/{key}/unwrapkey", {"alg": alg, "value": b64u(value)}).get("value"), "value")
