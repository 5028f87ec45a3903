"""Keyring: one KEK over any provider, writing ESDK raw-keyring EDKs.

Layouts are checked against independent implementations: ``cryptography`` directly, and
aws-encryption-sdk's ``RawMasterKey`` (both directions).
"""

from __future__ import annotations

import os
import struct

import pytest
from aws_encryption_sdk.identifiers import Algorithm, EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.internal.formatting.encryption_context import serialize_encryption_context
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from aws_encryption_sdk.structures import EncryptedDataKey as EsdkEdk
from aws_encryption_sdk.structures import MasterKeyInfo, RawDataKey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from keybridge import ALGORITHMS, InMemoryProvider, KeySpec, audit
from keybridge.envelope._keyring import (
    DataKeyUnavailable,
    Keyring,
    NoMatchingEdk,
    data_key_length,
    serialize_context,
)
from keybridge.envelope._materials import EncryptedDataKey, MaterialsSource
from keybridge.errors import IntegrityError, InvalidArgument, KeyNotFound, UnsupportedAlgorithm

SUITE = 0x0478
ESDK_SUITE = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
CTX = {"purpose": "test", "tenant": "ü-42", "a": ""}


class NoGcmProvider(InMemoryProvider):
    """A real in-memory provider that, like some HSMs, offers no AES-GCM."""

    algorithms = frozenset(a for a in ALGORITHMS if not a.endswith("GCM"))


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def provider() -> InMemoryProvider:
    return InMemoryProvider()


@pytest.fixture
def calls():
    """Backend operations seen through the audit sink (real provider calls)."""
    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)
    yield events
    audit.remove_sink(events.append)


def esdk_key(kek: bytes | rsa.RSAPrivateKey, key_id: str, wrapping: WrappingAlgorithm, pid: str = "keybridge"):
    if isinstance(kek, bytes):
        wk = WrappingKey(wrapping, kek, EncryptionKeyType.SYMMETRIC)
    else:
        pem = kek.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        wk = WrappingKey(wrapping, pem, EncryptionKeyType.PRIVATE)
    return RawMasterKey(provider_id=pid, key_id=key_id.encode(), wrapping_key=wk)


def to_esdk(edk: EncryptedDataKey) -> EsdkEdk:
    return EsdkEdk(MasterKeyInfo(edk.provider_id, edk.provider_info), edk.ciphertext)


def from_esdk(edk: EsdkEdk) -> EncryptedDataKey:
    pid = edk.key_provider.provider_id
    return EncryptedDataKey(
        pid.encode() if isinstance(pid, str) else pid, edk.key_provider.key_info, edk.encrypted_data_key
    )


# ---- encryption-context serialization ----------------------------------------------------------


@pytest.mark.parametrize(
    "context",
    [{}, {"k": "v"}, CTX, {"b": "1", "a": "2", "é": "x", "z": "y", "aa": "3"}],
)
def test_context_serialization_is_byte_identical_to_esdk(context: dict[str, str]) -> None:
    assert serialize_context(context) == serialize_encryption_context(context)


def test_empty_context_serializes_to_no_bytes() -> None:
    assert serialize_context({}) == b""


def test_keyring_is_a_materials_source(provider: InMemoryProvider) -> None:
    provider.create_key("kek", KeySpec.aes(256))
    assert isinstance(Keyring(provider.key("kek")), MaterialsSource)


# ---- AES-GCM (ESDK raw AES keyring layout) -------------------------------------------------------


def test_aes_edk_has_the_raw_aes_layout_and_opens_with_plain_aesgcm(provider: InMemoryProvider) -> None:
    kek = os.urandom(32)
    provider.import_key("kek", kek)
    ring = Keyring(provider.key("kek"))
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=5)
    (edk,) = mat.edks
    name = b"memory:kek"
    assert edk.provider_id == b"keybridge"
    assert edk.provider_info[: len(name)] == name
    assert struct.unpack(">II", edk.provider_info[len(name) : len(name) + 8]) == (128, 12)
    iv = edk.provider_info[len(name) + 8 :]
    assert len(iv) == 12
    assert len(edk.ciphertext) == 32 + 16
    assert AESGCM(kek).decrypt(iv, edk.ciphertext, serialize_encryption_context(CTX)) == mat.data_key
    assert len(mat.data_key) == data_key_length(SUITE) == 32


