"""Independent check of the package format with the OpenSSL command line: RSA-OAEP (SHA-1, MGF1
SHA-1) on the first KEK-modulus bytes, then AES key wrap with padding (RFC 5649) on the rest, must
give back exactly the key that went in — for packages made in software and made inside SoftHSM."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybridge import KeySpec, open_provider
from keybridge.byok import ByokPackage, export, unwrap, wrap_for_azure

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

KID = "https://contoso.managedhsm.azure.net/keys/kek/0123456789abcdef"


@pytest.fixture(scope="module")
def kek() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def openssl_unwrap(tmp: Path, kek: rsa.RSAPrivateKey, package: ByokPackage) -> bytes:
    """The package opened by OpenSSL alone (no keybridge, no cryptography on the decrypt path)."""
    k = kek.key_size // 8
    (tmp / "kek.pem").write_bytes(
        kek.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp / "eph.enc").write_bytes(package.ciphertext[:k])
    (tmp / "target.enc").write_bytes(package.ciphertext[k:])
    subprocess.run(
        ["openssl", "pkeyutl", "-decrypt", "-inkey", tmp / "kek.pem", "-in", tmp / "eph.enc", "-out", tmp / "eph",
         "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1", "-pkeyopt", "rsa_mgf1_md:sha1"],
        check=True, capture_output=True,
    )  # fmt: skip
    eph = (tmp / "eph").read_bytes()
    assert len(eph) == 32  # AES-256 ephemeral key, as every Azure BYOK tool uses
    subprocess.run(
        ["openssl", "enc", "-d", "-id-aes256-wrap-pad", "-K", eph.hex(), "-iv", "A65959A6",
         "-in", tmp / "target.enc", "-out", tmp / "target"],
        check=True, capture_output=True,
    )  # fmt: skip
    return (tmp / "target").read_bytes()


def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    der = serialization.Encoding.DER
    return key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ec.generate_private_key(ec.SECP521R1()),
        lambda: os.urandom(32),
        lambda: os.urandom(16),
    ],
    ids=["rsa2048", "p256", "p521", "aes256", "aes128"],
)
def test_openssl_opens_a_software_package_to_the_exact_key(tmp_path: Path, kek: rsa.RSAPrivateKey, make) -> None:
    key = make()
    expected = key if isinstance(key, bytes) else pkcs8(key)
    path = tmp_path / "key.byok"
    wrap_for_azure(key, kek.public_key(), KID).write(path)
    assert openssl_unwrap(tmp_path, kek, ByokPackage.read(path)) == expected


def test_keybridge_opens_a_package_made_by_openssl(tmp_path: Path, kek: rsa.RSAPrivateKey) -> None:
    """The reverse direction: the Microsoft-documented OpenSSL recipe, opened by keybridge."""
    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "kek.pub").write_bytes(
        kek.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "key.der").write_bytes(pkcs8(key))
    eph = os.urandom(32)
    (tmp_path / "eph").write_bytes(eph)
    subprocess.run(
        ["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", tmp_path / "kek.pub", "-in", tmp_path / "eph",
         "-out", tmp_path / "eph.enc", "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1",
         "-pkeyopt", "rsa_mgf1_md:sha1"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "enc", "-e", "-id-aes256-wrap-pad", "-K", eph.hex(), "-iv", "A65959A6",
         "-in", tmp_path / "key.der", "-out", tmp_path / "key.enc"],
        check=True, capture_output=True,
    )  # fmt: skip
    blob = (tmp_path / "eph.enc").read_bytes() + (tmp_path / "key.enc").read_bytes()
    assert unwrap(ByokPackage(kid=KID, ciphertext=blob), kek) == pkcs8(key)


# ---- packages made inside SoftHSM ----------------------------------------------------------------


@pytest.fixture
def hsm(softhsm_token):  # type: ignore[no-untyped-def]
    uri = f"pkcs11:token={softhsm_token.token_label}?module-path={softhsm_token.module_path}"
    with open_provider(uri, user_pin=softhsm_token.user_pin) as provider:
        yield provider


def strip_softhsm_padding(plaintext: bytes) -> bytes:
    """SoftHSM 2.6.1 zero-pads the DER before RFC 5649; cut to the DER length, insist on zeros."""
    assert plaintext[0] == 0x30
    n = plaintext[1] & 0x7F
    total = 2 + plaintext[1] if plaintext[1] < 0x80 else 2 + n + int.from_bytes(plaintext[2 : 2 + n], "big")
    assert len(plaintext) - total <= 7
    assert plaintext[total:] == b"\x00" * (len(plaintext) - total)
    return plaintext[:total]


@pytest.mark.parametrize("spec", [KeySpec.rsa(2048), KeySpec.ec("P-256"), KeySpec.ec("P-521")], ids=str)
def test_openssl_opens_a_softhsm_package_to_the_token_key(tmp_path: Path, kek, hsm, spec: KeySpec) -> None:
    name = f"openssl-{spec.kty}-{spec.size}"
    info = hsm.create_key(name, spec, exportable=True)
    package = export(hsm, name, kek.public_key(), KID)
    opened = openssl_unwrap(tmp_path, kek, package)
    der = strip_softhsm_padding(opened)
    assert unwrap(package, kek) == der  # keybridge strips the same padding
    key = serialization.load_der_private_key(der, password=None)
    assert key.public_key().public_numbers() == info.public_key.public_numbers()
    # ... and it is the token's key, not just one with the same public half: it signs like the token.
    alg = "RS256" if spec.kty.value == "RSA" else {"P-256": "ES256", "P-521": "ES512"}[spec.curve or ""]
    h = hashes.SHA256() if alg != "ES512" else hashes.SHA512()
    digest = hashlib.new(h.name, b"hsm").digest()
    sig = hsm.sign(name, alg, digest)
    if isinstance(key, rsa.RSAPrivateKey):
        key.public_key().verify(sig, b"hsm", padding.PKCS1v15(), h)
    else:
        half = len(sig) // 2
        r, s = int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big")
        key.public_key().verify(encode_dss_signature(r, s), b"hsm", ec.ECDSA(h))


def test_openssl_opens_a_softhsm_aes_package_to_the_token_key(tmp_path: Path, kek, hsm) -> None:
    hsm.create_key("openssl-aes", KeySpec.aes(256), exportable=True)
    package = export(hsm, "openssl-aes", kek.public_key(), KID)
    key = openssl_unwrap(tmp_path, kek, package)
    assert len(key) == 32
    sealed = hsm.encrypt("openssl-aes", "A256GCM", b"from the token", aad=b"a")
    assert AESGCM(key).decrypt(sealed[:12], sealed[12:], b"a") == b"from the token"
