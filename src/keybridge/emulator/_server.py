"""HTTPS transport: a threading HTTP/1.1 server behind TLS, with faults, auth and size limits.

The TLS handshake runs in each connection's worker thread (not in the accept loop), so a client
that connects and stalls cannot block others; a socket timeout bounds every read. The server keeps
track of its open connections so that :meth:`EmulatorServer.close_connections` can end keep-alive
connections too: otherwise their worker threads would go on answering old clients after a stop.

Slow clients are bounded twice. Each request (TLS handshake, headers and body) must arrive within
``request_timeout`` seconds of the connection opening or of its first byte, whatever the pace: the
socket timeout alone lets a client trickle a byte every few seconds forever. And at most
``max_connections`` connections (one thread each) are open: a new one beyond that evicts the
connection that has waited longest for its request or, if every worker is answering a request,
gets a 503 from one of a few short-lived threads. Both checks run in the accept loop.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from ._audit import AuditLog
from ._auth import challenge, token_ok
from ._errors import ApiError, bad
from ._faults import FaultInjector
from ._rbac import Rbac, required_action
from ._routes import Router

__all__ = ["MAX_BODY", "MAX_CONNECTIONS", "REQUEST_TIMEOUT", "EmulatorServer"]

log = logging.getLogger("keybridge.emulator")
MAX_BODY = 1024 * 1024
_MAX_DRAIN = 16 * MAX_BODY
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
_IDLE_TIMEOUT = 30  # a keep-alive connection may wait this long for its next request's first byte
_REFUSERS = 4  # threads that may answer 503 to connections beyond max_connections at one time
_REFUSE_TIMEOUT = 2.0
_BUSY_BODY = json.dumps(
    ApiError(503, "ServiceUnavailable", "the emulator is answering as many requests as it allows; retry").body()
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(_BUSY_BODY)
) + _BUSY_BODY
_LOCAL_HOST = re.compile(r"(?:127\.0\.0\.1|localhost|[A-Za-z0-9-]+\.localhost):\d{1,5}")
_THROTTLE = {
    429: "Throttled",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass
class _Conn:
    """One open connection: its worker, and what it is doing since when (monotonic seconds)."""

    worker: threading.Thread
    state: str = "reading"  # "reading" a request (handshake included), "busy" answering, "idle"
    since: float = field(default_factory=time.monotonic)
    cut: bool = False  # its socket was shut down; the worker is on its way out


class EmulatorServer(ThreadingHTTPServer):
    """The listening server; holds the router, the accepted token, the fault injector and the
    connection limits (see the module docstring)."""

    daemon_threads = True
    block_on_close = False  # close_connections() ends and joins the workers instead
    request_queue_size = 128  # a burst of connects waits in the backlog instead of SYN retries

    def __init__(
        self,
        ctx: ssl.SSLContext,
        port: int,
        router: Router,
        token: str | None,
        faults: FaultInjector | None,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.socket = ctx.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.router = router
        self.token = token
        self.faults = faults
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.rbac: Rbac | None = None  # set by the emulator; None: any accepted token may do anything
        self.audit: AuditLog | None = None  # set by the emulator when asked for an audit log
        self.vault_url = f"https://127.0.0.1:{self.server_address[1]}"
        self._open: dict[Any, _Conn] = {}  # connection -> its worker and state
        self._refusers = threading.BoundedSemaphore(_REFUSERS)
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        # Runs in the accept loop, so once shutdown() has returned every connection is recorded.
        with self._open_lock:
            full = len(self._open) >= self.max_connections
            waiting = [(c.since, id(s), s, c) for s, c in self._open.items() if c.state != "busy" and not c.cut]
        if full:
            if not waiting:  # every worker is answering a request: this client must come back later
                log.debug("refused a connection from %s: %d busy", client_address, self.max_connections)
                self._refuse(request)
                return
            _, _, sock, victim = min(waiting)
            self._cut(sock, victim)
            victim.worker.join(1.0)  # its blocked read returns at once; keeps the thread count bounded
        worker = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), name="keybridge-emulator-conn"
        )
        worker.daemon = True
        with self._open_lock:
            self._open[request] = _Conn(worker)
        worker.start()

    def _refuse(self, request: Any) -> None:
        """Answer 503 with ``Retry-After`` from a short-lived thread (at most :data:`_REFUSERS` at
        once, each bounded by :data:`_REFUSE_TIMEOUT`), or beyond that just close."""
        if not self._refusers.acquire(blocking=False):
            self.shutdown_request(request)
            return

        def answer() -> None:
            try:
                request.settimeout(_REFUSE_TIMEOUT)
                request.do_handshake()
                # Read what the client sent first: closing on unread data would reset the
                # connection, and the client might lose the answer before reading it.
                with contextlib.suppress(OSError):
                    request.recv(65536)
                request.sendall(_BUSY)
            except OSError:
                log.debug("a refused client went away before its 503", exc_info=True)
            finally:
                self.shutdown_request(request)
                self._refusers.release()

        threading.Thread(target=answer, name="keybridge-emulator-refuse", daemon=True).start()

    def service_actions(self) -> None:
        # Called by serve_forever between polls (every poll_interval): the request deadline.
        now = time.monotonic()
        with self._open_lock:
            late = [(s, c) for s, c in self._open.items() if c.state == "reading" and not c.cut]
        for sock, conn in late:
            if now - conn.since > self.request_timeout:
                log.debug("cut a connection whose request took over %ss", self.request_timeout)
                self._cut(sock, conn)

    def set_state(self, request: Any, state: str) -> None:
        """Record what the worker of ``request`` does now; a new "reading" restarts its deadline."""
        with self._open_lock:
            conn = self._open.get(request)
            if conn is not None:
                conn.state, conn.since = state, time.monotonic()

    def _cut(self, sock: Any, conn: _Conn) -> None:
        # The plain socket's shutdown, not SSLSocket's, which would drop the TLS state under the
        # worker still using it; the worker closes the socket itself. OSError: the worker or the
        # peer closed it already.
        conn.cut = True
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float = 10.0) -> None:
        """End every open connection, keep-alive ones included, and wait up to ``timeout``
        seconds for their workers (call after :meth:`shutdown`). A worker waiting for the next
        request sees end-of-stream; a client that sends one gets a reset or closed connection."""
        with self._open_lock:
            open_now = list(self._open.items())
        for sock, conn in open_now:
            self._cut(sock, conn)
        deadline = time.monotonic() + timeout
        for _, conn in open_now:
            conn.worker.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS failures (plain-HTTP clients, untrusted CAs) and dropped peers are the client's problem.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keybridge-emulator"
    timeout = _IDLE_TIMEOUT
    server: EmulatorServer
    _served = False
    _started: float | None = None  # when _dispatch began the current request (for audit durationMs)

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.do_handshake()

    def handle_one_request(self) -> None:
        if self._served:
            # Keep-alive: the deadline of the next request starts with its first byte, so an idle
            # client is bounded by the socket timeout alone (and may be evicted when all are taken).
            try:
                if not cast(io.BufferedReader, self.rfile).peek(1):
                    self.close_connection = True
                    return
            except OSError:  # the timeout, or the connection was cut
                self.close_connection = True
                return
            self.server.set_state(self.request, "reading")
        super().handle_one_request()
        self._served = True
        self.server.set_state(self.request, "idle")

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        if self.server.audit is not None:  # before the answer, so a client that has it finds the record
            self.server.audit.record(
                method=self.command, target=self.path, headers=self.headers, base=self._base(),
                caller=self.client_address[0], status=status, body=body, started=self._started,
            )  # fmt: skip
        self.send_response(status)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of its body but never the body
            self.wfile.write(data)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise bad("chunked request bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise bad("Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY:
            # Drain a moderately oversized body so the client (which sends it all before reading)
            # sees the answer; beyond that, stop reading. Either way this connection is finished.
            self.close_connection = True
            remaining = length if 0 < length <= _MAX_DRAIN else 0
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    break
                remaining -= len(chunk)
            raise bad(f"the request body is {length} bytes; the limit is {MAX_BODY}")
        body = self.rfile.read(length) if length else b""
        self.server.set_state(self.request, "busy")  # the whole request is in: no deadline now
        return body

    def _base(self) -> str:
        host = self.headers.get("Host", "")
        return f"https://{host}" if _LOCAL_HOST.fullmatch(host) else self.server.vault_url

    def _dispatch(self) -> None:
        self._started = time.monotonic()
        try:
            raw = self._read_body()  # first, so the request deadline never includes injected latency
            if self._fault():
                return
            # with RBAC on, _authorized authenticates each principal's own token instead
            if self.server.rbac is None and not token_ok(self.headers.get("Authorization"), self.server.token):
                raise ApiError(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/")[1:]]
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            self._send(*self._authorized(parts, query, _json(raw)))  # (status, body[, headers])
        except ApiError as exc:
            headers = dict(exc.headers)
            if exc.status == 401:
                headers["WWW-Authenticate"] = challenge(self.headers.get("Host", ""))
            self._send(exc.status, exc.body(), headers)
        except Exception:
            log.exception("emulator failed on %s %s", self.command, urlsplit(self.path).path)
            self._send(500, ApiError(500, "InternalError", "the emulator hit an internal error").body())

    def _authorized(self, parts: list[str], query: dict[str, str], body: dict[str, Any]) -> tuple[Any, ...]:
        rbac = self.server.rbac
        if rbac is None:
            return self.server.router.handle(self.command, parts, query, body, self._base())
        header = self.headers.get("Authorization")
        if self.server.token is not None:
            principal = rbac.principal(header)
        else:  # any bearer token is the first principal, but a missing one still gets the challenge
            principal = rbac.default_principal if token_ok(header, None) else None
        if principal is None:
            raise ApiError(401, "Unauthorized", "AKV10000: the bearer token is not one this emulator issued.")
        if "providers" in parts:
            return rbac.handle(self.command, parts, principal, body)
        need = required_action(self.command, parts)
        if need is not None:
            rbac.check(principal, *need)
        return self.server.router.handle(self.command, parts, query, body, self._base())

    def _fault(self) -> bool:
        injector = self.server.faults
        if injector is None:
            return False
        if injector.faults.latency:
            time.sleep(injector.faults.latency)
        decision = injector.decide()
        if decision.drop:
            self.close_connection = True
            return True
        if decision.status is not None:
            err = ApiError(decision.status, _THROTTLE[decision.status], "injected fault: try again")
            self._send(decision.status, err.body(), {"Retry-After": str(injector.faults.retry_after)})
            return True
        return False

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler answers a method without a do_<METHOD> with a 501 HTML page; the
        # router answers every method instead (405 JSON with Allow on a known path, else 404).
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)


def _json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("the request body is not valid JSON") from None
    except RecursionError:  # the decoder recurses per nesting level
        raise bad("the request body nests JSON too deeply; send a flat JSON object") from None
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    return body
