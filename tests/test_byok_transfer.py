"""export / import_package / transfer between providers, through the KeyProvider protocol only.

Both sides are InMemoryProviders here; tests/test_byok_hsm.py runs the same flow from a real
SoftHSM token into the Managed HSM emulator.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybridge import (
    InMemoryProvider,
    IntegrityError,
    InvalidArgument,
    InvalidKeySpec,
    InvalidPackage,
    KeyNotFound,
    KeyOp,
    KeySpec,
    OperationNotPermitted,
)
from keybridge.byok import ByokPackage, export, import_package, transfer, wrap_for_azure

KID_HOST = "https://memory.invalid"


@pytest.fixture
def source() -> InMemoryProvider:
    return InMemoryProvider()


@pytest.fixture
def target() -> InMemoryProvider:
    return InMemoryProvider()


def make_kek(target: InMemoryProvider, name: str = "kek") -> tuple[str, rsa.RSAPublicKey]:
    info = target.create_key(name, KeySpec.rsa(2048), ops=[KeyOp.IMPORT])
    assert isinstance(info.public_key, rsa.RSAPublicKey)
    return f"{KID_HOST}/keys/{name}/{info.ref.version}", info.public_key


def names(provider: InMemoryProvider) -> set[str]:
    return {k.ref.name for k in provider.list_keys()}


# ---- transfer ------------------------------------------------------------------------------------


def test_rsa_transfer_moves_the_same_key_and_proves_it(source, target) -> None:
    r = transfer(source, target, "app", KeySpec.rsa(2048), kek_size=2048)
    assert r.proof.method == "signature"
    assert r.proof.algorithm == "PS256"
    assert len(r.proof.checks) == 3
    src_pub = source.get_key(r.source_ref).public_key
    # Independent check: a PKCS#1 v1.5 signature made in the target verifies with the source's public key.
    digest = hashlib.sha256(b"message").digest()
    sig = target.sign(r.target_ref, "RS256", digest)
    assert isinstance(src_pub, rsa.RSAPublicKey)
    src_pub.verify(sig, b"message", padding.PKCS1v15(), hashes.SHA256())
    assert target.get_key(r.target_ref).hsm_protected
    assert not target.get_key(r.target_ref).exportable
    assert source.get_key(r.source_ref).exportable


def test_ec_transfer(source, target) -> None:
    r = transfer(source, target, "sig", KeySpec.ec("P-384"), kek_size=2048)
    assert r.proof.algorithm == "ES384"
    pub = source.get_key(r.source_ref).public_key
    raw = target.sign(r.target_ref, "ES384", hashlib.sha384(b"m").digest())
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(
        encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big")),
        b"m",
        ec.ECDSA(hashes.SHA384()),
    )


def test_aes_transfer_proves_with_gcm_both_ways(source, target) -> None:
    r = transfer(source, target, "data", KeySpec.aes(256), kek_size=2048)
    assert (r.proof.method, r.proof.algorithm) == ("encryption", "A256GCM")
    # Independent check: the exported source key (software) opens what the target encrypted.
    ct = target.encrypt(r.target_ref, "A256GCM", b"payload", aad=b"ctx")
    key = source.export_key(r.source_ref)
    assert isinstance(key, bytes)
    assert AESGCM(key).decrypt(ct[:12], ct[12:], b"ctx") == b"payload"


def test_aes_with_only_wrap_ops_is_proven_by_key_wrap(source, target) -> None:
    r = transfer(source, target, "kw", KeySpec.aes(128), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY], kek_size=2048)
    assert (r.proof.method, r.proof.algorithm) == ("key-wrap", "A128KW")


def test_rsa_without_sign_is_proven_by_decryption(source, target) -> None:
    r = transfer(source, target, "enc", KeySpec.rsa(2048), ops=["encrypt", "decrypt"], kek_size=2048)
    assert (r.proof.method, r.proof.algorithm) == ("decryption", "RSA-OAEP")


def test_key_without_private_ops_gets_a_public_key_only_proof(source, target) -> None:
    r = transfer(source, target, "v", KeySpec.ec("P-256"), ops=["verify"], kek_size=2048)
    assert r.proof.method == "public-key"
    assert "no private-key check" in str(r.proof)


def test_unprovable_aes_transfer_is_refused_before_anything_is_created(source, target) -> None:
    with pytest.raises(InvalidArgument, match="cannot be proven"):
        transfer(source, target, "x", KeySpec.aes(256), ops=["encrypt"], kek_size=2048)
    assert names(source) == set()
    assert names(target) == set()


def test_created_kek_is_deleted_unless_kept(source, target) -> None:
    r = transfer(source, target, "a", KeySpec.aes(256), kek_size=2048)
    assert r.kek_ref.name.startswith("a-kek-")
    assert names(target) == {"a"}
    kept = transfer(source, target, "b", KeySpec.aes(256), kek_size=2048, keep_kek=True)
    assert target.get_key(kept.kek_ref).ops == {KeyOp.IMPORT}


def test_given_kek_is_reused_and_kept(source, target) -> None:
    kek = target.create_key("shared", KeySpec.rsa(2048), ops=["import"])
    r1 = transfer(source, target, "one", KeySpec.aes(128), kek=kek.ref)
    r2 = transfer(source, target, "two", KeySpec.aes(128), kek="memory:shared", target_name="two-in-azure")
    assert r1.kek_ref == kek.ref == r2.kek_ref
    assert names(target) == {"shared", "one", "two-in-azure"}
    assert r1.package.kid.endswith(f"/keys/shared/{kek.ref.version}")


def test_a_key_that_is_not_a_kek_is_refused(source, target) -> None:
    target.create_key("signer", KeySpec.rsa(2048))
    with pytest.raises(InvalidArgument, match="cannot be a KEK"):
        transfer(source, target, "k", KeySpec.aes(256), kek="signer")
    with pytest.raises(KeyNotFound):
        transfer(source, target, "k", KeySpec.aes(256), kek="absent")
    assert names(source) == set()


def test_kek_size_and_import_op_are_checked(source, target) -> None:
    with pytest.raises(InvalidKeySpec, match="KEK size"):
        transfer(source, target, "k", KeySpec.aes(256), kek_size=1024)
    with pytest.raises(InvalidKeySpec, match="import"):
        transfer(source, target, "k", KeySpec.rsa(2048), ops=["import"])


def test_a_failure_after_the_kek_was_created_still_deletes_it(source, target) -> None:
    with pytest.raises(InvalidArgument, match="invalid key name"):
        transfer(source, target, "not a name", KeySpec.aes(256), kek_size=2048, target_name="fine")
    assert names(target) == set()
    assert names(source) == set()


class _ImportsAnotherKey(InMemoryProvider):
    """A target that 'imports' a fresh key instead of the packaged one: the fault the proof catches."""

    def _import_byok(self, name, package, spec, attrs):  # type: ignore[no-untyped-def]
        return self._create_key(name, spec, attrs)


@pytest.mark.parametrize("spec", [KeySpec.rsa(2048), KeySpec.ec("P-256"), KeySpec.aes(256)])
def test_a_target_holding_a_different_key_fails_the_proof(source, spec: KeySpec) -> None:
    target = _ImportsAnotherKey()
    with pytest.raises(IntegrityError, match="proof failed"):
        transfer(source, target, "k", spec, kek_size=2048)
    assert names(target) == {"k"}  # the KEK is gone; the bad key stays for inspection


# ---- export and import_package -------------------------------------------------------------------


def test_export_of_a_non_exportable_key_is_refused_by_the_source(source, target) -> None:
    kid, pub = make_kek(target)
    source.create_key("locked", KeySpec.rsa(2048))
    with pytest.raises(OperationNotPermitted, match="exportable"):
        export(source, "locked", pub, kid)


def test_export_then_import_package(source, target) -> None:
    kid, pub = make_kek(target)
    source.create_key("k", KeySpec.ec("P-256"), exportable=True)
    pkg = export(source, "memory:k", pub, kid)
    assert pkg.generator.endswith("source: memory provider")
    info = import_package(target, "k", pkg.to_json(), KeySpec.ec("P-256"))
    assert info.public_key.public_numbers() == source.get_key("k").public_key.public_numbers()  # type: ignore[union-attr]


def test_export_checks_kek_and_kid_before_asking_the_source(source, target) -> None:
    _, pub = make_kek(target)
    source.create_key("k", KeySpec.aes(256), exportable=True)
    with pytest.raises(InvalidArgument, match="full key id"):
        export(source, "k", pub, "kek")
    with pytest.raises(InvalidKeySpec, match="RSA public key"):
        export(source, "k", ec.generate_private_key(ec.SECP256R1()).public_key(), f"{KID_HOST}/keys/kek/1")  # type: ignore[arg-type]


def test_package_for_another_kek_is_refused_with_invalid_package(source, target) -> None:
    kid, _ = make_kek(target)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pkg = wrap_for_azure(os.urandom(32), stranger, kid)  # names our KEK, wrapped under another
    with pytest.raises(InvalidPackage, match="could not open"):
        import_package(target, "k", pkg, KeySpec.aes(256))
    assert names(target) == {"kek"}


def test_tampered_package_is_refused_with_invalid_package(target) -> None:
    kid, pub = make_kek(target)
    blob = bytearray(wrap_for_azure(os.urandom(32), pub, kid).ciphertext)
    blob[-3] ^= 0x40
    with pytest.raises(InvalidPackage):
        import_package(target, "k", ByokPackage(kid=kid, ciphertext=bytes(blob)), KeySpec.aes(256))


def test_rsa_package_imported_as_ec_is_refused(target) -> None:
    kid, pub = make_kek(target)
    pkg = wrap_for_azure(rsa.generate_private_key(public_exponent=65537, key_size=2048), pub, kid)
    with pytest.raises(InvalidPackage, match="RSA-2048"):
        import_package(target, "k", pkg, KeySpec.ec("P-256"))


def test_malformed_package_bytes_are_refused_before_the_target(target) -> None:
    with pytest.raises(InvalidPackage, match="not JSON"):
        import_package(target, "k", b"garbage", KeySpec.aes(256))
