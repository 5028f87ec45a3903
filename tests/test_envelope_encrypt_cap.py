"""Encrypt-side max_encrypted_data_keys: more recipients than the cap is InvalidArgument before any
KEK call (as aws-encryption-sdk refuses it too), for keyrings, recipients and the cache."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_encryption_sdk.exceptions import CustomMaximumValueExceeded

from _envelope_support import NAMESPACE, RawAesSource, esdk_client
from keybridge import InMemoryProvider, KeySpec, audit
from keybridge.envelope import (
    AnyOf,
    DataKeyCache,
    Keyring,
    KOfN,
    decrypt,
    encrypt,
    encrypt_file,
    open_encryptor,
)
from keybridge.errors import InvalidArgument


@pytest.fixture
def rings() -> list[Keyring]:
    provider = InMemoryProvider()
    for name in "abcd":
        provider.create_key(name, KeySpec.aes(256))
    return [Keyring(provider.key(name)) for name in "abcd"]


@pytest.fixture
def kek_calls() -> Iterator[list[str]]:
    """Every provider operation, as the audit log sees it."""
    events: list[str] = []

    def sink(event: audit.AuditEvent) -> None:
        events.append(event.operation)

    audit.add_sink(sink)
    yield events
    audit.remove_sink(sink)


def test_too_many_recipients_fail_before_any_kek_call(rings: list[Keyring], kek_calls: list[str]) -> None:
    a, b, c, d = rings
    cases = {
        "any-of": (AnyOf(a, b, c), 3),
        "list": ([a, b, c], 3),
        "k-of-n": (KOfN(2, a, b, c), 3),
        "nested": (AnyOf(KOfN(2, a, b, c), d), 4),
        "cache": (DataKeyCache(AnyOf(a, b, c), cache_seconds=60), 3),
    }
    for what, (keys, count) in cases.items():
        kek_calls.clear()
        with pytest.raises(InvalidArgument, match=f"write {count} encrypted data keys, more than .*=2"):
            encrypt(b"x", keys, max_encrypted_data_keys=2)
        assert kek_calls == [], what
        message = encrypt(b"x", keys, max_encrypted_data_keys=count)
        assert len(decrypt(message, keys).edks) == count


def test_streams_and_files_refuse_before_writing(rings: list[Keyring], kek_calls: list[str], tmp_path: Path) -> None:
    sink = io.BytesIO()
    with pytest.raises(InvalidArgument, match="max_encrypted_data_keys"):
        open_encryptor(sink, rings, max_encrypted_data_keys=1)
    assert sink.getvalue() == b""
    src, dst = tmp_path / "p", tmp_path / "c"
    src.write_bytes(b"plain")
    with pytest.raises(InvalidArgument, match="max_encrypted_data_keys"):
        encrypt_file(src, dst, rings[:2], max_encrypted_data_keys=1)
    assert not dst.exists()
    assert kek_calls == []
    assert list(tmp_path.iterdir()) == [src]  # no temp file left behind


def test_a_source_that_cannot_count_is_checked_on_what_it_returns() -> None:
    kek = os.urandom(32)
    keys = AnyOf(RawAesSource(kek), RawAesSource(kek, name="kek-2"))
    with pytest.raises(InvalidArgument, match="write 2 encrypted data keys"):
        encrypt(b"x", keys, max_encrypted_data_keys=1)
    assert len(decrypt(encrypt(b"x", keys, max_encrypted_data_keys=2), keys).edks) == 2


def test_agrees_with_the_esdk_and_checks_its_argument(rings: list[Keyring]) -> None:
    from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider

    kek = os.urandom(32)

    class TwoKeks(RawMasterKeyProvider):  # type: ignore[misc]
        provider_id = NAMESPACE

        def _get_raw_key(self, key_id: bytes) -> WrappingKey:
            alg = WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING
            return WrappingKey(wrapping_algorithm=alg, wrapping_key=kek, wrapping_key_type=EncryptionKeyType.SYMMETRIC)

    mkp = TwoKeks()
    mkp.add_master_keys_from_list([b"kek-1", b"kek-2"])
    _, header = esdk_client().encrypt(source=b"x", key_provider=mkp)
    assert len(header.encrypted_data_keys) == 2
    with pytest.raises(CustomMaximumValueExceeded):
        esdk_client(max_encrypted_data_keys=1).encrypt(source=b"x", key_provider=mkp)
    with pytest.raises(InvalidArgument, match="more than max_encrypted_data_keys=1"):
        encrypt(b"x", AnyOf(RawAesSource(kek), RawAesSource(kek, name="kek-2")), max_encrypted_data_keys=1)
    for bad in (0, -1, True, "2", 1.5):
        with pytest.raises(InvalidArgument, match="max_encrypted_data_keys must be an int"):
            encrypt(b"x", rings[0], max_encrypted_data_keys=bad)  # type: ignore[arg-type]
