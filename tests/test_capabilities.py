"""What a provider can do is explicit (issue #15): ``capabilities``, and a typed
``UnsupportedOperation`` naming provider and operation, raised before the backend is touched."""

from __future__ import annotations

import pickle
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keybridge import (
    OPERATIONS,
    BaseProvider,
    InMemoryProvider,
    KeyOp,
    KeyProvider,
    KeySpec,
    UnsupportedAlgorithm,
    UnsupportedOperation,
    open_provider,
)
from keybridge.byok import transfer


class _Empty(BaseProvider):
    """A backend that overrides no hook at all: it can do nothing."""

    scheme = "empty"


class _NoByok(InMemoryProvider):
    """An in-memory backend that declares BYOK import away although it inherits the hook."""

    unsupported = {"import_byok": "this deployment takes no key packages"}  # noqa: RUF012


def test_a_backend_without_hooks_lists_no_capability_and_names_each_refused_operation() -> None:
    p = _Empty()
    assert p.capabilities == frozenset()
    calls = {
        "create_key": lambda: p.create_key("k", KeySpec.aes(256)),
        "import_key": lambda: p.import_key("k", b"\0" * 32),
        "import_byok": lambda: p.import_byok("k", b"{}", KeySpec.aes(256)),
        "get_key": lambda: p.get_key("k"),
        "list_keys": lambda: p.list_keys(),
        "list_versions": lambda: p.list_versions("k"),
        "rotate_key": lambda: p.rotate_key("k"),
        "set_enabled": lambda: p.set_enabled("k", False),
        "delete_key": lambda: p.delete_key("k"),
        "unwrap_key": lambda: p.unwrap_key("k", "A256KW", b"\0" * 40),
        "decrypt": lambda: p.decrypt("k", "A256GCM", b"\0" * 40),
        "sign": lambda: p.sign("k", "ES256", b"\0" * 32),
        "export_key": lambda: p.export_key("k"),
        "export_wrapped": lambda: p.export_wrapped("k", rsa.generate_private_key(65537, 2048).public_key()),
    }
    for op, call in calls.items():
        with pytest.raises(UnsupportedOperation) as err:
            call()
        assert (err.value.provider, err.value.operation) == ("empty", op)
        assert f"the empty provider does not support {op}" in str(err.value)
        assert isinstance(err.value, UnsupportedAlgorithm)  # code that caught the old error still does


def test_the_error_survives_pickling_with_its_fields() -> None:
    err = UnsupportedOperation("pkcs11", "import_byok", "no BYOK on a token")
    back = pickle.loads(pickle.dumps(err))
    assert (back.provider, back.operation, back.detail, str(back)) == (
        "pkcs11",
        "import_byok",
        "no BYOK on a token",
        str(err),
    )


def test_builtin_capabilities_follow_the_hooks_each_backend_has(softhsm_token, azure_emulator) -> None:  # type: ignore[no-untyped-def]
    assert InMemoryProvider().capabilities == frozenset(OPERATIONS)
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        assert set(OPERATIONS) - hsm.capabilities == {"export_key", "import_byok"}
    pytest.importorskip("azure.keyvault.keys")
    with open_provider(azure_emulator.vault_url, **azure_emulator.provider_options()) as azure:
        assert set(OPERATIONS) - azure.capabilities == {"export_key", "export_wrapped"}
        with pytest.raises(UnsupportedOperation, match="secure key release") as err:
            # Refused before the vault is asked: no KeyNotFound for a key that was never made.
            azure.export_key(f"never-made-{uuid.uuid4().hex[:8]}")
        assert err.value.operation == "export_key"


def test_an_instance_can_declare_what_its_configuration_rules_out() -> None:
    p, q = InMemoryProvider(), InMemoryProvider()
    p.unsupported = {"rotate_key": "rotation is done by the key ceremony"}
    assert set(OPERATIONS) - p.capabilities == {"rotate_key"}
    assert q.capabilities == frozenset(OPERATIONS)  # the class and other instances are unchanged
    p.create_key("k", KeySpec.aes(256))
    with pytest.raises(UnsupportedOperation, match="key ceremony"):
        p.rotate_key("k")
    assert len(list(p.list_versions("k"))) == 1


def test_a_declared_unsupported_operation_is_refused_before_the_backend_runs() -> None:
    p = _NoByok()
    assert "import_byok" not in p.capabilities
    assert isinstance(p, KeyProvider)
    with pytest.raises(UnsupportedOperation, match="takes no key packages"):
        p.import_byok("k", b"not even json", KeySpec.aes(256))  # the package is never parsed
    assert list(p.list_keys()) == []


@pytest.fixture
def softhsm(softhsm_token) -> Iterator[KeyProvider]:  # type: ignore[no-untyped-def]
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as provider:
        yield provider


def test_transfer_into_a_target_without_byok_import_touches_neither_side(softhsm) -> None:
    source = InMemoryProvider()
    before = {k.ref.name for k in softhsm.list_keys()}
    with pytest.raises(UnsupportedOperation) as err:
        transfer(source, softhsm, "moved", KeySpec.aes(256), kek_size=2048)
    assert (err.value.provider, err.value.operation) == ("pkcs11", "import_byok")
    assert "target" in str(err.value)
    assert list(source.list_keys()) == []  # no key generated in the source
    assert {k.ref.name for k in softhsm.list_keys()} == before  # no KEK made in the target


def test_transfer_from_a_source_without_wrapped_export_touches_neither_side() -> None:
    class NoWrappedExport(InMemoryProvider):
        unsupported = {"export_wrapped": "keys never leave"}  # noqa: RUF012

    source, target = NoWrappedExport(), InMemoryProvider()
    with pytest.raises(UnsupportedOperation) as err:
        transfer(source, target, "moved", KeySpec.ec("P-256"), ops=[KeyOp.SIGN, KeyOp.VERIFY], kek_size=2048)
    assert (err.value.provider, err.value.operation) == ("memory", "export_wrapped")
    assert list(source.list_keys()) == []
    assert list(target.list_keys()) == []
