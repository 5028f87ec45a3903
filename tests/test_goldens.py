"""Known answers made by other implementations (tests/golden/README.md): ESDK messages written by
aws-encryption-sdk and .byok packages written with the OpenSSL command line. keybridge must open
them to the committed plaintext and keys, so a misunderstanding our encoder and decoder share
(which every round-trip test would miss) fails here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybridge import InMemoryProvider
from keybridge.byok import ByokPackage, unwrap
from keybridge.envelope import Keyring, Suite, decrypt
from keybridge.errors import IntegrityError, InvalidMessage
from keybridge.keys import KeyOp, KeySpec
from keybridge.testing._conformance_support import sig_hash, verify_outside

GOLDEN = Path(__file__).parent / "golden"
BYOK = GOLDEN / "byok"
NAMESPACE = "keybridge-golden"
PLAINTEXT = (GOLDEN / "plaintext.txt").read_bytes()
CONTEXT = json.loads((GOLDEN / "context.json").read_bytes())
KID = "https://golden.managedhsm.azure.net/keys/golden-kek/00112233445566778899aabbccddeeff"

MESSAGES = {
    "esdk-aes-0478.bin": ("aes", Suite.AES256_GCM_HKDF_SHA512_COMMIT),
    "esdk-rsa-oaep-sha256-0478.bin": ("rsa", Suite.AES256_GCM_HKDF_SHA512_COMMIT),
    "esdk-aes-signed-0578.bin": ("aes", Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384),
}
PACKAGES = {
    "rsa-2048": ("target-rsa-2048.pem", KeySpec.rsa(2048)),
    "ec-p256": ("target-ec-p256.pem", KeySpec.ec("P-256")),
    "ec-p384": ("target-ec-p384.pem", KeySpec.ec("P-384")),
    "aes-256": ("target-aes-256.hex", KeySpec.aes(256)),
}


def _hex_key(path: Path) -> bytes:
    return bytes.fromhex(path.read_text().strip())


def _pem_key(path: Path) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
    return key


@pytest.fixture(scope="module")
def keyrings() -> dict[str, Keyring]:
    provider = InMemoryProvider()
    provider.import_key("golden-aes", _hex_key(GOLDEN / "aes-256.hex"))
    provider.import_key("golden-rsa", _pem_key(GOLDEN / "rsa-2048.pem"))
    return {
        "aes": Keyring(provider.key("golden-aes"), namespace=NAMESPACE, name="aes-1"),
        "rsa": Keyring(provider.key("golden-rsa"), namespace=NAMESPACE, name="rsa-1", wrapping="RSA-OAEP-256"),
    }


# ---- ESDK messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("file", list(MESSAGES))
def test_esdk_golden_message_decrypts_to_the_committed_plaintext(file: str, keyrings: dict[str, Keyring]) -> None:
    kind, suite = MESSAGES[file]
    result = decrypt((GOLDEN / file).read_bytes(), keyrings[kind], expected_context=CONTEXT)
    assert result.plaintext == PLAINTEXT
    assert result.suite is suite
    assert result.frame_length == 128
    assert dict(result.context).items() >= CONTEXT.items()
    signed = suite is Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384
    assert ("aws-crypto-public-key" in result.context) is signed  # the signing key travels in the context


@pytest.mark.parametrize("file", list(MESSAGES))
def test_esdk_golden_message_changed_anywhere_is_refused(file: str, keyrings: dict[str, Keyring]) -> None:
    """A byte flipped in the header, an EDK, a frame or the signature: never the plaintext."""
    kind, _ = MESSAGES[file]
    message = (GOLDEN / file).read_bytes()
    for i in (5, len(message) // 2, len(message) - 40, len(message) - 1):
        damaged = message[:i] + bytes([message[i] ^ 0x01]) + message[i + 1 :]
        with pytest.raises((IntegrityError, InvalidMessage)):
            decrypt(damaged, keyrings[kind])


def test_esdk_golden_message_with_the_wrong_context_is_refused(keyrings: dict[str, Keyring]) -> None:
    with pytest.raises(IntegrityError):
        decrypt((GOLDEN / "esdk-aes-0478.bin").read_bytes(), keyrings["aes"], expected_context={"tenant": "other"})


# ---- .byok packages made by OpenSSL --------------------------------------------------------------


def _target(name: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes:
    key_file, _ = PACKAGES[name]
    return _hex_key(BYOK / key_file) if key_file.endswith(".hex") else _pem_key(BYOK / key_file)


@pytest.mark.parametrize("name", list(PACKAGES))
def test_openssl_golden_package_parses_and_unwraps_to_the_committed_key(name: str) -> None:
    package = ByokPackage.read(BYOK / f"{name}.byok")
    assert package.kid == KID
    plaintext = unwrap(package, _pem_key(BYOK / "kek-rsa-2048.pem"))  # type: ignore[arg-type]
    target = _target(name)
    if isinstance(target, bytes):
        assert plaintext == target
    else:
        opened = serialization.load_der_private_key(plaintext, password=None)
        assert opened.private_numbers() == target.private_numbers()  # type: ignore[union-attr]


@pytest.mark.parametrize("name", list(PACKAGES))
def test_openssl_golden_package_imports_and_the_key_works(name: str) -> None:
    """The package imported under the KEK it names; only the kid's version is pointed at the KEK's
    copy here (the ciphertext text is used exactly as OpenSSL's bytes were encoded)."""
    _, spec = PACKAGES[name]
    with InMemoryProvider() as provider:
        kek = provider.import_key("golden-kek", _pem_key(BYOK / "kek-rsa-2048.pem"), ops={KeyOp.IMPORT})
        doc = json.loads((BYOK / f"{name}.byok").read_bytes())
        doc["header"]["kid"] = KID.rsplit("/", 1)[0] + f"/{kek.ref.version}"
        info = provider.import_byok(name, json.dumps(doc).encode(), spec)
        target = _target(name)
        if isinstance(target, bytes):
            out = provider.encrypt(info.ref, "A256GCM", b"golden", aad=b"aad")
            assert AESGCM(target).decrypt(out[:12], out[12:], b"aad") == b"golden"
            return
        assert info.public_key is not None
        assert info.public_key.public_numbers() == target.public_key().public_numbers()
        alg = "RS256" if isinstance(target, rsa.RSAPrivateKey) else f"ES{spec.size}"
        digest = os.urandom(sig_hash(alg).digest_size)
        assert verify_outside(target.public_key(), alg, digest, provider.sign(info.ref, alg, digest))


def test_openssl_golden_package_imports_into_the_emulator_over_the_azure_sdk(azure_emulator) -> None:  # type: ignore[no-untyped-def]
    """The same package sent as ``key_hsm`` by the Azure provider, opened by the emulator."""
    from keybridge.providers.azure import AzureKeyVaultProvider

    with AzureKeyVaultProvider(azure_emulator.vault_url, **azure_emulator.provider_options()) as provider:
        kek = provider.import_key(
            f"golden-kek-{os.urandom(4).hex()}", _pem_key(BYOK / "kek-rsa-2048.pem"), ops={KeyOp.IMPORT}
        )
        doc = json.loads((BYOK / "ec-p256.byok").read_bytes())
        doc["header"]["kid"] = str(kek.ref)
        info = provider.import_byok(f"golden-ec-{os.urandom(4).hex()}", json.dumps(doc).encode(), KeySpec.ec("P-256"))
        target = _target("ec-p256")
        assert not isinstance(target, bytes)
        digest = os.urandom(32)
        assert verify_outside(target.public_key(), "ES256", digest, provider.sign(info.ref, "ES256", digest))
