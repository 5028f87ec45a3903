"""No hidden contracts in BYOK (issue #15): the target names its own KEK (``kek_id``), and the
CLI authenticates to Azure with a plain ``StaticTokenCredential``, not the emulator's."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from keybridge import AuthenticationError, InMemoryProvider, InvalidArgument, KeyOp, KeyProvider, KeySpec
from keybridge.byok import ByokPackage, transfer

azure = pytest.importorskip("keybridge.providers.azure")
StaticTokenCredential = azure.StaticTokenCredential


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_memory_kek_id_is_its_own_and_resolves_back_to_the_kek() -> None:
    target = InMemoryProvider()
    kek = target.create_key("kek", KeySpec.rsa(2048), ops=[KeyOp.IMPORT])
    assert target.kek_id(kek) == f"https://memory.invalid/keys/kek/{kek.ref.version}"
    r = transfer(InMemoryProvider(), target, "app", KeySpec.aes(256), kek=kek.ref)
    assert r.package.kid == target.kek_id(kek)


def test_kek_id_refuses_what_is_not_a_kek_info_of_that_provider() -> None:
    target, other = InMemoryProvider(), InMemoryProvider()
    with pytest.raises(InvalidArgument, match="KeyInfo"):
        target.kek_id("memory:kek")  # type: ignore[arg-type]
    info = other.create_key("kek", KeySpec.rsa(2048), ops=[KeyOp.IMPORT])
    unversioned = type(info)(target.ref("kek"), info.spec, info.ops)
    with pytest.raises(InvalidArgument, match="version"):
        target.kek_id(unversioned)


@pytest.fixture(scope="module")
def hsm(azure_emulator) -> Iterator[KeyProvider]:  # type: ignore[no-untyped-def]
    with azure.AzureKeyVaultProvider(azure_emulator.vault_url, **azure_emulator.provider_options()) as provider:
        yield provider


def test_azure_kek_id_is_the_real_key_id_and_the_package_carries_it(hsm) -> None:  # type: ignore[no-untyped-def]
    kek = hsm.create_key(unique("kek"), KeySpec.rsa(2048), ops=[KeyOp.IMPORT])
    kid = hsm.kek_id(kek)
    assert kid == f"{hsm.vault_url}/keys/{kek.ref.name}/{kek.ref.version}"
    r = transfer(InMemoryProvider(), hsm, unique("moved"), KeySpec.ec("P-256"), kek=kek.ref)
    assert ByokPackage.from_json(r.package.to_json()).kid == kid


def _token(azure_emulator) -> str:  # type: ignore[no-untyped-def]
    return str(azure_emulator.credential().get_token("https://managedhsm.azure.net/.default").token)


def test_static_token_credential_authenticates_the_real_sdk_and_hides_the_token(azure_emulator, caplog) -> None:  # type: ignore[no-untyped-def]
    token = _token(azure_emulator)
    cred = StaticTokenCredential(token)
    assert token not in repr(cred)
    assert token not in str(cred)
    assert "<hidden>" in repr(cred)
    got = cred.get_token("https://managedhsm.azure.net/.default", tenant_id="t")
    assert got.token == token
    assert got.expires_on > 0
    assert cred.get_token_info("s").token == token
    assert StaticTokenCredential(token, expires_on=42).get_token("s").expires_on == 42
    opts = {**azure_emulator.provider_options(), "credential": cred}
    caplog.set_level(logging.DEBUG)
    with azure.AzureKeyVaultProvider(azure_emulator.vault_url, **opts) as provider:
        info = provider.create_key(unique("static"), KeySpec.ec("P-256"))
        assert provider.get_key(info.ref).ref == info.ref
    assert token not in caplog.text
    bad = {**opts, "credential": StaticTokenCredential("not-the-token")}
    with azure.AzureKeyVaultProvider(azure_emulator.vault_url, **bad) as provider, pytest.raises(AuthenticationError):
        provider.get_key(info.ref.name)


@pytest.mark.parametrize("bad", ["", "   ", "Bearer abc", "abc\n"])
def test_static_token_credential_refuses_a_malformed_token_without_showing_it(bad: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        StaticTokenCredential(bad)
    assert "abc" not in str(err.value)


def test_the_cli_sends_the_environment_token_through_the_static_credential(azure_emulator) -> None:  # type: ignore[no-untyped-def]
    name = unique("cli")
    hsm_key = f"{azure_emulator.vault_url}/keys/{name}"
    env = {
        **os.environ,
        "KEYBRIDGE_AZURE_ACCESS_TOKEN": _token(azure_emulator),
        "KEYBRIDGE_AZURE_CA_FILE": azure_emulator.ca_file,
        "KEYBRIDGE_AZURE_VERIFY_CHALLENGE_RESOURCE": "0",
    }
    cli = [sys.executable, "-m", "keybridge.cli"]
    made = subprocess.run(
        [*cli, "keys", "create", hsm_key, "--kty", "ec", "--json"], env=env, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["name"] == name
    env["KEYBRIDGE_AZURE_ACCESS_TOKEN"] = "wrong-token"
    refused = subprocess.run([*cli, "keys", "show", hsm_key], env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert "wrong-token" not in refused.stdout + refused.stderr