@pytest.mark.parametrize("bits", [128, 256])
def test_esdk_raw_aes_key_opens_keybridge_edk(provider: InMemoryProvider, bits: int) -> None:
    kek = os.urandom(bits // 8)
    provider.import_key("kek", kek)
    ring = Keyring(provider.key("kek"), namespace="acme", name="kek-1")
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=None)
    wrapping = getattr(WrappingAlgorithm, f"AES_{bits}_GCM_IV12_TAG16_NO_PADDING")
    mk = esdk_key(kek, "kek-1", wrapping, pid="acme")
    assert mk.owns_data_key(to_esdk(mat.edks[0]))
    assert mk.decrypt_data_key(to_esdk(mat.edks[0]), ESDK_SUITE, CTX).data_key == mat.data_key


@pytest.mark.parametrize("context", [{}, CTX])
def test_keybridge_opens_esdk_raw_aes_edk(provider: InMemoryProvider, context: dict[str, str]) -> None:
    kek = os.urandom(32)
    provider.import_key("kek", kek)
    mk = esdk_key(kek, "kek-1", WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING)
    data_key = os.urandom(32)
    edk = mk.encrypt_data_key(RawDataKey(mk.key_provider, data_key), ESDK_SUITE, context)
    ring = Keyring(provider.key("kek"), name="kek-1")
    assert ring.decryption_materials(suite_id=SUITE, context=context, edks=[from_esdk(edk)]) == data_key


def test_aes_gcm_edk_binds_the_encryption_context(provider: InMemoryProvider) -> None:
    provider.create_key("kek", KeySpec.aes(256))
    ring = Keyring(provider.key("kek"))
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=1)
    with pytest.raises(IntegrityError) as info:
        ring.decryption_materials(suite_id=SUITE, context={**CTX, "purpose": "other"}, edks=mat.edks)
    assert isinstance(info.value, KeyNotFound)  # wrong key and damage look alike
    assert "memory:kek" in str(info.value)


# ---- AES key wrap (keybridge-only fallback) ---------------------------------------------------


def test_provider_without_gcm_falls_back_to_key_wrap_pad() -> None:
    p = NoGcmProvider()
    kek = os.urandom(32)
    p.import_key("kek", kek)
    ring = Keyring(p.key("kek"))
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=1)
    (edk,) = mat.edks
    alg = b"CKM_AES_KEY_WRAP_PAD"
    assert edk.provider_info == b"memory:kek" + struct.pack(">II", 0, len(alg)) + alg
    assert aes_key_unwrap_with_padding(kek, edk.ciphertext) == mat.data_key
    assert ring.decryption_materials(suite_id=SUITE, context=CTX, edks=mat.edks) == mat.data_key
    # An ESDK raw AES keyring with the same name does not claim it (it is not its layout).
    assert not esdk_key(kek, "memory:kek", WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING).owns_data_key(
        to_esdk(edk)
    )


def test_explicit_a256kw_wrapping_round_trips_and_is_read_by_a_gcm_keyring(provider: InMemoryProvider) -> None:
    provider.create_key("kek", KeySpec.aes(256))
    kw = Keyring(provider.key("kek"), wrapping="A256KW")
    mat = kw.encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)
    assert mat.edks[0].provider_info.endswith(b"A256KW")
    # Decryption reads every layout, whatever the keyring would write.
    assert Keyring(provider.key("kek")).decryption_materials(suite_id=SUITE, context={}, edks=mat.edks) == (
        mat.data_key
    )


