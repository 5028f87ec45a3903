"""A client that calls an EKM proxy the way Managed HSM does: POST JSON over mutual TLS."""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidArgument, KeybridgeError, ProviderUnavailable
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
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidArgument(f"the EKM proxy URL must be https://HOST[:PORT][/prefix], got {url!r}")
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self._pool = pool_name
        self._timeout = timeout
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts ca_file only, checks the host name
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        _load(lambda: self._ctx.load_verify_locations(ca_file), "proxy root CA", ca_file)
        _load(
            lambda: self._ctx.load_cert_chain(cert_file, key_file), "client certificate/key", f"{cert_file}, {key_file}"
        )
        self._lock = threading.Lock()
        self._conn: http.client.HTTPSConnection | None = None

    def __repr__(self) -> str:
        return f"Client(https://{self._host}:{self._port}{self._prefix})"

    def close(self) -> None:
        """Close the kept-alive connection (the next call opens a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` (plus a fresh ``request_context``) to ``path``; return the JSON answer.

        One TLS connection is kept open and reused, as Managed HSM does; if the proxy closed it
        while idle, the call is sent once more on a new one (EKM calls change no state)."""
        payload = dict(body or {})
        payload["request_context"] = {
            "request_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
            "pool_name": self._pool,
        }
        data = json.dumps(payload)
        with self._lock:
            try:
                status, raw = self._post(f"{self._prefix}{path}?api-version={API_VERSION}", data)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise ProviderUnavailable(f"cannot reach the EKM proxy at {self!r}: {_reason(exc)}") from None
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ProviderUnavailable(f"the EKM proxy at {self!r} answered {status} with a body that is not JSON")
        if status != 200:
            raise EkmError(status, str(answer.get("code")), str(answer.get("message")))
        return answer

    def _post(self, target: str, data: str) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, context=self._ctx, timeout=self._timeout
                )
            try:
                self._conn.request("POST", target, data, headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop()
                if reused and attempt == 0:
                    continue
                raise
            if resp.will_close:
                self._drop()
            return resp.status, raw
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

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


def _load(fn: Callable[[], None], what: str, where: str) -> None:
    try:
        fn()
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(
            f"cannot load the {what} from {where} ({_reason(exc)}): give readable PEM files"
        ) from None


def _reason(exc: BaseException) -> str:
    """A short cause for an error line: the OS or TLS reason, never a repr of the request."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
