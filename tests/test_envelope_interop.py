"""Messages cross between keybridge and aws-encryption-sdk 4.x in both directions, for both suites
and every plaintext shape around the frame boundaries, with raw AES and raw RSA master keys."""

from __future__ import annotations

import base64
import os

import pytest
from aws_encryption_sdk.exceptions import CustomMaximumValueExceeded
from aws_encryption_sdk.identifiers import Algorithm, EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from _envelope_support import RawAesSource, esdk_client, esdk_raw_aes
from keybridge import InMemoryProvider
from keybridge.envelope import PUBLIC_KEY_CONTEXT_KEY, AnyOf, Keyring, Suite, decrypt, encrypt, open_encryptor
from keybridge.errors import InvalidMessage

F = 128  # ESDK 4.x encrypts only with frame lengths in multiples of 128 (block size in bits taken as bytes)
SIZES = {"empty": 0, "one-byte": 1, "one-frame": F, "frame+1": F + 1, "multi-frame": 3 * F + 5}
SUITES = {
    Suite.AES256_GCM_HKDF_SHA512_COMMIT: Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
    Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384: Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384,
}
CTX = {"tenant": "ü-42", "purpose": "interop", "b": ""}


@pytest.fixture(scope="module")
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _keys(kind: str, kek: bytes, rsa_key: rsa.RSAPrivateKey, oaep: str = "RSA-OAEP-256"):  # type: ignore[no-untyped-def]
    """(keybridge keys, ESDK master key) for the same KEK, namespace and name."""
    if kind == "cryptography":
        return RawAesSource(kek), esdk_raw_aes(kek)
    provider = InMemoryProvider()
    if kind == "keyring-aes":
        provider.import_key("kek", kek)
        return Keyring(provider.key("kek"), namespace="keybridge-test", name="kek-1"), esdk_raw_aes(kek)
    provider.import_key("rsa", rsa_key)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    wrapping = (
        WrappingAlgorithm.RSA_OAEP_SHA256_MGF1 if oaep == "RSA-OAEP-256" else WrappingAlgorithm.RSA_OAEP_SHA1_MGF1
    )
    mk = RawMasterKey(
        provider_id="keybridge-test",
        key_id=b"rsa-1",
        wrapping_key=WrappingKey(wrapping, pem, EncryptionKeyType.PRIVATE),
    )
    return Keyring(provider.key("rsa"), namespace="keybridge-test", name="rsa-1", wrapping=oaep), mk


@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: f"0x{s:04X}")
@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("kind", ["cryptography", "keyring-aes"])
def test_esdk_reads_keybridge_and_keybridge_reads_esdk(kind: str, size: int, suite: Suite, kek: bytes, rsa_key) -> None:  # type: ignore[no-untyped-def]
    keys, mk = _keys(kind, kek, rsa_key)
    client = esdk_client()
    plaintext = os.urandom(size)

    ours = encrypt(plaintext, keys, context=CTX, frame_length=F, suite=suite)
    got, header = client.decrypt(source=ours, key_provider=mk)
    assert got == plaintext
    assert header.algorithm is SUITES[suite]
    assert header.frame_length == F
    assert {k: v for k, v in header.encryption_context.items() if k != PUBLIC_KEY_CONTEXT_KEY} == CTX

    theirs, _ = client.encrypt(
        source=plaintext, key_provider=mk, encryption_context=CTX, algorithm=SUITES[suite], frame_length=F
    )
    result = decrypt(theirs, keys, expected_context=CTX)
    assert result.plaintext == plaintext
    assert result.suite is suite
    assert dict(result.context).items() >= CTX.items()


@pytest.mark.parametrize("oaep", ["RSA-OAEP-256", "RSA-OAEP"])
@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: f"0x{s:04X}")
def test_raw_rsa_both_directions(oaep: str, suite: Suite, kek: bytes, rsa_key: rsa.RSAPrivateKey) -> None:
    keys, mk = _keys("keyring-rsa", kek, rsa_key, oaep)
    client = esdk_client()
    for size in (0, F + 1):
        plaintext = os.urandom(size)
        got, _ = client.decrypt(
            source=encrypt(plaintext, keys, context=CTX, frame_length=F, suite=suite), key_provider=mk
        )
        assert got == plaintext
        theirs, _ = client.encrypt(source=plaintext, key_provider=mk, encryption_context=CTX, algorithm=SUITES[suite])
        assert decrypt(theirs, keys).plaintext == plaintext


def test_esdk_defaults_decrypt(kek: bytes) -> None:
    """ESDK defaults (0x0578, 4096-byte frames) come out as such, several frames long."""
    plaintext = os.urandom(3 * 4096 + 17)
    theirs, _ = esdk_client().encrypt(source=plaintext, key_provider=esdk_raw_aes(kek), encryption_context=CTX)
    result = decrypt(theirs, RawAesSource(kek))
    assert (result.plaintext, result.suite, result.frame_length) == (
        plaintext,
        Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384,
        4096,
    )


def test_default_frame_length_message_multi_frame(kek: bytes) -> None:
    plaintext = os.urandom(2 * 65536 + 3)
    ours = encrypt(plaintext, RawAesSource(kek))
    got, header = esdk_client().decrypt(source=ours, key_provider=esdk_raw_aes(kek))
    assert got == plaintext
    assert header.frame_length == 65536
    assert header.algorithm is Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY


def test_streamed_message_reads_in_esdk(kek: bytes) -> None:
    import io

    plaintext = os.urandom(5 * F + 7)
    sink = io.BytesIO()
    with open_encryptor(
        sink, RawAesSource(kek), frame_length=F, suite=Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384
    ) as w:
        for i in range(0, len(plaintext), 37):
            w.write(plaintext[i : i + 37])
    got, _ = esdk_client().decrypt(source=sink.getvalue(), key_provider=esdk_raw_aes(kek))
    assert got == plaintext


def test_signed_public_key_is_the_compressed_point_esdk_verifies_with(kek: bytes) -> None:
    msg = encrypt(b"x", RawAesSource(kek), suite=Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384)
    _, header = esdk_client().decrypt(source=msg, key_provider=esdk_raw_aes(kek))
    point = base64.b64decode(header.encryption_context[PUBLIC_KEY_CONTEXT_KEY])
    assert len(point) == 49
    assert point[0] in (2, 3)
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point)
    assert (
        decrypt(msg, RawAesSource(kek)).context[PUBLIC_KEY_CONTEXT_KEY]
        == header.encryption_context[PUBLIC_KEY_CONTEXT_KEY]
    )


def test_max_encrypted_data_keys_agrees_with_esdk(kek: bytes) -> None:
    keys = AnyOf(RawAesSource(kek), RawAesSource(kek, name="kek-2"), RawAesSource(kek, name="kek-3"))
    msg = encrypt(b"three edks", keys)
    assert decrypt(msg, RawAesSource(kek), max_encrypted_data_keys=3).plaintext == b"three edks"
    with pytest.raises(InvalidMessage, match="3 encrypted data keys"):
        decrypt(msg, RawAesSource(kek), max_encrypted_data_keys=2)
    with pytest.raises(CustomMaximumValueExceeded):
        esdk_client(max_encrypted_data_keys=2).decrypt(source=msg, key_provider=esdk_raw_aes(kek))
