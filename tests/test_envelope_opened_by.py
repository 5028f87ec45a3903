"""DecryptResult / DecryptInfo say which key opened a message: key URI with version, EDK provider
ID and key name, through every API (one-shot, stream, file, rewrap), recipients and the cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from _envelope_support import RawAesSource, esdk_client, esdk_raw_aes
from keybridge import InMemoryProvider, KeySpec
from keybridge.envelope import (
    AnyOf,
    DataKeyCache,
    Keyring,
    KOfN,
    OpenedBy,
    decrypt,
    decrypt_file,
    encrypt,
    encrypt_file,
    open_decryptor,
    report_opened,
    rewrap,
)


@pytest.fixture
def memory() -> InMemoryProvider:
    provider = InMemoryProvider()
    for name in ("a", "b", "c"):
        provider.create_key(name, KeySpec.aes(256))
    return provider


def _current(provider: InMemoryProvider, name: str) -> str:
    version = provider.key(name).info().ref.version
    assert version
    return version


def test_one_shot_stream_file_and_rewrap_name_the_key(memory: InMemoryProvider, tmp_path: Path) -> None:
    ring = Keyring(memory.key("a"), namespace="acme", name="kek-a")
    version = _current(memory, "a")
    expected = OpenedBy(f"memory:a/{version}", version, "acme", "kek-a")
    message = encrypt(b"secret", ring)

    result = decrypt(message, ring)
    assert result.opened_by == (expected,)
    assert result.key == expected
    assert f"memory:a/{version}" in repr(result)

    with open_decryptor(io.BytesIO(message), ring) as reader:
        assert reader.read() == b"secret"
        assert reader.info.key == expected

    src, dst = tmp_path / "p", tmp_path / "p.kb"
    src.write_bytes(b"file")
    encrypt_file(src, dst, ring)
    assert decrypt_file(dst, tmp_path / "out", ring).opened_by == (expected,)

    other = Keyring(memory.key("b"))
    info = rewrap(io.BytesIO(message), io.BytesIO(), unwrap_with=ring, wrap_for=other)
    assert info.key == expected  # the key that unwrapped the old header


def test_rotation_reports_the_older_version_that_opened_it(memory: InMemoryProvider) -> None:
    old = _current(memory, "a")
    message = encrypt(b"before rotation", Keyring(memory.key("a")))
    memory.rotate_key("a")  # a new version
    new = _current(memory, "a")
    assert new != old
    ring = Keyring(memory.key("a"))
    assert decrypt(message, ring).key == OpenedBy(f"memory:a/{old}", old, "keybridge", "memory:a")
    assert decrypt(encrypt(b"after", ring), ring).key == OpenedBy(f"memory:a/{new}", new, "keybridge", "memory:a")


def test_recipients_name_the_member_that_opened_it(memory: InMemoryProvider) -> None:
    a, b, c = (Keyring(memory.key(n)) for n in "abc")
    only_b = encrypt(b"x", b)
    assert [o.key_name for o in decrypt(only_b, AnyOf(a, b, c)).opened_by] == ["memory:b"]
    assert [o.key_name for o in decrypt(only_b, [a, b]).opened_by] == ["memory:b"]

    split = encrypt(b"y", KOfN(2, a, b, c))
    opened = decrypt(split, KOfN(2, a, b, c)).opened_by
    assert [o.key_name for o in opened] == ["memory:a", "memory:b"]  # one per share used, in order
    assert all(o.provider_id == "keybridge" for o in opened)  # the share's own EDK, not keybridge-kofn


def test_cache_hit_still_names_the_key(memory: InMemoryProvider) -> None:
    ring = Keyring(memory.key("a"))
    calls = []

    class Counting:
        def encryption_materials(self, **kw):  # type: ignore[no-untyped-def]
            return ring.encryption_materials(**kw)

        def decryption_materials(self, **kw):  # type: ignore[no-untyped-def]
            calls.append(1)
            return ring.decryption_materials(**kw)

    cache = DataKeyCache(Counting(), cache_seconds=60)
    message = encrypt(b"z", ring)
    first, second = decrypt(message, cache), decrypt(message, cache)
    assert len(calls) == 1  # the second one was a hit
    assert first.opened_by == second.opened_by
    assert first.key is not None
    assert first.key.key.startswith("memory:a/")


def test_custom_sources_report_nothing_unless_they_say(memory: InMemoryProvider) -> None:
    kek = os.urandom(32)
    theirs, _ = esdk_client().encrypt(source=b"esdk", key_provider=esdk_raw_aes(kek))
    silent = decrypt(theirs, RawAesSource(kek))
    assert silent.opened_by == ()
    assert silent.key is None

    class Reporting(RawAesSource):
        def decryption_materials(self, **kw):  # type: ignore[no-untyped-def]
            key = super().decryption_materials(**kw)
            report_opened(OpenedBy("raw:test", None, "keybridge-test", "kek-1"))
            return key

    assert decrypt(theirs, Reporting(kek)).key == OpenedBy("raw:test", None, "keybridge-test", "kek-1")


def test_azure_key_is_the_versioned_key_id() -> None:
    pytest.importorskip("azure.keyvault.keys")
    from keybridge.emulator import ManagedHsmEmulator
    from keybridge.providers.azure import AzureKeyVaultProvider

    with ManagedHsmEmulator() as emu, AzureKeyVaultProvider(emu.vault_url, **emu.provider_options()) as azure:
        info = azure.create_key("opened-by", KeySpec.aes(256))
        ring = Keyring(azure.key("opened-by"))
        opened = decrypt(encrypt(b"az", ring), ring).key
        vault = emu.vault_url.rstrip("/")
    assert opened is not None
    assert opened.version == info.ref.version
    assert opened.key == f"{vault}/keys/opened-by/{info.ref.version}"
