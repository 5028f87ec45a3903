"""The in-memory provider passes the provider conformance suite, and the suite fails providers that
are broken in ways a self-consistent backend would not notice on its own."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from keybridge import InMemoryProvider, IntegrityError, KeyNotFound
from keybridge._byok import ByokPackage, load_unwrapped
from keybridge.keys import ALGORITHMS, KeyAttributes, KeySpec
from keybridge.testing import ProviderConformance

pytest_plugins = ["pytester"]


class TestInMemoryProvider(ProviderConformance):
    """Every capability on: the in-memory provider is the reference backend."""

    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls) -> Iterator[InMemoryProvider]:
        with InMemoryProvider() as provider:
            yield provider

    @pytest.fixture
    def spare_provider(self) -> Iterator[InMemoryProvider]:
        with InMemoryProvider() as provider:
            yield provider


class TestKeystoreProvider(ProviderConformance):
    """The same provider saving every change to a passphrase-encrypted keystore file; the
    passphrase must show up nowhere. Two specs keep it quick: the file, not the key type, is new here."""

    specs = (KeySpec.ec("P-256"), KeySpec.aes(256))
    passphrase = "kbconf-Passphrase-3f9d"

    @pytest.fixture(scope="class")
    @classmethod
    def keystore(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("keystore") / "keys.kbks"

    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls, keystore: Path) -> Iterator[InMemoryProvider]:
        with InMemoryProvider.open(keystore, cls.passphrase, create=True) as provider:
            yield provider

    @pytest.fixture
    def spare_provider(self, keystore: Path) -> Iterator[InMemoryProvider]:
        with InMemoryProvider.open(keystore, self.passphrase) as provider:
            yield provider

    @pytest.fixture(scope="class")
    @classmethod
    def known_secrets(cls) -> list[str]:
        return [cls.passphrase]


# ---- mutants: each breaks one promise while staying consistent with itself ----------------------


class DerEcdsaSignatures(InMemoryProvider):
    """ES* signatures in DER instead of raw r||s, and a verify that expects DER: only the suite's
    independent check can tell (``BaseProvider.verify`` must not be what catches it)."""

    def _sign(self, info: Any, alg: Any, digest: bytes) -> bytes:
        key = self._material(info)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(digest, ec.ECDSA(Prehashed(alg.hash)))
        return super()._sign(info, alg, digest)

    def verify(self, ref: Any, alg: str, digest: bytes, signature: bytes) -> bool:
        public = self.get_key(ref).public_key
        if not isinstance(public, ec.EllipticCurvePublicKey):
            return super().verify(ref, alg, digest, signature)
        try:
            public.verify(signature, digest, ec.ECDSA(Prehashed(ALGORITHMS[alg].hash)))  # type: ignore[arg-type]
        except (InvalidSignature, ValueError):
            return False
        return True


class PssMaxSalt(InMemoryProvider):
    """PS* with the longest salt instead of salt = digest length."""

    def _sign(self, info: Any, alg: Any, digest: bytes) -> bytes:
        key = self._material(info)
        if alg.pss:
            assert isinstance(key, rsa.RSAPrivateKey)
            pss = padding.PSS(mgf=padding.MGF1(alg.hash), salt_length=padding.PSS.MAX_LENGTH)
            return key.sign(digest, pss, Prehashed(alg.hash))
        return super()._sign(info, alg, digest)

    def verify(self, ref: Any, alg: str, digest: bytes, signature: bytes) -> bool:
        public, h = self.get_key(ref).public_key, ALGORITHMS[alg].hash
        if not (alg.startswith("PS") and isinstance(public, rsa.RSAPublicKey) and h is not None):
            return super().verify(ref, alg, digest, signature)
        try:  # the same mistake on both sides: it agrees with itself
            public.verify(
                signature, digest, padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO), Prehashed(h)
            )
        except (InvalidSignature, ValueError):
            return False
        return True


class Oaep256WithMgf1Sha1(InMemoryProvider):
    """RSA-OAEP-256 decryption with MGF1-SHA1 (JWA says MGF1-SHA256)."""

    def _decrypt(self, info: Any, alg: Any, data: bytes, aad: bytes | None) -> bytes:
        key = self._material(info)
        if isinstance(key, rsa.RSAPrivateKey) and alg.name == "RSA-OAEP-256":
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA256(), label=None)
            try:
                return key.decrypt(data, oaep)
            except ValueError as exc:
                raise IntegrityError("decryption failed") from exc
        return super()._decrypt(info, alg, data, aad)


class FixedGcmIv(InMemoryProvider):
    """The same GCM IV every time."""

    def _encrypt(self, info: Any, alg: Any, data: bytes, aad: bytes | None) -> bytes:
        iv = bytes(12)
        return iv + AESGCM(self._secret(info)).encrypt(iv, data, aad)


class VerifyRaises(InMemoryProvider):
    """verify() raises on a bad signature instead of returning False."""

    def verify(self, ref: Any, alg: str, digest: bytes, signature: bytes) -> bool:
        if not super().verify(ref, alg, digest, signature):
            raise IntegrityError("bad signature")
        return True


class RotationReusesTheKey(InMemoryProvider):
    """rotate_key() makes a new version holding the old key material."""

    def _rotate_key(self, name: str) -> Any:
        current = self._stored(name, None)
        return self._add(name, current.info.spec, current.material, KeyAttributes.of(current.info))


class UnknownVersionMeansCurrent(InMemoryProvider):
    """A version that does not exist silently resolves to the current one."""

    def _stored(self, name: str, version: str | None) -> Any:
        try:
            return super()._stored(name, version)
        except KeyNotFound:
            return super()._stored(name, None)


class IgnoresExpiry(InMemoryProvider):
    """not_before / expires are dropped."""

    def _get_key(self, name: str, version: str | None) -> Any:
        return dataclasses.replace(super()._get_key(name, version), not_before=None, expires=None)


class ExportsAnything(InMemoryProvider):
    """Keys leave whether or not they were created exportable."""

    def _check_exportable(self, info: Any) -> None:
        pass


class TwoAuditEventsPerSign(InMemoryProvider):
    """sign() emits a get_key event besides its own."""

    def sign(self, ref: Any, alg: str, digest: bytes) -> bytes:
        self.get_key(ref)
        return super().sign(ref, alg, digest)


class DropsTheCause(InMemoryProvider):
    """A failed GCM decryption raised without the backend's error behind it."""

    def _decrypt(self, info: Any, alg: Any, data: bytes, aad: bytes | None) -> bytes:
        try:
            return super()._decrypt(info, alg, data, aad)
        except IntegrityError:
            raise IntegrityError("decryption failed") from None


