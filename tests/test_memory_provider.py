"""Behaviour specific to the in-memory provider: versions, per-version state, export and BYOK import.

Generic per-algorithm checks live in the conformance suite (keybridge.testing); results here are
checked with ``cryptography`` directly, never with keybridge's own helpers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from keybridge import (
    IntegrityError,
    InvalidArgument,
    InvalidKeyUri,
    InvalidPackage,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    KeySpec,
    OperationNotPermitted,
    open_provider,
)
from keybridge.providers.memory import InMemoryProvider

OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
DIGEST = hashlib.sha256(b"message").digest()


@pytest.fixture
def kp() -> InMemoryProvider:
    return InMemoryProvider()


def _verify_rs256(public_key: rsa.RSAPublicKey, sig: bytes) -> bool:
    try:
        public_key.verify(sig, DIGEST, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    except Exception:
        return False
    return True


def _pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# ---- versions -------------------------------------------------------------------------------------


def test_rotate_makes_a_new_current_version_and_old_versions_keep_signing(kp: InMemoryProvider) -> None:
    v1 = kp.create_key("sig", KeySpec.rsa(2048), ops=["sign", "verify"], tags={"team": "a"}, exportable=True)
    v2 = kp.rotate_key("sig")
    assert v2.ref.version != v1.ref.version
    assert (v2.spec, v2.ops, dict(v2.tags), v2.exportable) == (v1.spec, v1.ops, {"team": "a"}, True)
    assert [i.ref.version for i in kp.list_versions("sig")] == [v1.ref.version, v2.ref.version]
    assert kp.get_key("sig").ref == v2.ref

    assert isinstance(v1.public_key, rsa.RSAPublicKey)
    assert isinstance(v2.public_key, rsa.RSAPublicKey)
    old = kp.sign(v1.ref, "RS256", DIGEST)
    new = kp.sign("sig", "RS256", DIGEST)
    assert _verify_rs256(v1.public_key, old)
    assert not _verify_rs256(v2.public_key, old)
    assert _verify_rs256(v2.public_key, new)
    assert not _verify_rs256(v1.public_key, new)
    assert kp.sign(f"memory:sig/{v1.ref.version}", "RS256", DIGEST) == old  # PKCS#1 v1.5 is deterministic


def test_create_on_an_existing_name_adds_a_version_with_add_versions() -> None:
    kp = InMemoryProvider(add_versions=True)  # Key Vault semantics, as the emulator stores keys
    a = kp.create_key("k", KeySpec.aes(128))
    b = kp.create_key("k", KeySpec.aes(256), ops=["encrypt", "decrypt"])
    assert [i.spec for i in kp.list_versions("k")] == [a.spec, b.spec]
    assert [i.ref.name for i in kp.list_keys()] == ["k"]


def test_refs_carry_memory_uris(kp: InMemoryProvider) -> None:
    info = kp.create_key("app.key-1_x", KeySpec.aes(256))
    assert info.ref.uri == f"memory:app.key-1_x/{info.ref.version}"
    assert len(info.ref.version or "") == 32
    assert kp.get_key("memory:app.key-1_x").ref == info.ref
    assert kp.key("memory:app.key-1_x").ref.uri == "memory:app.key-1_x"


@pytest.mark.parametrize("bad", ["memory:", "memory:a b", "memory:a/b/c", "memory:/v1", "memory:a/ver-sion"])
def test_malformed_memory_uri_is_refused_with_the_expected_form(kp: InMemoryProvider, bad: str) -> None:
    with pytest.raises(InvalidKeyUri) as exc:
        kp.get_key(bad)
    assert repr(bad) in str(exc.value)
    assert "memory:NAME/VERSION" in str(exc.value)


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "x" * 128, "ü"])
def test_invalid_names_are_refused(kp: InMemoryProvider, bad: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid key name"):
        kp.create_key(bad, KeySpec.aes(128))


def test_unknown_name_or_version_is_key_not_found(kp: InMemoryProvider) -> None:
    kp.create_key("k", KeySpec.aes(128))
    with pytest.raises(KeyNotFound, match="'nope'"):
        kp.get_key("nope")
    with pytest.raises(KeyNotFound, match="no version 'abc'"):
        kp.get_key("k", "abc")
    with pytest.raises(KeyNotFound):
        kp.delete_key("nope")


def test_delete_removes_every_version(kp: InMemoryProvider) -> None:
    v1 = kp.create_key("k", KeySpec.aes(128))
    kp.rotate_key("k")
    kp.delete_key("k")
    with pytest.raises(KeyNotFound):
        kp.encrypt(v1.ref, "A128GCM", b"x")
    assert list(kp.list_keys()) == []


# ---- state and policy -----------------------------------------------------------------------------


def test_enable_and_disable_apply_per_version(kp: InMemoryProvider) -> None:
    v1 = kp.create_key("k", KeySpec.aes(256))
    v2 = kp.rotate_key("k")
    assert kp.set_enabled(v1.ref, False).enabled is False
    with pytest.raises(KeyDisabled):
        kp.encrypt(v1.ref, "A256GCM", b"x")
    ct = kp.encrypt("k", "A256GCM", b"x")  # the current version, v2, is untouched
    assert kp.get_key(v2.ref).enabled
    assert not kp.get_key(v1.ref).enabled
    kp.set_enabled(v1.ref, True)
    kp.set_enabled("k", False)  # a bare name means the current version
    with pytest.raises(KeyDisabled):
        kp.decrypt("k", "A256GCM", ct)
    assert kp.decrypt(v1.ref, "A256GCM", kp.encrypt(v1.ref, "A256GCM", b"x")) == b"x"  # v1 enabled again


def test_expiry_and_not_before_are_enforced(kp: InMemoryProvider) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    kp.create_key("old", KeySpec.aes(256), expires=now - dt.timedelta(seconds=1))
    kp.create_key("future", KeySpec.aes(256), not_before=now + dt.timedelta(hours=1))
    kp.create_key(
        "window", KeySpec.aes(256), not_before=now - dt.timedelta(hours=1), expires=now + dt.timedelta(hours=1)
    )
    for name in ("old", "future"):
        with pytest.raises(KeyExpired, match="validity window"):
            kp.encrypt(name, "A256GCM", b"x")
    assert kp.decrypt("window", "A256GCM", kp.encrypt("window", "A256GCM", b"x")) == b"x"


def test_allowed_operations_are_enforced(kp: InMemoryProvider) -> None:
    kp.create_key("enc", KeySpec.aes(256), ops=["encrypt", "decrypt"])
    kp.create_key("ver", KeySpec.ec("P-256"), ops=["verify"])
    with pytest.raises(OperationNotPermitted, match="does not allow wrapKey"):
        kp.wrap_key("enc", "A256KW", bytes(32))
    with pytest.raises(OperationNotPermitted, match="does not allow sign"):
        kp.sign("ver", "ES256", DIGEST)


def test_export_only_for_exportable_keys(kp: InMemoryProvider) -> None:
    kp.create_key("locked", KeySpec.aes(256))
    kek = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(OperationNotPermitted, match="exportable"):
        kp.export_key("locked")
    with pytest.raises(OperationNotPermitted, match="exportable"):
        kp.export_wrapped("locked", kek.public_key())
    kp.create_key("open", KeySpec.aes(256), exportable=True)
    secret = kp.export_key("open")
    assert isinstance(secret, bytes)
    ct = kp.encrypt("open", "A256GCM", b"data", aad=b"hdr")  # IV || ciphertext || tag
    assert AESGCM(secret).decrypt(ct[:12], ct[12:], b"hdr") == b"data"


@pytest.mark.parametrize("spec", [KeySpec.rsa(2048), KeySpec.ec("P-256"), KeySpec.aes(256)], ids=str)
def test_export_wrapped_is_ckm_rsa_aes_key_wrap(kp: InMemoryProvider, spec: KeySpec) -> None:
    info = kp.create_key("t", spec, exportable=True)
    kek = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    blob = kp.export_wrapped("t", kek.public_key())
    eph = kek.decrypt(blob[:256], OAEP_SHA1)
    plaintext = aes_key_unwrap_with_padding(eph, blob[256:])
    if info.public_key is None:
        assert plaintext == kp.export_key("t")
    else:
        key = serialization.load_der_private_key(plaintext, None)
        assert key.public_key().public_numbers() == info.public_key.public_numbers()  # type: ignore[union-attr]


def test_import_key_uses_the_given_material(kp: InMemoryProvider) -> None:
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kp.import_key("imp", priv, ops=["sign", "verify"])
    assert _verify_rs256(priv.public_key(), kp.sign("imp", "RS256", DIGEST))
    secret = os.urandom(32)
    kp.import_key("aes", secret)
    assert aes_key_unwrap(secret, kp.wrap_key("aes", "A256KW", bytes(range(32)))) == bytes(range(32))
    assert kp.get_key("aes").exportable is False


def test_concurrent_use_is_safe(kp: InMemoryProvider) -> None:
    kp.create_key("k", KeySpec.aes(256))
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                # Pin the version: another thread may rotate between encrypt and decrypt.
                ref = kp.rotate_key("k").ref
                assert kp.decrypt(ref, "A256GCM", kp.encrypt(ref, "A256GCM", b"x")) == b"x"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(kp.list_versions("k"))) == 1 + 6 * 20


def test_from_uri_options(tmp_path: os.PathLike[str]) -> None:
    assert isinstance(open_provider("memory:"), InMemoryProvider)
    with pytest.raises(InvalidArgument, match="unknown option"):
        open_provider("memory:", keystor="x")
    with pytest.raises(InvalidArgument, match="passphrase"):
        open_provider("memory:", keystore=os.path.join(tmp_path, "k"))
    p = open_provider("memory:x", keystore=os.path.join(tmp_path, "k"), passphrase="pw", create=True)
    assert isinstance(p, InMemoryProvider)
    assert p.keystore is not None
    assert p.keystore.exists()


# ---- BYOK import ----------------------------------------------------------------------------------


@pytest.fixture
def kek(kp: InMemoryProvider) -> rsa.RSAPublicKey:
    info = kp.create_key("kek", KeySpec.rsa(2048), ops=["import"])
    assert isinstance(info.public_key, rsa.RSAPublicKey)
    return info.public_key


def _kid(kp: InMemoryProvider, name: str = "kek") -> str:
    """The full key id (with version) a .byok package names its KEK by."""
    return f"https://hsm.example/keys/{name}/{kp.get_key(name).ref.version}"


def _package(kek_pub: rsa.RSAPublicKey, plaintext: bytes, kid: str) -> bytes:
    """A .byok package made with cryptography alone, the way the Azure spec describes it."""
    eph = os.urandom(32)
    blob = kek_pub.encrypt(eph, OAEP_SHA1) + aes_key_wrap_with_padding(eph, plaintext)
    import base64

    doc = {
        "schema_version": "1.0.0",
        "header": {"kid": kid, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
        "ciphertext": base64.urlsafe_b64encode(blob).rstrip(b"=").decode(),
        "generator": "test",
    }
    return json.dumps(doc).encode()


def test_import_byok_rsa_key_works_and_is_hsm_protected(kp: InMemoryProvider, kek: rsa.RSAPublicKey) -> None:
    target = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info = kp.import_byok("imported", _package(kek, _pkcs8(target), kid=_kid(kp)), KeySpec.rsa(2048))
    assert info.hsm_protected
    assert not info.exportable
    assert _verify_rs256(target.public_key(), kp.sign("imported", "RS256", DIGEST))
    with pytest.raises(OperationNotPermitted):
        kp.export_key("imported")


def test_import_byok_ec_and_aes(kp: InMemoryProvider, kek: rsa.RSAPublicKey) -> None:
    version = kp.get_key("kek").ref.version
    target = ec.generate_private_key(ec.SECP256R1())
    pkg = _package(kek, _pkcs8(target), kid=f"https://emulator.local:8443/keys/kek/{version}")
    kp.import_byok("ec", pkg, KeySpec.ec("P-256"))
    sig = kp.sign("ec", "ES256", DIGEST)
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    target.public_key().verify(der, DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))

    secret = os.urandom(32)
    kp.import_byok("aes", _package(kek, secret, kid=_kid(kp)), KeySpec.aes(256))
    ct = kp.encrypt("aes", "A256GCM", b"hi")
    assert AESGCM(secret).decrypt(ct[:12], ct[12:], None) == b"hi"


@pytest.mark.parametrize("zeros", range(8))
def test_import_byok_accepts_softhsm_zero_padding(kp: InMemoryProvider, kek: rsa.RSAPublicKey, zeros: int) -> None:
    target = ec.generate_private_key(ec.SECP256R1())
    info = kp.import_byok("ec", _package(kek, _pkcs8(target) + bytes(zeros), kid=_kid(kp)), KeySpec.ec("P-256"))
    assert info.public_key is not None
    assert info.public_key.public_numbers() == target.public_key().public_numbers()


@pytest.mark.parametrize("tail", [bytes(8), b"\x01", b"\x00\x00\x07", b"\x00" * 6 + b"\xff"], ids=repr)
def test_import_byok_refuses_other_trailing_bytes(kp: InMemoryProvider, kek: rsa.RSAPublicKey, tail: bytes) -> None:
    target = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidPackage, match=r"unexpected bytes|usable PKCS#8"):
        kp.import_byok("ec", _package(kek, _pkcs8(target) + tail, kid=_kid(kp)), KeySpec.ec("P-256"))
    with pytest.raises(KeyNotFound):
        kp.get_key("ec")


@pytest.mark.parametrize(
    ("made", "asked", "holds"),
    [
        (KeySpec.rsa(2048), KeySpec.ec("P-256"), "RSA-2048"),
        (KeySpec.ec("P-384"), KeySpec.ec("P-256"), "EC-P-384"),
        (KeySpec.aes(256), KeySpec.aes(128), "32 bytes"),
        (KeySpec.aes(256), KeySpec.rsa(2048), "raw AES key"),
    ],
    ids=str,
)
def test_import_byok_refuses_a_package_of_another_type(
    kp: InMemoryProvider, kek: rsa.RSAPublicKey, made: KeySpec, asked: KeySpec, holds: str
) -> None:
    if made.kty.value == "RSA":
        plaintext = _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=made.size))
    elif made.kty.value == "EC":
        plaintext = _pkcs8(ec.generate_private_key(ec.SECP384R1()))
    else:
        plaintext = os.urandom(made.size // 8)
    with pytest.raises(InvalidPackage) as exc:
        kp.import_byok("x", _package(kek, plaintext, kid=_kid(kp)), asked)
    assert holds in str(exc.value)
    assert str(asked) in str(exc.value)


def test_import_byok_refuses_a_kek_that_is_not_import_only(kp: InMemoryProvider) -> None:
    general = kp.create_key("rsa", KeySpec.rsa(2048))
    assert isinstance(general.public_key, rsa.RSAPublicKey)
    pkg = _package(general.public_key, os.urandom(32), kid=_kid(kp, "rsa"))
    with pytest.raises(OperationNotPermitted, match="not a key-exchange key"):
        kp.import_byok("x", pkg, KeySpec.aes(256))


def test_import_byok_refuses_a_disabled_or_unknown_kek(kp: InMemoryProvider, kek: rsa.RSAPublicKey) -> None:
    kp.set_enabled("kek", False)
    with pytest.raises(KeyDisabled):
        kp.import_byok("x", _package(kek, os.urandom(32), kid=_kid(kp)), KeySpec.aes(256))
    with pytest.raises(KeyNotFound):
        kp.import_byok("x", _package(kek, os.urandom(32), kid="https://h/keys/other/0123abcd"), KeySpec.aes(256))
    for bad_kid in ("https://h/keys/a/b/c", "https://h/keys/kek", "https://h/keys/kek/v?x=1"):
        with pytest.raises(InvalidPackage, match="/keys/NAME/VERSION"):
            kp.import_byok("x", _package(kek, os.urandom(32), kid=bad_kid), KeySpec.aes(256))


@pytest.mark.parametrize("where", [0, 255, 256, -1])
def test_import_byok_refuses_tampered_ciphertext(kp: InMemoryProvider, kek: rsa.RSAPublicKey, where: int) -> None:
    doc = json.loads(_package(kek, os.urandom(32), kid=_kid(kp)))
    import base64

    blob = bytearray(base64.urlsafe_b64decode(doc["ciphertext"] + "=="))
    blob[where] ^= 0x01
    doc["ciphertext"] = base64.urlsafe_b64encode(bytes(blob)).decode()
    with pytest.raises(IntegrityError):
        kp.import_byok("x", json.dumps(doc).encode(), KeySpec.aes(256))
    assert next(iter(kp.list_keys())).ref.name == "kek"
    assert len(list(kp.list_keys())) == 1


def test_import_byok_refuses_a_package_for_another_kek(kp: InMemoryProvider, kek: rsa.RSAPublicKey) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(IntegrityError):
        kp.import_byok("x", _package(stranger, os.urandom(32), kid=_kid(kp)), KeySpec.aes(256))
