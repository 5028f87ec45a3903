"""Secure key release through the real azure-keyvault-keys SDK over HTTPS against the emulator:
exportable keys and their release policies, the policy grammar against attestation claims, and
the released key, unwrapped with ``cryptography`` and checked against the key the HSM holds.

These tests move the emulator's clock (token expiry), so they use their own emulator."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.keys")

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyReleasePolicy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding, aes_key_wrap

from keybridge.emulator import ManagedHsmEmulator
from keybridge.errors import InvalidArgument

_CLAIMS = {"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-uvm", "svn": 7}
_OAEP = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}


_NESTED: dict[str, Any] = {"claim": "c", "equals": 1}
for _ in range(9):
    _NESTED = {"anyOf": [_NESTED]}


def _name() -> str:
    return "r-" + uuid.uuid4().hex[:10]


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def hsm() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator() as emulator:
        yield emulator


@pytest.fixture(scope="module")
def client(hsm: ManagedHsmEmulator) -> KeyClient:
    return KeyClient(hsm.vault_url, **hsm.provider_options())


@pytest.fixture(scope="module")
def runtime() -> rsa.RSAPrivateKey:
    """The confidential workload's own key pair: the release wraps the key for its public half."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _rules(hsm: ManagedHsmEmulator, *conditions: dict[str, Any], kind: str = "allOf") -> dict[str, Any]:
    return {"version": "1.0.0", "anyOf": [{"authority": hsm.attestation_authority, kind: list(conditions)}]}


def _policy(rules: dict[str, Any], **kwargs: Any) -> KeyReleasePolicy:
    return KeyReleasePolicy(json.dumps(rules).encode(), **kwargs)


def _default_policy(hsm: ManagedHsmEmulator, **kwargs: Any) -> KeyReleasePolicy:
    conditions = [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}, {"claim": "svn", "greaterOrEquals": 5}]
    return _policy(_rules(hsm, *conditions), **kwargs)


