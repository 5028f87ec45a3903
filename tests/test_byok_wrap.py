"""Software CKM_RSA_AES_KEY_WRAP: wrap_for_azure, unwrap, load_unwrapped and the KEK checks."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keybridge import IntegrityError, InvalidArgument, InvalidKeySpec, InvalidPackage, KeySpec
from keybridge._crypto import rsa_aes_key_wrap
from keybridge.byok import ByokPackage, load_kek_public_key, load_unwrapped, unwrap, wrap_for_azure

KID = "https://contoso.managedhsm.azure.net/keys/kek/0123456789abcdef"


@pytest.fixture(scope="module")
def kek() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def der(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_rsa_round_trip_gives_pkcs8_der_and_sizes_match_the_spec(kek: rsa.RSAPrivateKey, rsa_key) -> None:
    pkg = wrap_for_azure(rsa_key, kek.public_key(), KID)
    assert pkg.kid == KID
    assert pkg.enc == "CKM_RSA_AES_KEY_WRAP"
    assert pkg.alg == "dir"
    plaintext = der(rsa_key)
    # RSA-OAEP block of the KEK modulus size, then RFC 5649 output of ceil8(len) + 8 bytes.
    assert len(pkg.ciphertext) == 256 + (len(plaintext) + 7) // 8 * 8 + 8
    assert unwrap(pkg, kek) == plaintext
    loaded = load_unwrapped(unwrap(pkg, kek), KeySpec.rsa(2048))
    assert isinstance(loaded, rsa.RSAPrivateKey)
    assert loaded.private_numbers() == rsa_key.private_numbers()


@pytest.mark.parametrize("curve", ["P-256", "P-384", "P-521"])
def test_ec_round_trip(kek: rsa.RSAPrivateKey, curve: str) -> None:
    from keybridge.keys import CURVES

    key = ec.generate_private_key(CURVES[curve])
    pkg = wrap_for_azure(key, kek.public_key(), KID)
    loaded = load_unwrapped(unwrap(pkg, kek), KeySpec.ec(curve))
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()


@pytest.mark.parametrize("size", [16, 24, 32])
def test_aes_round_trip_is_raw_bytes(kek: rsa.RSAPrivateKey, size: int) -> None:
    key = os.urandom(size)
    pkg = wrap_for_azure(key, kek.public_key(), KID)
    assert len(pkg.ciphertext) == 256 + size + 8
    assert unwrap(pkg, kek) == key
    assert load_unwrapped(unwrap(pkg, kek), KeySpec.aes(size * 8)) == key


def test_aes_key_that_looks_like_der_is_not_cut(kek: rsa.RSAPrivateKey) -> None:
    key = b"\x30\x03" + b"\x00" * 30  # a DER header claiming 5 bytes, followed by zeros
    assert unwrap(wrap_for_azure(key, kek.public_key(), KID), kek) == key


def test_unwrap_with_another_kek_is_an_integrity_error(kek: rsa.RSAPrivateKey, rsa_key) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(IntegrityError, match="wrong KEK"):
        unwrap(wrap_for_azure(rsa_key, kek.public_key(), KID), other)


@pytest.mark.parametrize("where", [10, 270, -1])
def test_tampered_ciphertext_is_an_integrity_error(kek: rsa.RSAPrivateKey, where: int) -> None:
    pkg = wrap_for_azure(os.urandom(32), kek.public_key(), KID)
    blob = bytearray(pkg.ciphertext)
    blob[where] ^= 0x01
    with pytest.raises(IntegrityError):
        unwrap(ByokPackage(kid=KID, ciphertext=bytes(blob)), kek)


def test_ciphertext_shorter_than_the_kek_block_is_invalid_package() -> None:
    big_kek = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    with pytest.raises(InvalidPackage, match="RSA-3072"):
        unwrap(ByokPackage(kid=KID, ciphertext=os.urandom(300)), big_kek)


# ---- SoftHSM 2.6.1 zero padding ------------------------------------------------------------------


def softhsm_style(kek: rsa.RSAPublicKey, plaintext: bytes, pad: bytes | None = None) -> ByokPackage:
    """Wrap as SoftHSM 2.6.1 does: the DER zero-padded to a multiple of 8 *before* RFC 5649."""
    if pad is None:
        pad = b"\x00" * (-len(plaintext) % 8)
    return ByokPackage(kid=KID, ciphertext=rsa_aes_key_wrap(kek, plaintext + pad))


def test_softhsm_zero_padding_is_removed(kek: rsa.RSAPrivateKey) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    plaintext = der(key)
    assert len(plaintext) % 8  # P-256 PKCS#8 is not a multiple of 8, so SoftHSM would pad it
    assert unwrap(softhsm_style(kek.public_key(), plaintext), kek) == plaintext


@pytest.mark.parametrize("pad", [b"\x00\x00\x01", b"\x00" * 8, b"\xff"])
def test_anything_but_up_to_seven_zeros_after_the_der_is_refused(kek: rsa.RSAPrivateKey, pad: bytes) -> None:
    plaintext = der(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidPackage, match="unexpected bytes"):
        unwrap(softhsm_style(kek.public_key(), plaintext, pad), kek)


def test_plaintext_that_is_neither_aes_nor_der_is_refused(kek: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidPackage, match="neither"):
        unwrap(ByokPackage(kid=KID, ciphertext=rsa_aes_key_wrap(kek.public_key(), b"\x04" * 40)), kek)


# ---- loading for a spec --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_factory", "spec", "words"),
    [
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), KeySpec.ec("P-256"), "RSA-2048"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), KeySpec.ec("P-384"), "EC-P-256"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), KeySpec.rsa(2048), "EC-P-256"),
        (lambda: os.urandom(32), KeySpec.rsa(2048), "raw AES key"),
        (lambda: os.urandom(32), KeySpec.aes(128), "AES-128"),
    ],
)
def test_a_package_of_another_key_type_is_invalid_package(kek, key_factory, spec: KeySpec, words: str) -> None:
    pkg = wrap_for_azure(key_factory(), kek.public_key(), KID)
    with pytest.raises(InvalidPackage, match=words):
        load_unwrapped(unwrap(pkg, kek), spec)


# ---- KEK and key checks --------------------------------------------------------------------------


def test_kek_public_key_loads_from_object_pem_text_and_der(kek: rsa.RSAPrivateKey) -> None:
    pub = kek.public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der_ = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for form in (pub, pem, pem.decode(), der_):
        assert load_kek_public_key(form).public_numbers() == pub.public_numbers()


def test_kek_must_be_rsa_of_an_azure_size() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(InvalidKeySpec, match="RSA-1024"):
        load_kek_public_key(small)
    with pytest.raises(InvalidKeySpec, match="RSA public key"):
        load_kek_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not a readable public key"):
        load_kek_public_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


@pytest.mark.parametrize(
    "kid",
    [
        "https://contoso.managedhsm.azure.net/keys/kek",  # no version: Azure needs the full kid
        "http://contoso.managedhsm.azure.net/keys/kek/1",
        "https://contoso.managedhsm.azure.net/secrets/kek/1",
        "memory:kek/1",
    ],
)
def test_kek_id_must_be_a_full_key_id(kek: rsa.RSAPrivateKey, kid: str) -> None:
    with pytest.raises(InvalidArgument, match="full key id"):
        wrap_for_azure(os.urandom(32), kek.public_key(), kid)


def test_target_keys_azure_cannot_take_are_refused(kek: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidKeySpec):
        wrap_for_azure(os.urandom(20), kek.public_key(), KID)
    with pytest.raises(InvalidKeySpec):
        wrap_for_azure(rsa.generate_private_key(public_exponent=65537, key_size=1024), kek.public_key(), KID)
