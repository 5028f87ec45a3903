"""Conformance of what surrounds the operations: audit events, import, and export policy."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from .. import audit
from ..errors import KeybridgeError, OperationNotPermitted, UnsupportedOperation
from ..keys import KeyInfo, KeySpec, KeyType
from ..provider import KeyProvider
from ._conformance_base import ConformanceBase
from ._conformance_support import (
    AUDIT_NAME,
    Keys,
    check_public_key,
    claimed_calls,
    load_pkcs8,
    material_for,
    same_public_key,
    unique_name,
    unwrap_rsa_aes,
)

T = TypeVar("T")


def _assert_is_aes_key(provider: KeyProvider, info: KeyInfo, key: bytes) -> None:
    """``key`` is the secret of ``info``: a provider ciphertext opens with it outside (or a wrap matches)."""
    assert len(key) == info.spec.size // 8, f"exported AES key is {len(key)} bytes, expected {info.spec.size // 8}"
    gcm = f"A{info.spec.size}GCM"
    if gcm in provider.algorithms:
        out = provider.encrypt(info.ref, gcm, b"proof", aad=b"aad")
        assert AESGCM(key).decrypt(out[:12], out[12:], b"aad") == b"proof", "exported bytes are not the key"
    elif "CKM_AES_KEY_WRAP_PAD" in provider.algorithms:
        probe = os.urandom(20)
        assert provider.wrap_key(info.ref, "CKM_AES_KEY_WRAP_PAD", probe) == aes_key_wrap_with_padding(key, probe)
    else:
        pytest.skip(f"{provider.scheme} claims neither {gcm} nor CKM_AES_KEY_WRAP_PAD to check an exported key with")


class PolicyChecks(ConformanceBase):
    """Audit events, key import and export."""

    def test_every_operation_emits_exactly_one_audit_event(
        self,
        provider: KeyProvider,
        new_keys: Keys,
        audit_events: list[audit.AuditEvent],
        kty_spec: KeySpec,
    ) -> None:
        def expect(
            operation: str,
            action: Callable[[], T],
            *,
            outcome: str = "ok",
            alg: str | None = None,
            key: str | None = None,
        ) -> T | None:
            audit_events.clear()
            result = None
            if outcome == "ok":
                result = action()
            else:
                with pytest.raises(KeybridgeError) as err:
                    action()
                assert type(err.value).__name__ == outcome
            got = [(e.operation, e.outcome) for e in audit_events]
            assert got == [(operation, outcome)], f"{operation}: expected one event, got {got}"
            event = audit_events[0]
            assert event.provider == provider.scheme
            assert event.duration >= 0
            if alg is not None:
                assert event.algorithm == alg
            if key is not None:
                assert key in (event.key or ""), f"audit event names key {event.key!r}, not {key!r}"
            return result

        info = expect("create_key", lambda: new_keys.create(kty_spec))
        assert info is not None
        name = info.ref.name
        expect("get_key", lambda: provider.get_key(name), key=name)
        expect("list_keys", lambda: list(provider.list_keys()))
        expect("list_versions", lambda: list(provider.list_versions(name)), key=name)
        calls = claimed_calls(provider, info)
        for call in calls:
            expect(AUDIT_NAME[call.op], partial(call.run, info.ref), alg=call.alg, key=name)
        export_refusal = _refusal(provider, "export_key").__name__
        expect("export_key", lambda: provider.export_key(name), outcome=export_refusal, key=name)
        expect("get_key", lambda: provider.get_key(unique_name()), outcome="KeyNotFound")
        if self.supports_disable and calls:
            expect("disable_key", lambda: provider.set_enabled(name, False), key=name)
            refused = calls[0]
            expect(AUDIT_NAME[refused.op], partial(refused.run, name), outcome="KeyDisabled", alg=refused.alg, key=name)
            expect("enable_key", lambda: provider.set_enabled(name, True), key=name)
        if self.supports_versions:
            expect("rotate_key", lambda: provider.rotate_key(name), key=name)
        if self.supports_import:
            expect("import_key", lambda: new_keys.import_(material_for(kty_spec)))
        expect("delete_key", lambda: provider.delete_key(name), key=name)

    def test_imported_key_keeps_its_public_key(self, shared_keys: Keys, spec: KeySpec) -> None:
        info, material = shared_keys.imported(spec)
        assert info.spec == spec
        assert info.ops == spec.default_ops
        assert info.enabled
        assert not info.exportable
        check_public_key(info)
        if not isinstance(material, bytes):
            assert same_public_key(info.public_key, material), "imported key reports another public key"

    def test_non_exportable_key_cannot_leave(
        self, provider: KeyProvider, shared_keys: Keys, byok_kek: rsa.RSAPrivateKey, kty_spec: KeySpec
    ) -> None:
        info = shared_keys.shared(kty_spec)
        assert not info.exportable
        with pytest.raises(_refusal(provider, "export_key")):
            provider.export_key(info.ref)
        with pytest.raises(_refusal(provider, "export_wrapped")):
            provider.export_wrapped(info.ref, byok_kek.public_key())

    def test_exportable_key_exports_in_clear(self, provider: KeyProvider, shared_keys: Keys, spec: KeySpec) -> None:
        self.require("supports_export")
        info = shared_keys.shared(spec, exportable=True)
        assert info.exportable
        exported = provider.export_key(info.ref)
        if info.spec.kty is KeyType.OCT:
            assert isinstance(exported, bytes)
            _assert_is_aes_key(provider, info, exported)
        else:
            assert not isinstance(exported, bytes), "an RSA/EC key must export as a private key object"
            assert same_public_key(info.public_key, exported), "exported private key does not match the public key"

    def test_exportable_key_exports_wrapped_for_byok(
        self, provider: KeyProvider, shared_keys: Keys, byok_kek: rsa.RSAPrivateKey, spec: KeySpec
    ) -> None:
        self.require("supports_export_wrapped")
        if "export_wrapped" not in provider.capabilities:  # e.g. a token without the mechanisms
            # refused before the key is looked at, so any key shows it (such a token may not even
            # make exportable keys: tpm2-pkcs11 refuses CKA_EXTRACTABLE with CKA_SENSITIVE)
            with pytest.raises(UnsupportedOperation):
                provider.export_wrapped(shared_keys.shared(spec).ref, byok_kek.public_key())
            why = getattr(provider, "unsupported", {}).get("export_wrapped", "no reason given")
            pytest.skip(f"this {provider.scheme} provider's capabilities lack export_wrapped: {why}")
        info = shared_keys.shared(spec, exportable=True)
        blob = provider.export_wrapped(info.ref, byok_kek.public_key())
        assert len(blob) > byok_kek.key_size // 8
        plain = unwrap_rsa_aes(byok_kek, blob)  # RSA-OAEP-SHA1 of an AES key, then RFC 5649
        if info.spec.kty is KeyType.OCT:
            _assert_is_aes_key(provider, info, plain)
        else:
            assert same_public_key(info.public_key, load_pkcs8(plain)), "wrapped PKCS#8 is not this key"


def _refusal(provider: KeyProvider, operation: str) -> type[KeybridgeError]:
    # A provider that cannot export at all says so (before looking at the key); one that can
    # refuses the non-exportable key by its policy.
    return OperationNotPermitted if operation in provider.capabilities else UnsupportedOperation
