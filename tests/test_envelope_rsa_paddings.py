"""Raw RSA keyring paddings the ESDK defines beyond OAEP-SHA1/256: PKCS#1 v1.5 (RSA_PKCS1) and OAEP
with SHA-384 / SHA-512 (MGF1 with the same hash), both directions with aws-encryption-sdk's
RawMasterKey, over the in-memory provider and a SoftHSM2 token."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from aws_encryption_sdk.exceptions import DecryptKeyError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from _envelope_support import NAMESPACE, esdk_client, esdk_raw_rsa
from keybridge import InMemoryProvider, KeySpec
from keybridge.envelope import DataKeyUnavailable, Keyring, decrypt, encrypt
from keybridge.errors import UnsupportedAlgorithm
from keybridge.testing._softhsm import SoftHsmToken

# keybridge wrapping -> (ESDK WrappingAlgorithm, the padding written independently with cryptography)
PADDINGS = {
    "RSA1_5": ("RSA_PKCS1", padding.PKCS1v15()),
    "RSA-OAEP-384": ("RSA_OAEP_SHA384_MGF1", padding.OAEP(padding.MGF1(hashes.SHA384()), hashes.SHA384(), None)),
    "RSA-OAEP-512": ("RSA_OAEP_SHA512_MGF1", padding.OAEP(padding.MGF1(hashes.SHA512()), hashes.SHA512(), None)),
}
CTX = {"purpose": "rsa-paddings"}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def memory(rsa_key: rsa.RSAPrivateKey) -> InMemoryProvider:
    provider = InMemoryProvider()
    provider.import_key("rsa", rsa_key)
    return provider


def _keyring(provider, **kwargs) -> Keyring:  # type: ignore[no-untyped-def]
    return Keyring(provider.key("rsa"), namespace=NAMESPACE, name="rsa-1", **kwargs)


@pytest.mark.parametrize("wrapping", list(PADDINGS))
def test_both_directions_with_esdk_raw_master_key(wrapping: str, memory, rsa_key) -> None:  # type: ignore[no-untyped-def]
    esdk_alg, pad = PADDINGS[wrapping]
    keys, mk = _keyring(memory, wrapping=wrapping), esdk_raw_rsa(rsa_key, esdk_alg)
    client = esdk_client()
    for size in (0, 1000):
        plaintext = os.urandom(size)
        ours = encrypt(plaintext, keys, context=CTX)
        got, _ = client.decrypt(source=ours, key_provider=mk)
        assert got == plaintext
        theirs, _ = client.encrypt(source=plaintext, key_provider=mk, encryption_context=CTX, frame_length=128)
        assert decrypt(theirs, keys, expected_context=CTX).plaintext == plaintext

    # The EDK is that padding and no other, checked with cryptography directly.
    edk = decrypt(encrypt(b"x", keys), keys).edks[0]
    assert len(rsa_key.decrypt(edk.ciphertext, pad)) == 32
    if wrapping != "RSA1_5":
        with pytest.raises(ValueError):
            rsa_key.decrypt(edk.ciphertext, padding.OAEP(padding.MGF1(hashes.SHA1()), pad._algorithm, None))


def test_default_keyring_reads_every_oaep_hash_but_pkcs1_only_when_asked(memory, rsa_key) -> None:  # type: ignore[no-untyped-def]
    client = esdk_client()
    auto = _keyring(memory)
    for wrapping in ("RSA-OAEP-384", "RSA-OAEP-512"):
        msg, _ = client.encrypt(source=b"oaep", key_provider=esdk_raw_rsa(rsa_key, PADDINGS[wrapping][0]))
        assert decrypt(msg, auto).plaintext == b"oaep"

    # New EDKs stay OAEP-256: an ESDK key configured for SHA-384 cannot open them.
    ours = encrypt(b"new", auto)
    assert client.decrypt(source=ours, key_provider=esdk_raw_rsa(rsa_key, "RSA_OAEP_SHA256_MGF1"))[0] == b"new"
    with pytest.raises(DecryptKeyError):
        client.decrypt(source=ours, key_provider=esdk_raw_rsa(rsa_key, "RSA_OAEP_SHA384_MGF1"))

    old, _ = client.encrypt(source=b"pkcs1", key_provider=esdk_raw_rsa(rsa_key, "RSA_PKCS1"))
    with pytest.raises(DataKeyUnavailable):
        decrypt(old, auto)
    assert decrypt(old, _keyring(memory, legacy_rsa1_5=True)).plaintext == b"pkcs1"
    # Opting in for old messages does not change what new ones use.
    legacy = _keyring(memory, legacy_rsa1_5=True)
    assert client.decrypt(source=encrypt(b"n", legacy), key_provider=esdk_raw_rsa(rsa_key, "RSA_OAEP_SHA256_MGF1"))


def test_an_explicit_padding_is_the_only_one_tried(memory, rsa_key) -> None:  # type: ignore[no-untyped-def]
    msg, _ = esdk_client().encrypt(source=b"x", key_provider=esdk_raw_rsa(rsa_key, "RSA_OAEP_SHA512_MGF1"))
    with pytest.raises(DataKeyUnavailable):
        decrypt(msg, _keyring(memory, wrapping="RSA-OAEP-384"))
    with pytest.raises(UnsupportedAlgorithm, match="RSA-OAEP-1024"):
        encrypt(b"x", _keyring(memory, wrapping="RSA-OAEP-1024"))


# ---- PKCS#11 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pkcs11(softhsm_token: SoftHsmToken, rsa_key: rsa.RSAPrivateKey) -> Iterator[object]:
    pytest.importorskip("pkcs11")
    from keybridge.providers.pkcs11 import Pkcs11Provider

    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        p.import_key("rsa", rsa_key)
        yield p


def test_pkcs11_token_pkcs1_both_ways_and_oaep_sha2_only_as_it_reports(pkcs11, rsa_key) -> None:  # type: ignore[no-untyped-def]
    client = esdk_client()
    offered = pkcs11.algorithms
    # SoftHSM 2.6/2.7 take only SHA-1 OAEP parameters, so keybridge must not claim the SHA-2 ones.
    assert {"RSA-OAEP-384", "RSA-OAEP-512"} & offered == set()
    assert "RSA1_5" in offered

    pkcs1 = _keyring(pkcs11, wrapping="RSA1_5")
    old, _ = client.encrypt(source=b"legacy", key_provider=esdk_raw_rsa(rsa_key, "RSA_PKCS1"))
    assert decrypt(old, pkcs1).plaintext == b"legacy"  # C_Decrypt with CKM_RSA_PKCS on the token
    assert client.decrypt(source=encrypt(b"to esdk", pkcs1), key_provider=esdk_raw_rsa(rsa_key, "RSA_PKCS1"))[0] == (
        b"to esdk"
    )

    # Encrypting needs only the public key (local), so OAEP-384 still works for a recipient ...
    oaep384 = _keyring(pkcs11, wrapping="RSA-OAEP-384")
    msg = encrypt(b"for esdk", oaep384)
    assert client.decrypt(source=msg, key_provider=esdk_raw_rsa(rsa_key, "RSA_OAEP_SHA384_MGF1"))[0] == b"for esdk"
    # ... but the token cannot unwrap it, and says so by name instead of failing as tampering.
    with pytest.raises(DataKeyUnavailable, match=r"UnsupportedAlgorithm.*RSA-OAEP-384"):
        decrypt(msg, oaep384)


def test_pkcs11_mechanism_table_for_sha2_oaep() -> None:
    pytest.importorskip("pkcs11")
    from pkcs11 import MGF
    from pkcs11 import Mechanism as M

    from keybridge.keys import algorithm
    from keybridge.providers.pkcs11 import _mechanisms as mech
    from keybridge.providers.pkcs11._quirks import TokenQuirks

    plain, sha1_only = TokenQuirks(), TokenQuirks(oaep_sha1_only=True)

    for name, h, mgf in (("RSA-OAEP-384", M.SHA384, MGF.SHA384), ("RSA-OAEP-512", M.SHA512, MGF.SHA512)):
        assert mech.rsa_decryption(algorithm(name)) == (M.RSA_PKCS_OAEP, (h, mgf, None))
    assert mech.rsa_decryption(algorithm("RSA1_5")) == (M.RSA_PKCS, None)
    oaep = {int(M.RSA_PKCS_OAEP): None}
    assert {"RSA-OAEP-384", "RSA-OAEP-512"} <= mech.supported({**oaep, int(M.SHA384): None, int(M.SHA512): None}, plain)
    # Claimed only where the token lists the digest too, and never on a SHA-1-only OAEP token (SoftHSM).
    assert "RSA-OAEP-512" not in mech.supported({**oaep, int(M.SHA384): None}, plain)
    assert not {"RSA-OAEP-384"} & mech.supported({**oaep, int(M.SHA384): None}, sha1_only)


# ---- Azure: neither SHA-2 OAEP beyond 256 -----------------------------------------------------------


def test_azure_claims_no_sha384_512_oaep_and_the_emulator_refuses_them() -> None:
    pytest.importorskip("azure.keyvault.keys")
    from azure.core.exceptions import HttpResponseError
    from azure.keyvault.keys.crypto import CryptographyClient

    from keybridge.emulator import ManagedHsmEmulator
    from keybridge.providers.azure import AzureKeyVaultProvider

    with ManagedHsmEmulator() as emu, AzureKeyVaultProvider(emu.vault_url, **emu.provider_options()) as azure:
        assert {"RSA-OAEP-384", "RSA-OAEP-512"} & azure.algorithms == set()
        assert {"RSA-OAEP", "RSA-OAEP-256", "RSA1_5"} <= azure.algorithms
        info = azure.create_key("rsa", KeySpec.rsa(2048))
        with pytest.raises(UnsupportedAlgorithm, match="RSA-OAEP-384"):
            azure.decrypt(info.ref, "RSA-OAEP-384", bytes(256))
        # The service itself (as Key Vault) answers 400 to the name, for clients that send it anyway.
        client = CryptographyClient(
            str(info.ref), credential=emu.credential(), connection_verify=emu.ca_file, verify_challenge_resource=False
        )
        with pytest.raises(HttpResponseError, match="not a Key Vault algorithm") as err:
            client.decrypt("RSA-OAEP-512", bytes(256))  # type: ignore[arg-type]
        assert err.value.status_code == 400