class KeyInTheMessage(InMemoryProvider):
    """A failed decryption names the key by its bytes."""

    def _decrypt(self, info: Any, alg: Any, data: bytes, aad: bytes | None) -> bytes:
        try:
            return super()._decrypt(info, alg, data, aad)
        except IntegrityError as exc:
            secret = self._material(info)
            shown = secret.hex() if isinstance(secret, bytes) else "?"
            raise IntegrityError(f"decryption with key {shown} failed") from exc


class UsableAfterClose(InMemoryProvider):
    """close() does nothing: the provider keeps working (BaseProvider.close refuses work after it,
    so the mutant has to replace close itself)."""

    def close(self) -> None:
        pass


class ByokOaepSha256(InMemoryProvider):
    """BYOK import opens the package's AES key with OAEP-SHA256 (Azure uses SHA-1): it only
    agrees with a package encoder that makes the same mistake."""

    def _import_byok(self, name: str, package: bytes, spec: Any, attrs: Any) -> Any:
        pkg = ByokPackage.from_json(package)
        kek = self._kek_for(pkg.kid)
        k = kek.key_size // 8
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        try:
            eph = kek.decrypt(pkg.ciphertext[:k], oaep)
        except ValueError as exc:
            raise IntegrityError("package does not open") from exc
        material = load_unwrapped(aes_key_unwrap_with_padding(eph, pkg.ciphertext[k:]), spec)
        return self._add(name, spec, material, attrs, hsm_protected=True)