def _raw(client: KeyClient, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = client.send_request(HttpRequest(method, path, json=body))
    return response.status_code, response.json() if response.content else None


def _error(exc: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str | None]:
    assert exc.value.error is not None
    return exc.value.status_code, exc.value.error.code


def _open_release(value: str, runtime: rsa.RSAPrivateKey) -> tuple[dict[str, Any], bytes]:
    """Verify the release JWS with the certificate in its own x5c (issued by the chain's CA), and
    unwrap the key with the runtime's private key: (payload, key plaintext)."""
    h, p, s = value.split(".")
    header = json.loads(_b64(h))
    leaf, ca = (x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"])
    leaf.verify_directly_issued_by(ca)
    raw = _b64(s)
    signature = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    leaf_key = leaf.public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    leaf_key.verify(signature, f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))  # raises if forged
    payload = json.loads(_b64(p))
    package = json.loads(_b64(payload["response"]["key"]["key"]["key_hsm"]))
    assert package["header"]["alg"] == "dir"
    blob = _b64(package["ciphertext"])
    h_alg = _OAEP[payload["request"]["enc"]]()
    k = runtime.key_size // 8
    aes = runtime.decrypt(blob[:k], padding.OAEP(mgf=padding.MGF1(h_alg), algorithm=h_alg, label=None))
    return payload, aes_key_unwrap_with_padding(aes, blob[k:])


# ---- exportable keys need a release policy -----------------------------------------------------


def test_exportable_keys_without_a_release_policy_are_refused(client: KeyClient) -> None:
    with pytest.raises(HttpResponseError) as err:
        client.create_rsa_key(_name(), size=2048, exportable=True, hardware_protected=True)
    assert _error(err) == (400, "BadParameter")
    assert "AKV.SKR.1004: Exportable keys must have release policy." in str(err.value.message)
    material = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    jwk = JsonWebKey(
        kty="RSA",
        n=material.public_numbers.n.to_bytes(256, "big"),
        e=material.public_numbers.e.to_bytes(3, "big"),
        d=material.d.to_bytes(256, "big"),
        p=material.p.to_bytes(128, "big"),
        q=material.q.to_bytes(128, "big"),
    )
    with pytest.raises(HttpResponseError) as err:
        client.import_key(_name(), jwk, exportable=True)
    assert _error(err) == (400, "BadParameter")


def test_the_policy_is_kept_per_version_and_returned(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    name = _name()
    policy = _default_policy(hsm)
    first = client.create_rsa_key(name, size=2048, exportable=True, release_policy=policy)
    assert first.properties.exportable is True
    returned = first.properties.release_policy
    assert returned is not None
    assert returned.content_type == "application/json; charset=utf-8"
    assert json.loads(returned.encoded_policy) == json.loads(policy.encoded_policy)
    assert returned.immutable is False
    status, raw = _raw(client, "GET", f"/keys/{name}/{first.properties.version}")
    assert status == 200
    assert "=" not in raw["release_policy"]["data"]  # base64url without padding, as the service writes
    assert json.loads(_b64(raw["release_policy"]["data"])) == json.loads(policy.encoded_policy)
    second = client.create_rsa_key(name, size=2048)  # a new version, not exportable, no policy
    assert second.properties.release_policy is None
    assert second.properties.exportable is False
    again = client.get_key(name, first.properties.version).properties.release_policy
    assert again is not None
    assert json.loads(again.encoded_policy) == json.loads(policy.encoded_policy)


def test_a_policy_can_be_replaced_unless_it_is_immutable(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    key = client.create_ec_key(_name(), curve="P-256", exportable=True, release_policy=_default_policy(hsm))
    stricter = _policy(_rules(hsm, {"claim": "svn", "greater": 100}))
    updated = client.update_key_properties(key.name, key.properties.version, release_policy=stricter)
    assert updated.properties.release_policy is not None
    assert json.loads(updated.properties.release_policy.encoded_policy) == json.loads(stricter.encoded_policy)

    locked = client.create_ec_key(
        _name(), curve="P-256", exportable=True, release_policy=_default_policy(hsm, immutable=True)
    )
    assert locked.properties.release_policy is not None
    assert locked.properties.release_policy.immutable is True
    with pytest.raises(HttpResponseError) as err:
        client.update_key_properties(locked.name, locked.properties.version, release_policy=stricter, tags={"a": "b"})
    assert _error(err) == (400, "BadParameter")
    assert "immutable" in str(err.value.message)
    assert not client.get_key(locked.name).properties.tags  # a refused PATCH changes nothing
    kept = client.get_key(locked.name).properties.release_policy
    assert kept is not None
    assert json.loads(kept.encoded_policy) == json.loads(_default_policy(hsm).encoded_policy)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"not json", "UTF-8 JSON"),
        (b'{"version": "1.0.0"}', "anyOf must be a non-empty array"),
        (b'{"version": "2.0", "anyOf": []}', "version must be '1.0.0'"),
        (b'{"anyOf": [{"authority": "https://a.example", "allOf": []}]}', "non-empty array of conditions"),
        (b'{"anyOf": [{"allOf": [{"claim": "c", "equals": 1}]}]}', "authority URL"),
        (b'{"anyOf": [{"authority": "https://a", "allOf": [{"claim": "c"}]}]}', "exactly one operator"),
        (b'{"anyOf": [{"authority": "https://a", "allOf": [{"claim": "c", "equals": 1, "less": 2}]}]}', "exactly one"),
        (b'{"anyOf": [{"authority": "https://a", "allOf": [1], "anyOf": [1]}]}', "exactly one of allOf or anyOf"),
        (b'{"anyOf": [{"authority": "https://a", "allOf": [{"claim": "c", "equals": [1]}]}]}', "a string, a number"),
        (b'{"anyOf": [{"authority": "http://a", "allOf": [{"claim": "c", "equals": 1}]}]}', "https URL"),
        (b"[" * 100_000 + b"]" * 100_000, "modest depth"),
        (json.dumps({"anyOf": [{"authority": "https://a", "allOf": [_NESTED]}]}).encode(), "deeper than 8"),
    ],
)
def test_a_policy_outside_the_grammar_is_a_bad_parameter(client: KeyClient, data: bytes, fragment: str) -> None:
    with pytest.raises(HttpResponseError) as err:
        client.create_rsa_key(_name(), size=2048, exportable=True, release_policy=KeyReleasePolicy(data))
    assert _error(err) == (400, "BadParameter")
    assert fragment in str(err.value.message)


