"""Encrypted Parquet with the footer key in SoftHSM2 (PKCS#11) and column keys in the Managed HSM
emulator (Azure SDK over HTTPS): the providers, not the in-memory keystore, do the wrapping."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pytest.importorskip("pkcs11")
pytest.importorskip("azure.keyvault.keys")

from cryptography.hazmat.primitives.keywrap import aes_key_wrap  # noqa: E402

from _parquet_support import materials  # noqa: E402
from keybridge import audit  # noqa: E402
from keybridge.emulator import ManagedHsmEmulator  # noqa: E402
from keybridge.errors import KeyDisabled, KeyNotFound  # noqa: E402
from keybridge.keys import KeyOp, KeySpec  # noqa: E402
from keybridge.parquet import VERSION_TAG, ParquetKeys, read_table, rotate_master_keys, write_table  # noqa: E402
from keybridge.providers.azure import AzureKeyVaultProvider  # noqa: E402
from keybridge.providers.pkcs11 import Pkcs11Provider  # noqa: E402
from keybridge.testing._softhsm import SoftHsmToken  # noqa: E402

WRAP = [KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY]
TABLE = pa.table({"id": [1, 2, 3], "ssn": ["a", "b", "c"], "salary": [10.0, 20.0, 30.0], "city": ["x", "y", "z"]})
COLUMNS = {"pii": ["ssn"], "pay": ["salary"]}


def _name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(5).hex()}"


@pytest.fixture(scope="module")
def hsm(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        yield p


@pytest.fixture(scope="module")
def azure(azure_emulator: ManagedHsmEmulator) -> Iterator[AzureKeyVaultProvider]:
    with AzureKeyVaultProvider(azure_emulator.vault_url, **azure_emulator.provider_options()) as p:
        yield p


@pytest.fixture
def names(hsm: Pkcs11Provider, azure: AzureKeyVaultProvider) -> dict[str, str]:
    """Fresh key names: ``footer`` in SoftHSM, ``pii`` and ``pay`` in the emulator."""
    made = {"footer": _name("pqf"), "pii": _name("pqp"), "pay": _name("pqs")}
    hsm.create_key(made["footer"], KeySpec.aes(256), ops=WRAP)
    for mk in ("pii", "pay"):
        azure.create_key(made[mk], KeySpec.aes(256), ops=WRAP)
    return made


def _keys(names: dict[str, str], token: SoftHsmToken, emulator: ManagedHsmEmulator, *allowed: str) -> ParquetKeys:
    """A reader's spec: the PIN and the Azure credential travel in options, never in the URI."""
    uris: dict[str, str] = {}
    options: dict[str, dict[str, Any]] = {}
    for mk in allowed:
        if mk == "footer":
            uri = token.uri(names[mk], pin=False)
            options[uri] = {"user_pin": token.user_pin}
        else:
            uri = f"{emulator.vault_url}/keys/{names[mk]}"
            options[uri] = emulator.provider_options()
        uris[mk] = uri
    return ParquetKeys(uris, options=options)


def test_footer_in_softhsm_columns_in_the_emulator(
    tmp_path: Path,
    names: dict[str, str],
    hsm: Pkcs11Provider,
    azure: AzureKeyVaultProvider,
    softhsm_token: SoftHsmToken,
    azure_emulator: ManagedHsmEmulator,
) -> None:
    path = tmp_path / "t.parquet"
    full = _keys(names, softhsm_token, azure_emulator, "footer", "pii", "pay")
    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)
    try:
        write_table(TABLE, path, keys=full, footer_key="footer", columns=COLUMNS, external_key_material=True)
    finally:
        audit.remove_sink(events.append)
    wrapped_by = {str(e.key).split("?")[0] for e in events if e.operation == "wrap_key" and e.outcome == "ok"}
    assert any(k.startswith("pkcs11:") for k in wrapped_by), wrapped_by
    assert sum(k.startswith("https://") for k in wrapped_by) == 2, wrapped_by

    # Token keys (CKA_ID) and emulator keys alike say which version wrapped them.
    versions = {"footer": hsm.get_key(names["footer"]).ref.version}
    versions.update({mk: azure.get_key(names[mk]).ref.version for mk in ("pii", "pay")})
    for m in materials(path):
        assert str(m["wrappedKEK"]).startswith(f"{VERSION_TAG}:{versions[str(m['masterKeyID'])]}:"), m
    assert softhsm_token.user_pin not in repr(full)
    assert read_table(path, keys=_keys(names, softhsm_token, azure_emulator, "footer", "pii", "pay")).equals(TABLE)


