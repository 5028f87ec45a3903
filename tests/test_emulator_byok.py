"""BYOK import into the emulator with the real SDK: KeyClient.import_key(JsonWebKey(t=package))."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.keys")

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from keybridge import _crypto, audit
from keybridge._byok import ByokPackage
from keybridge.emulator import ManagedHsmEmulator


def _name() -> str:
    return "b-" + uuid.uuid4().hex[:10]


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def _pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def client(azure_emulator: ManagedHsmEmulator) -> KeyClient:
    return KeyClient(azure_emulator.vault_url, **azure_emulator.provider_options())


def _kek_public(kek: KeyVaultKey) -> rsa.RSAPublicKey:
    # what `az keyvault key download` does: build the public key from the JWK's n and e
    return rsa.RSAPublicNumbers(int.from_bytes(kek.key.e, "big"), int.from_bytes(kek.key.n, "big")).public_key()


@pytest.fixture(scope="module")
def kek(client: KeyClient) -> KeyVaultKey:
    key = client.create_rsa_key(_name(), size=2048, hardware_protected=True, key_operations=["import"])
    assert key.key_operations == ["import"]
    return key


def _package(kek: KeyVaultKey, plaintext: bytes, public: rsa.RSAPublicKey | None = None) -> bytes:
    ciphertext = _crypto.rsa_aes_key_wrap(public or _kek_public(kek), plaintext)
    return ByokPackage(kid=str(kek.id), ciphertext=ciphertext, generator="keybridge tests").to_json()


def _import(client: KeyClient, kty: str, package: bytes, **fields: Any) -> KeyVaultKey:
    jwk = JsonWebKey(kty=kty, t=package, **fields)
    return client.import_key(_name(), jwk, hardware_protected=True)


def test_rsa_byok_import_signs_with_the_original_key(
    client: KeyClient, azure_emulator: ManagedHsmEmulator, kek: KeyVaultKey
) -> None:
    target = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    imported = _import(client, "RSA-HSM", _package(kek, _pkcs8(target)), key_ops=["sign", "verify"])
    assert imported.key_type == "RSA-HSM"
    assert sorted(imported.key_operations) == ["sign", "verify"]
    assert int.from_bytes(imported.key.n, "big") == target.public_key().public_numbers().n
    crypto = CryptographyClient(imported.id, **azure_emulator.provider_options())
    signature = crypto.sign(SignatureAlgorithm.ps256, _sha256(b"moved into the HSM")).signature
    target.public_key().verify(
        signature,
        b"moved into the HSM",
        padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH),
        hashes.SHA256(),
    )


@pytest.mark.parametrize("crv", ["P-256", None])
def test_ec_byok_import_with_or_without_crv(
    client: KeyClient, azure_emulator: ManagedHsmEmulator, kek: KeyVaultKey, crv: str | None
) -> None:
    target = ec.generate_private_key(ec.SECP256R1())
    imported = _import(client, "EC-HSM", _package(kek, _pkcs8(target)), crv=crv, key_ops=["sign", "verify"])
    assert imported.key.crv == "P-256"
    crypto = CryptographyClient(imported.id, **azure_emulator.provider_options())
    raw = crypto.sign(SignatureAlgorithm.es256, _sha256(b"ec")).signature
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    target.public_key().verify(der, b"ec", ec.ECDSA(hashes.SHA256()))


def test_oct_byok_import_wraps_like_the_original_key(client: KeyClient, kek: KeyVaultKey) -> None:
    k = os.urandom(24)
    imported = _import(client, "oct-HSM", _package(kek, k), key_ops=["wrapKey", "unwrapKey"])
    assert imported.key_type == "oct-HSM"
    cek = os.urandom(16)
    body = {"alg": "A192KW", "value": base64.urlsafe_b64encode(cek).decode()}  # padded input is accepted too
    response = client.send_request(HttpRequest("POST", f"/keys/{imported.name}//wrapkey", json=body))
    response.raise_for_status()
    wrapped = response.json()["value"]
    assert base64.urlsafe_b64decode(wrapped + "=" * (-len(wrapped) % 4)) == aes_key_wrap(k, cek)


def _refused(client: KeyClient, kty: str, package: bytes, **fields: Any) -> HttpResponseError:
    with pytest.raises(HttpResponseError) as err:
        _import(client, kty, package, **fields)
    assert err.value.status_code == 400
    assert err.value.error is not None
    assert err.value.error.code == "BadParameter"
    return err.value


def test_byok_refusals(client: KeyClient, kek: KeyVaultKey) -> None:
    target = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = _package(kek, _pkcs8(target))
    # wrapped under someone else's KEK but naming ours
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    _refused(client, "RSA-HSM", _package(kek, _pkcs8(target), public=stranger))
    # one bit flipped in the AES-KWP part
    doc = json.loads(good)
    blob = bytearray(ByokPackage.from_json(good).ciphertext)
    blob[-5] ^= 1
    doc["ciphertext"] = base64.urlsafe_b64encode(bytes(blob)).decode().rstrip("=")
    _refused(client, "RSA-HSM", json.dumps(doc).encode())
    # an RSA key declared as EC, and as AES
    _refused(client, "EC-HSM", good, crv="P-256")
    _refused(client, "oct-HSM", good)
    # not JSON, and not a package
    _refused(client, "RSA-HSM", b"garbage")
    # a KEK that is not import-only
    signer = client.create_rsa_key(_name(), size=2048, hardware_protected=True)
    err = _refused(client, "RSA-HSM", _package(signer, _pkcs8(target)))
    assert "import" in str(err.message)
    # an import-only KEK that is a software key (kty RSA, not RSA-HSM)
    soft = client.create_rsa_key(_name(), size=2048, hardware_protected=False, key_operations=["import"])
    err = _refused(client, "RSA-HSM", _package(soft, _pkcs8(target)))
    assert "RSA-HSM" in str(err.message)
    # after all that, the good package still imports
    assert int.from_bytes(_import(client, "RSA-HSM", good).key.n, "big") == target.public_key().public_numbers().n


def test_disabled_kek_refuses_import(client: KeyClient) -> None:
    kek = client.create_rsa_key(_name(), size=2048, hardware_protected=True, key_operations=["import"])
    client.update_key_properties(kek.name, enabled=False)
    err = _refused(client, "oct-HSM", _package(kek, os.urandom(32)))
    assert f"{kek.name}/{kek.properties.version} is disabled" in str(err.message)


@pytest.fixture
def unwrap_attempts() -> Iterator[list[str]]:
    """Outcomes of the emulator's key store BYOK imports: one per unwrap the emulator asked for."""
    outcomes: list[str] = []

    def sink(event: audit.AuditEvent) -> None:
        if event.provider == "memory" and event.operation == "import_byok":
            outcomes.append(event.outcome)

    audit.add_sink(sink)
    yield outcomes
    audit.remove_sink(sink)