# ---- releasing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("enc", [None, "CKM_RSA_AES_KEY_WRAP", "RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384"])
def test_a_released_rsa_key_unwraps_to_the_key_the_hsm_holds(
    client: KeyClient, hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey, enc: str | None
) -> None:
    key = client.create_rsa_key(_name(), size=2048, exportable=True, release_policy=_default_policy(hsm))
    token = hsm.attestation_token(_CLAIMS, runtime_key=runtime.public_key())
    result = client.release_key(key.name, token, algorithm=enc, nonce="n-1")
    payload, plaintext = _open_release(result.value, runtime)
    assert payload["request"]["enc"] == (enc or "CKM_RSA_AES_KEY_WRAP")
    assert payload["request"]["kid"] == key.id
    assert payload["request"]["nonce"] == "n-1"
    released_bundle = payload["response"]["key"]
    assert released_bundle["key"]["kid"] == key.id
    assert released_bundle["attributes"]["exportable"] is True
    assert json.loads(_b64(released_bundle["release_policy"]["data"])) == json.loads(
        _default_policy(hsm).encoded_policy
    )
    private = serialization.load_der_private_key(plaintext, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert key.key.n is not None
    assert key.key.e is not None
    public = rsa.RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()
    message = os.urandom(64)
    public.verify(
        private.sign(message, padding.PKCS1v15(), hashes.SHA256()), message, padding.PKCS1v15(), hashes.SHA256()
    )


def test_released_ec_and_oct_keys_are_the_keys_the_hsm_holds(
    client: KeyClient, hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey
) -> None:
    token = hsm.attestation_token(_CLAIMS, runtime_key=runtime.public_key())
    ec_key = client.create_ec_key(_name(), curve="P-384", exportable=True, release_policy=_default_policy(hsm))
    _, plaintext = _open_release(client.release_key(ec_key.name, token).value, runtime)
    private = serialization.load_der_private_key(plaintext, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert key_x(ec_key) == private.public_key().public_numbers().x
    signature = private.sign(b"data", ec.ECDSA(hashes.SHA384()))
    hsm_public = hsm.provider.get_key(ec_key.name).public_key
    assert isinstance(hsm_public, ec.EllipticCurvePublicKey)
    hsm_public.verify(signature, b"data", ec.ECDSA(hashes.SHA384()))

    oct_key = client.create_oct_key(_name(), size=256, exportable=True, release_policy=_default_policy(hsm))
    version = oct_key.properties.version
    _, secret = _open_release(client.release_key(oct_key.name, token, version=version).value, runtime)
    assert len(secret) == 32
    cek = os.urandom(32)
    body = {"alg": "A256KW", "value": base64.urlsafe_b64encode(aes_key_wrap(secret, cek)).decode().rstrip("=")}
    status, answer = _raw(client, "POST", f"/keys/{oct_key.name}/{version}/unwrapkey", body)
    assert status == 200
    assert _b64(answer["value"]) == cek


def key_x(key: Any) -> int:
    return int.from_bytes(key.key.x, "big")


@pytest.mark.parametrize(
    ("conditions", "kind", "released"),
    [
        ([{"claim": "svn", "equals": 7}, {"claim": "x-ms-attestation-type", "equals": "SEVSNPVM"}], "allOf", True),
        ([{"claim": "svn", "equals": 7}, {"claim": "x-ms-attestation-type", "equals": "sgx"}], "allOf", False),
        ([{"claim": "svn", "equals": 1}, {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}], "anyOf", True),
        ([{"claim": "svn", "less": 7}, {"claim": "absent", "exists": True}], "anyOf", False),
        ([{"claim": "absent", "exists": False}, {"claim": "svn", "lessOrEquals": 7}], "allOf", True),
        ([{"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"}], "allOf", True),
        ([{"claim": "x-ms-isolation-tee.x-ms-compliance-status", "notEquals": "azure-compliant-cvm"}], "allOf", False),
        ([{"anyOf": [{"claim": "svn", "greater": 9}, {"claim": "sdk-test", "equals": True}]}], "allOf", True),
        ([{"claim": "sdk-test", "condition": "equals", "value": "true"}], "allOf", True),  # the older form
        ([{"claim": "svn", "condition": "greater", "value": 7}], "allOf", False),
    ],
)
def test_the_policy_grammar_decides_the_release(
    client: KeyClient,
    hsm: ManagedHsmEmulator,
    runtime: rsa.RSAPrivateKey,
    conditions: list[dict[str, Any]],
    kind: str,
    released: bool,
) -> None:
    key = client.create_rsa_key(
        _name(), size=2048, exportable=True, release_policy=_policy(_rules(hsm, *conditions, kind=kind))
    )
    claims = {**_CLAIMS, "sdk-test": True, "x-ms-isolation-tee": {"x-ms-compliance-status": "azure-compliant-cvm"}}
    token = hsm.attestation_token(claims, runtime_key=runtime.public_key())
    if released:
        assert _open_release(client.release_key(key.name, token).value, runtime)[1]
        return
    with pytest.raises(HttpResponseError) as err:
        client.release_key(key.name, token)
    assert _error(err) == (403, "Forbidden")
    assert "release policy" in str(err.value.message)


def test_a_policy_naming_another_authority_releases_nothing(
    client: KeyClient, hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey
) -> None:
    rules = {
        "version": "1.0.0",
        "anyOf": [{"authority": "https://sharedeus.eus.attest.azure.net", "allOf": [{"claim": "svn", "equals": 7}]}],
    }
    key = client.create_rsa_key(_name(), size=2048, exportable=True, release_policy=_policy(rules))
    with pytest.raises(HttpResponseError) as err:
        client.release_key(key.name, hsm.attestation_token(_CLAIMS, runtime_key=runtime.public_key()))
    assert _error(err) == (403, "Forbidden")


def test_tokens_that_do_not_verify_are_refused(
    client: KeyClient, hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey
) -> None:
    key = client.create_rsa_key(_name(), size=2048, exportable=True, release_policy=_default_policy(hsm))
    good = hsm.attestation_token(_CLAIMS, runtime_key=runtime.public_key(), lifetime=60)
    h, p, s = good.split(".")
    claims = json.loads(_b64(p))
    claims["svn"] = 99
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    other = ManagedHsmEmulator().attestation_token(_CLAIMS, runtime_key=runtime.public_key())  # same URL, other key
    for token, fragment in ((f"{h}.{forged_payload}.{s}", "does not verify"), (other, "signing key")):
        with pytest.raises(HttpResponseError) as err:
            client.release_key(key.name, token)
        assert _error(err) == (403, "Forbidden")
        assert fragment in str(err.value.message)
    assert _open_release(client.release_key(key.name, good).value, runtime)[1]
    hsm.advance(seconds=61)
    with pytest.raises(HttpResponseError) as err:
        client.release_key(key.name, good)
    assert _error(err) == (403, "Forbidden")
    assert "expired" in str(err.value.message)


def test_what_cannot_be_released_and_malformed_requests(
    client: KeyClient, hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey
) -> None:
    token = hsm.attestation_token(_CLAIMS, runtime_key=runtime.public_key())
    plain = client.create_rsa_key(_name(), size=2048)
    with pytest.raises(HttpResponseError) as err:
        client.release_key(plain.name, token)
    assert _error(err) == (403, "Forbidden")
    assert "not exportable" in str(err.value.message)

    key = client.create_rsa_key(_name(), size=2048, exportable=True, release_policy=_default_policy(hsm))
    path = f"/keys/{key.name}/{key.properties.version}/release"
    no_runtime_key = hsm.attestation_token(_CLAIMS)
    for body, fragment in (
        ({}, "target"),
        ({"target": "not-a-jwt"}, "JWT"),
        ({"target": "a.b.c"}, "JWT"),
        ({"target": "e30." + base64.urlsafe_b64encode(b"[" * 50_000).decode() + ".AA"}, "JWT"),
        ({"target": token, "enc": "RSA-OAEP"}, "enc must be one of"),
        ({"target": no_runtime_key}, "x-ms-runtime.keys"),
    ):
        status, answer = _raw(client, "POST", path, body)
        assert (status, answer["error"]["code"]) == (400, "BadParameter"), body
        assert fragment in answer["error"]["message"]
    status, answer = _raw(client, "POST", f"/keys/{key.name}/{'0' * 32}/release", {"target": token})
    assert (status, answer["error"]["code"]) == (404, "KeyNotFound")
    client.update_key_properties(key.name, enabled=False)
    with pytest.raises(HttpResponseError) as err:
        client.release_key(key.name, token)
    assert _error(err) == (403, "Forbidden")


def test_errors_and_tokens_carry_no_key_material(
    client: KeyClient, hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey
) -> None:
    key = client.create_oct_key(_name(), size=256, exportable=True, release_policy=_default_policy(hsm))
    secret = _open_release(
        client.release_key(key.name, hsm.attestation_token(_CLAIMS, runtime_key=runtime.public_key())).value, runtime
    )[1]
    wrong = hsm.attestation_token({"svn": 1}, runtime_key=runtime.public_key())
    response = client.send_request(HttpRequest("POST", f"/keys/{key.name}//release", json={"target": wrong}))
    assert response.status_code == 403
    for form in (secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret).rstrip(b"=")):
        assert form not in response.content


def test_attestation_tokens_are_checked_and_verify_with_the_jwks(
    hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey
) -> None:
    token = hsm.attestation_token({"svn": 3}, runtime_key=runtime.public_key(), lifetime=120)
    h, p, s = token.split(".")
    header, claims = json.loads(_b64(h)), json.loads(_b64(p))
    (jwk,) = hsm.attestation_jwks()["keys"]
    assert header == {"alg": "RS256", "typ": "JWT", "kid": jwk["kid"], "jku": f"{hsm.attestation_authority}/certs"}
    public = rsa.RSAPublicNumbers(
        int.from_bytes(_b64(jwk["e"]), "big"), int.from_bytes(_b64(jwk["n"]), "big")
    ).public_key()
    public.verify(_b64(s), f"{h}.{p}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert claims["iss"] == hsm.attestation_authority
    assert claims["exp"] - claims["iat"] == 120
    assert claims["svn"] == 3
    assert claims["x-ms-runtime"]["keys"][0]["kty"] == "RSA"
    for bad in (
        lambda: hsm.attestation_token(["svn"]),  # type: ignore[arg-type]
        lambda: hsm.attestation_token(runtime_key=runtime),  # type: ignore[arg-type]
        lambda: hsm.attestation_token(lifetime=0.5),
        lambda: hsm.attestation_token({"x": object()}),
        lambda: hsm.attestation_token({"x-ms-runtime": "tpm"}, runtime_key=runtime.public_key()),
    ):
        with pytest.raises(InvalidArgument):
            bad()


def test_byok_imports_cannot_be_made_exportable(client: KeyClient, hsm: ManagedHsmEmulator) -> None:
    policy = _default_policy(hsm)
    release_policy = {"data": base64.urlsafe_b64encode(policy.encoded_policy).decode(), "immutable": False}
    body = {
        "key": {"kty": "RSA-HSM", "key_hsm": "eyJ9"},
        "attributes": {"exportable": True},
        "release_policy": release_policy,
    }
    status, answer = _raw(client, "PUT", f"/keys/{_name()}", body)
    assert (status, answer["error"]["code"]) == (400, "BadParameter")
    assert "BYOK" in answer["error"]["message"]


def test_release_needs_the_release_data_action(
    client: KeyClient, hsm: ManagedHsmEmulator, runtime: rsa.RSAPrivateKey
) -> None:
    administration = pytest.importorskip("azure.keyvault.administration")
    from keybridge.emulator._rbac import BUILTIN_ROLES

    key = client.create_rsa_key(_name(), size=2048, exportable=True, release_policy=_default_policy(hsm))
    releaser, stranger = str(uuid.uuid4()), str(uuid.uuid4())
    opts: dict[str, Any] = {"connection_verify": hsm.ca_file, "verify_challenge_resource": False}
    acl = administration.KeyVaultAccessControlClient(hsm.vault_url, hsm.credential(), **opts)
    role = BUILTIN_ROLES["Managed HSM Crypto Service Release User"][0]
    acl.create_role_assignment(f"/keys/{key.name}", role, releaser)
    token = hsm.attestation_token(_CLAIMS, runtime_key=runtime.public_key())
    as_releaser = KeyClient(hsm.vault_url, hsm.credential(releaser), **opts)
    assert _open_release(as_releaser.release_key(key.name, token).value, runtime)[1]
    with pytest.raises(HttpResponseError) as err:
        as_releaser.get_key(key.name)  # release is all that role allows
    assert _error(err) == (403, "AccessDenied")
    with pytest.raises(HttpResponseError) as err:
        KeyClient(hsm.vault_url, hsm.credential(stranger), **opts).release_key(key.name, token)
    assert _error(err) == (403, "AccessDenied")
