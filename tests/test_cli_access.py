"""``keybridge access`` against the emulator in strict RBAC mode, checked with the administration
SDK directly and by what the granted principal can then do."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.administration")
from azure.keyvault.administration import KeyVaultAccessControlClient
from click.testing import CliRunner

from _rbac_support import admin_sdk, deployer_options
from keybridge import KeySpec, OperationNotPermitted, register_provider
from keybridge.cli import main
from keybridge.cli._app import app
from keybridge.emulator import ManagedHsmEmulator
from keybridge.providers import azure
from keybridge.providers.azure import AzureKeyVaultProvider


@pytest.fixture(scope="module")
def hsm() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator(rbac="strict") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def sdk(hsm: ManagedHsmEmulator) -> KeyVaultAccessControlClient:
    return admin_sdk(hsm)


@pytest.fixture(scope="module")
def deployer(hsm: ManagedHsmEmulator, sdk: KeyVaultAccessControlClient) -> Iterator[AzureKeyVaultProvider]:
    """The CLI's identity: Crypto User on every key, Policy Administrator for role assignments."""
    options = deployer_options(hsm, sdk)
    register_provider("https", lambda uri, **o: azure.from_uri(uri, **{**options, **o}), replace=True)
    try:
        with AzureKeyVaultProvider(hsm.vault_url, **options) as provider:
            yield provider
    finally:
        register_provider("https", azure.from_uri, replace=True)


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, ["access", *args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    assert "kbemu-" not in result.output  # no emulator token
    return result.output


def run_json(*args: str, code: int = 0) -> Any:
    return json.loads(run(*args, "--json", code=code))


def new_key(deployer: AzureKeyVaultProvider) -> str:
    info = deployer.create_key(f"cli-{uuid.uuid4().hex[:8]}", KeySpec.ec("P-256"))
    return info.ref.uri.rsplit("/", 1)[0]  # the key id without the version


def test_grant_check_list_revoke(hsm, sdk, deployer) -> None:  # type: ignore[no-untyped-def]
    key, user = new_key(deployer), str(uuid.uuid4())
    name = key.rsplit("/", 1)[-1]
    made = run_json("grant", key, "--principal", user, "--role", "Crypto Service Encryption User")
    assert made["scope"] == f"/keys/{name}"
    assert made["operations"] == ["read", "unwrap", "wrap"]
    on_sdk = [a for a in sdk.list_role_assignments(f"/keys/{name}") if a.properties.principal_id == user]
    assert [a.name for a in on_sdk] == [made["assignment"]]

    assert run_json("check", key, "--principal", user, "--op", "wrap")["ok"] is True
    denied = run_json("check", key, "--principal", user, "--op", "wrap", "--op", "sign", code=1)
    assert denied["missing"] == ["sign"]
    everyone = run_json("check", key)["principals"]
    assert everyone[user] == ["read", "unwrap", "wrap"]
    assert "sign" in run("check", key)  # the table, for people
    listed = run_json("list", key, "--principal", user)["assignments"]
    assert [a["assignment"] for a in listed] == [made["assignment"]]
    assert made["assignment"] in {a["assignment"] for a in run_json("list", hsm.vault_url)["assignments"]}

    with deployer.with_credential(hsm.credential(user)) as as_user:
        assert as_user.get_key(key).ref.name == name  # the grant works (keys/read on the key)
    assert "revoked Managed HSM Crypto Service Encryption User" in run("revoke", key, "--principal", user)
    assert not [a for a in sdk.list_role_assignments(f"/keys/{name}") if a.properties.principal_id == user]
    assert "nothing to revoke" in run("revoke", key, "--principal", user)
    assert run_json("check", key, "--principal", user, code=1)["operations"] == []
    with deployer.with_credential(hsm.credential(user)) as as_user, pytest.raises(OperationNotPermitted):
        as_user.get_key(key)


def test_errors_are_one_line_and_name_what_to_fix(deployer, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    key = new_key(deployer)
    cases = [
        (["grant", key, "--principal", str(uuid.uuid4()), "--role", "Crypto Superuser"], "unknown Managed HSM role"),
        (["grant", "memory:k", "--principal", "p", "--role", "Crypto User"], "is not a Managed HSM key id"),
        (["grant", deployer.vault_url, "--principal", "p", "--role", "Crypto User"], "names no key"),
        (["check", key, "--principal", "p", "--op", "fly"], "unknown --op fly"),
    ]
    for argv, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["access", *argv])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert err.startswith("keybridge: error: ")
        assert expected in err
        assert err.strip().count("\n") == 0
    with pytest.raises(SystemExit) as exit_info:
        main(["access", "grant", key, "--role", "Crypto User"])
    assert exit_info.value.code == 2
    assert "--principal is required" in capsys.readouterr().err
