"""The emulator at the HTTP level: TLS only, the bearer challenge, bad input, paging, path forms."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from typing import Any

import pytest

from keybridge.emulator import ManagedHsmEmulator
from keybridge.emulator._server import MAX_BODY


class Raw:
    """Plain http.client requests over TLS that trusts only the emulator's CA."""

    def __init__(self, emulator: ManagedHsmEmulator) -> None:
        self.emulator = emulator
        self.ctx = ssl.create_default_context(cafile=emulator.ca_file)
        self.token = emulator.credential().get_token("https://managedhsm.azure.net/.default").token

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        *,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.emulator.port, context=self.ctx, timeout=10)
        try:
            hdrs = dict(headers or {})
            if token is not None:
                hdrs["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            if data is not None:
                hdrs["Content-Type"] = "application/json"
            sep = "&" if "?" in path else "?"
            conn.request(method, f"{path}{sep}api-version=7.6", body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw) if raw else None
        finally:
            conn.close()

    def alive(self) -> None:
        status, _, body = self.request("POST", "/rng", {"count": 4})
        assert status == 200
        assert len(body["value"]) > 0


@pytest.fixture(scope="module")
def raw(azure_emulator: ManagedHsmEmulator) -> Raw:
    return Raw(azure_emulator)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_missing_or_wrong_bearer_gets_the_challenge(raw: Raw) -> None:
    for token in (None, "not-the-token"):
        status, headers, body = raw.request("GET", "/keys", token=token)
        assert status == 401
        assert body["error"]["code"] == "Unauthorized"
        challenge = headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'authorization="https://login.microsoftonline.com/' in challenge
        assert 'resource="https://managedhsm.azure.net"' in challenge


def test_localhost_alias_gets_a_matching_resource_and_kids(raw: Raw, azure_emulator: ManagedHsmEmulator) -> None:
    host = f"myvault.localhost:{azure_emulator.port}"
    _, headers, _ = raw.request("GET", "/keys", token=None, headers={"Host": host})
    assert f'resource="https://localhost:{azure_emulator.port}"' in headers["www-authenticate"]
    status, _, body = raw.request("POST", "/keys/alias-key/create", {"kty": "oct-HSM"}, headers={"Host": host})
    assert status == 200
    assert body["key"]["kid"].startswith(f"https://{host}/keys/alias-key/")


def test_plain_http_is_refused_and_the_server_keeps_serving(raw: Raw, azure_emulator: ManagedHsmEmulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", azure_emulator.port, timeout=10)
    body = json.dumps({"kty": "oct-HSM"})
    headers = {"Authorization": f"Bearer {raw.token}", "Content-Type": "application/json"}

    # The server drops the connection on the failed TLS handshake: sending the body may already
    # fail (broken pipe), or reading the answer will.
    def send_and_read() -> None:
        conn.request("POST", "/keys/plain-http-key/create?api-version=7.6", body=body, headers=headers)
        conn.getresponse()

    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        send_and_read()
    conn.close()
    status, _, answer = raw.request("GET", "/keys/plain-http-key/")
    assert status == 404, answer  # the plain-HTTP request was never served
    raw.alive()


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/keys/bad-json/create", b'{"kty": "RSA", ', "not valid JSON"),
        ("/keys/bad-json/create", b"[1, 2]", "JSON object"),
        ("/keys/bad-json/create", b"\xff\xfe", "not valid JSON"),
        ("/rng", {"count": "many"}, "count"),
        ("/keys/bad-kty/create", {"kty": "DSA"}, "kty"),
        ("/keys/bad%21name/create", {"kty": "oct-HSM"}, "key name"),
        ("/keys/restore", {"value": "***not base64url***"}, "base64url"),
    ],
)
def test_malformed_requests_get_400_with_a_json_error(raw: Raw, path: str, body: Any, fragment: str) -> None:
    status, headers, answer = raw.request("POST", path, body)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert answer["error"]["code"] == "BadParameter"
    assert fragment in answer["error"]["message"]
    raw.alive()


