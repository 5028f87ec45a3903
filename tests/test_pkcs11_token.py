"""PKCS#11 provider behaviour checked from outside: OpenSC pkcs11-tool, cryptography, raw attributes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from keybridge import KeyNotFound, KeySpec, OperationNotPermitted, UnsupportedAlgorithm
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import Pkcs11Provider

TOOL = shutil.which("pkcs11-tool")
needs_tool = pytest.mark.skipif(TOOL is None, reason="OpenSC pkcs11-tool is not installed")
DIGEST = hashlib.sha256(b"message").digest()


@pytest.fixture(scope="module")
def provider(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        yield p


def tool(t: SoftHsmToken, *args: str) -> str:
    assert TOOL is not None
    cmd = [TOOL, "--module", t.module_path, "--token-label", t.token_label, "--login", "--pin", t.user_pin, *args]
    out = subprocess.run(cmd, env=dict(t.env), capture_output=True, text=True, check=True)
    return out.stdout


def object_block(listing: str, kind: str, label: str) -> str:
    """The pkcs11-tool --list-objects paragraph of object ``kind`` labelled ``label``."""
    blocks = re.split(r"\n(?=\S)", listing)
    found = [b for b in blocks if b.startswith(kind) and re.search(rf"label:\s+{re.escape(label)}\n", b + "\n")]
    assert len(found) == 1, listing
    return found[0]


@needs_tool
@pytest.mark.parametrize(
    ("spec", "kind"), [(KeySpec.aes(256), "Secret Key Object"), (KeySpec.ec("P-256"), "Private Key Object")]
)
def test_keybridge_key_is_sensitive_and_never_extractable_for_pkcs11_tool(
    provider: Pkcs11Provider, softhsm_token: SoftHsmToken, spec: KeySpec, kind: str
) -> None:
    name = f"tool-sees-{spec}"
    provider.create_key(name, spec)
    try:
        access = re.search(r"Access:\s+(.*)", object_block(tool(softhsm_token, "--list-objects"), kind, name))
        assert access is not None
        assert access.group(1).split(", ")[:3] == ["sensitive", "always sensitive", "never extractable"]
    finally:
        provider.delete_key(name)


@needs_tool
def test_exportable_key_is_extractable_but_still_sensitive(
    provider: Pkcs11Provider, softhsm_token: SoftHsmToken
) -> None:
    provider.create_key("tool-exportable", KeySpec.aes(128), exportable=True)
    try:
        block = object_block(tool(softhsm_token, "--list-objects"), "Secret Key Object", "tool-exportable")
        access = re.search(r"Access:\s+(.*)", block)
        assert access is not None
        assert access.group(1) == "sensitive, always sensitive, extractable, local"
        assert "never extractable" not in block
    finally:
        provider.delete_key("tool-exportable")


@needs_tool
@pytest.mark.parametrize(("key_type", "alg"), [("rsa:2048", "RS256"), ("EC:prime256v1", "ES256")])
def test_key_made_by_pkcs11_tool_is_usable(
    provider: Pkcs11Provider, softhsm_token: SoftHsmToken, tmp_path: Path, key_type: str, alg: str
) -> None:
    label, key_id = f"made-by-tool-{alg}", "0a" if alg == "RS256" else "0b"
    tool(softhsm_token, "--keypairgen", "--key-type", key_type, "--label", label, "--id", key_id)
    try:
        tool(softhsm_token, "--read-object", "--type", "pubkey", "--id", key_id, "-o", str(tmp_path / "pub.der"))
        public = serialization.load_der_public_key((tmp_path / "pub.der").read_bytes())
        info = provider.get_key(label)
        assert info.ref.version == key_id
        assert info.public_key is not None
        assert info.public_key.public_numbers() == public.public_numbers()
        by_id = provider.get_key(f"pkcs11:token={softhsm_token.token_label};id=%{key_id.upper()}")
        assert by_id.ref == info.ref
        sig = provider.sign(label, alg, DIGEST)
        if isinstance(public, rsa.RSAPublicKey):
            public.verify(sig, DIGEST, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
            public.verify(der, DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))
    finally:
        tool(softhsm_token, "--delete-object", "--type", "privkey", "--id", key_id)
        tool(softhsm_token, "--delete-object", "--type", "pubkey", "--id", key_id)


@needs_tool
def test_pkcs11_tool_signature_with_keybridge_key_verifies_in_keybridge(
    provider: Pkcs11Provider, softhsm_token: SoftHsmToken, tmp_path: Path
) -> None:
    info = provider.create_key("tool-signs", KeySpec.ec("P-256"))
    try:
        (tmp_path / "digest").write_bytes(DIGEST)
        key_id = info.ref.version or ""
        tool(
            softhsm_token,
            "--sign",
            "--mechanism",
            "ECDSA",
            "--id",
            key_id,
            "--input-file",
            str(tmp_path / "digest"),
            "--output-file",
            str(tmp_path / "sig"),
        )
        assert provider.verify("tool-signs", "ES256", DIGEST, (tmp_path / "sig").read_bytes())
    finally:
        provider.delete_key("tool-signs")


def strip_der(data: bytes) -> tuple[bytes, bytes]:
    """(DER SEQUENCE, what follows it): SoftHSM 2.6.1 zero-pads before RFC 5649 wrapping."""
    assert data[0] == 0x30
    if data[1] < 0x80:
        end = 2 + data[1]
    else:
        n = data[1] & 0x7F
        end = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    return data[:end], data[end:]


@pytest.mark.parametrize("spec", [KeySpec.rsa(2048), KeySpec.ec("P-256"), KeySpec.ec("P-521"), KeySpec.aes(256)])
def test_export_wrapped_unwraps_outside_to_the_same_key(provider: Pkcs11Provider, spec: KeySpec) -> None:
    kek = rsa.generate_private_key(65537, 3072)
    info = provider.create_key(f"byok-{spec}", spec, exportable=True)
    try:
        blob = provider.export_wrapped(info.ref, kek.public_key())
        k = kek.key_size // 8
        eph = kek.decrypt(blob[:k], padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None))
        plain = aes_key_unwrap_with_padding(eph, blob[k:])
        if spec.kty.value == "oct":
            # the AES key itself: it must open what the token sealed
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            ct = provider.encrypt(info.ref, "A256GCM", b"proof", aad=b"h")
            assert AESGCM(plain).decrypt(ct[:12], ct[12:], b"h") == b"proof"
            return
        der, padding_bytes = strip_der(plain)
        assert padding_bytes == bytes(len(padding_bytes))
        assert len(padding_bytes) < 8
        key = serialization.load_der_private_key(der, None)
        assert key.public_key().public_numbers() == info.public_key.public_numbers()  # type: ignore[union-attr]
    finally:
        provider.delete_key(info.ref.name)


def test_non_extractable_key_refuses_wrapped_export(provider: Pkcs11Provider) -> None:
    info = provider.create_key("byok-locked", KeySpec.ec("P-256"))
    try:
        with pytest.raises(OperationNotPermitted, match="exportable"):
            provider.export_wrapped(info.ref, rsa.generate_private_key(65537, 2048).public_key())
    finally:
        provider.delete_key("byok-locked")


def test_disable_clears_usage_flags_on_the_token(provider: Pkcs11Provider) -> None:
    from pkcs11 import Attribute as A

    info = provider.create_key("flags", KeySpec.aes(128))
    provider.set_enabled("flags", False)
    read = lambda e: e.key(info).get_attributes([A.ENCRYPT, A.DECRYPT, A.WRAP, A.UNWRAP])  # noqa: E731
    assert set(provider._pool.run(read, "reading flags").values()) == {False}  # other tools cannot use it either
    provider.set_enabled("flags", True)
    assert set(provider._pool.run(read, "reading flags").values()) == {True}
    provider.delete_key("flags")


def test_aes_keys_allow_no_mac_or_derivation(provider: Pkcs11Provider) -> None:
    from pkcs11 import Attribute as A

    made = provider.create_key("nomac", KeySpec.aes(256))
    imported = provider.import_key("nomac-imp", bytes(range(32)))
    for info in (made, imported):
        read = lambda e, i=info: e.key(i).get_attributes([A.SIGN, A.VERIFY, A.DERIVE])  # noqa: E731
        assert set(provider._pool.run(read, "reading flags").values()) == {False}
    provider.delete_key("nomac")
    provider.delete_key("nomac-imp")


def test_rotate_keeps_old_versions_usable_and_newest_is_current(provider: Pkcs11Provider) -> None:
    v1 = provider.create_key("rotating", KeySpec.ec("P-256"))
    v2 = provider.rotate_key("rotating")
    assert [i.ref.version for i in provider.list_versions("rotating")] == [v1.ref.version, v2.ref.version]
    assert provider.get_key("rotating").ref == v2.ref
    assert v1.created is not None
    assert v2.created is not None
    assert v1.created < v2.created
    sig = provider.sign(v1.ref, "ES256", DIGEST)
    assert provider.verify(v1.ref, "ES256", DIGEST, sig)
    assert not provider.verify(v2.ref, "ES256", DIGEST, sig)
    provider.delete_key("rotating")
    with pytest.raises(KeyNotFound):
        provider.get_key("rotating")


def test_oaep_sha256_is_not_claimed_on_softhsm(provider: Pkcs11Provider) -> None:
    assert "RSA-OAEP" in provider.algorithms
    assert "RSA-OAEP-256" not in provider.algorithms
    with pytest.raises(UnsupportedAlgorithm, match="RSA-OAEP-256"):
        provider.decrypt("any", "RSA-OAEP-256", b"x" * 256)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [3072, 4096])
def test_large_rsa_keys(provider: Pkcs11Provider, bits: int) -> None:
    info = provider.create_key(f"rsa-{bits}", KeySpec.rsa(bits))
    try:
        assert info.spec.size == bits
        assert info.public_key is not None
        assert provider.verify(info.ref, "PS256", DIGEST, provider.sign(info.ref, "PS256", DIGEST))
        dek = os.urandom(32)
        assert provider.unwrap_key(info.ref, "RSA-OAEP", provider.wrap_key(info.ref, "RSA-OAEP", dek)) == dek
    finally:
        provider.delete_key(info.ref.name)


@pytest.mark.parametrize("kind", ["aes", "rsa", "ec"])
def test_imported_keys_are_sensitive_and_not_extractable(provider: Pkcs11Provider, kind: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from pkcs11 import Attribute as A

    material = {
        "aes": lambda: bytes(range(32)),
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    }[kind]()
    info = provider.import_key(f"imp-sens-{kind}", material)  # type: ignore[arg-type]
    read = lambda e: e.key(info).get_attributes([A.SENSITIVE, A.EXTRACTABLE])  # noqa: E731
    attrs = provider._pool.run(read, "reading attributes")
    assert attrs[A.SENSITIVE] is True
    assert attrs[A.EXTRACTABLE] is False
    provider.delete_key(f"imp-sens-{kind}")
