"""Conformance of the cryptographic operations: every operation x every claimed algorithm x every key
spec it fits, each checked against ``cryptography`` wherever a public key or imported key allows."""

from __future__ import annotations

import contextlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap, aes_key_wrap_with_padding

from ..errors import IntegrityError, InvalidArgument, UnsupportedAlgorithm
from ..keys import KeyOp, KeySpec
from ..provider import KeyProvider
from ._conformance_base import ConformanceBase
from ._conformance_support import Keys, flipped, oaep_or_pkcs1, sig_hash, verify_outside

RsaCase = tuple[KeySpec, str, KeyOp]
Case = tuple[KeySpec, str]
PAD = "CKM_AES_KEY_WRAP_PAD"


def _max_rsa_input(spec: KeySpec, alg: str) -> int:
    k = spec.size // 8
    if alg == "RSA1_5":
        return k - 11
    digest = {"RSA-OAEP-256": 32, "RSA-OAEP-384": 48, "RSA-OAEP-512": 64}.get(alg, 20)
    return k - 2 * digest - 2


class CryptoChecks(ConformanceBase):
    """Sign/verify, RSA encrypt/wrap, AES-GCM and AES key wrap."""

    # ---- signatures --------------------------------------------------------------------------------

    def test_signature_verifies_outside_with_the_public_key(
        self, provider: KeyProvider, shared_keys: Keys, sign_case: Case
    ) -> None:
        spec, alg = sign_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        digest = os.urandom(sig_hash(alg).digest_size)
        sig = provider.sign(info.ref, alg, digest)
        assert verify_outside(info.public_key, alg, digest, sig), f"{alg} signature fails outside the provider"
        assert provider.verify(info.ref, alg, digest, sig) is True
        if alg.startswith(("RS", "PS")):
            assert len(sig) == spec.size // 8

    def test_tampered_signature_or_other_digest_does_not_verify(
        self, provider: KeyProvider, shared_keys: Keys, sign_case: Case
    ) -> None:
        spec, alg = sign_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        digest = os.urandom(sig_hash(alg).digest_size)
        sig = provider.sign(info.ref, alg, digest)
        bad_sigs = [flipped(sig, i) for i in (0, len(sig) // 2, len(sig) - 1)]
        bad_sigs += [sig[:-1], sig + b"\x00", b"", bytes(len(sig))]
        for bad in bad_sigs:
            assert provider.verify(info.ref, alg, digest, bad) is False, f"tampered {alg} signature verified"
        assert provider.verify(info.ref, alg, flipped(digest, 0), sig) is False, f"{alg} verified another digest"

    def test_digest_of_wrong_length_is_invalid_argument(
        self, provider: KeyProvider, shared_keys: Keys, sign_case: Case
    ) -> None:
        spec, alg = sign_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        n = sig_hash(alg).digest_size
        sig = provider.sign(info.ref, alg, bytes(n))
        for length in (0, n - 1, n + 1):
            with pytest.raises(InvalidArgument):
                provider.sign(info.ref, alg, bytes(length))
            with pytest.raises(InvalidArgument):
                provider.verify(info.ref, alg, bytes(length), sig)

    def test_imported_key_signs_like_cryptography(
        self, provider: KeyProvider, shared_keys: Keys, sign_case: Case
    ) -> None:
        spec, alg = sign_case
        self.claim(provider, alg)
        info, material = shared_keys.imported(spec)
        assert not isinstance(material, bytes)
        digest = os.urandom(sig_hash(alg).digest_size)
        sig = provider.sign(info.ref, alg, digest)
        if alg.startswith("RS"):
            assert isinstance(material, rsa.RSAPrivateKey)
            # PKCS#1 v1.5 signatures are deterministic: the provider must produce exactly these bytes.
            assert sig == material.sign(digest, padding.PKCS1v15(), Prehashed(sig_hash(alg)))
        assert verify_outside(material.public_key(), alg, digest, sig)

    # ---- RSA encryption and key wrap ---------------------------------------------------------------

    def test_rsa_sealed_outside_opens_inside(
        self, provider: KeyProvider, shared_keys: Keys, rsa_seal_case: RsaCase
    ) -> None:
        spec, alg, op = rsa_seal_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        assert isinstance(info.public_key, rsa.RSAPublicKey)
        seal, open_ = (
            (provider.encrypt, provider.decrypt) if op is KeyOp.ENCRYPT else (provider.wrap_key, provider.unwrap_key)
        )
        for data in (os.urandom(32), os.urandom(_max_rsa_input(spec, alg))):
            outside = info.public_key.encrypt(data, oaep_or_pkcs1(alg))
            assert open_(info.ref, alg, outside) == data
            inside = seal(info.ref, alg, data)
            assert len(inside) == spec.size // 8
            assert open_(info.ref, alg, inside) == data

    def test_rsa_input_longer_than_the_padding_allows_is_invalid_argument(
        self, provider: KeyProvider, shared_keys: Keys, rsa_seal_case: RsaCase
    ) -> None:
        spec, alg, op = rsa_seal_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        seal = provider.encrypt if op is KeyOp.ENCRYPT else provider.wrap_key
        with pytest.raises(InvalidArgument):
            seal(info.ref, alg, bytes(_max_rsa_input(spec, alg) + 1))

    def test_rsa_tampered_ciphertext_does_not_open(
        self, provider: KeyProvider, shared_keys: Keys, rsa_seal_case: RsaCase
    ) -> None:
        spec, alg, op = rsa_seal_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        assert isinstance(info.public_key, rsa.RSAPublicKey)
        open_ = provider.decrypt if op is KeyOp.ENCRYPT else provider.unwrap_key
        data = os.urandom(32)
        sealed = info.public_key.encrypt(data, oaep_or_pkcs1(alg))
        # Byte 0 is left alone: flipping it may push the value past the modulus, a different error path.
        for i in (1, len(sealed) // 2, len(sealed) - 1):
            if alg == "RSA1_5":
                # PKCS#1 v1.5 has no integrity: a backend may return garbage (implicit rejection) or raise.
                with contextlib.suppress(IntegrityError):
                    assert open_(info.ref, alg, flipped(sealed, i)) != data
            else:
                with pytest.raises(IntegrityError):
                    open_(info.ref, alg, flipped(sealed, i))

    def test_rsa_encryption_takes_no_aad(self, provider: KeyProvider, shared_keys: Keys, rsa_enc_case: Case) -> None:
        spec, alg = rsa_enc_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        with pytest.raises(UnsupportedAlgorithm):
            provider.encrypt(info.ref, alg, b"data", aad=b"header")
        assert isinstance(info.public_key, rsa.RSAPublicKey)
        sealed = info.public_key.encrypt(b"data", oaep_or_pkcs1(alg))
        with pytest.raises(UnsupportedAlgorithm):
            provider.decrypt(info.ref, alg, sealed, aad=b"header")

    def test_rsa_imported_key_seals_for_cryptography(
        self, provider: KeyProvider, shared_keys: Keys, rsa_seal_case: RsaCase
    ) -> None:
        spec, alg, op = rsa_seal_case
        self.claim(provider, alg)
        info, material = shared_keys.imported(spec)
        assert isinstance(material, rsa.RSAPrivateKey)
        seal = provider.encrypt if op is KeyOp.ENCRYPT else provider.wrap_key
        data = os.urandom(32)
        assert material.decrypt(seal(info.ref, alg, data), oaep_or_pkcs1(alg)) == data

    # ---- AES-GCM -----------------------------------------------------------------------------------

    def test_gcm_round_trip_and_layout(self, provider: KeyProvider, shared_keys: Keys, gcm_case: Case) -> None:
        spec, alg = gcm_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        for data in (b"x", os.urandom(100)):
            for aad in (None, b"header"):
                out = provider.encrypt(info.ref, alg, data, aad=aad)
                assert len(out) == 12 + len(data) + 16, "A*GCM output must be IV(12) || ciphertext || tag(16)"
                assert provider.decrypt(info.ref, alg, out, aad=aad) == data
        ivs = {provider.encrypt(info.ref, alg, b"same")[:12] for _ in range(4)}
        assert len(ivs) == 4, "every A*GCM encryption needs a fresh IV"

    def test_gcm_any_change_fails_integrity(self, provider: KeyProvider, shared_keys: Keys, gcm_case: Case) -> None:
        spec, alg = gcm_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        aad = b"header"
        out = provider.encrypt(info.ref, alg, os.urandom(16), aad=aad)
        damaged = [flipped(out, i) for i in range(len(out))] + [out[:-1], out[:28]]
        for bad in damaged:
            with pytest.raises(IntegrityError):
                provider.decrypt(info.ref, alg, bad, aad=aad)
        for wrong_aad in (None, b"headex", b""):
            with pytest.raises(IntegrityError):
                provider.decrypt(info.ref, alg, out, aad=wrong_aad)
        no_aad = provider.encrypt(info.ref, alg, b"data")
        with pytest.raises(IntegrityError):
            provider.decrypt(info.ref, alg, no_aad, aad=b"header")

    def test_gcm_matches_cryptography_with_imported_key(
        self, provider: KeyProvider, shared_keys: Keys, gcm_case: Case
    ) -> None:
        spec, alg = gcm_case
        self.claim(provider, alg)
        info, key = shared_keys.imported(spec)
        assert isinstance(key, bytes)
        data, aad = os.urandom(40), b"header"
        out = provider.encrypt(info.ref, alg, data, aad=aad)
        assert AESGCM(key).decrypt(out[:12], out[12:], aad) == data
        iv = os.urandom(12)
        assert provider.decrypt(info.ref, alg, iv + AESGCM(key).encrypt(iv, data, aad), aad=aad) == data

    # ---- AES key wrap ------------------------------------------------------------------------------

    @staticmethod
    def _wrap_lengths(alg: str) -> tuple[int, ...]:
        return (1, 15, 20, 32, 65) if alg == PAD else (16, 24, 32, 64)

    def test_key_wrap_round_trip(self, provider: KeyProvider, shared_keys: Keys, kw_case: Case) -> None:
        spec, alg = kw_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        for n in self._wrap_lengths(alg):
            key = os.urandom(n)
            wrapped = provider.wrap_key(info.ref, alg, key)
            assert len(wrapped) == (max(16, -(-n // 8) * 8 + 8) if alg == PAD else n + 8)
            assert provider.unwrap_key(info.ref, alg, wrapped) == key

    def test_key_wrap_rejects_lengths_it_cannot_wrap(
        self, provider: KeyProvider, shared_keys: Keys, kw_case: Case
    ) -> None:
        spec, alg = kw_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        for n in (0,) if alg == PAD else (0, 8, 15, 20):
            with pytest.raises(InvalidArgument):
                provider.wrap_key(info.ref, alg, bytes(n))

    def test_key_wrap_any_change_fails_integrity(self, provider: KeyProvider, shared_keys: Keys, kw_case: Case) -> None:
        spec, alg = kw_case
        self.claim(provider, alg)
        info = shared_keys.shared(spec)
        wrapped = provider.wrap_key(info.ref, alg, os.urandom(32))
        for i in range(len(wrapped)):
            with pytest.raises(IntegrityError):
                provider.unwrap_key(info.ref, alg, flipped(wrapped, i))
        with pytest.raises((IntegrityError, InvalidArgument)):
            provider.unwrap_key(info.ref, alg, wrapped[:-8])

    def test_key_wrap_matches_cryptography_with_imported_key(
        self, provider: KeyProvider, shared_keys: Keys, kw_case: Case
    ) -> None:
        spec, alg = kw_case
        self.claim(provider, alg)
        info, kek = shared_keys.imported(spec)
        assert isinstance(kek, bytes)
        reference = aes_key_wrap_with_padding if alg == PAD else aes_key_wrap
        for n in self._wrap_lengths(alg):
            key = os.urandom(n)
            # RFC 3394 / 5649 are deterministic: the provider must produce exactly these bytes.
            assert provider.wrap_key(info.ref, alg, key) == reference(kek, key)
            assert provider.unwrap_key(info.ref, alg, reference(kek, key)) == key