def test_crypto_input_errors_are_400(raw: Raw) -> None:
    status, _, key = raw.request("POST", "/keys/http-rsa/create", {"kty": "RSA", "key_size": 2048})
    assert status == 200
    for body, fragment in (
        ({"alg": "RS256", "value": "@@@"}, "base64url"),
        ({"alg": "RS999", "value": _b64(b"\0" * 32)}, "unknown algorithm"),
        ({"alg": "A256GCM", "value": _b64(b"\0" * 32)}, "not an algorithm for sign"),
        ({"alg": "RS256", "value": _b64(b"\0" * 31)}, "32"),
        ({"value": _b64(b"\0" * 32)}, "algorithm"),
    ):
        status, _, answer = raw.request("POST", "/keys/http-rsa//sign", body)
        assert status == 400, body
        assert answer["error"]["code"] == "BadParameter"
        assert fragment in answer["error"]["message"]
    status, _, answer = raw.request("POST", "/keys/http-rsa//sign", {"alg": "RS256", "value": _b64(b"\0" * 32)})
    assert status == 200
    assert answer["kid"] == key["key"]["kid"]


def test_oversized_body_is_refused_and_the_server_keeps_serving(raw: Raw) -> None:
    status, _, answer = raw.request("POST", "/keys/big/create", b"{" + b" " * MAX_BODY + b"}")
    assert status == 400
    assert answer["error"]["code"] == "BadParameter"
    assert str(MAX_BODY) in answer["error"]["message"]
    raw.alive()


@pytest.mark.parametrize("claimed", ["1000000000000", "-5", "lots"])
def test_absurd_content_length_is_refused_without_reading_and_the_server_keeps_serving(
    raw: Raw, azure_emulator: ManagedHsmEmulator, claimed: str
) -> None:
    conn = http.client.HTTPSConnection("127.0.0.1", azure_emulator.port, context=raw.ctx, timeout=10)
    try:
        conn.putrequest("POST", "/keys/huge/create?api-version=7.6")
        conn.putheader("Authorization", f"Bearer {raw.token}")
        conn.putheader("Content-Length", claimed)
        conn.endheaders(b"{}")
        resp = conn.getresponse()
        answer = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 400
    assert resp.getheader("Connection") == "close"
    assert answer["error"]["code"] == "BadParameter"
    raw.alive()


def test_unknown_paths_and_methods(raw: Raw) -> None:
    status, _, answer = raw.request("GET", "/secrets/s1")
    assert status == 404
    assert answer["error"]["code"] == "NotFound"
    status, _, answer = raw.request("DELETE", "/rng")
    assert status == 405
    assert answer["error"]["code"] == "MethodNotAllowed"
    status, _, answer = raw.request("GET", "/keys/does-not-exist/")
    assert status == 404
    assert answer["error"]["code"] == "KeyNotFound"


def test_head_options_and_unknown_methods_get_405_json_with_allow(raw: Raw) -> None:
    for method in ("OPTIONS", "BREW", "PROPFIND"):
        status, headers, answer = raw.request(method, "/keys")
        assert status == 405, method
        assert headers["content-type"].startswith("application/json")
        assert headers["allow"] == "GET"
        assert answer["error"]["code"] == "MethodNotAllowed"
    status, headers, answer = raw.request("OPTIONS", "/keys/some-key")
    assert status == 405
    assert headers["allow"] == "DELETE, GET, PATCH, PUT"
    status, headers, answer = raw.request("HEAD", "/keys/some-key")
    assert (status, headers["allow"], answer) == (405, "DELETE, GET, PATCH, PUT", None)
    status, _, answer = raw.request("BREW", "/no-such-thing")
    assert (status, answer["error"]["code"]) == (404, "NotFound")
    raw.alive()  # the HEAD answer had no body, so the connection framing stayed intact


def test_oversized_rsa_jwk_without_primes_is_refused_by_size(raw: Raw) -> None:
    n = (1 << 16383) | 1  # 16384 bits: recovering p and q from it would stall the request
    jwk = {"kty": "RSA", "n": _b64(n.to_bytes(2048, "big")), "e": "AQAB", "d": _b64(n.to_bytes(2048, "big"))}
    status, _, answer = raw.request("PUT", "/keys/huge-rsa", {"key": jwk})
    assert status == 400
    assert answer["error"]["code"] == "BadParameter"
    assert "16384 bits" in answer["error"]["message"]


