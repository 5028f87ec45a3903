"""Wrapped export picks the token's native CKM_RSA_AES_KEY_WRAP (0x1054) when listed, else two steps.

Debian's SoftHSM 2.6 does not list 0x1054, so there the native tests skip and the two-step path is
pinned down by test_pkcs11_token.py. Run with KEYBRIDGE_SOFTHSM_MODULE pointing at SoftHSM >= 2.7
(and its softhsm2-util first on PATH) to exercise the native mechanism.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from keybridge import InvalidArgument, KeySpec
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from pkcs11 import Attribute as A

from keybridge.providers.pkcs11 import Pkcs11Provider
from keybridge.providers.pkcs11 import _mechanisms as mech

TOOL = shutil.which("pkcs11-tool")
NATIVE = "CKM_RSA_AES_KEY_WRAP"
TWO_STEP = "CKM_AES_KEY_WRAP_PAD+CKM_RSA_PKCS_OAEP"
OAEP_SHA1 = padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)
KEKS = {bits: rsa.generate_private_key(65537, bits) for bits in (2048, 3072)}


@pytest.fixture(scope="module")
def provider(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        yield p


@pytest.fixture(scope="module")
def token_lists_native(softhsm_token: SoftHsmToken) -> bool:
    """Whether the token lists 0x1054 with the wrap flag, read by OpenSC, not by keybridge."""
    if TOOL is None:
        pytest.skip("OpenSC pkcs11-tool is not installed: cannot read the token's mechanism list independently")
    cmd = [TOOL, "--module", softhsm_token.module_path, "--token-label", softhsm_token.token_label, "-M"]
    listing = subprocess.run(cmd, env=dict(softhsm_token.env), capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"\s*(mechtype-0x1054|RSA-AES-KEY-WRAP)\b.*\bwrap\b", re.IGNORECASE)
    return any(pattern.match(line) for line in listing.splitlines())


@pytest.fixture
def native_only(provider: Pkcs11Provider, token_lists_native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip on tokens without 0x1054; otherwise make the two-step path fail loudly if it is taken."""
    if not token_lists_native:
        pytest.skip(
            "the token does not list CKM_RSA_AES_KEY_WRAP (0x1054) with CKF_WRAP (SoftHSM < 2.7); set "
            "KEYBRIDGE_SOFTHSM_MODULE to a SoftHSM >= 2.7 build to run this; the two-step export is tested "
            "in test_pkcs11_token.py"
        )

    def two_step_taken(*args: Any) -> bytes:
        raise AssertionError("export_wrapped took the two-step path on a token that lists 0x1054")

    monkeypatch.setattr(provider, "_wrap_two_step", two_step_taken)


def session_objects(provider: Pkcs11Provider) -> int:
    return provider._pool.run(lambda e: len(list(e.session.get_objects({A.TOKEN: False}))), "counting objects")


def unwrap_outside(kek: rsa.RSAPrivateKey, blob: bytes) -> bytes:
    """CKM_RSA_AES_KEY_WRAP unwrapped with cryptography alone: OAEP SHA-1 for the AES key, then RFC 5649."""
    k = kek.key_size // 8
    return aes_key_unwrap_with_padding(kek.decrypt(blob[:k], OAEP_SHA1), blob[k:])


def check_same_key(provider: Pkcs11Provider, name: str, plain: bytes) -> None:
    info = provider.get_key(name)
    if info.spec.kty.value == "oct":
        ct = provider.encrypt(info.ref, "A256GCM", b"proof", aad=b"h")  # the token seals, the copy opens
        assert AESGCM(plain).decrypt(ct[:12], ct[12:], b"h") == b"proof"
        return
    # exact PKCS#8, no trailing zeros; loading checks the private half against the public numbers
    key = serialization.load_der_private_key(plain, None)
    assert info.public_key is not None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == info.public_key.public_bytes(*spki)


def test_wrapped_export_mechanism_follows_the_token_mechanism_list(
    provider: Pkcs11Provider, token_lists_native: bool
) -> None:
    assert provider.wrapped_export_mechanism == (NATIVE if token_lists_native else TWO_STEP)


@pytest.mark.usefixtures("native_only")
@pytest.mark.parametrize(
    ("spec", "kek_bits"),
    [(KeySpec.rsa(2048), 3072), (KeySpec.ec("P-256"), 2048), (KeySpec.ec("P-521"), 3072), (KeySpec.aes(256), 2048)],
)
def test_native_rsa_aes_key_wrap_export_unwraps_outside_to_the_same_key(
    provider: Pkcs11Provider, spec: KeySpec, kek_bits: int
) -> None:
    name = f"native-{spec}"
    provider.create_key(name, spec, exportable=True)
    try:
        blob = provider.export_wrapped(name, KEKS[kek_bits].public_key())
        plain = unwrap_outside(KEKS[kek_bits], blob)
        assert len(blob) == kek_bits // 8 + 8 + -(-len(plain) // 8) * 8  # RSA block ‖ RFC 5649 of the key
        check_same_key(provider, name, plain)
        assert session_objects(provider) == 0  # the KEK session object is gone
    finally:
        provider.delete_key(name)


@pytest.mark.usefixtures("native_only")
def test_two_step_export_matches_native_on_the_same_token(
    provider: Pkcs11Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider.create_key("both-paths", KeySpec.ec("P-384"), exportable=True)
    kek = KEKS[2048]
    try:
        native = unwrap_outside(kek, provider.export_wrapped("both-paths", kek.public_key()))
        monkeypatch.undo()  # the real two-step path again, chosen as on a token without 0x1054
        monkeypatch.setattr(provider, "_native_export", False)
        assert provider.wrapped_export_mechanism == TWO_STEP
        assert unwrap_outside(kek, provider.export_wrapped("both-paths", kek.public_key())) == native
        check_same_key(provider, "both-paths", native)
        assert session_objects(provider) == 0  # ephemeral AES key and KEK destroyed
    finally:
        provider.delete_key("both-paths")


def test_kek_too_small_is_a_typed_error_and_leaves_no_objects(provider: Pkcs11Provider) -> None:
    # 512-bit modulus: OAEP SHA-1 carries at most 22 bytes, less than the 32-byte AES key.
    # Runs on whichever path the token selects.
    small = rsa.RSAPublicNumbers(65537, 2**511 + 2**300 + 1).public_key()
    provider.create_key("small-kek", KeySpec.ec("P-256"), exportable=True)
    try:
        with pytest.raises(InvalidArgument, match="size") as caught:
            provider.export_wrapped("small-kek", small)
        assert type(caught.value.__cause__).__name__ == "KeySizeRange"
        assert session_objects(provider) == 0
    finally:
        provider.delete_key("small-kek")


def test_native_parameters_are_the_azure_byok_ones() -> None:
    # Runs everywhere: on 2.6 the native path never reaches a token, so pin what it would send.
    params = mech.RsaAesKeyWrapParams(256)
    struct, oaep = params._params, params._oaep
    assert int(mech.RSA_AES_KEY_WRAP) == 0x1054
    assert params.raw == bytes(struct)  # what python-pkcs11 hands to C_WrapKey
    assert struct.ulAESKeyBits == 256
    assert ctypes.addressof(struct.pOAEPParams.contents) == ctypes.addressof(oaep)  # points at the kept struct
    got = (oaep.hashAlg, oaep.mgf, oaep.source, oaep.pSourceData, oaep.ulSourceDataLen)
    assert got == (0x220, 1, 1, None, 0)  # CKM_SHA_1, CKG_MGF1_SHA1, CKZ_DATA_SPECIFIED, no label
