"""The EKM proxy over real mTLS against a real SoftHSM token, checked with `cryptography`."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from _ekm_support import make_cert, make_pki
from keybridge import audit, open_provider
from keybridge.ekm import Client, ClientRule, EkmError, EkmServer, ExportedKey
from keybridge.ekm._server import DRAIN_LIMIT
from keybridge.errors import ProviderUnavailable
from keybridge.keys import KeyOp, KeySpec


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def proxy(softhsm_token, pki: Path) -> Iterator[tuple[EkmServer, object]]:  # type: ignore[no-untyped-def]
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        suffix = os.urandom(4).hex()
        aes = hsm.create_key(f"ekm-aes-{suffix}", KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
        rsa = hsm.create_key(f"ekm-rsa-{suffix}", KeySpec.rsa(2048), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
        keys = [
            ExportedKey("aes-1", aes.ref.name),
            ExportedKey("rsa-1", rsa.ref.name),
            ExportedKey("aes-wo", aes.ref.name, frozenset({"wrapKey"})),
        ]
        server = EkmServer(
            hsm,
            keys,
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            client_ca_file=str(pki / "ca.crt"),
            clients=[ClientRule("contoso.managedhsmclient.azure.net")],
            prefix="/contoso",
            deadline=5.0,
        )
        yield server, rsa
        server.close()


def _client(server: EkmServer, pki: Path, who: str = "hsm") -> Client:
    return Client(
        server.url, ca_file=str(pki / "ca.crt"), cert_file=str(pki / f"{who}.crt"), key_file=str(pki / f"{who}.key")
    )


def test_info_and_metadata(proxy, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _rsa = proxy
    c = _client(server, pki)
    assert c.info()["api_version"] == "0.1-preview"
    assert c.metadata("aes-1")["key_type"] == "oct"
    md = c.metadata("rsa-1")
    assert md["e"] == "AQAB"
    assert md["key_size"] == 2048


def test_rsa_wrap_is_real_oaep(proxy, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, rsa = proxy
    c = _client(server, pki)
    secret = os.urandom(32)
    wrapped = c.wrap_key("rsa-1", "RSA-OAEP", secret)
    assert len(wrapped) == 256
    assert c.unwrap_key("rsa-1", "RSA-OAEP", wrapped) == secret
    # independent check: wrap with `cryptography` from the exported public numbers, unwrap in the HSM
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    ours = rsa.public_key.encrypt(secret, oaep)
    assert c.unwrap_key("rsa-1", "RSA-OAEP", ours) == secret


def test_hsm_audit_events_carry_the_request_id_managed_hsm_sent(proxy, pki: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    server, _ = proxy
    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)
    try:
        with caplog.at_level(logging.INFO, logger="keybridge.ekm"):
            assert _client(server, pki).unwrap_key(
                "aes-1", "A256KW", _client(server, pki).wrap_key("aes-1", "A256KW", os.urandom(32))
            )
    finally:
        audit.remove_sink(events.append)
    sent = re.findall(r"'request_id': '([0-9a-f-]{36})'", caplog.text)  # what the proxy logged as received
    assert len(sent) == 2
    hsm_calls = [e for e in events if e.operation in ("wrap_key", "unwrap_key")]
    assert [e.correlation_id for e in hsm_calls] == sent


def test_aes_kwp_length_rule(proxy, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = proxy
    c = _client(server, pki)
    wrapped = c.wrap_key("aes-1", "A256KWP", b"1" * 32)
    assert len(wrapped) == 40  # ceil8(32) + 8
    assert c.unwrap_key("aes-1", "A256KWP", wrapped) == b"1" * 32


@pytest.mark.parametrize(
    ("key", "op", "body", "status", "code"),
    [
        (
            "nope",
            "wrapkey",
            {"alg": "A256KW", "value": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
            404,
            "KeyNotFound",
        ),
        ("aes-wo", "unwrapkey", {"alg": "A256KW", "value": "AAAA"}, 403, "Forbidden"),
        ("aes-1", "wrapkey", {"alg": "A128CBC", "value": "AAAA"}, 400, "BadRequest"),
        ("aes-1", "wrapkey", {"alg": "A256KW", "value": "AAAA=="}, 400, "BadRequest"),
        (
            "aes-1",
            "unwrapkey",
            {"alg": "A256KW", "value": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
            400,
            "BadRequest",
        ),
    ],
)
def test_bad_requests(proxy, pki: Path, key: str, op: str, body: dict[str, str], status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    server, _ = proxy
    with pytest.raises(EkmError) as err:
        _client(server, pki).call(f"/{key}/{op}", body)
    assert (err.value.status, err.value.code) == (status, code)


def test_wrong_client_cert_refused_before_any_key_use(proxy, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = proxy
    with pytest.raises(EkmError) as err:
        _client(server, pki, "stranger").wrap_key("aes-1", "A256KW", bytes(32))
    assert err.value.status == 401


def test_malformed_json_and_oversized_body(proxy, pki: Path) -> None:  # type: ignore[no-untyped-def]
    import http.client
    import json
    import ssl

    server, _ = proxy
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "hsm.crt"), str(pki / "hsm.key"))
    # 900 kB: more than the socket buffers take, so the client is still sending when the answer
    # comes (the proxy read none of it before, and closed: the client got EOF/reset under load)
    for body, expect in ((b"{not json", 400), (b"x" * 20000, 400), (b"x" * 8_000_000, 400)):
        conn = http.client.HTTPSConnection("127.0.0.1", int(server.url.split(":")[2].split("/")[0]), context=ctx)
        conn.request("POST", "/contoso/aes-1/wrapkey?api-version=0.1-preview", body)
        resp = conn.getresponse()
        assert resp.status == expect
        assert json.loads(resp.read())["code"] == "BadRequest"
        conn.close()
    # a declared length over the drain limit is not read at all: answered at once, then closed
    conn = http.client.HTTPSConnection("127.0.0.1", int(server.url.split(":")[2].split("/")[0]), context=ctx)
    conn.putrequest("POST", "/contoso/aes-1/wrapkey?api-version=0.1-preview")
    conn.putheader("Content-Length", str(DRAIN_LIMIT + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Connection")) == (400, "close")
    conn.close()


def test_slow_hsm_answers_request_timeout(softhsm_token, pki: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    release = threading.Event()

    class Stalled:
        """Holds get_key until released: an HSM that is slower than the deadline."""

        def __init__(self, inner: object) -> None:
            self.inner = inner

        def get_key(self, ref: str) -> object:
            release.wait(10)
            return self.inner.get_key(ref)  # type: ignore[attr-defined]

    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        server = EkmServer(
            Stalled(hsm),  # type: ignore[arg-type]
            [ExportedKey("k", "whatever")],
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            client_ca_file=str(pki / "ca.crt"),
            clients=[ClientRule("contoso.managedhsmclient.azure.net")],
            deadline=0.05,
        )
        try:
            with pytest.raises(EkmError) as err:
                _client(server, pki).metadata("k")
            assert (err.value.status, err.value.code) == (408, "RequestTimeout")
        finally:
            release.set()
            server.close()


def test_client_cert_from_another_root_fails_the_handshake(proxy, pki: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = proxy
    other = make_cert(tmp_path / "other-ca", "other root", None)
    make_cert(tmp_path / "imposter", "contoso.managedhsmclient.azure.net", other)
    c = Client(
        server.url,
        ca_file=str(pki / "ca.crt"),
        cert_file=str(tmp_path / "imposter.crt"),
        key_file=str(tmp_path / "imposter.key"),
    )
    with pytest.raises(ProviderUnavailable, match="TLS"):
        c.info()


def test_one_tls_connection_is_reused_and_close_ends_it(softhsm_token, pki: Path) -> None:  # type: ignore[no-untyped-def]
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        name = f"ekm-ka-{os.urandom(4).hex()}"
        hsm.create_key(name, KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
        server = EkmServer(
            hsm,
            [ExportedKey("k", name)],
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            client_ca_file=str(pki / "ca.crt"),
            clients=[ClientRule("contoso.managedhsmclient.azure.net")],
            deadline=5.0,
        )
        c = _client(server, pki)
        c.info()
        sock = c._conn.sock  # type: ignore[union-attr]
        wrapped = c.wrap_key("k", "A256KW", bytes(range(32)))
        assert c.unwrap_key("k", "A256KW", wrapped) == bytes(range(32))
        assert c._conn.sock is sock  # type: ignore[union-attr]  # no new handshake per call
        server.close()
        with pytest.raises(ProviderUnavailable, match="cannot reach the EKM proxy"):
            c.info()  # the kept-alive connection gets no answer after close, nor does a new one


def test_disabled_key_is_403_keydisabled(softhsm_token, pki: Path) -> None:  # type: ignore[no-untyped-def]
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        info = hsm.create_key(f"ekm-dis-{os.urandom(4).hex()}", KeySpec.aes(256))
        server = EkmServer(
            hsm,
            [ExportedKey("k", info.ref.name)],
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            client_ca_file=str(pki / "ca.crt"),
            clients=[ClientRule("contoso.managedhsmclient.azure.net")],
            deadline=5.0,
        )
        try:
            c = _client(server, pki)
            wrapped = c.wrap_key("k", "A256KWP", bytes(32))
            hsm.set_enabled(info.ref.name, False)
            for call in (lambda: c.metadata("k"), lambda: c.wrap_key("k", "A256KWP", bytes(32))):
                with pytest.raises(EkmError) as err:
                    call()
                assert (err.value.status, err.value.code) == (403, "KeyDisabled")
            with pytest.raises(EkmError) as err:
                c.unwrap_key("k", "A256KWP", wrapped)
            assert (err.value.status, err.value.code) == (403, "KeyDisabled")
        finally:
            server.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8443", "127.0.0.1:8443", "https:///contoso"])
def test_client_wants_an_https_url(pki: Path, url: str) -> None:
    from keybridge.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="https://HOST"):
        Client(url, ca_file=str(pki / "ca.crt"), cert_file=str(pki / "hsm.crt"), key_file=str(pki / "hsm.key"))