# ---- RSA (ESDK raw RSA keyring layout) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrapping", "esdk_wrapping", "hash_"),
    [
        (None, WrappingAlgorithm.RSA_OAEP_SHA256_MGF1, hashes.SHA256()),
        ("RSA-OAEP", WrappingAlgorithm.RSA_OAEP_SHA1_MGF1, hashes.SHA1()),
    ],
)
def test_rsa_edk_matches_esdk_raw_rsa_both_ways(
    provider: InMemoryProvider, rsa_private: rsa.RSAPrivateKey, wrapping, esdk_wrapping, hash_
) -> None:
    provider.import_key("rsa", rsa_private)
    ring = Keyring(provider.key("rsa"), namespace="acme", name="rsa-1", wrapping=wrapping)
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=1)
    (edk,) = mat.edks
    assert (edk.provider_id, edk.provider_info) == (b"acme", b"rsa-1")
    oaep = padding.OAEP(mgf=padding.MGF1(hash_), algorithm=hash_, label=None)
    assert rsa_private.decrypt(edk.ciphertext, oaep) == mat.data_key
    mk = esdk_key(rsa_private, "rsa-1", esdk_wrapping, pid="acme")
    assert mk.decrypt_data_key(to_esdk(edk), ESDK_SUITE, CTX).data_key == mat.data_key
    data_key = os.urandom(32)
    theirs = mk.encrypt_data_key(RawDataKey(mk.key_provider, data_key), ESDK_SUITE, CTX)
    assert ring.decryption_materials(suite_id=SUITE, context=CTX, edks=[from_esdk(theirs)]) == data_key


def test_rsa_edk_does_not_bind_the_context_as_in_the_esdk(
    provider: InMemoryProvider, rsa_private: rsa.RSAPrivateKey
) -> None:
    provider.import_key("rsa", rsa_private)
    ring = Keyring(provider.key("rsa"))
    mat = ring.encryption_materials(suite_id=SUITE, context=CTX, plaintext_length=1)
    assert ring.decryption_materials(suite_id=SUITE, context={}, edks=mat.edks) == mat.data_key


def test_default_rsa_keyring_reads_sha1_edks_too(provider: InMemoryProvider, rsa_private: rsa.RSAPrivateKey) -> None:
    provider.import_key("rsa", rsa_private)
    sha1 = Keyring(provider.key("rsa"), wrapping="RSA-OAEP").encryption_materials(
        suite_id=SUITE, context={}, plaintext_length=1
    )
    assert Keyring(provider.key("rsa")).decryption_materials(suite_id=SUITE, context={}, edks=sha1.edks) == (
        sha1.data_key
    )


def test_rsa_key_allowed_only_encrypt_decrypt_uses_those_ops(provider: InMemoryProvider) -> None:
    provider.create_key("rsa", KeySpec.rsa(2048), ops=["encrypt", "decrypt"])
    ring = Keyring(provider.key("rsa"))
    mat = ring.encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)
    assert ring.decryption_materials(suite_id=SUITE, context={}, edks=mat.edks) == mat.data_key


# ---- matching, errors, rotation --------------------------------------------------------------------


def test_foreign_edks_are_skipped_without_touching_the_backend(provider: InMemoryProvider, calls) -> None:
    provider.create_key("kek", KeySpec.aes(256))
    ring = Keyring(provider.key("kek"))
    foreign = [
        EncryptedDataKey(b"other", b"memory:kek" + bytes(20), bytes(48)),
        EncryptedDataKey(b"keybridge", b"memory:kek2" + struct.pack(">II", 128, 12) + bytes(12), bytes(48)),
        EncryptedDataKey(b"keybridge", b"memory:kek" + struct.pack(">II", 96, 12) + bytes(12), bytes(48)),
    ]
    calls.clear()
    with pytest.raises(DataKeyUnavailable) as info:
        ring.decryption_materials(suite_id=SUITE, context={}, edks=foreign)
    assert [type(e) for _, e in info.value.failures] == [NoMatchingEdk]
    assert not [e for e in calls if e.operation in ("decrypt", "unwrap_key")]


def test_a_damaged_edk_is_reported_and_the_next_one_used(provider: InMemoryProvider) -> None:
    provider.create_key("kek", KeySpec.aes(256))
    ring = Keyring(provider.key("kek"))
    good = ring.encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)
    (edk,) = good.edks
    bad = EncryptedDataKey(edk.provider_id, edk.provider_info, bytes([edk.ciphertext[0] ^ 1]) + edk.ciphertext[1:])
    assert ring.decryption_materials(suite_id=SUITE, context={}, edks=[bad, edk]) == good.data_key
    with pytest.raises(IntegrityError) as info:
        ring.decryption_materials(suite_id=SUITE, context={}, edks=[bad])
    assert [type(e) for _, e in info.value.failures] == [IntegrityError]