def test_deeply_nested_json_is_a_bad_parameter(raw: Raw) -> None:
    for body in (b"[" * 100_000, b'{"a":' * 100_000):
        status, _, answer = raw.request("POST", "/rng", body)
        assert status == 400
        assert answer["error"]["code"] == "BadParameter"
    raw.alive()


def test_huge_expiry_and_wrong_typed_policy_fields_are_bad_parameters(raw: Raw) -> None:
    status, _, _ = raw.request("POST", "/keys/typed-key/create", {"kty": "oct-HSM"})
    assert status == 200
    for attrs in (b'{"exp": ' + b"9" * 5000 + b"}", b'{"nbf": ' + b"9" * 4000 + b"}", b'{"exp": -1}'):
        status, _, answer = raw.request("PATCH", "/keys/typed-key/", b'{"attributes": ' + attrs + b"}")
        assert (status, answer["error"]["code"]) == (400, "BadParameter"), attrs
        body = b'{"kty": "oct-HSM", "attributes": ' + attrs + b"}"
        status, _, answer = raw.request("POST", "/keys/typed-key2/create", body)
        assert (status, answer["error"]["code"]) == (400, "BadParameter"), attrs
    for policy in (
        {"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": "Rotate"}]},
        {"lifetimeActions": [{"trigger": {"timeAfterCreate": 90}, "action": {"type": "Rotate"}}]},
        {"lifetimeActions": ["Rotate"]},
        {"attributes": {"expiryTime": ["P1Y"]}},
        {"attributes": "P1Y"},
    ):
        status, _, answer = raw.request("PUT", "/keys/typed-key/rotationpolicy", policy)
        assert (status, answer["error"]["code"]) == (400, "BadParameter"), policy
    raw.alive()


def test_trailing_slash_get_and_patch_mean_the_current_version(raw: Raw) -> None:
    raw.request("POST", "/keys/slash-key/create", {"kty": "EC", "crv": "P-256"})
    status, _, newer = raw.request("POST", "/keys/slash-key/create", {"kty": "EC", "crv": "P-256"})
    assert status == 200
    status, _, got = raw.request("GET", "/keys/slash-key/")
    assert status == 200
    assert got["key"]["kid"] == newer["key"]["kid"]
    status, _, patched = raw.request("PATCH", "/keys/slash-key/", {"tags": {"t": "1"}})
    assert status == 200
    assert patched["tags"] == {"t": "1"}
    assert patched["key"]["kid"] == newer["key"]["kid"]


def test_paging_next_links_cover_every_key_once(raw: Raw, azure_emulator: ManagedHsmEmulator) -> None:
    for i in range(3):
        raw.request("POST", f"/keys/page-{i}/create", {"kty": "oct-HSM", "key_size": 128})
    seen: list[str] = []
    path = "/keys?maxresults=2"
    while path:
        status, _, page = raw.request("GET", path)
        assert status == 200
        assert len(page["value"]) <= 2
        seen += [item["kid"] for item in page["value"]]
        link = page.get("nextLink")
        path = link[len(azure_emulator.vault_url) :] if link else ""
    assert len(seen) == len(set(seen))
    assert {f"{azure_emulator.vault_url}/keys/page-{i}" for i in range(3)} <= set(seen)


def test_padded_key_hsm_is_accepted(raw: Raw) -> None:
    """The SDK sends key_hsm unpadded; other tools pad. Both decode."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from keybridge import _crypto
    from keybridge._byok import ByokPackage

    status, _, kek = raw.request(
        "POST", "/keys/http-kek/create", {"kty": "RSA-HSM", "key_size": 2048, "key_ops": ["import"]}
    )
    assert status == 200
    n = int.from_bytes(base64.urlsafe_b64decode(kek["key"]["n"] + "=="), "big")
    public = rsa.RSAPublicNumbers(65537, n).public_key()
    package = ByokPackage(kek["key"]["kid"], _crypto.rsa_aes_key_wrap(public, b"\x11" * 16)).to_json()
    body = {"key": {"kty": "oct-HSM", "key_hsm": base64.urlsafe_b64encode(package).decode()}, "Hsm": True}
    status, _, imported = raw.request("PUT", "/keys/http-byok", body)
    assert status == 200, imported
    assert imported["key"]["kty"] == "oct-HSM"
