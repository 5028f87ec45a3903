"""transfer() refuses a name in use on either side before touching either (issue #9, item 2).

Source: a real SoftHSM2 token; target: the in-memory provider and the Managed HSM emulator over
HTTPS. Running a transfer twice must leave exactly one key object with that label on the token,
one version in the target, and no KEK behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from keybridge import InMemoryProvider, KeyExists, KeyProvider, KeySpec, audit, open_provider
from keybridge.byok import transfer
from keybridge.emulator import ManagedHsmEmulator
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from pkcs11 import Attribute as A
from pkcs11 import ObjectClass as OC

_WRITES = {"create_key", "import_key", "import_byok", "rotate_key", "delete_key", "export_wrapped"}


@pytest.fixture(scope="module")
def hsm(softhsm_token: SoftHsmToken) -> Iterator[Any]:
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as provider:
        yield provider


@pytest.fixture(params=["memory", "emulator"])
def target(request: pytest.FixtureRequest) -> Iterator[KeyProvider]:
    if request.param == "memory":
        yield InMemoryProvider()
        return
    emu: ManagedHsmEmulator = request.getfixturevalue("azure_emulator")
    with open_provider(emu.vault_url, **emu.provider_options()) as provider:
        yield provider


@pytest.fixture
def writes() -> Iterator[list[str]]:
    seen: list[str] = []

    def sink(event: audit.AuditEvent) -> None:
        if event.operation in _WRITES:
            seen.append(f"{event.provider} {event.operation} {event.key}")

    audit.add_sink(sink)
    yield seen
    audit.remove_sink(sink)


def _private_keys(hsm: Any, label: str) -> int:
    query = {A.LABEL: label, A.CLASS: OC.PRIVATE_KEY}
    return int(hsm._pool.run(lambda e: len(list(e.session.get_objects(query))), "counting"))


def _names(p: KeyProvider) -> set[str]:
    return {k.ref.name for k in p.list_keys()}


def test_a_second_transfer_under_the_same_name_is_refused_before_any_change(
    hsm: Any, target: KeyProvider, writes: list[str]
) -> None:
    name = f"tn-{uuid.uuid4().hex[:10]}"
    first = transfer(hsm, target, name, KeySpec.ec("P-256"), kek_size=2048)
    in_target = _names(target)
    writes.clear()
    with pytest.raises(KeyExists) as err:
        transfer(hsm, target, name, KeySpec.ec("P-256"), kek_size=2048)
    assert "the source already has a key named" in str(err.value)
    assert writes == []  # no KEK created, nothing generated, imported or deleted
    assert _private_keys(hsm, name) == 1
    assert [v.ref.version for v in hsm.list_versions(name)] == [first.source_ref.version]
    assert [v.ref.version for v in target.list_versions(name)] == [first.target_ref.version]
    assert _names(target) == in_target
    hsm.delete_key(name)


def test_a_name_in_use_on_the_target_is_refused_naming_the_target(
    hsm: Any, target: KeyProvider, writes: list[str]
) -> None:
    name = f"tn-{uuid.uuid4().hex[:10]}"
    existing = target.create_key(name, KeySpec.ec("P-256"))
    in_target = _names(target)
    writes.clear()
    with pytest.raises(KeyExists) as err:
        transfer(hsm, target, f"{name}-src", KeySpec.ec("P-256"), target_name=name, kek_size=2048)
    assert "the target already has a key named" in str(err.value)
    assert "target_name" in str(err.value)
    assert writes == []
    assert _private_keys(hsm, f"{name}-src") == 0  # the source was not touched either
    assert [v.ref.version for v in target.list_versions(name)] == [existing.ref.version]
    assert _names(target) == in_target