def test_default_name_has_no_version_so_old_versions_still_match(provider: InMemoryProvider) -> None:
    v1 = provider.create_key("kek", KeySpec.aes(256)).ref.version
    mat = Keyring(provider.key("kek")).encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)
    provider.rotate_key("kek")
    # The current version is a different key; the unversioned keyring falls back to older versions.
    current = Keyring(provider.key("kek"))
    assert current.decryption_materials(suite_id=SUITE, context={}, edks=mat.edks) == mat.data_key
    pinned = Keyring(provider.key("kek", v1))
    assert pinned.name == "memory:kek"
    assert pinned.decryption_materials(suite_id=SUITE, context={}, edks=mat.edks) == mat.data_key


def test_wrap_existing_wraps_the_given_key(provider: InMemoryProvider) -> None:
    provider.create_key("kek", KeySpec.aes(256))
    ring = Keyring(provider.key("kek"))
    data_key = os.urandom(32)
    edks = ring.wrap_existing(data_key, suite_id=SUITE, context=CTX)
    assert ring.decryption_materials(suite_id=SUITE, context=CTX, edks=edks) == data_key
    with pytest.raises(InvalidArgument):
        ring.wrap_existing(data_key[:16], suite_id=SUITE, context=CTX)


def test_nothing_secret_in_reprs_or_errors(provider: InMemoryProvider) -> None:
    kek = os.urandom(32)
    provider.import_key("kek", kek)
    ring = Keyring(provider.key("kek"))
    mat = ring.encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)
    with pytest.raises(IntegrityError) as info:
        ring.decryption_materials(suite_id=SUITE, context={"x": "y"}, edks=mat.edks)
    text = repr(ring) + repr(mat) + str(info.value)
    for secret in (kek, mat.data_key):
        assert secret.hex() not in text
        assert repr(secret)[2:-1] not in text


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"namespace": "aws-kms"}, InvalidArgument),
        ({"name": ""}, InvalidArgument),
        ({"wrapping": "RSA-OAEP-256"}, UnsupportedAlgorithm),
        ({"wrapping": "A128GCM"}, UnsupportedAlgorithm),
    ],
)
def test_bad_keyring_settings_are_refused(provider: InMemoryProvider, kwargs, error) -> None:
    provider.create_key("kek", KeySpec.aes(256))
    with pytest.raises(error):
        Keyring(provider.key("kek"), **kwargs).encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)


def test_ec_keys_and_unknown_suites_are_refused(provider: InMemoryProvider) -> None:
    provider.create_key("ec", KeySpec.ec("P-256"))
    with pytest.raises(UnsupportedAlgorithm, match="AES or RSA"):
        Keyring(provider.key("ec")).encryption_materials(suite_id=SUITE, context={}, plaintext_length=1)
    provider.create_key("kek", KeySpec.aes(256))
    with pytest.raises(UnsupportedAlgorithm, match="0x0014"):
        Keyring(provider.key("kek")).encryption_materials(suite_id=0x0014, context={}, plaintext_length=1)
    with pytest.raises(InvalidArgument, match="KeyHandle"):
        Keyring("memory:kek")  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [KeySpec.aes(256), KeySpec.rsa(2048)], ids=str)
def test_messages_written_before_a_kek_rotation_still_decrypt(spec: KeySpec) -> None:
    from keybridge.envelope import decrypt, encrypt

    kp = InMemoryProvider()
    kp.create_key("rot", spec)
    handle = kp.key("rot")  # unversioned: always the current version
    old_message = encrypt(b"before rotation", handle)
    kp.rotate_key("rot")
    new_message = encrypt(b"after rotation", handle)
    assert decrypt(old_message, handle).plaintext == b"before rotation"
    assert decrypt(new_message, handle).plaintext == b"after rotation"
    # The new message is under the new version only: the old version alone cannot open it.
    old_version = next(iter(kp.list_versions("rot"))).ref
    with pytest.raises(IntegrityError):
        decrypt(new_message, kp.key(old_version))
