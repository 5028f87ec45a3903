"""Key operations with the real CryptographyClient / KeyClient against the emulator, each checked
against an independent implementation (``cryptography``) with the same key material."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.keys")

from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.keyvault.keys import JsonWebKey, KeyClient
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
    SignatureAlgorithm,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap, aes_key_wrap_with_padding

from keybridge.emulator import ManagedHsmEmulator


def _name() -> str:
    return "c-" + uuid.uuid4().hex[:10]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sha(data: bytes, h: hashes.HashAlgorithm | None = None) -> bytes:
    digest = hashes.Hash(h or hashes.SHA256())
    digest.update(data)
    return digest.finalize()


@pytest.fixture(scope="module")
def client(azure_emulator: ManagedHsmEmulator) -> KeyClient:
    return KeyClient(azure_emulator.vault_url, **azure_emulator.provider_options())


@pytest.fixture(scope="module")
def rsa_material() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _int(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


@pytest.fixture(scope="module")
def rsa_key_id(client: KeyClient, rsa_material: rsa.RSAPrivateKey) -> str:
    """An RSA key imported from known material, so results can be checked with ``cryptography``."""
    priv = rsa_material.private_numbers()
    jwk = JsonWebKey(
        kty="RSA",
        n=_int(priv.public_numbers.n),
        e=_int(priv.public_numbers.e),
        d=_int(priv.d),
        p=_int(priv.p),
        q=_int(priv.q),
        dp=_int(priv.dmp1),
        dq=_int(priv.dmq1),
        qi=_int(priv.iqmp),
    )
    key = client.import_key(_name(), jwk, hardware_protected=True)
    assert key.key_type == "RSA-HSM"
    assert key.key.d is None  # the private exponent never comes back
    return str(key.id)


def _crypto(emulator: ManagedHsmEmulator, key_id: str) -> CryptographyClient:
    return CryptographyClient(key_id, **emulator.provider_options())


def _post(client: KeyClient, path: str, body: dict[str, Any]) -> Any:
    """A raw REST call through the SDK pipeline (auth, TLS, retries) that cannot run locally."""
    response = client.send_request(HttpRequest("POST", path, json=body))
    response.raise_for_status()
    return response.json()


@pytest.mark.parametrize(
    ("alg", "pad"),
    [
        (SignatureAlgorithm.rs256, padding.PKCS1v15()),
        (SignatureAlgorithm.ps256, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)),
    ],
)
def test_rsa_sign_in_service_verifies_with_the_original_public_key(
    azure_emulator: ManagedHsmEmulator, rsa_key_id: str, rsa_material: rsa.RSAPrivateKey, alg: Any, pad: Any
) -> None:
    crypto = _crypto(azure_emulator, rsa_key_id)
    result = crypto.sign(alg, _sha(b"message"))
    rsa_material.public_key().verify(result.signature, b"message", pad, hashes.SHA256())
    assert crypto.verify(alg, _sha(b"message"), result.signature).is_valid
    assert not crypto.verify(alg, _sha(b"other"), result.signature).is_valid


@pytest.mark.parametrize(
    ("alg", "pad"),
    [
        (EncryptionAlgorithm.rsa_oaep, padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)),
        (EncryptionAlgorithm.rsa_oaep_256, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)),
        (EncryptionAlgorithm.rsa1_5, padding.PKCS1v15()),
    ],
)
def test_rsa_decrypt_in_service_opens_locally_made_ciphertext(
    azure_emulator: ManagedHsmEmulator, rsa_key_id: str, rsa_material: rsa.RSAPrivateKey, alg: Any, pad: Any
) -> None:
    ciphertext = rsa_material.public_key().encrypt(b"secret", pad)
    assert _crypto(azure_emulator, rsa_key_id).decrypt(alg, ciphertext).plaintext == b"secret"


def test_rsa_unwrap_in_service(
    azure_emulator: ManagedHsmEmulator, rsa_key_id: str, rsa_material: rsa.RSAPrivateKey
) -> None:
    cek = os.urandom(32)
    wrapped = rsa_material.public_key().encrypt(cek, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    crypto = _crypto(azure_emulator, rsa_key_id)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key == cek
    # the SDK wraps locally from the key's n/e and key_ops; the service must unwrap that
    local = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, cek)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, local.encrypted_key).key == cek


@pytest.mark.parametrize(
    ("curve", "alg", "h"), [("P-256", "ES256", hashes.SHA256()), ("P-384", "ES384", hashes.SHA384())]
)
def test_ec_sign_returns_raw_r_s_that_verifies(
    client: KeyClient, azure_emulator: ManagedHsmEmulator, curve: str, alg: str, h: hashes.HashAlgorithm
) -> None:
    key = client.create_ec_key(_name(), curve=curve, hardware_protected=True)
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(key.key.x, "big"),
        int.from_bytes(key.key.y, "big"),
        ec.SECP256R1() if curve == "P-256" else ec.SECP384R1(),
    ).public_key()
    signature = _crypto(azure_emulator, str(key.id)).sign(SignatureAlgorithm(alg), _sha(b"m", h)).signature
    n = len(key.key.x)
    assert len(signature) == 2 * n
    der = encode_dss_signature(int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big"))
    public.verify(der, b"m", ec.ECDSA(h))
    # verify in the service as well (the SDK verifies EC locally)
    base = f"/keys/{key.name}/{key.properties.version}/verify"
    ok = _post(client, base, {"alg": alg, "digest": _b64(_sha(b"m", h)), "value": _b64(signature)})
    bad = _post(client, base, {"alg": alg, "digest": _b64(_sha(b"x", h)), "value": _b64(signature)})
    assert ok == {"value": True}
    assert bad == {"value": False}


@pytest.fixture(scope="module")
def aes_key(client: KeyClient) -> tuple[str, str, bytes]:
    """An oct-HSM key imported from known bytes: (name, version, key bytes)."""
    k = os.urandom(32)
    key = client.import_key(_name(), JsonWebKey(kty="oct-HSM", k=k), hardware_protected=True)
    assert key.key_type == "oct-HSM"
    assert key.key.k is None
    return str(key.name), str(key.properties.version), k


def test_gcm_encrypt_with_aad_returns_iv_and_tag_separately(
    azure_emulator: ManagedHsmEmulator, aes_key: tuple[str, str, bytes]
) -> None:
    name, version, k = aes_key
    crypto = _crypto(azure_emulator, f"{azure_emulator.vault_url}/keys/{name}/{version}")
    result = crypto.encrypt(EncryptionAlgorithm.a256_gcm, b"plaintext", additional_authenticated_data=b"ctx")
    assert len(result.iv) == 12
    assert len(result.tag) == 16
    # independent check: the service used exactly this key, this aad, and standard GCM
    assert AESGCM(k).decrypt(result.iv, result.ciphertext + result.tag, b"ctx") == b"plaintext"
    opened = crypto.decrypt(
        EncryptionAlgorithm.a256_gcm,
        result.ciphertext,
        iv=result.iv,
        authentication_tag=result.tag,
        additional_authenticated_data=b"ctx",
    )
    assert opened.plaintext == b"plaintext"
    iv = os.urandom(12)
    local = AESGCM(k).encrypt(iv, b"from outside", None)
    outside = crypto.decrypt(EncryptionAlgorithm.a256_gcm, local[:-16], iv=iv, authentication_tag=local[-16:])
    assert outside.plaintext == b"from outside"
    with pytest.raises(HttpResponseError) as err:
        crypto.decrypt(
            EncryptionAlgorithm.a256_gcm,
            result.ciphertext,
            iv=result.iv,
            authentication_tag=result.tag,
            additional_authenticated_data=b"wrong",
        )
    assert err.value.status_code == 400


def test_aes_key_wrap_reaches_the_service_and_matches_rfc3394(
    client: KeyClient, azure_emulator: ManagedHsmEmulator, aes_key: tuple[str, str, bytes]
) -> None:
    """A*KW would run locally in the SDK with a random key (facts §4), so it goes through raw REST;
    the answer must equal RFC 3394 under the imported key bytes."""
    name, version, k = aes_key
    cek = os.urandom(32)
    wrapped = _unb64(_post(client, f"/keys/{name}/{version}/wrapkey", {"alg": "A256KW", "value": _b64(cek)})["value"])
    assert wrapped == aes_key_wrap(k, cek)
    # CKM_AES_KEY_WRAP is the same RFC 3394 wrap, and the SDK sends it to the service
    crypto = _crypto(azure_emulator, f"{azure_emulator.vault_url}/keys/{name}/{version}")
    assert crypto.unwrap_key(KeyWrapAlgorithm.ckm_aes_key_wrap, wrapped).key == cek
    padded = crypto.wrap_key(KeyWrapAlgorithm.ckm_aes_key_wrap_pad, b"odd-length-key!")
    assert padded.encrypted_key == aes_key_wrap_with_padding(k, b"odd-length-key!")
    unwrapped = _post(client, f"/keys/{name}//unwrapkey", {"alg": "A256KW", "value": _b64(aes_key_wrap(k, cek))})
    assert _unb64(unwrapped["value"]) == cek
    assert aes_key_unwrap(k, wrapped) == cek


def test_versionless_double_slash_operations(
    client: KeyClient, rsa_key_id: str, rsa_material: rsa.RSAPrivateKey
) -> None:
    name = rsa_key_id.split("/")[-2]
    answer = _post(client, f"/keys/{name}//sign", {"alg": "RS256", "value": _b64(_sha(b"x"))})
    assert answer["kid"] == rsa_key_id
    rsa_material.public_key().verify(_unb64(answer["value"]), b"x", padding.PKCS1v15(), hashes.SHA256())


def test_forbidden_operation_and_disabled_key_are_403(client: KeyClient, azure_emulator: ManagedHsmEmulator) -> None:
    key = client.create_rsa_key(_name(), size=2048, key_operations=["sign", "verify"])
    crypto = _crypto(azure_emulator, str(key.id))
    with pytest.raises(HttpResponseError) as err:
        crypto.decrypt(EncryptionAlgorithm.rsa_oaep, b"\0" * 256)
    assert err.value.status_code == 403
    assert err.value.error is not None
    assert err.value.error.code == "Forbidden"
    assert err.value.error.innererror["code"] == "KeyOperationForbidden"
    client.update_key_properties(key.name, enabled=False)
    with pytest.raises(HttpResponseError) as err:
        crypto.sign(SignatureAlgorithm.rs256, _sha(b"x"))
    assert err.value.status_code == 403


def test_wrong_algorithm_for_the_key_is_400(client: KeyClient, aes_key: tuple[str, str, bytes]) -> None:
    name, version, _ = aes_key
    response = client.send_request(
        HttpRequest("POST", f"/keys/{name}/{version}/wrapkey", json={"alg": "A128KW", "value": _b64(b"k" * 16)})
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadParameter"


def test_expired_key_still_decrypts_but_no_longer_encrypts(client: KeyClient) -> None:
    """Key Vault keeps decrypt/unwrap/verify usable after ``exp`` so old data stays readable."""
    from datetime import datetime, timedelta, timezone

    name = _name()
    key = client.create_oct_key(name, size=256, hardware_protected=True)
    path = f"/keys/{name}/{key.properties.version}"
    sealed = _post(client, f"{path}/encrypt", {"alg": "A256GCM", "value": _b64(b"old data")})
    client.update_key_properties(name, expires_on=datetime.now(timezone.utc) - timedelta(minutes=1))
    refused = client.send_request(HttpRequest("POST", f"{path}/encrypt", json={"alg": "A256GCM", "value": _b64(b"x")}))
    assert refused.status_code == 403
    assert refused.json()["error"]["innererror"]["code"] == "KeyOperationForbidden"
    opened = _post(client, f"{path}/decrypt", {"alg": "A256GCM", **{k: sealed[k] for k in ("value", "iv", "tag")}})
    assert _unb64(opened["value"]) == b"old data"
