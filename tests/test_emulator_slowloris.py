"""Slow and numerous clients over real sockets: a per-request deadline cuts trickling clients off,
and a bound on connections keeps the thread count flat while a normal client still gets through.

The limits are small (a 1.5 s deadline, 16 connections) and the time bounds generous, so the
tests neither take long nor fail on a loaded machine.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from keybridge import InvalidArgument
from keybridge.emulator import Faults, ManagedHsmEmulator

DEADLINE = 1.5
MAX_CONNECTIONS = 16


@pytest.fixture(scope="module")
def emulator() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator(request_timeout=DEADLINE, max_connections=MAX_CONNECTIONS) as hsm:
        yield hsm


def _workers() -> int:
    return sum(t.name == "keybridge-emulator-conn" for t in threading.enumerate())


def _closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """True if the server has closed ``sock`` (end of stream or reset) within ``wait`` seconds."""
    if not select.select([sock], [], [], wait)[0]:
        return False
    try:
        return sock.recv(1) == b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except OSError:  # a reset, or TLS's own end-of-stream error
        return True


def _tls(emulator: ManagedHsmEmulator) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=emulator.ca_file)
    sock = socket.create_connection(("127.0.0.1", emulator.port), timeout=10)
    tls = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    tls.setblocking(False)  # a TLS 1.3 session ticket makes it readable with no data for recv()
    return tls


def _normal_request(emulator: ManagedHsmEmulator) -> tuple[int, float]:
    token = emulator.credential().get_token("https://managedhsm.azure.net/.default").token
    ctx = ssl.create_default_context(cafile=emulator.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", emulator.port, context=ctx, timeout=30)
    start = time.monotonic()
    try:
        body = json.dumps({"count": 8})
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        conn.request("POST", "/rng?api-version=7.6", body=body, headers=headers)
        resp = conn.getresponse()
        assert len(json.loads(resp.read())["value"]) > 0
        return resp.status, time.monotonic() - start
    finally:
        conn.close()


def _trickle_until_cut(sock: socket.socket, limit: float) -> float:
    """Send a request one byte at a time (every 0.1 s) until the server cuts ``sock``; seconds taken."""
    request = b"POST /rng?api-version=7.6 HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: " + b"a" * 10_000
    start = time.monotonic()
    for byte in request:
        elapsed = time.monotonic() - start
        if elapsed > limit:
            break
        try:
            sock.send(bytes([byte]))
        except OSError:
            return elapsed
        if _closed(sock, 0.1):
            return time.monotonic() - start
    return float("inf")


def test_a_client_trickling_a_request_is_cut_off_at_the_deadline(emulator: ManagedHsmEmulator) -> None:
    with _tls(emulator) as sock:
        # The socket timeout (30 s) would never fire: a byte arrives every 0.1 s.
        taken = _trickle_until_cut(sock, limit=DEADLINE + 10)
    assert DEADLINE * 0.5 <= taken <= DEADLINE + 8


def test_a_client_that_never_finishes_the_handshake_is_cut_off(emulator: ManagedHsmEmulator) -> None:
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        start = time.monotonic()
        assert _closed(sock, DEADLINE + 8)
        assert time.monotonic() - start >= DEADLINE * 0.5


def test_a_keep_alive_connection_gets_a_fresh_deadline_per_request(emulator: ManagedHsmEmulator) -> None:
    token = emulator.credential().get_token("scope").token
    ctx = ssl.create_default_context(cafile=emulator.ca_file)
    conn = http.client.HTTPSConnection("127.0.0.1", emulator.port, context=ctx, timeout=30)
    try:
        for _ in range(2):  # idle longer than the deadline between requests on one connection
            conn.request(
                "POST", "/rng?api-version=7.6", body=b'{"count": 4}', headers={"Authorization": f"Bearer {token}"}
            )
            assert conn.getresponse().read()
            time.sleep(DEADLINE + 0.5)
        assert conn.sock is not None  # the same connection served all three
    finally:
        conn.close()


def test_hundreds_of_slow_clients_cannot_exhaust_the_emulator(emulator: ManagedHsmEmulator) -> None:
    baseline = threading.active_count()
    stallers: list[socket.socket] = []
    tricklers: list[socket.socket] = []
    peak = 0
    try:
        for i in range(200):
            if i % 2:  # connects and never speaks TLS
                stallers.append(socket.create_connection(("127.0.0.1", emulator.port), timeout=10))
            else:  # speaks TLS, then trickles an HTTP request
                with contextlib.suppress(OSError):  # evicted before its handshake ended
                    tls = _tls(emulator)
                    tls.send(b"POST /rng HTTP/1.1\r\n")
                    tricklers.append(tls)
            peak = max(peak, _workers())
        assert len(tricklers) > 50
        for _ in range(10):  # keep trickling while the normal client comes along
            for tls in tricklers:
                with contextlib.suppress(OSError):
                    tls.send(b"X")
            peak = max(peak, _workers())
        status, seconds = _normal_request(emulator)
        assert status == 200
        assert seconds < 10  # promptly, not after every slow client's deadline
        peak = max(peak, _workers())
        # Bounded: one thread per allowed connection, plus a few evicted ones on their way out.
        assert peak <= MAX_CONNECTIONS + 4
        assert threading.active_count() <= baseline + MAX_CONNECTIONS + 4
        # Every slow client is gone within the deadline (plus generous slack), evicted or cut off.
        end = time.monotonic() + DEADLINE + 10
        while time.monotonic() < end and not all(_closed(s) for s in stallers + tricklers):
            time.sleep(0.2)
        assert [s for s in stallers + tricklers if not _closed(s)] == []
    finally:
        for s in stallers + tricklers:
            s.close()
    status, _ = _normal_request(emulator)
    assert status == 200


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"request_timeout": 0}, "request_timeout"),
        ({"request_timeout": "10"}, "request_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections": 2.5}, "max_connections"),
    ],
)
def test_bad_limits_are_invalid_arguments(options: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        ManagedHsmEmulator(**options)  # type: ignore[arg-type]


def test_beyond_the_limit_with_every_worker_busy_a_client_gets_a_json_503() -> None:
    with ManagedHsmEmulator(max_connections=2, faults=Faults(latency=2.0)) as hsm:
        busy = [threading.Thread(target=_normal_request, args=(hsm,)) for _ in range(2)]
        for t in busy:
            t.start()
        time.sleep(0.7)  # both requests are in: the workers sleep the injected latency
        ctx = ssl.create_default_context(cafile=hsm.ca_file)
        conn = http.client.HTTPSConnection("127.0.0.1", hsm.port, context=ctx, timeout=30)
        start = time.monotonic()
        try:
            conn.request("POST", "/rng?api-version=7.6", body=b'{"count": 4}')
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        assert time.monotonic() - start < 1.5  # not after the busy requests' latency
        assert resp.status == 503
        assert resp.getheader("Retry-After") == "1"
        assert body["error"]["code"] == "ServiceUnavailable"
        for t in busy:
            t.join(30)
        status, _ = _normal_request(hsm)  # once they are done, the next client is served
        assert status == 200
