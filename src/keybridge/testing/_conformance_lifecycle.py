"""Conformance of key management: metadata, listing, versions and rotation, enable/disable, validity
windows, deletion, and the errors for unknown keys, versions and algorithms."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable
from functools import partial

import pytest

from .. import audit
from ..errors import (
    IntegrityError,
    InvalidArgument,
    KeyDisabled,
    KeyExists,
    KeyExpired,
    KeyNotFound,
    OperationNotPermitted,
    UnsupportedAlgorithm,
)
from ..keys import ALGORITHMS, KeyInfo, KeyOp, KeyRef, KeySpec, KeyType
from ..provider import KeyProvider
from ._conformance_base import ConformanceBase
from ._conformance_support import (
    OPS_IN_ORDER,
    Call,
    Keys,
    check_public_key,
    claimed_algs,
    claimed_calls,
    fits,
    make_call,
    material_for,
    same_public_key,
    sig_hash,
    unique_name,
    verify_outside,
)

# Two complementary op sets per key type: every op is tried once allowed and once refused.
_OP_HALVES = {
    KeyType.RSA: ({KeyOp.SIGN, KeyOp.DECRYPT, KeyOp.UNWRAP_KEY}, {KeyOp.VERIFY, KeyOp.ENCRYPT, KeyOp.WRAP_KEY}),
    KeyType.EC: ({KeyOp.SIGN}, {KeyOp.VERIFY}),
    KeyType.OCT: ({KeyOp.ENCRYPT, KeyOp.DECRYPT}, {KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY}),
}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _close_in_time(a: dt.datetime | None, b: dt.datetime) -> bool:
    # Backends may store whole seconds (Key Vault does).
    return a is not None and abs((a - b).total_seconds()) <= 1


def _assert_same_version(a: KeyInfo, b: KeyInfo) -> None:
    assert (a.ref.name, a.ref.version) == (b.ref.name, b.ref.version)
    assert (a.spec, a.ops, a.enabled, a.exportable, dict(a.tags)) == (
        b.spec,
        b.ops,
        b.enabled,
        b.exportable,
        dict(b.tags),
    )
    if a.public_key is not None or b.public_key is not None:
        assert same_public_key(a.public_key, b.public_key)


def _versions(provider: KeyProvider, name: str) -> list[KeyInfo]:
    return list(provider.list_versions(name))


PUBLIC_OPS = frozenset({KeyOp.VERIFY, KeyOp.ENCRYPT, KeyOp.WRAP_KEY})


class LifecycleChecks(ConformanceBase):
    """Key management and the error contract."""

    def test_provider_declares_scheme_and_known_algorithms(self, provider: KeyProvider) -> None:
        assert isinstance(provider, KeyProvider)
        assert isinstance(provider.scheme, str)
        assert provider.scheme
        assert provider.algorithms, "a provider must claim at least one algorithm"
        unknown = set(provider.algorithms) - set(ALGORITHMS)
        assert not unknown, f"provider claims algorithms keybridge does not know: {sorted(unknown)}"

    def test_created_key_reports_its_metadata(self, provider: KeyProvider, shared_keys: Keys, spec: KeySpec) -> None:
        info = shared_keys.shared(spec)
        assert info.spec == spec
        assert info.ref.name
        assert info.ref.scheme == provider.scheme
        assert info.ops == spec.default_ops
        assert info.enabled
        assert not info.exportable
        check_public_key(info)
        _assert_same_version(provider.get_key(info.ref.name), info)
        _assert_same_version(provider.get_key(info.ref), info)

    def test_requested_ops_and_tags_are_kept_and_enforced(
        self, provider: KeyProvider, new_keys: Keys, kty_spec: KeySpec
    ) -> None:
        for allowed in _OP_HALVES[kty_spec.kty]:
            tags = {"purpose": "conformance", "half": "-".join(sorted(op.value for op in allowed))}
            info = new_keys.create(kty_spec, ops=allowed, tags=tags)
            assert info.ops == allowed
            assert dict(info.tags) == tags
            fetched = provider.get_key(info.ref.name)
            assert fetched.ops == allowed
            assert dict(fetched.tags) == tags
            for call in claimed_calls(provider, info):
                call.run(info.ref)
            for call in claimed_calls(provider, info, ops=set(OPS_IN_ORDER) - allowed):
                with pytest.raises(OperationNotPermitted) as err:
                    call.run(info.ref)
                assert not isinstance(err.value, (KeyDisabled, KeyExpired)), f"{call}: {err.value!r}"

    def test_list_keys_and_versions_show_a_new_key(
        self, provider: KeyProvider, shared_keys: Keys, kty_spec: KeySpec
    ) -> None:
        info = shared_keys.shared(kty_spec)
        listed = {k.ref.name: k for k in provider.list_keys()}
        assert info.ref.name in listed, "list_keys() misses a key just created"
        assert all(isinstance(k, KeyInfo) for k in listed.values())
        _assert_same_version(listed[info.ref.name], info)
        versions = list(provider.list_versions(info.ref.name))
        assert len(versions) == 1
        _assert_same_version(versions[0], info)

    def test_rotation_makes_a_new_version_and_old_ones_stay_usable(
        self, provider: KeyProvider, new_keys: Keys, kty_spec: KeySpec
    ) -> None:
        self.require("supports_versions")
        v1 = new_keys.create(kty_spec)
        name = v1.ref.name
        assert v1.ref.version, "a versioned provider must report the version it created"
        old_calls = claimed_calls(provider, v1)
        v2 = provider.rotate_key(name)
        assert v2.ref.name == name
        assert v2.ref.version
        assert v2.ref.version != v1.ref.version
        assert (v2.spec, v2.ops) == (v1.spec, v1.ops)
        assert provider.get_key(name).ref.version == v2.ref.version
        _assert_same_version(provider.get_key(name, v1.ref.version), v1)
        assert [v.ref.version for v in provider.list_versions(name)] == [v1.ref.version, v2.ref.version]
        for call in old_calls:  # sign / verify / decrypt / unwrap with the old version, inputs made before
            call.run(v1.ref)
        self._assert_new_material(provider, v1, v2)

    def _assert_new_material(self, provider: KeyProvider, v1: KeyInfo, v2: KeyInfo) -> None:
        """The new version is a different key, and an unversioned reference means the new version."""
        if v1.public_key is not None:
            assert not same_public_key(v1.public_key, v2.public_key), "rotation kept the old key pair"
            for call in claimed_calls(provider, v2, ops={KeyOp.SIGN}):
                call.run(v2.ref.name)  # verified outside with v2's public key
            return
        sealers = (
            (KeyOp.ENCRYPT, provider.encrypt, provider.decrypt),
            (KeyOp.WRAP_KEY, provider.wrap_key, provider.unwrap_key),
        )
        for op, seal, open_ in sealers:
            for alg in claimed_algs(provider, v1.spec, op)[:1]:
                sealed = seal(v1.ref, alg, bytes(32))
                with pytest.raises(IntegrityError):
                    open_(v2.ref.name, alg, sealed)

    def test_creating_under_a_name_in_use_is_refused(
        self, provider: KeyProvider, new_keys: Keys, kty_spec: KeySpec
    ) -> None:
        """create_key and import_key never rotate: a name in use raises KeyExists (pointing to
        rotate_key), whatever the spec, and the key keeps its one version."""
        info = new_keys.create(kty_spec)
        name = info.ref.name
        other = KeySpec.aes(256) if kty_spec.kty is not KeyType.OCT else KeySpec.ec("P-256")
        attempts: list[Callable[[], object]] = [
            partial(provider.create_key, name, kty_spec),
            partial(provider.create_key, name, other, exportable=True),
        ]
        if self.supports_import:
            attempts.append(partial(provider.import_key, name, material_for(kty_spec)))
        for attempt in attempts:
            with pytest.raises(KeyExists) as err:
                attempt()
            assert "rotate_key" in str(err.value)
        assert [v.ref.version for v in provider.list_versions(name)] == [info.ref.version]
        _assert_same_version(provider.get_key(name), info)

    def test_a_pin_typed_into_a_name_is_refused_and_never_echoed(
        self, provider: KeyProvider, shared_keys: Keys, kty_spec: KeySpec, audit_events: list[audit.AuditEvent]
    ) -> None:
        """A name holding a PIN attribute is InvalidArgument, and the PIN is in no message or event."""
        name = shared_keys.shared(kty_spec).ref.name
        secret = f"S3cret{uuid.uuid4().hex[:8]}"
        texts = []
        for bad in (f"pin-value={secret}", f"{name};pin-value={secret}", f"pin-source%3D{secret}"):
            actions: list[Callable[[], object]] = [
                partial(provider.create_key, bad, kty_spec),
                partial(provider.get_key, bad),
                partial(provider.rotate_key, bad),
                partial(provider.delete_key, bad),
                partial(_versions, provider, bad),
            ]
            for action in actions:
                with pytest.raises(InvalidArgument) as err:
                    action()
                texts += [str(err.value), repr(err.value), repr(err.value.__cause__), repr(err.value.__context__)]
        texts += [repr(e) for e in audit_events]
        assert not [t for t in texts if secret in t]

    def test_disabled_key_refuses_every_operation_until_enabled(
        self, provider: KeyProvider, new_keys: Keys, kty_spec: KeySpec
    ) -> None:
        self.require("supports_disable")
        info = new_keys.create(kty_spec)
        name = info.ref.name
        calls = self.require_calls(claimed_calls(provider, info), provider, kty_spec)
        assert provider.set_enabled(name, False).enabled is False
        assert provider.get_key(name).enabled is False
        for call in calls:
            with pytest.raises(KeyDisabled):
                call.run(name)
        assert provider.set_enabled(name, True).enabled is True
        for call in calls:
            call.run(name)

    def test_disabling_one_version_leaves_the_others_usable(
        self, provider: KeyProvider, new_keys: Keys, kty_spec: KeySpec
    ) -> None:
        self.require("supports_versions")
        self.require("supports_disable")
        v1 = new_keys.create(kty_spec)
        old_calls = claimed_calls(provider, v1)
        v2 = provider.rotate_key(v1.ref.name)
        assert provider.set_enabled(v1.ref, False).enabled is False
        assert provider.get_key(v1.ref.name).enabled is True
        for call in old_calls:
            with pytest.raises(KeyDisabled):
                call.run(v1.ref)
        for call in claimed_calls(provider, v2):
            call.run(v1.ref.name)

    def test_key_outside_its_validity_window_is_refused(
        self, provider: KeyProvider, shared_keys: Keys, new_keys: Keys, kty_spec: KeySpec
    ) -> None:
        self.require("supports_expiry")
        hour = dt.timedelta(hours=1)
        expired_at, starts_at = _now() - hour, _now() + hour
        expired = new_keys.create(kty_spec, expires=expired_at)
        future = new_keys.create(kty_spec, not_before=starts_at)
        assert _close_in_time(provider.get_key(expired.ref.name).expires, expired_at)
        assert _close_in_time(provider.get_key(future.ref.name).not_before, starts_at)
        # Inputs come from a usable key of the same spec: these keys can never make their own.
        calls = claimed_calls(provider, shared_keys.shared(kty_spec))
        for info in (expired, future):
            for call in calls:
                with pytest.raises(KeyExpired):
                    call.run(info.ref.name)

    def test_deleted_key_is_gone(self, provider: KeyProvider, new_keys: Keys, kty_spec: KeySpec) -> None:
        v1 = new_keys.create(kty_spec)
        name = v1.ref.name
        if self.supports_versions:
            provider.rotate_key(name)
        calls = claimed_calls(provider, v1)
        provider.delete_key(name)
        with pytest.raises(KeyNotFound):
            provider.get_key(name)
        with pytest.raises(KeyNotFound):
            provider.get_key(v1.ref)
        assert name not in {k.ref.name for k in provider.list_keys()}
        for call in calls:
            with pytest.raises(KeyNotFound):
                call.run(name)

    def test_unknown_key_name_raises_key_not_found(
        self, provider: KeyProvider, shared_keys: Keys, kty_spec: KeySpec
    ) -> None:
        calls = claimed_calls(provider, shared_keys.shared(kty_spec))
        name = unique_name()

        def list_versions() -> None:
            list(provider.list_versions(name))

        actions: list[Callable[[], object]] = [
            partial(provider.get_key, name),
            list_versions,
            partial(provider.delete_key, name),
        ]
        if self.supports_versions:
            actions.append(partial(provider.rotate_key, name))
        if self.supports_disable:
            actions.append(partial(provider.set_enabled, name, False))
        actions += [partial(call.run, name) for call in calls]
        for action in actions:
            with pytest.raises(KeyNotFound):
                action()

    def test_unknown_version_raises_key_not_found(
        self, provider: KeyProvider, shared_keys: Keys, kty_spec: KeySpec
    ) -> None:
        info = shared_keys.shared(kty_spec)
        missing = uuid.uuid4().hex
        with pytest.raises(KeyNotFound):
            provider.get_key(info.ref.name, missing)
        ref = provider.ref(info.ref.name, missing)
        assert isinstance(ref, KeyRef)
        assert ref.version == missing
        for call in claimed_calls(provider, info):
            with pytest.raises(KeyNotFound):
                call.run(ref)

    def test_algorithm_for_another_key_type_or_operation_is_unsupported(
        self, provider: KeyProvider, shared_keys: Keys, spec: KeySpec
    ) -> None:
        """A256GCM on an RSA key, ES256 on P-384, PS256 on EC, A128KW on AES-256, RS256 to encrypt ..."""
        info = shared_keys.shared(spec)
        tried = []
        for alg in sorted(provider.algorithms & ALGORITHMS.keys()):
            for op in OPS_IN_ORDER:
                if not (fits(alg, spec) and op in ALGORITHMS[alg].ops):
                    tried.append(make_call(provider, info, op, alg, real=False))
        self._assert_unsupported(info, tried)

    def test_unknown_or_unclaimed_algorithm_is_unsupported(
        self, provider: KeyProvider, shared_keys: Keys, kty_spec: KeySpec
    ) -> None:
        info = shared_keys.shared(kty_spec)
        unclaimed = [a for a in ALGORITHMS if a not in provider.algorithms and fits(a, kty_spec)]
        names = ["RS257", "A512GCM", "", "none", *unclaimed]
        # Public-key operations (verify, RSA encrypt and wrap) run locally from the public key, so
        # they work even with an algorithm the backend itself lacks; everything else must refuse.
        calls = [
            make_call(provider, info, op, a, real=False)
            for a in names
            for op in OPS_IN_ORDER
            if not (a in ALGORITHMS and ALGORITHMS[a].is_public_op and op in PUBLIC_OPS)
        ]
        self._assert_unsupported(info, calls)

    @staticmethod
    def _assert_unsupported(info: KeyInfo, calls: list[Call]) -> None:
        assert calls, "nothing to try"
        wrong = []
        for call in calls:
            try:
                call.run(info.ref)
            except UnsupportedAlgorithm:
                continue
            except Exception as exc:  # collect every mismatch, not just the first
                wrong.append(f"{call} on {info.spec}: {type(exc).__name__}: {exc}")
            else:
                wrong.append(f"{call} on {info.spec}: no error")
        assert not wrong, "expected UnsupportedAlgorithm:\n" + "\n".join(wrong)

    def test_every_form_of_reference_reaches_the_key(
        self, provider: KeyProvider, shared_keys: Keys, kty_spec: KeySpec
    ) -> None:
        info = shared_keys.shared(kty_spec)
        uri = str(info.ref)
        parsed = provider.ref(uri)
        assert (parsed.name, parsed.version) == (info.ref.name, info.ref.version)
        handle = provider.key(info.ref.name)
        _assert_same_version(handle.info(), info)
        for form in (info.ref.name, info.ref, uri, parsed, handle.ref):
            for call in claimed_calls(provider, info):
                call.run(form)
        if info.public_key is not None:
            for call in claimed_calls(provider, info, ops={KeyOp.SIGN}):
                digest = os.urandom(sig_hash(call.alg).digest_size)
                assert verify_outside(info.public_key, call.alg, digest, handle.sign(call.alg, digest))
