"""The whole hold-your-own-key chain in one process: the azure-keyvault-keys SDK calls the Managed
HSM emulator, whose external keys send every wrap and unwrap over mutual TLS to a keybridge EKM
proxy, which answers from a SoftHSM2 token. Results are checked against the token directly and
against `cryptography`."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from _ekm_support import make_pki
from keybridge import open_provider
from keybridge.ekm import ClientRule, EkmServer, ExportedKey
from keybridge.emulator import ManagedHsmEmulator
from keybridge.errors import KeyNotFound
from keybridge.keys import KeyOp, KeySpec

azure_keys = pytest.importorskip("azure.keyvault.keys")
crypto = pytest.importorskip("azure.keyvault.keys.crypto")
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError  # noqa: E402
from azure.core.rest import HttpRequest  # noqa: E402

CN = "emulator.managedhsmclient.azure.net"


@pytest.fixture(scope="module")
def chain(softhsm_token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    suffix = os.urandom(4).hex()
    with (
        open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm,
        ManagedHsmEmulator() as emu,
    ):
        aes = hsm.create_key(f"chain-aes-{suffix}", KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
        rsa = hsm.create_key(f"chain-rsa-{suffix}", KeySpec.rsa(2048), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
        opts = {**emu.provider_options(), "retry_total": 0}
        client = azure_keys.KeyClient(emu.vault_url, **opts)
        # the proxy trusts the emulator's client root and CN, exactly as given by GET /ekm/certificate
        cert = _send(client, "GET", "/ekm/certificate")
        assert cert["subject_common_name"] == CN
        (pki / "emu-client-ca.pem").write_bytes(
            x509.load_der_x509_certificate(base64.b64decode(cert["ca_certificates"][0])).public_bytes(
                serialization.Encoding.PEM
            )
        )
        proxy = EkmServer(
            hsm,
            [ExportedKey("aes-key-1", aes.ref.name), ExportedKey("rsa-key-1", rsa.ref.name)],
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            client_ca_file=str(pki / "emu-client-ca.pem"),
            clients=[ClientRule(CN)],
            prefix="/contoso",
            deadline=5.0,
        )
        ca_der = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes()).public_bytes(serialization.Encoding.DER)
        port = proxy.url.split(":")[2].split("/")[0]
        conn = _send(
            client,
            "POST",
            "/ekm/create",
            {
                "host": f"127.0.0.1:{port}",
                "server_ca_certificates": [base64.b64encode(ca_der).decode()],
                "path_prefix": "/contoso",
            },
        )
        assert conn["host"] == f"127.0.0.1:{port}"
        try:
            yield {
                "hsm": hsm,
                "emu": emu,
                "client": client,
                "opts": opts,
                "aes": aes,
                "rsa": rsa,
                "proxy": proxy,
                "pki": pki,
            }
        finally:
            proxy.close()


def _send(client: Any, method: str, path: str, body: dict[str, Any] | None = None, status: int = 200) -> Any:
    resp = client.send_request(HttpRequest(method, f"{path}?api-version=7.6", json=body))
    assert resp.status_code == status, resp.text()
    return resp.json()


def _external(chain: dict[str, Any], name: str, key_id: str) -> Any:
    _send(chain["client"], "POST", f"/keys/{name}/create", {"attributes": {"external_key": {"id": key_id}}})
    return chain["client"].get_key(name)


def test_check_calls_the_proxy_info(chain: dict[str, Any]) -> None:
    info = _send(chain["client"], "POST", "/ekm/check")
    assert info["api_version"] == "0.1-preview"
    assert info["proxy_name"] == "keybridge-ekm"
    assert _send(chain["client"], "GET", "/ekm")["path_prefix"] == "/contoso"


def test_sdk_aes_wrap_unwrap_goes_to_softhsm(chain: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    key = _external(chain, "kref-aes", "aes-key-1")
    assert key.key_type == "oct-HSM"
    assert sorted(key.key_operations) == ["unwrapKey", "wrapKey"]
    cc = crypto.CryptographyClient(key.id, **chain["opts"])
    secret = os.urandom(32)
    with caplog.at_level(logging.INFO, logger="keybridge.ekm"):
        # Not KeyWrapAlgorithm.aes_256: the SDK runs A*KW locally, with a random key, for any oct key.
        for sdk_alg, token_alg, size in (
            (crypto.KeyWrapAlgorithm.ckm_aes_key_wrap, "A256KW", 40),
            (crypto.KeyWrapAlgorithm.ckm_aes_key_wrap_pad, "CKM_AES_KEY_WRAP_PAD", 40),
        ):
            wrapped = cc.wrap_key(sdk_alg, secret).encrypted_key
            assert len(wrapped) == size
            # independent check: the token itself unwraps what came back through SDK, emulator, proxy
            assert chain["hsm"].unwrap_key(chain["aes"].ref.name, token_alg, wrapped) == secret
            assert cc.unwrap_key(sdk_alg, wrapped).key == secret
            other = chain["hsm"].wrap_key(chain["aes"].ref.name, token_alg, secret[::-1])
            assert cc.unwrap_key(sdk_alg, other).key == secret[::-1]
        # the wire name A256KW reaches the proxy too (raw REST through the SDK pipeline)
        resp = chain["client"].send_request(
            HttpRequest(
                "POST",
                f"/keys/kref-aes/{key.properties.version}/wrapkey?api-version=7.6",
                json={"alg": "A256KW", "value": base64.urlsafe_b64encode(secret).decode().rstrip("=")},
            )
        )
        assert resp.status_code == 200, resp.text()
        raw = base64.urlsafe_b64decode(resp.json()["value"] + "==")
        assert chain["hsm"].unwrap_key(chain["aes"].ref.name, "A256KW", raw) == secret
    calls = [r.getMessage() for r in caplog.records if "/aes-key-1/" in r.getMessage()]
    assert len(calls) == 7  # 3 wraps + 4 unwraps: every one reached the proxy
    assert all(f"cn={CN}" in c and "'pool_name': 'emulator'" in c for c in calls)


def test_key_material_never_exists_in_the_emulator(chain: dict[str, Any]) -> None:
    _external(chain, "kref-nomat", "aes-key-1")
    emu = chain["emu"]
    assert not [k for k in emu.provider.list_keys() if k.ref.name.startswith("kref")]
    with pytest.raises(KeyNotFound):
        emu.provider.export_key("kref-nomat")
    # and no other operation is done locally: the preview allows only wrap and unwrap
    cc = crypto.CryptographyClient(chain["client"].get_key("kref-nomat").id, **chain["opts"])
    with pytest.raises(HttpResponseError) as err:
        cc.encrypt(crypto.EncryptionAlgorithm.a256_gcm, b"x" * 16)
    assert err.value.status_code in (400, 403)


def test_sdk_rsa_external_key(chain: dict[str, Any]) -> None:
    key = _external(chain, "kref-rsa", "rsa-key-1")
    token_pub = chain["rsa"].public_key.public_numbers()
    assert int.from_bytes(key.key.n, "big") == token_pub.n  # the metadata the proxy gave at creation
    cc = crypto.CryptographyClient(key.id, **chain["opts"])
    secret = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    wrapped = chain["rsa"].public_key.encrypt(secret, oaep)
    assert cc.unwrap_key(crypto.KeyWrapAlgorithm.rsa_oaep, wrapped).key == secret
    sdk_wrapped = cc.wrap_key(crypto.KeyWrapAlgorithm.rsa_oaep, secret).encrypted_key
    assert chain["hsm"].unwrap_key(chain["rsa"].ref.name, "RSA-OAEP", sdk_wrapped) == secret


def test_disabled_and_unknown_external_keys(chain: dict[str, Any]) -> None:
    client = chain["client"]
    key = _external(chain, "kref-dis", "aes-key-1")
    client.update_key_properties("kref-dis", enabled=False)
    cc = crypto.CryptographyClient(key.id, **chain["opts"])
    with pytest.raises(HttpResponseError) as err:
        cc.wrap_key(crypto.KeyWrapAlgorithm.ckm_aes_key_wrap, bytes(32))
    assert err.value.status_code == 403
    # an id the proxy does not export: creation fails, nothing is stored
    body = {"attributes": {"external_key": {"id": "no-such-key"}}}
    resp = client.send_request(HttpRequest("POST", "/keys/kref-ghost/create?api-version=7.6", json=body))
    assert resp.status_code == 404
    assert "no-such-key" in resp.text()
    with pytest.raises(ResourceNotFoundError):
        client.get_key("kref-ghost")


def test_unreachable_proxy_is_a_502(chain: dict[str, Any]) -> None:
    import socket

    client = chain["client"]
    key = _external(chain, "kref-gone", "aes-key-1")
    good = _send(client, "GET", "/ekm")["host"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    _send(client, "PATCH", "/ekm", {"host": f"127.0.0.1:{port}"})
    try:
        resp = client.send_request(HttpRequest("POST", "/ekm/check?api-version=7.6"))
        assert resp.status_code == 502
        assert "cannot reach the EKM proxy" in resp.text()
        cc = crypto.CryptographyClient(key.id, **chain["opts"])
        with pytest.raises(HttpResponseError) as err:
            cc.wrap_key(crypto.KeyWrapAlgorithm.ckm_aes_key_wrap, bytes(32))
        assert err.value.status_code == 502
    finally:
        _send(client, "PATCH", "/ekm", {"host": good})
    assert _send(client, "POST", "/ekm/check")["api_version"] == "0.1-preview"