def test_a_reader_sees_only_the_columns_it_holds_keys_for(
    tmp_path: Path, names: dict[str, str], softhsm_token: SoftHsmToken, azure_emulator: ManagedHsmEmulator
) -> None:
    path = tmp_path / "t.parquet"
    full = _keys(names, softhsm_token, azure_emulator, "footer", "pii", "pay")
    write_table(TABLE, path, keys=full, footer_key="footer", columns=COLUMNS)

    hr = _keys(names, softhsm_token, azure_emulator, "footer", "pay")
    assert read_table(path, keys=hr, skip_locked=True).equals(TABLE.select(["id", "salary", "city"]))
    with pytest.raises(KeyNotFound, match="'pii'"):
        read_table(path, keys=hr, columns=["ssn"])
    with pytest.raises(KeyNotFound, match="'footer'"):
        read_table(path, keys=_keys(names, softhsm_token, azure_emulator, "pii", "pay"))
    with pytest.raises(KeyNotFound, match="is encrypted"):
        read_table(path)


def test_rotation_in_both_providers_then_the_old_versions_disabled(
    tmp_path: Path,
    names: dict[str, str],
    hsm: Pkcs11Provider,
    azure: AzureKeyVaultProvider,
    softhsm_token: SoftHsmToken,
    azure_emulator: ManagedHsmEmulator,
) -> None:
    rotated, stale = tmp_path / "rotated.parquet", tmp_path / "stale.parquet"
    full = _keys(names, softhsm_token, azure_emulator, "footer", "pii", "pay")
    for path in (rotated, stale):
        write_table(TABLE, path, keys=full, footer_key="footer", columns=COLUMNS, external_key_material=True)
    providers = {"footer": hsm, "pii": azure, "pay": azure}
    old = {mk: p.get_key(names[mk]).ref for mk, p in providers.items()}
    new = {mk: p.rotate_key(names[mk]).ref for mk, p in providers.items()}
    assert all(new[mk].version != old[mk].version for mk in providers)

    fresh = _keys(names, softhsm_token, azure_emulator, "footer", "pii", "pay")
    assert rotate_master_keys(rotated, keys=fresh) == [rotated]
    for m in materials(rotated):
        assert str(m["wrappedKEK"]).startswith(f"{VERSION_TAG}:{new[str(m['masterKeyID'])].version}:"), m

    for mk, ref in old.items():
        providers[mk].set_enabled(ref, False)
    assert read_table(rotated, keys=_keys(names, softhsm_token, azure_emulator, "footer", "pii", "pay")).equals(TABLE)
    with pytest.raises(KeyDisabled):
        read_table(stale, keys=_keys(names, softhsm_token, azure_emulator, "footer", "pii", "pay"))


def test_emulator_key_wraps_as_rfc3394_with_the_key_bytes(azure: AzureKeyVaultProvider) -> None:
    """The A256KW the files rely on, checked against `cryptography` with an imported key."""
    raw = os.urandom(32)
    info = azure.import_key(_name("pqi"), raw, ops=WRAP)
    kek = os.urandom(16)
    assert azure.wrap_key(info.ref, "A256KW", kek) == aes_key_wrap(raw, kek)