class RacySign(InMemoryProvider):
    """sign() passes the digest through shared state: under threads, a key signs another's digest."""

    _pending = b""

    def _sign(self, info: Any, alg: Any, digest: bytes) -> bytes:
        self._pending = digest
        time.sleep(0.001)  # the window another thread's digest slips into
        return super()._sign(info, alg, self._pending)


MUTANTS: dict[type[InMemoryProvider], str] = {
    DerEcdsaSignatures: "test_signature_verifies_outside_with_the_public_key",
    PssMaxSalt: "test_signature_verifies_outside_with_the_public_key",
    Oaep256WithMgf1Sha1: "test_rsa_sealed_outside_opens_inside",
    FixedGcmIv: "test_gcm_round_trip_and_layout",
    VerifyRaises: "test_tampered_signature_or_other_digest_does_not_verify",
    RotationReusesTheKey: "test_rotation_makes_a_new_version_and_old_ones_stay_usable",
    UnknownVersionMeansCurrent: "test_unknown_version_raises_key_not_found",
    IgnoresExpiry: "test_key_outside_its_validity_window_is_refused",
    ExportsAnything: "test_non_exportable_key_cannot_leave",
    TwoAuditEventsPerSign: "test_every_operation_emits_exactly_one_audit_event",
    DropsTheCause: "test_integrity_failure_keeps_the_backend_error_as_cause",
    KeyInTheMessage: "test_no_secret_in_messages_or_reprs",
    UsableAfterClose: "test_use_after_close_raises_provider_unavailable",
    ByokOaepSha256: "test_byok_package_made_outside_imports_and_works",
    RacySign: "test_many_threads_on_one_provider_all_get_correct_results",
}

_SUITE_ON_MUTANT = """
import pytest
from keybridge.testing import ProviderConformance

class TestMutant(ProviderConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls, mutant_class):
        with mutant_class() as provider:
            yield provider

    @pytest.fixture
    def spare_provider(self, mutant_class):
        with mutant_class() as provider:
            yield provider
"""


class _MutantPlugin:
    def __init__(self, cls: type[InMemoryProvider]) -> None:
        self.cls = cls

    @pytest.fixture(scope="session")
    def mutant_class(self) -> type[InMemoryProvider]:
        return self.cls


@pytest.mark.parametrize("mutant", list(MUTANTS), ids=[m.__name__ for m in MUTANTS])
def test_suite_fails_a_provider_that_breaks_the_protocol(pytester: pytest.Pytester, mutant: type) -> None:
    pytester.makepyfile(test_mutant=_SUITE_ON_MUTANT)
    test_name = MUTANTS[mutant]
    result = pytester.runpytest_inprocess(
        "-q", "-p", "no:cacheprovider", "-k", test_name, plugins=[_MutantPlugin(mutant)]
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1, f"{mutant.__name__} passed {test_name}: {outcomes}"
    assert outcomes.get("errors", 0) == 0, result.stdout.str()  # it must fail on purpose, not by crashing


class SymmetricOnly(InMemoryProvider):
    """Claims only the AES algorithms, yet makes RSA and EC keys: a key type with no claimed
    algorithm, which the suite must skip (with the reason) rather than trip over."""

    algorithms = frozenset(a for a, spec in ALGORITHMS.items() if spec.kty.value == "oct")


def test_suite_skips_a_key_type_with_no_claimed_algorithm(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mutant=_SUITE_ON_MUTANT)
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-rs", plugins=[_MutantPlugin(SymmetricOnly)])
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes.get("passed", 0) > 0
    assert "claims no algorithm for RSA-2048 keys" in result.stdout.str()
