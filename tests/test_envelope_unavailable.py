"""A provider that cannot answer during unwrap is ProviderUnavailable (retry later), not
DataKeyUnavailable (an IntegrityError: "tampered"); a plain wrong key stays DataKeyUnavailable."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.keys")

from azure.core.pipeline.policies import SansIOHTTPPolicy

from keybridge import InMemoryProvider, KeySpec
from keybridge.emulator import Faults, ManagedHsmEmulator
from keybridge.emulator._faults import FaultInjector
from keybridge.envelope import AnyOf, DataKeyUnavailable, DataKeyUnreachable, Keyring, KOfN, decrypt, encrypt
from keybridge.errors import IntegrityError, ProviderUnavailable
from keybridge.providers.azure import AzureKeyVaultProvider

ALWAYS_429 = Faults(error_rate=1.0, statuses=(429,), retry_after=0, max_consecutive=10_000)


class _Attempts(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Counts every HTTP attempt (retries included) by the last path segment."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def on_request(self, request: Any) -> None:
        self.paths.append(request.http_request.url.split("?")[0].rsplit("/", 1)[-1])


@pytest.fixture
def throttled() -> Iterator[tuple[ManagedHsmEmulator, AzureKeyVaultProvider, _Attempts]]:
    attempts = _Attempts()
    with (
        ManagedHsmEmulator() as emu,
        AzureKeyVaultProvider(
            emu.vault_url,
            retry_total=2,
            retry_backoff_factor=0.01,
            per_retry_policies=[attempts],
            **emu.provider_options(),
        ) as azure,
    ):
        yield emu, azure, attempts


def _throttle_from_now(emu: ManagedHsmEmulator) -> None:
    # The emulator takes its faults at start; swapping the injector lets key creation and
    # encryption through and throttles only what follows: the unwrap.
    assert emu._server is not None
    emu._server.faults = FaultInjector(ALWAYS_429)


@pytest.mark.parametrize("spec", [KeySpec.aes(256), KeySpec.rsa(2048)], ids=["aes-gcm", "rsa-oaep"])
def test_throttled_unwrap_is_provider_unavailable_not_integrity(throttled, spec: KeySpec) -> None:  # type: ignore[no-untyped-def]
    emu, azure, attempts = throttled
    name = "t-" + uuid.uuid4().hex[:8]
    azure.create_key(name, spec)
    kek = Keyring(azure.key(name))
    message = encrypt(b"intact message", kek, context={"k": "v"})

    _throttle_from_now(emu)
    attempts.paths.clear()
    with pytest.raises(ProviderUnavailable) as info:
        decrypt(message, kek)
    err = info.value
    assert isinstance(err, DataKeyUnreachable)
    assert not isinstance(err, IntegrityError)
    assert "busy" in str(err)
    assert "retries ran out" in str(err)
    assert [type(e) for _, e in err.failures] == [ProviderUnavailable]
    # Every attempt (1 + 2 retries) went to the unwrap call itself.
    assert attempts.paths == [attempts.paths[0]] * 3
    assert attempts.paths[0] in ("decrypt", "unwrapkey")

    emu._server.faults = None  # type: ignore[union-attr]
    assert decrypt(message, kek).plaintext == b"intact message"  # it was never tampered


def test_throttled_member_beats_a_wrong_key_in_any_of_and_k_of_n(throttled) -> None:  # type: ignore[no-untyped-def]
    emu, azure, _ = throttled
    name = "t-" + uuid.uuid4().hex[:8]
    azure.create_key(name, KeySpec.aes(256))
    memory = InMemoryProvider()
    memory.create_key("other", KeySpec.aes(256))
    memory.create_key("third", KeySpec.aes(256))
    az, other, third = Keyring(azure.key(name)), Keyring(memory.key("other")), Keyring(memory.key("third"))
    any_of = encrypt(b"x", az)
    k_of_n = encrypt(b"y", KOfN(2, az, other, third))

    _throttle_from_now(emu)
    with pytest.raises(DataKeyUnreachable) as info:
        decrypt(any_of, AnyOf(other, az))
    kinds = {type(e).__name__ for _, e in info.value.failures}
    assert kinds == {"NoMatchingEdk", "ProviderUnavailable"}
    with pytest.raises(DataKeyUnreachable, match="recovered 1 of the 2 shares"):
        decrypt(k_of_n, KOfN(2, az, other, Keyring(InMemoryProvider().key("missing"))))
    # Enough reachable shares still open it: throttling of one member does not matter then.
    assert decrypt(k_of_n, KOfN(2, az, other, third)).plaintext == b"y"


def test_plain_wrong_key_is_still_data_key_unavailable() -> None:
    memory = InMemoryProvider()
    memory.create_key("right", KeySpec.aes(256))
    memory.create_key("wrong", KeySpec.aes(256))
    message = encrypt(b"x", Keyring(memory.key("right"), name="kek"))
    with pytest.raises(DataKeyUnavailable) as info:
        decrypt(message, Keyring(memory.key("wrong"), name="kek"))
    assert isinstance(info.value, IntegrityError)
    assert not isinstance(info.value, ProviderUnavailable)


class _OldVersionDown(InMemoryProvider):
    """Memory keys whose older versions sit behind a service that is down (the fault cannot be
    caused in the emulator for one version only: its faults hit every request)."""

    def __init__(self) -> None:
        super().__init__()
        self.down: set[str] = set()

    def decrypt(self, ref, alg, data, *, aad=None):  # type: ignore[no-untyped-def, override]
        if self.ref(ref).version in self.down:
            raise ProviderUnavailable("injected: the service holding this version is down")
        return super().decrypt(ref, alg, data, aad=aad)


def test_older_version_unavailable_after_rotation_is_unreachable_not_tampered() -> None:
    memory = _OldVersionDown()
    memory.create_key("kek", KeySpec.aes(256))
    old = memory.key("kek").info().ref.version
    assert old is not None
    message = encrypt(b"written before the rotation", Keyring(memory.key("kek")))
    memory.rotate_key("kek")  # the current version cannot open it
    ring = Keyring(memory.key("kek"))
    memory.down = {old}
    with pytest.raises(DataKeyUnreachable) as info:
        decrypt(message, ring)
    kinds = [type(e).__name__ for _, e in info.value.failures]
    assert kinds == ["IntegrityError", "ProviderUnavailable"]  # current version: wrong key; old: down
    memory.down = set()
    assert decrypt(message, ring).plaintext == b"written before the rotation"
