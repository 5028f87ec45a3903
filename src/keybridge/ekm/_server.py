"""The EKM proxy server: Managed HSM's external key API over TLS 1.3 mutual TLS.

Only keys listed in ``keys`` are reachable, each with its own allowed operations; a client whose
certificate CN is not allow-listed gets 401 before its body is read or any key is touched.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import re
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from .. import audit
from ..errors import (
    InvalidArgument,
    KeybridgeError,
    KeyDisabled,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)
from ..provider import KeyProvider
from ._wire import API_VERSION, PROVIDER_ALG, b64u, unb64u

__all__ = ["ClientRule", "EkmServer", "ExportedKey", "peer_cn", "within"]

logger = logging.getLogger("keybridge.ekm")
_PATH = re.compile(
    r"^(?P<prefix>(/[A-Za-z0-9-]+)*)/(?:(?P<key>[A-Za-z0-9-]{1,64})/(?P<op>metadata|wrapkey|unwrapkey)|info)$"
)
_OPS = {"wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
_T = TypeVar("_T")


@dataclass(frozen=True)
class ExportedKey:
    """One external key id served from provider key ``ref`` for the listed EKM operations."""

    key_id: str
    ref: str
    ops: frozenset[str] = frozenset({"wrapKey", "unwrapKey"})


@dataclass(frozen=True)
class ClientRule:
    """An allowed client: its certificate subject CN (the root CA is the server's ``client_ca_file``)."""

    common_name: str


class _Fail(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Listening:
    """The TLS listener both front ends share: a thread per connection, a small pool for HSM
    calls (so a deadline can be kept), ``url`` and ``close``."""

    host: str
    prefix: str
    closed: bool

    def _listen(self, ctx: ssl.SSLContext, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.closed, self.host = False, host
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
        try:
            self._httpd = _Httpd((host, port), handler)
        except OSError as exc:
            self._pool.shutdown(wait=False)
            raise ProviderUnavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._httpd.daemon_threads = True
        # The handshake then runs in each connection's thread, so a stalled client blocks only itself.
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The base URL clients call, prefix included."""
        return f"https://{self.host}:{self._httpd.server_address[1]}{self.prefix}"

    def close(self) -> None:
        """Stop serving; open keep-alive connections get no further answers."""
        self.closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._pool.shutdown(wait=False)


class EkmServer(_Listening):
    """Serves ``keys`` from ``provider`` on 127.0.0.1:``port`` (0 picks one) until :meth:`close`."""

    def __init__(
        self,
        provider: KeyProvider,
        keys: list[ExportedKey],
        *,
        cert_file: str,
        key_file: str,
        client_ca_file: str,
        clients: list[ClientRule],
        prefix: str = "",
        port: int = 0,
        host: str = "127.0.0.1",
        deadline: float = 0.25,
        max_body: int = 16384,
    ) -> None:
        self.provider, self.prefix, self.deadline, self.max_body = provider, prefix.rstrip("/"), deadline, max_body
        self.keys = {k.key_id: k for k in keys}
        self.allowed = {c.common_name for c in clients}
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        _load(ctx.load_cert_chain, "server certificate/key", cert_file, key_file)
        _load(ctx.load_verify_locations, "client root CA", client_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a missing certificate gets the spec's 401, not a TLS alert
        self._listen(ctx, host, port, _handler(self))

    def handle(self, cn: str | None, path: str, body: bytes) -> dict[str, Any]:
        """Answer one request; raises :class:`_Fail` with the spec's status and code."""
        if cn not in self.allowed:
            raise _Fail(401, "Unauthorized", "client certificate missing or its subject CN is not allow-listed")
        route, _, query = path.partition("?")
        if f"api-version={API_VERSION}" not in query.split("&"):
            raise _Fail(400, "BadRequest", f"api-version must be {API_VERSION}")
        m = _PATH.match(route)
        if m is None or m["prefix"] != self.prefix:
            raise _Fail(
                404, "KeyNotFound", "no such route; use [prefix]/info or [prefix]/{key}/{metadata|wrapkey|unwrapkey}"
            )
        try:
            req = json.loads(body)
        except ValueError:
            raise _Fail(400, "BadRequest", "request body is not JSON") from None
        if not isinstance(req, dict) or not isinstance(req.get("request_context"), dict):
            raise _Fail(400, "BadRequest", "request body must be a JSON object with a request_context")
        logger.info(
            "ekm %s cn=%s request_context=%s", route, cn, {k: str(v) for k, v in req["request_context"].items()}
        )
        if m["key"] is None:
            return {
                "api_version": API_VERSION,
                "proxy_vendor": "keybridge",
                "proxy_name": "keybridge-ekm",
                "ekm_vendor": "keybridge",
                "ekm_product": type(self.provider).__name__,
            }
        key = self.keys.get(m["key"])
        if key is None:
            raise _Fail(404, "KeyNotFound", f"external key {m['key']!r} is not exported by this proxy")
        try:
            return within(self._pool, lambda: self._correlated_operate(key, m["op"], req), self.deadline)
        except concurrent.futures.TimeoutError:
            raise _Fail(408, "RequestTimeout", f"the HSM did not answer within {self.deadline * 1000:.0f} ms") from None

    def _correlated_operate(self, key: ExportedKey, op: str, req: dict[str, Any]) -> dict[str, Any]:
        # In the pool's thread: the audit events of the HSM calls carry Managed HSM's request id.
        ctx = req["request_context"]
        with audit.correlated(ctx.get("request_id") or ctx.get("correlation_id")):
            return self._operate(key, op, req)

    def _operate(self, key: ExportedKey, op: str, req: dict[str, Any]) -> dict[str, Any]:
        if op == "metadata":
            info = self._call(lambda: self.provider.get_key(key.ref))
            if not info.enabled:
                raise _Fail(403, "KeyDisabled", "the key is disabled in the HSM")
            out: dict[str, Any] = {
                "key_type": str(info.spec.kty),
                "key_size": info.spec.size,
                "key_ops": sorted(key.ops),
            }
            if isinstance(info.public_key, rsa.RSAPublicKey):
                nums = info.public_key.public_numbers()
                out["n"] = b64u(nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big"))
                out["e"] = b64u(nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big"))
            return out
        if _OPS[op] not in key.ops:
            raise _Fail(403, "Forbidden", f"operation {_OPS[op]} is not allowed on this key")
        alg = PROVIDER_ALG.get(str(req.get("alg")))
        if alg is None:
            raise _Fail(400, "BadRequest", f"alg must be one of {', '.join(PROVIDER_ALG)}")
        value = self._call(lambda: unb64u(req.get("value"), "value"))
        # No get_key first: the provider checks the enabled flag itself, and a second lookup per
        # call would double the HSM round trips on the hot path.
        fn = self.provider.wrap_key if op == "wrapkey" else self.provider.unwrap_key
        return {"value": b64u(self._call(lambda: fn(key.ref, alg, value)))}

    @staticmethod
    def _call(fn: Callable[[], _T]) -> _T:
        """Run a provider call, turning its errors into the spec's statuses and codes."""
        try:
            return fn()
        except (InvalidArgument, UnsupportedAlgorithm) as exc:
            raise _Fail(400, "BadRequest", str(exc)) from None
        except KeyNotFound:
            raise _Fail(404, "KeyNotFound", "the exported key is missing from the HSM") from None
        except KeyDisabled:
            raise _Fail(403, "KeyDisabled", "the key is disabled in the HSM") from None
        except OperationNotPermitted as exc:
            raise _Fail(403, "Forbidden", str(exc)) from None
        except KeybridgeError as exc:
            raise _Fail(400, "BadRequest", f"{type(exc).__name__}: {exc}") from None


class _Httpd(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A refused client certificate ends in a TLS alert, not a request: log it (the EKM logging
        # guidance asks for rejected clients) instead of printing a traceback to stderr.
        exc = sys.exc_info()[1]
        logger.warning("ekm connection from %s failed: %s: %s", client_address[0], type(exc).__name__, exc)


def within(pool: concurrent.futures.Executor, fn: Callable[[], _T], deadline: float) -> _T:
    """Run ``fn`` on ``pool``; raise :class:`concurrent.futures.TimeoutError` past ``deadline`` s.

    Both front ends (EKM and XKS) answer a timeout in their own words but must never hold a
    caller past its budget; a late HSM result is dropped.
    """
    return pool.submit(fn).result(timeout=deadline)


def peer_cn(connection: Any) -> str | None:
    """The subject CN of the TLS peer's (already verified) certificate, or None without one."""
    cert = connection.getpeercert()
    return next((v for rdn in (cert or {}).get("subject", ()) for k, v in rdn if k == "commonName"), None)


# After the 400 for an oversize body, what the client still sends is read and dropped (up to this
# many bytes, for at most LINGER_SECONDS): a client still writing its body would otherwise hit
# the closed connection (SSLEOFError) instead of reading the answer. The answer goes first, so a
# client that declared a length and sends nothing gets it at once. Anything larger is cut off.
DRAIN_LIMIT = 16 << 20
LINGER_SECONDS = 2.0


def linger(handler: BaseHTTPRequestHandler, length: int) -> None:
    """Read and drop up to ``length`` more body bytes after an answer that closes the connection."""
    if not 0 < length <= DRAIN_LIMIT:
        return
    with contextlib.suppress(OSError, ValueError):  # a timeout, or the client went away: done
        handler.connection.settimeout(LINGER_SECONDS)
        while length > 0 and (chunk := handler.rfile.read(min(length, 1 << 16))):
            length -= len(chunk)


def send_json(handler: BaseHTTPRequestHandler, status: int, answer: dict[str, Any]) -> None:
    """One JSON answer, with ``Connection: close`` when the handler is closing the connection."""
    data = json.dumps(answer).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    if handler.close_connection:
        handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(data)


def _load(fn: Callable[..., None], what: str, *paths: str) -> None:
    try:
        fn(*paths)
    except (OSError, ssl.SSLError) as exc:
        # ssl's own messages ("[SSL] PEM lib") say nothing about which file or what to do.
        raise InvalidArgument(
            f"cannot load the {what} from {', '.join(paths)} ({type(exc).__name__}): give readable PEM files"
        ) from None


def _handler(server: EkmServer) -> type[BaseHTTPRequestHandler]:
    class EkmHandler(BaseHTTPRequestHandler):
        # HTTP/1.1 keeps the TLS connection open between calls, as Managed HSM's client does;
        # a fresh TLS 1.3 handshake per call would cost more than the HSM operation itself.
        protocol_version = "HTTP/1.1"
        timeout = 60  # seconds an idle keep-alive connection may hold its thread
        # Headers and body go out in two writes; with Nagle on, the body waits for the client's
        # delayed ACK (40 ms on Linux) on every kept-alive call.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return None  # request lines go through the keybridge.ekm logger instead

        def do_POST(self) -> None:
            if server.closed:  # a keep-alive connection outlived close(): answer nothing more
                self.close_connection = True
                return
            status, answer, body_read, oversize = 200, {}, False, 0
            try:
                cn = peer_cn(self.connection)
                if cn not in server.allowed:
                    raise _Fail(401, "Unauthorized", "client certificate missing or its subject CN is not allow-listed")
                length = int(self.headers.get("Content-Length") or 0)
                if length > server.max_body or length < 0:
                    oversize = length
                    raise _Fail(400, "BadRequest", f"request body over {server.max_body} bytes")
                body, body_read = self.rfile.read(length), True
                answer = server.handle(cn, self.path, body)
            except _Fail as f:
                status, answer = f.status, {"code": f.code, "message": f.message}
            except ValueError:
                status, answer = 400, {"code": "BadRequest", "message": "bad Content-Length"}
            # An unread body (401, oversize) would be parsed as the next request: close instead.
            self.close_connection = self.close_connection or not body_read
            send_json(self, status, answer)
            linger(self, oversize)

    return EkmHandler
