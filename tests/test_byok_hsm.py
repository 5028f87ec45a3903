"""BYOK end to end with real parts: keys generated in a SoftHSM2 token, wrapped inside it, imported
into the Managed HSM emulator through the real azure-keyvault-keys SDK over HTTPS."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keybridge import InvalidPackage, KeyOp, KeyProvider, KeySpec, OperationNotPermitted, open_provider
from keybridge._crypto import rsa_aes_key_unwrap
from keybridge.byok import ByokPackage, export, import_package, transfer, wrap_for_azure

pytest.importorskip("pkcs11")
azure_exceptions = pytest.importorskip("azure.core.exceptions")
azure_keys = pytest.importorskip("azure.keyvault.keys")

SIG_ALG = {"RSA-2048": "PS256", "EC-P-256": "ES256", "EC-P-384": "ES384"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def hsm(softhsm_token) -> Iterator[KeyProvider]:  # type: ignore[no-untyped-def]
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as provider:
        yield provider


@pytest.fixture(scope="module")
def azure(azure_emulator) -> Iterator[KeyProvider]:  # type: ignore[no-untyped-def]
    with open_provider(azure_emulator.vault_url, **azure_emulator.provider_options()) as provider:
        yield provider


@pytest.fixture(scope="module")
def kek(azure: KeyProvider) -> tuple[str, rsa.RSAPublicKey]:
    info = azure.create_key(unique("kek"), KeySpec.rsa(2048), ops=[KeyOp.IMPORT])
    assert isinstance(info.public_key, rsa.RSAPublicKey)
    return str(info.ref), info.public_key


@pytest.mark.parametrize("spec", [KeySpec.rsa(2048), KeySpec.ec("P-256"), KeySpec.ec("P-384")], ids=str)
def test_softhsm_key_imported_into_the_emulator_verifies_softhsm_signatures(hsm, azure, spec: KeySpec) -> None:
    r = transfer(hsm, azure, unique("sig"), spec, kek_size=2048)
    assert r.proof.method == "signature"
    assert r.target_ref.uri.startswith("https://127.0.0.1")
    assert r.package.kid.startswith("https://127.0.0.1")
    alg = SIG_ALG[str(spec)]
    digest = hashlib.new(f"sha{alg[2:]}", b"signed in the HSM").digest()
    assert azure.verify(r.target_ref, alg, digest, hsm.sign(r.source_ref, alg, digest))
    assert hsm.verify(r.source_ref, alg, digest, azure.sign(r.target_ref, alg, digest))
    assert not azure.verify(r.target_ref, alg, hashlib.new(f"sha{alg[2:]}", b"other").digest(),
                            hsm.sign(r.source_ref, alg, digest))  # fmt: skip


def test_softhsm_aes_key_imported_into_the_emulator_decrypts_softhsm_ciphertext(hsm, azure) -> None:
    r = transfer(hsm, azure, unique("aes"), KeySpec.aes(256), kek_size=2048)
    sealed = hsm.encrypt(r.source_ref, "A256GCM", b"sealed in the HSM", aad=b"ctx")
    assert azure.decrypt(r.target_ref, "A256GCM", sealed, aad=b"ctx") == b"sealed in the HSM"
    back = azure.encrypt(r.target_ref, "A256GCM", b"sealed in Azure")
    assert hsm.decrypt(r.source_ref, "A256GCM", back) == b"sealed in Azure"


def test_softhsm_zero_padded_package_is_accepted(hsm, azure, kek) -> None:
    """SoftHSM 2.6.1 pads the P-256 PKCS#8 (67 bytes) with zeros to 72 before RFC 5649."""
    name = unique("pad")
    info = hsm.create_key(name, KeySpec.ec("P-256"), exportable=True)
    probe = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raw = rsa_aes_key_unwrap(probe, hsm.export_wrapped(name, probe.public_key()))
    der_len = 2 + raw[1]
    assert raw[der_len:] == b"\x00" * (len(raw) - der_len)
    assert len(raw) - der_len <= 7
    imported = import_package(azure, name, export(hsm, name, kek[1], kek[0]), KeySpec.ec("P-256"))
    assert imported.public_key.public_numbers() == info.public_key.public_numbers()  # type: ignore[union-attr]


def test_non_extractable_softhsm_key_refuses_to_export(hsm, kek) -> None:
    name = unique("locked")
    hsm.create_key(name, KeySpec.rsa(2048))  # the default: never leaves the token
    with pytest.raises(OperationNotPermitted, match="exportable"):
        export(hsm, name, kek[1], kek[0])


# ---- refusals: by the emulator at REST level (the SDK sees HTTP 400), and by keybridge as a type ----


@pytest.fixture(scope="module")
def key_client(azure_emulator):  # type: ignore[no-untyped-def]
    return azure_keys.KeyClient(azure_emulator.vault_url, **azure_emulator.provider_options())


def bad_packages(kek: tuple[str, rsa.RSAPublicKey]) -> dict[str, tuple[bytes, str]]:
    kid, pub = kek
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    good = wrap_for_azure(rsa_key, pub, kid)
    tampered = bytearray(good.ciphertext)
    tampered[300] ^= 0x01
    return {
        "wrong-kek": (wrap_for_azure(rsa_key, stranger, kid).to_json(), "RSA-HSM"),
        "tampered": (ByokPackage(kid=kid, ciphertext=bytes(tampered)).to_json(), "RSA-HSM"),
        "rsa-as-ec": (good.to_json(), "EC-HSM"),
    }


@pytest.mark.parametrize("case", ["wrong-kek", "tampered", "rsa-as-ec"])
def test_bad_package_is_a_400_from_the_emulator(key_client, kek, case: str) -> None:
    data, kty = bad_packages(kek)[case]
    jwk = azure_keys.JsonWebKey(kty=kty, t=data, key_ops=["sign", "verify"])
    with pytest.raises(azure_exceptions.HttpResponseError) as info:
        key_client.import_key(unique(case), jwk, hardware_protected=True)
    assert info.value.status_code == 400


@pytest.mark.parametrize("case", ["wrong-kek", "tampered", "rsa-as-ec"])
def test_bad_package_is_invalid_package_from_import(azure, kek, case: str) -> None:
    data, kty = bad_packages(kek)[case]
    spec = KeySpec.ec("P-256") if kty == "EC-HSM" else KeySpec.rsa(2048)
    name = unique(case)
    with pytest.raises(InvalidPackage):
        import_package(azure, name, data, spec)
    assert name not in {k.ref.name for k in azure.list_keys()}


def test_good_package_through_the_sdk_has_the_original_public_key(key_client, kek) -> None:
    """Control for the refusals above: the same route accepts a correct package."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = azure_keys.JsonWebKey(kty="RSA-HSM", t=wrap_for_azure(key, kek[1], kek[0]).to_json(), key_ops=["sign"])
    imported = key_client.import_key(unique("ok"), jwk, hardware_protected=True)
    assert int.from_bytes(imported.key.n, "big") == key.public_key().public_numbers().n
