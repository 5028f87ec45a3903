"""transfer(grant=...) into the emulator in strict RBAC mode: exactly one assignment per grant,
scoped to the imported key, and the target half of the proof runs as the granted principal."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("azure.keyvault.administration")
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultPermission
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from _rbac_support import CRYPTO_USER, admin_sdk, deployer_options
from keybridge import InMemoryProvider, InvalidArgument, KeyOp, KeySpec, OperationNotPermitted
from keybridge.byok import transfer
from keybridge.emulator import ManagedHsmEmulator
from keybridge.emulator._rbac import BUILTIN_ROLES
from keybridge.providers.azure import AzureKeyVaultProvider


@pytest.fixture(scope="module")
def hsm() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator(rbac="strict") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def sdk(hsm: ManagedHsmEmulator) -> KeyVaultAccessControlClient:
    return admin_sdk(hsm)


@pytest.fixture(scope="module")
def target(hsm: ManagedHsmEmulator, sdk: KeyVaultAccessControlClient) -> Iterator[AzureKeyVaultProvider]:
    """A deployer: Crypto User on every key (creates the KEK, imports) and role management."""
    options = deployer_options(hsm, sdk)
    with AzureKeyVaultProvider(hsm.vault_url, **options) as provider:
        yield provider


def assignments_of(
    sdk: KeyVaultAccessControlClient, target: AzureKeyVaultProvider, principal: str
) -> list[tuple[str, str]]:
    """(scope, role GUID) of every assignment ``principal`` has, at every scope of the HSM."""
    scopes = ["/", "/keys", *(f"/keys/{k.ref.name}" for k in target.list_keys())]
    return [
        (str(a.properties.scope), str(a.properties.role_definition_id).rsplit("/", 1)[-1])
        for s in scopes
        for a in sdk.list_role_assignments(s)
        if a.properties.principal_id == principal
    ]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_grant_makes_one_scoped_assignment_and_the_principal_signs(hsm, sdk, target) -> None:  # type: ignore[no-untyped-def]
    app, name, source = str(uuid.uuid4()), unique("granted"), InMemoryProvider()
    result = transfer(
        source, target, name, KeySpec.ec("P-256"), kek_size=2048,
        grant=[(app, "Managed HSM Crypto User")], grant_credential=hsm.credential,
    )  # fmt: skip
    assert [(a.principal, a.scope, a.role.id) for a in result.assignments] == [(app, f"/keys/{name}", CRYPTO_USER)]
    assert assignments_of(sdk, target, app) == [(f"/keys/{name}", CRYPTO_USER)]  # exactly one, nothing HSM-wide
    assert result.proof.method == "signature"
    assert result.proof.checks[-1] == f"the target side ran as {app}"

    with target.with_credential(hsm.credential(app)) as as_app:
        digest = os.urandom(32)
        sig = as_app.sign(result.target_ref, "ES256", digest)
        pub = source.get_key(result.source_ref).public_key
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        pub.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_a_grant_too_weak_for_the_proof_fails_and_is_revoked(hsm, sdk, target) -> None:  # type: ignore[no-untyped-def]
    # The deployer could sign; the auditor cannot, so this fails only because the proof runs as it.
    auditor, name = str(uuid.uuid4()), unique("weak")
    with pytest.raises(OperationNotPermitted, match=f"keys/sign/action on /keys/{name}"):
        transfer(
            InMemoryProvider(), target, name, KeySpec.ec("P-256"), kek_size=2048,
            grant=[(auditor, "Managed HSM Crypto Auditor")], grant_credential=hsm.credential,
        )  # fmt: skip
    assert assignments_of(sdk, target, auditor) == []
    assert not [k for k in target.list_keys() if k.ref.name.startswith(f"{name}-kek-")]


def test_aes_wrap_key_granted_to_an_encryption_user(hsm, sdk, target) -> None:  # type: ignore[no-untyped-def]
    svc, name = str(uuid.uuid4()), unique("kw")
    result = transfer(
        InMemoryProvider(), target, name, KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY], kek_size=2048,
        grant=[(svc, "Crypto Service Encryption User")], grant_credential={svc: hsm.credential(svc)},
    )  # fmt: skip
    assert result.proof.method == "key-wrap"
    assert assignments_of(sdk, target, svc) == [
        (f"/keys/{name}", BUILTIN_ROLES["Managed HSM Crypto Service Encryption User"][0])
    ]


def test_bad_grants_are_refused_before_any_work(hsm, target) -> None:  # type: ignore[no-untyped-def]
    source, who = InMemoryProvider(), str(uuid.uuid4())
    before = {k.ref.name for k in target.list_keys()}
    ec256 = KeySpec.ec("P-256")
    with pytest.raises(InvalidArgument, match="needs grant_credential="):
        transfer(source, target, unique("x"), ec256, grant=[(who, "Crypto User")])
    with pytest.raises(InvalidArgument, match="unknown Managed HSM role 'Crypto Superuser'"):
        transfer(source, target, unique("x"), ec256, grant=[(who, "Crypto Superuser")], grant_credential=hsm.credential)
    with pytest.raises(InvalidArgument, match="no credential for principal"):
        transfer(source, target, unique("x"), ec256, grant=[(who, "Crypto User")], grant_credential={})
    with pytest.raises(InvalidArgument, match=r"\(principal, role\) pair"):
        transfer(source, target, unique("x"), ec256, grant=[who], grant_credential=hsm.credential)  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="needs an Azure Managed HSM target"):
        transfer(source, InMemoryProvider(), "x", ec256, grant=[(who, "Crypto User")], grant_credential=hsm.credential)
    assert list(source.list_keys()) == []
    assert {k.ref.name for k in target.list_keys()} == before


def test_the_docs_recipe_sign_only_custom_role(hsm, sdk, target) -> None:  # type: ignore[no-untyped-def]
    actions = ["keys/read/action", "keys/sign/action"]
    sign_only = KeyVaultPermission(data_actions=[f"Microsoft.KeyVault/managedHsm/{a}" for a in actions])
    role = unique("orders signer")
    target.access.client.set_role_definition("/", role_name=role, permissions=[sign_only])
    app, name = str(uuid.uuid4()), unique("orders-signer")
    result = transfer(
        InMemoryProvider(), target, name, KeySpec.ec("P-384"), kek_size=2048,
        grant=[(app, role)], grant_credential=lambda principal: hsm.credential(principal),
    )  # fmt: skip
    assert result.proof.algorithm == "ES384"
    assert target.access.who_can(name)[app] == {"read", "sign"}
    assert len(assignments_of(sdk, target, app)) == 1


def test_two_roles_for_one_principal_add_up_before_the_proof(hsm, sdk, target) -> None:  # type: ignore[no-untyped-def]
    # Auditor alone cannot sign; the proof runs only after both grants exist, so this passes.
    app, name = str(uuid.uuid4()), unique("two")
    result = transfer(
        InMemoryProvider(), target, name, KeySpec.ec("P-256"), kek_size=2048,
        grant=[(app, "Crypto Auditor"), (app, "Crypto User")], grant_credential=hsm.credential,
    )  # fmt: skip
    roles = {BUILTIN_ROLES[f"Managed HSM {r}"][0] for r in ("Crypto Auditor", "Crypto User")}
    assert sorted(assignments_of(sdk, target, app)) == sorted((f"/keys/{name}", r) for r in roles)
    assert len(result.assignments) == 2


def test_a_failed_transfer_keeps_an_assignment_it_did_not_make(hsm, sdk, target) -> None:  # type: ignore[no-untyped-def]
    auditor, name = str(uuid.uuid4()), unique("older")
    older = target.access.grant(f"/keys/{name}", auditor, "Crypto Auditor")  # before the key exists
    with pytest.raises(OperationNotPermitted):
        transfer(
            InMemoryProvider(), target, name, KeySpec.ec("P-256"), kek_size=2048,
            grant=[(auditor, "Crypto Auditor")], grant_credential=hsm.credential,
        )  # fmt: skip
    assert [a.name for a in sdk.list_role_assignments(f"/keys/{name}")] == [older.name]
