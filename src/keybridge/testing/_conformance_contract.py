"""Conformance of the promises the :class:`~keybridge.provider.KeyProvider` docstring makes about
every backend: translated errors keep their cause, no secret reaches a message or repr, a closed
provider refuses work, BYOK packages made outside import, and one provider serves many threads."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from .. import audit
from ..errors import IntegrityError, KeybridgeError, ProviderUnavailable, UnsupportedAlgorithm
from ..keys import KeyInfo, KeyOp, KeySpec, KeyType, PrivateKey
from ..provider import KeyProvider
from ._conformance_base import ConformanceBase
from ._conformance_support import (
    Keys,
    claimed_algs,
    claimed_calls,
    flipped,
    material_for,
    same_public_key,
    unique_name,
)

ROUNDS = 4


def secret_forms(material: PrivateKey | bytes) -> list[str]:
    """Every spelling of a key's secret a careless message might use: hex (both cases), base64,
    base64url, the bytes repr, and for RSA/EC the private number in hex and decimal."""
    if isinstance(material, bytes):
        raw = material
        forms = [repr(raw)[2:-1]]
    else:
        numbers = material.private_numbers()
        d = numbers.d if isinstance(numbers, rsa.RSAPrivateNumbers) else numbers.private_value
        raw = d.to_bytes((d.bit_length() + 7) // 8, "big")
        forms = [str(d), format(d, "x")]
    b64 = base64.b64encode(raw).decode()
    return [*forms, raw.hex(), raw.hex().upper(), b64.rstrip("="), b64.replace("+", "-").replace("/", "_").rstrip("=")]


def byok_plaintext(material: PrivateKey | bytes) -> bytes:
    """What Azure BYOK wraps: raw bytes for AES, PKCS#8 DER for RSA/EC."""
    if isinstance(material, bytes):
        return material
    return material.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def byok_package(kek: rsa.RSAPublicKey, kid: str, material: PrivateKey | bytes) -> bytes:
    """A .byok package built with ``cryptography`` and ``json`` alone: RSA-OAEP-SHA1 over a fresh
    AES-256 key, then RFC 5649 over the target, base64url without padding."""
    eph = os.urandom(32)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    blob = kek.encrypt(eph, oaep) + aes_key_wrap_with_padding(eph, byok_plaintext(material))
    doc = {
        "schema_version": "1.0.0",
        "header": {"kid": kid, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
        "ciphertext": base64.urlsafe_b64encode(blob).rstrip(b"=").decode(),
        "generator": "keybridge conformance suite",
    }
    return json.dumps(doc).encode()


def kek_id(provider: KeyProvider, info: KeyInfo) -> str:
    """The Key Vault key id a package names its KEK by: the provider's own ``kek_id(info)`` where it
    has one, else the key's URI where that is an https id (Azure), else an https id whose
    ``/keys/NAME/VERSION`` path names the key in this provider (what the in-memory one resolves)."""
    hook = getattr(provider, "kek_id", None)
    if callable(hook):
        answer: str = hook(info)
        return answer
    uri = str(info.ref)
    if uri.startswith("https://"):
        return uri
    return f"https://kbconf.invalid/keys/{info.ref.name}/{info.ref.version or '0'}"


def _texts_of(exc: BaseException) -> list[str]:
    """The message and repr of an error and of everything chained to it."""
    out: list[str] = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out += [str(e), repr(e)]
        e = e.__cause__ or e.__context__
    return out


class ContractChecks(ConformanceBase):
    """The error, secrecy, lifecycle and threading contract of the protocol docstring."""

    # ---- translated errors keep their cause --------------------------------------------------------

    def test_integrity_failure_keeps_the_backend_error_as_cause(
        self, provider: KeyProvider, shared_keys: Keys, kty_spec: KeySpec
    ) -> None:
        """A damaged ciphertext or wrapped key is IntegrityError raised *from* what the backend said."""
        info = shared_keys.shared(kty_spec)
        sealers = (
            (KeyOp.ENCRYPT, provider.encrypt, provider.decrypt),
            (KeyOp.WRAP_KEY, provider.wrap_key, provider.unwrap_key),
        )
        tried = 0
        for op, seal, open_ in sealers:
            # RSA1_5 may answer garbage instead of failing (implicit rejection): it proves nothing here.
            for alg in [a for a in claimed_algs(provider, kty_spec, op) if a != "RSA1_5"][:1]:
                sealed = seal(info.ref, alg, os.urandom(32))
                with pytest.raises(IntegrityError) as err:
                    open_(info.ref, alg, flipped(sealed, len(sealed) - 1))
                assert err.value.__cause__ is not None, f"{op.value}({alg}): IntegrityError lost the backend's error"
                tried += 1
        if not tried:
            pytest.skip(f"{provider.scheme} claims no encryption or key wrap algorithm for {kty_spec}")

    # ---- secrets ---------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def known_secrets(cls) -> list[str]:
        """Override with the PIN, passphrase or token the provider was opened with; they must never
        appear in a message or repr."""
        return []

    def test_no_secret_in_messages_or_reprs(
        self,
        provider: KeyProvider,
        shared_keys: Keys,
        spec: KeySpec,
        known_secrets: list[str],
        audit_events: list[audit.AuditEvent],
    ) -> None:
        info, material = shared_keys.imported(spec)
        handle = provider.key(info.ref)
        texts = [repr(provider), str(provider), repr(info), str(info), repr(handle), repr(info.ref), str(info.ref)]
        failing: list[Callable[[], object]] = [
            partial(provider.export_key, info.ref),
            partial(provider.get_key, unique_name()),
            partial(provider.sign, info.ref, "none", b""),
        ]
        for op, backward in ((KeyOp.DECRYPT, provider.decrypt), (KeyOp.UNWRAP_KEY, provider.unwrap_key)):
            for alg in claimed_algs(provider, spec, op)[:1]:
                failing.append(
                    partial(backward, info.ref, alg, os.urandom(spec.size // 8 if spec.kty is KeyType.RSA else 48))
                )
        for action in failing:
            with pytest.raises(KeybridgeError) as err:
                action()
            texts += _texts_of(err.value)
        texts += [repr(e) for e in audit_events]
        labelled = [("a spelling of the key's secret", s) for s in secret_forms(material)]
        labelled += [(f"known_secrets[{i}]", s) for i, s in enumerate(known_secrets)]
        # Name what leaked, never the value: a failing run must not print the PIN either.
        leaked = sorted({label for label, s in labelled if s and any(s in t for t in texts)})
        if leaked:
            pytest.fail(f"found in messages or reprs: {', '.join(leaked)}", pytrace=False)

    # ---- close -----------------------------------------------------------------------------------

    @pytest.fixture
    def spare_provider(self) -> KeyProvider:
        """Override with a function-scoped fixture yielding a *new* provider like ``provider`` (same
        token or vault): the close test closes it."""
        pytest.skip(f"{type(self).__name__} has no `spare_provider` fixture to close")

    def test_use_after_close_raises_provider_unavailable(
        self, provider: KeyProvider, spare_provider: KeyProvider
    ) -> None:
        specs = type(self).conformance_specs()
        spec = min(specs, key=lambda s: (s.kty is not KeyType.OCT, s.kty is not KeyType.EC))
        info = Keys(spare_provider, can_import=False).create(spec)
        try:
            calls = claimed_calls(spare_provider, info)
            spare_provider.close()
            spare_provider.close()  # idempotent
            actions: list[Callable[[], object]] = [
                partial(spare_provider.get_key, info.ref.name),
                lambda: list(spare_provider.list_keys()),
                partial(spare_provider.create_key, unique_name(), spec),
                *(partial(call.run, info.ref) for call in calls),
            ]
            for action in actions:
                with pytest.raises(ProviderUnavailable) as err:
                    action()
                assert "closed" in str(err.value), f"{err.value!r} does not say the provider is closed"
        finally:
            with contextlib.suppress(KeybridgeError):
                provider.delete_key(info.ref.name)  # the spare is closed: clean up through the open one

    # ---- BYOK import (the target side) -----------------------------------------------------------

    def test_byok_package_made_outside_imports_and_works(
        self, provider: KeyProvider, new_keys: Keys, kty_spec: KeySpec
    ) -> None:
        if not self.supports_import_byok:
            with pytest.raises(UnsupportedAlgorithm):
                provider.import_byok(unique_name(), b"{}", kty_spec)
            pytest.skip(f"{type(self).__name__}.supports_import_byok is False (and import_byok refuses)")
        kek = new_keys.create(KeySpec.rsa(2048), ops={KeyOp.IMPORT})
        assert isinstance(kek.public_key, rsa.RSAPublicKey)
        material = material_for(kty_spec)
        name = unique_name()
        info = provider.import_byok(name, byok_package(kek.public_key, kek_id(provider, kek), material), kty_spec)
        new_keys.own(name)
        assert (info.ref.name, info.spec) == (name, kty_spec)
        if isinstance(material, bytes):
            gcm = f"A{kty_spec.size}GCM"
            self.claim(provider, gcm)
            out = provider.encrypt(info.ref, gcm, b"byok", aad=b"aad")
            assert AESGCM(material).decrypt(out[:12], out[12:], b"aad") == b"byok", "imported bytes are not the key"
        else:
            assert same_public_key(info.public_key, material), "BYOK import reports another public key"
        for call in claimed_calls(provider, info):
            call.run(info.ref)

    # ---- threads ---------------------------------------------------------------------------------

    def test_many_threads_on_one_provider_all_get_correct_results(
        self, provider: KeyProvider, shared_keys: Keys
    ) -> None:
        """Sign (verified outside), seal and open from many threads at once, on every key type."""
        work_items = []
        for spec in {s.kty: s for s in type(self).conformance_specs()}.values():
            info = shared_keys.shared(spec)
            work_items += [(c, info.ref) for c in claimed_calls(provider, info) if c.op in _THREADED_OPS]
        if not work_items:
            pytest.skip(f"{provider.scheme} claims no sign, decrypt or key wrap algorithm for these specs")

        def work(_: int) -> int:
            for _round in range(ROUNDS):
                for call, ref in work_items:
                    call.run(ref)  # each run checks its own result (signatures outside, plaintexts equal)
            return ROUNDS * len(work_items)

        with ThreadPoolExecutor(self.threads) as pool:
            done = sum(pool.map(work, range(self.threads)))
        assert done == self.threads * ROUNDS * len(work_items)


_THREADED_OPS = frozenset({KeyOp.SIGN, KeyOp.DECRYPT, KeyOp.UNWRAP_KEY, KeyOp.WRAP_KEY})
