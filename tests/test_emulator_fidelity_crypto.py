"""Managed HSM features beyond the KeyProvider protocol: AES-CBC / AES-CBCPAD with the caller's
IV, secp256k1 (P-256K / ES256K) keys and key attestation, through the real SDK over HTTPS, each
checked against ``cryptography`` with the same key material."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("azure.keyvault.keys")

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyCurveName
from azure.keyvault.keys.crypto import CryptographyClient, EncryptionAlgorithm, SignatureAlgorithm
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from keybridge.emulator import ManagedHsmEmulator


def _name() -> str:
    return "x-" + uuid.uuid4().hex[:10]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def client(azure_emulator: ManagedHsmEmulator) -> KeyClient:
    return KeyClient(azure_emulator.vault_url, **azure_emulator.provider_options())


def _post(client: KeyClient, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = client.send_request(HttpRequest("POST", path, json=body))
    return response.status_code, response.json()


def _cbc(key: bytes, iv: bytes, data: bytes, *, pad: bool) -> bytes:
    """The independent implementation: ``cryptography``'s AES-CBC, PKCS#7 for CBCPAD."""
    if pad:
        padder = sympadding.PKCS7(128).padder()
        data = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def _aes_key(client: KeyClient, bits: int) -> tuple[str, bytes]:
    k = os.urandom(bits // 8)
    key = client.import_key(_name(), JsonWebKey(kty="oct-HSM", k=k), hardware_protected=True)
    return str(key.id), k


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_aes_cbc_through_cryptography_client_matches_cryptography(
    client: KeyClient, azure_emulator: ManagedHsmEmulator, bits: int
) -> None:
    kid, k = _aes_key(client, bits)
    crypto = CryptographyClient(kid, **azure_emulator.provider_options())
    alg = EncryptionAlgorithm(f"A{bits}CBC")
    iv, plaintext = os.urandom(16), os.urandom(48)
    result = crypto.encrypt(alg, plaintext, iv=iv)
    assert result.key_id == kid
    assert result.iv == iv
    assert result.ciphertext == _cbc(k, iv, plaintext, pad=False)
    assert crypto.decrypt(alg, result.ciphertext, iv=iv).plaintext == plaintext
    outside = _cbc(k, iv, b"made outside, 32 bytes long!....", pad=False)
    assert crypto.decrypt(alg, outside, iv=iv).plaintext == b"made outside, 32 bytes long!...."
    with pytest.raises(HttpResponseError) as err:
        crypto.encrypt(alg, b"not a whole block", iv=iv)
    assert err.value.status_code == 400
    assert "multiple of 16" in str(err.value.message)


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_aes_cbcpad_in_the_service_matches_cryptography(client: KeyClient, bits: int) -> None:
    """The SDK runs A*CBCPAD locally with a random key for service-held oct keys (facts §4), so the
    service's answer is checked over REST."""
    kid, k = _aes_key(client, bits)
    path = urlsplit(kid).path
    iv = os.urandom(16)
    for plaintext in (b"", b"odd-length plaintext", os.urandom(32)):
        status, sealed = _post(
            client, f"{path}/encrypt", {"alg": f"A{bits}CBCPAD", "value": _b64(plaintext), "iv": _b64(iv)}
        )
        assert status == 200
        assert _unb64(sealed["value"]) == _cbc(k, iv, plaintext, pad=True)
        status, opened = _post(
            client, f"{path}/decrypt", {"alg": f"A{bits}CBCPAD", "value": sealed["value"], "iv": _b64(iv)}
        )
        assert (status, _unb64(opened["value"])) == (200, plaintext)
    # a wrong iv breaks the padding check, a 400 with the service's error shape
    wrong = _cbc(os.urandom(bits // 8), iv, b"x", pad=True)
    status, answer = _post(client, f"{path}/decrypt", {"alg": f"A{bits}CBCPAD", "value": _b64(wrong), "iv": _b64(iv)})
    assert (status, answer["error"]["code"]) == (400, "BadParameter")


def test_aes_cbc_refusals(client: KeyClient) -> None:
    kid, _ = _aes_key(client, 128)
    path = urlsplit(kid).path
    block = _b64(bytes(16))
    cases = [
        ({"alg": "A128CBC", "value": block}, 400, "needs an iv"),
        ({"alg": "A128CBC", "value": block, "iv": _b64(bytes(12))}, 400, "16-byte iv"),
        ({"alg": "A256CBC", "value": block, "iv": block}, 400, "needs an AES-256 key"),
        ({"alg": "A128CBC", "value": block, "iv": block, "aad": block}, 400, "takes no aad"),
    ]
    for body, status, fragment in cases:
        got, answer = _post(client, f"{path}/encrypt", body)
        assert (got, answer["error"]["code"]) == (status, "BadParameter"), body
        assert fragment in answer["error"]["message"]
        assert "memory" not in answer["error"]["message"]
    got, answer = _post(client, f"{path}/wrapkey", {"alg": "A128CBC", "value": block, "iv": block})
    assert got == 400
    rsa = client.create_rsa_key(_name(), size=2048)
    got, answer = _post(client, f"/keys/{rsa.name}//encrypt", {"alg": "A128CBC", "value": block, "iv": block})
    assert got == 400
    assert "AES-128" in answer["error"]["message"]
    # key_ops are enforced as for every algorithm
    only_decrypt = client.create_oct_key(_name(), size=128, hardware_protected=True, key_operations=["decrypt"])
    got, answer = _post(client, f"/keys/{only_decrypt.name}//encrypt", {"alg": "A128CBC", "value": block, "iv": block})
    assert (got, answer["error"]["innererror"]["code"]) == (403, "KeyOperationForbidden")


def _public(key: Any) -> ec.EllipticCurvePublicKey:
    x, y = (int.from_bytes(v, "big") for v in (key.key.x, key.key.y))
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256K1()).public_key()


def test_p256k_keys_sign_es256k_that_cryptography_verifies(
    client: KeyClient, azure_emulator: ManagedHsmEmulator
) -> None:
    key = client.create_ec_key(_name(), curve=KeyCurveName.p_256_k, hardware_protected=True)
    assert key.key.crv == "P-256K"
    assert key.key_type == "EC-HSM"
    public = _public(key)
    crypto = CryptographyClient(key, **azure_emulator.provider_options())
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"secp256k1 message")
    value = digest.finalize()
    signature = crypto.sign(SignatureAlgorithm.es256_k, value).signature
    assert len(signature) == 64  # raw r||s
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    public.verify(der, value, ec.ECDSA(Prehashed(hashes.SHA256())))  # raises if wrong
    assert crypto.verify(SignatureAlgorithm.es256_k, value, signature).is_valid
    status, answer = _post(
        client, f"/keys/{key.name}//verify", {"alg": "ES256K", "digest": _b64(value), "value": _b64(signature)}
    )
    assert (status, answer) == (200, {"value": True})
    status, answer = _post(
        client, f"/keys/{key.name}//verify", {"alg": "ES256K", "digest": _b64(bytes(32)), "value": _b64(signature)}
    )
    assert (status, answer) == (200, {"value": False})
    # ES256 is P-256's algorithm, not secp256k1's
    status, answer = _post(client, f"/keys/{key.name}//sign", {"alg": "ES256", "value": _b64(value)})
    assert (status, answer["error"]["code"]) == (400, "BadParameter")
    assert "P-256K" in answer["error"]["message"]


def test_p256k_keys_import_from_a_jwk(client: KeyClient, azure_emulator: ManagedHsmEmulator) -> None:
    private = ec.generate_private_key(ec.SECP256K1())
    nums = private.private_numbers()
    jwk = JsonWebKey(
        kty="EC",
        crv="P-256K",
        x=nums.public_numbers.x.to_bytes(32, "big"),
        y=nums.public_numbers.y.to_bytes(32, "big"),
        d=nums.private_value.to_bytes(32, "big"),
    )
    key = client.import_key(_name(), jwk)
    assert _public(key).public_numbers() == private.public_key().public_numbers()
    signature = (
        CryptographyClient(key, **azure_emulator.provider_options())
        .sign(SignatureAlgorithm.es256_k, bytes(range(32)))
        .signature
    )
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    private.public_key().verify(der, bytes(range(32)), ec.ECDSA(Prehashed(hashes.SHA256())))


def _jws_claims(blob: bytes, signer: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """Check a compact ES256 JWS with ``cryptography`` and answer its payload."""
    head, payload, sig = blob.decode("ascii").split(".")
    raw = _unb64(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signer.verify(der, f"{head}.{payload}".encode("ascii"), ec.ECDSA(hashes.SHA256()))  # raises if wrong
    assert json.loads(_unb64(head))["alg"] == "ES256"
    claims: dict[str, Any] = json.loads(_unb64(payload))
    return claims


def test_key_attestation_is_signed_under_the_emulators_attestation_ca(client: KeyClient) -> None:
    key = client.create_ec_key(_name(), curve="P-384", hardware_protected=True)
    newer = client.rotate_key(key.name)
    for version, expected in ((None, newer), (key.properties.version, key)):
        attested = client.get_key_attestation(key.name, version=version)
        assert attested.id == expected.id
        attestation = attested.properties.attestation
        assert attestation is not None
        assert attestation.version == "keybridge-emulator-1"
        assert attestation.certificate_pem_file is not None
        leaf, ca = x509.load_pem_x509_certificates(attestation.certificate_pem_file)
        leaf.verify_directly_issued_by(ca)  # raises if the chain is wrong
        ca.verify_directly_issued_by(ca)
        signer = leaf.public_key()
        assert isinstance(signer, ec.EllipticCurvePublicKey)
        assert attestation.public_key_attestation is not None
        assert attestation.private_key_attestation is not None
        public = _jws_claims(attestation.public_key_attestation, signer)
        private = _jws_claims(attestation.private_key_attestation, signer)
        assert public["kid"] == private["kid"] == expected.id
        assert (public["material"], private["material"]) == ("public", "private")
        x, y = (int.from_bytes(v, "big") for v in (expected.key.x, expected.key.y))
        spki = (
            ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1())
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        assert _unb64(public["spki_sha256"]) == hashlib.sha256(spki).digest()
    # a symmetric key has no public half to attest
    oct_key = client.create_oct_key(_name(), size=256, hardware_protected=True)
    attestation = client.get_key_attestation(oct_key.name).properties.attestation
    assert attestation is not None
    assert attestation.public_key_attestation is None
    assert attestation.private_key_attestation is not None
    assert attestation.certificate_pem_file is not None
    leaf = x509.load_pem_x509_certificates(attestation.certificate_pem_file)[0]
    signer = leaf.public_key()
    assert isinstance(signer, ec.EllipticCurvePublicKey)
    assert _jws_claims(attestation.private_key_attestation, signer)["kid"] == oct_key.id
    # a tampered statement no longer verifies
    head, payload, sig = attestation.private_key_attestation.decode().split(".")
    forged = json.loads(_unb64(payload)) | {"kid": "https://elsewhere/keys/k/1"}
    with pytest.raises(InvalidSignature):
        _jws_claims(f"{head}.{_b64(json.dumps(forged).encode())}.{sig}".encode(), signer)