def test_a_bad_package_is_one_unwrap_and_one_clean_400(
    client: KeyClient, kek: KeyVaultKey, unwrap_attempts: list[str]
) -> None:
    doc = json.loads(_package(kek, os.urandom(32)))
    blob = bytearray(base64.urlsafe_b64decode(doc["ciphertext"] + "=="))
    blob[3] ^= 0x80  # in the RSA-OAEP block
    doc["ciphertext"] = base64.urlsafe_b64encode(bytes(blob)).decode().rstrip("=")
    # oct has three sizes to try; a package that does not unwrap must not be tried three times
    err = _refused(client, "oct-HSM", json.dumps(doc).encode())
    assert "wrong KEK or damaged package" in str(err.message)
    assert unwrap_attempts == ["IntegrityError"]


@pytest.mark.parametrize(("crv", "attempts"), [("P-384", 1), (None, 4)])
def test_a_type_mismatch_tries_only_the_family_and_says_what_the_package_holds(
    client: KeyClient, kek: KeyVaultKey, unwrap_attempts: list[str], crv: str | None, attempts: int
) -> None:
    package = _package(kek, _pkcs8(ec.generate_private_key(ec.SECP256R1())))
    if crv is None:
        package = _package(kek, _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    err = _refused(client, "EC-HSM", package, crv=crv)
    assert unwrap_attempts == ["InvalidPackage"] * attempts
    held = "EC-P-256" if crv else "RSA-2048"
    assert f"holds an {held} key" in str(err.message)
    assert "kty EC" in str(err.message)


def test_rsa_byok_import_finds_the_size_within_the_family(
    client: KeyClient, kek: KeyVaultKey, unwrap_attempts: list[str]
) -> None:
    target = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    imported = _import(client, "RSA-HSM", _package(kek, _pkcs8(target)))
    assert int.from_bytes(imported.key.n, "big") == target.public_key().public_numbers().n
    assert unwrap_attempts == ["InvalidPackage", "ok"]  # 2048 first, then 3072


def test_kek_outside_its_validity_window_refuses_import(client: KeyClient) -> None:
    kek = client.create_rsa_key(_name(), size=2048, hardware_protected=True, key_operations=["import"])
    client.update_key_properties(kek.name, expires_on=datetime.now(timezone.utc) - timedelta(minutes=1))
    err = _refused(client, "oct-HSM", _package(kek, os.urandom(32)))
    assert "window" in str(err.message)
    assert kek.name in str(err.message)


def test_key_ops_cannot_be_patched_across_the_import_boundary(client: KeyClient) -> None:
    kek = client.create_rsa_key(_name(), size=2048, hardware_protected=True, key_operations=["import"])
    plain = client.create_rsa_key(_name(), size=2048, hardware_protected=True)
    for key, ops in ((kek, ["sign"]), (plain, ["import"])):
        with pytest.raises(HttpResponseError) as info:
            client.update_key_properties(key.name, key_operations=ops)
        assert info.value.status_code == 400
        assert key.name in str(info.value.message)
        assert "memory:" not in str(info.value.message)  # names the vault's key, not the store's
    assert client.get_key(kek.name).key_operations == ["import"]


@pytest.mark.parametrize("kid", ["https://[bad/keys/k/v1", "https://h:99999/keys/k/v1", "https://h/keys/%zz/v1"])
def test_malformed_byok_kid_is_a_bad_parameter(client: KeyClient, kek: KeyVaultKey, kid: str) -> None:
    package = json.loads(_package(kek, os.urandom(32)))
    package["header"]["kid"] = kid
    _refused(client, "oct-HSM", json.dumps(package).encode())
