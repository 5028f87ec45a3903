"""provider.access against the emulator in strict RBAC mode, checked with the administration SDK
itself and, for signatures, with ``cryptography``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("azure.keyvault.administration")
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultDataAction, KeyVaultPermission
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from keybridge import InvalidArgument, InvalidKeyUri, KeyInfo, KeySpec, OperationNotPermitted, UnsupportedAlgorithm
from keybridge.emulator import ManagedHsmEmulator
from keybridge.emulator._rbac import BUILTIN_ROLES
from keybridge.providers.azure import OPERATIONS, AzureKeyVaultProvider

CRYPTO_USER = BUILTIN_ROLES["Managed HSM Crypto User"][0]
CRYPTO_USER_OPS = set(OPERATIONS) - {"export", "recover", "purge"}


@pytest.fixture(scope="module")
def hsm() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator(rbac="strict") as emulator:
        yield emulator


@pytest.fixture(scope="module")
def admin(hsm: ManagedHsmEmulator) -> Iterator[AzureKeyVaultProvider]:
    """The HSM's first principal: Administrator and Crypto Officer, no key use in strict mode."""
    with AzureKeyVaultProvider(hsm.vault_url, **hsm.provider_options()) as provider:
        yield provider


def as_principal(hsm: ManagedHsmEmulator, admin: AzureKeyVaultProvider, who: str) -> AzureKeyVaultProvider:
    return admin.with_credential(hsm.credential(who))


@pytest.fixture(scope="module")
def deployer(hsm: ManagedHsmEmulator, admin: AzureKeyVaultProvider) -> Iterator[AzureKeyVaultProvider]:
    who = str(uuid.uuid4())
    admin.access.grant("/keys", who, "Managed HSM Crypto User")
    with as_principal(hsm, admin, who) as provider:
        yield provider


def sdk(hsm: ManagedHsmEmulator) -> KeyVaultAccessControlClient:
    """The administration SDK on its own, as the independent view of the assignments."""
    return KeyVaultAccessControlClient(
        hsm.vault_url, hsm.credential(), connection_verify=hsm.ca_file, verify_challenge_resource=False
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ec_key(deployer: AzureKeyVaultProvider, name: str) -> KeyInfo:
    return deployer.create_key(name, KeySpec.ec("P-256"))


def test_crypto_user_on_one_key_signs_with_it_and_nothing_else(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    a, b = ec_key(deployer, unique("a")), ec_key(deployer, unique("b"))
    user = str(uuid.uuid4())
    assignment = admin.access.grant(a.ref, user, "Managed HSM Crypto User")
    assert assignment.scope == f"/keys/{a.ref.name}"
    assert assignment.principal == user
    assert assignment.role.id == CRYPTO_USER

    with as_principal(hsm, admin, user) as mine:
        digest = os.urandom(32)
        sig = mine.sign(a.ref, "ES256", digest)
        assert isinstance(a.public_key, ec.EllipticCurvePublicKey)
        der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        a.public_key.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

        with pytest.raises(OperationNotPermitted) as err:
            mine.sign(b.ref, "ES256", digest)
        assert f"Microsoft.KeyVault/managedHsm/keys/read/action on /keys/{b.ref.name}" in str(err.value)
        with pytest.raises(OperationNotPermitted) as err:
            mine.create_key(unique("new"), KeySpec.ec("P-256"))
        assert "do not grant Microsoft.KeyVault/managedHsm/keys/create on /keys/new-" in str(err.value)
        with pytest.raises(OperationNotPermitted) as err:
            mine.delete_key(b.ref.name)
        assert f"on /keys/{b.ref.name}" in str(err.value)
    assert deployer.get_key(b.ref.name).ref.name == b.ref.name  # still there


def test_who_can_folds_scopes_and_roles_into_operations(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    a, b = ec_key(deployer, unique("who-a")), ec_key(deployer, unique("who-b"))
    user = str(uuid.uuid4())
    admin.access.grant(a.ref.uri, user, "crypto user")  # a key id, a short case-insensitive name
    who_a, who_b = admin.access.who_can(a.ref), admin.access.who_can(b.ref.name)
    assert who_a[user] == CRYPTO_USER_OPS
    assert user not in who_b
    deployer_id = hsm.rbac.principal(f"Bearer {deployer.credential.get_token('x').token}")
    assert deployer_id is not None
    assert who_a[deployer_id] == who_b[deployer_id] == CRYPTO_USER_OPS  # its /keys assignment
    # the first principal: Administrator (no key actions) + Crypto Officer (export, recover, purge)
    assert who_a[hsm.rbac.default_principal] == {"export", "recover", "purge"}
    assert admin.access.check(a.ref, user) == CRYPTO_USER_OPS
    assert admin.access.check(b.ref, user) == set()
    scopes = {x.scope for x in admin.access.list(a.ref)}
    assert scopes == {"/", "/keys", f"/keys/{a.ref.name}"}


def test_grant_makes_exactly_one_assignment_and_revoke_removes_it(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    a = ec_key(deployer, unique("once"))
    user, scope = str(uuid.uuid4()), f"/keys/{a.ref.name}"
    first = admin.access.grant(a.ref, user, CRYPTO_USER)  # by GUID
    again = admin.access.grant(a.ref.name, user, "Managed HSM Crypto User")
    assert again.name == first.name
    on_sdk = [x for x in sdk(hsm).list_role_assignments(scope) if x.properties.principal_id == user]
    assert [x.name for x in on_sdk] == [first.name]
    assert on_sdk[0].properties.role_definition_id.endswith(CRYPTO_USER)
    assert [x.name for x in admin.access.list(a.ref, principal=user)] == [first.name]
    assert [x.name for x in deployer.access.list(principal=user)] == [first.name]  # every scope

    removed = admin.access.revoke(a.ref, user)
    assert [x.name for x in removed] == [first.name]
    assert not [x for x in sdk(hsm).list_role_assignments(scope) if x.properties.principal_id == user]
    assert admin.access.revoke(a.ref, user) == []
    with as_principal(hsm, admin, user) as mine, pytest.raises(OperationNotPermitted):
        mine.sign(a.ref, "ES256", bytes(32))


def test_revoke_with_a_role_keeps_the_other_roles(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    a = ec_key(deployer, unique("two-roles"))
    user = str(uuid.uuid4())
    admin.access.grant(a.ref, user, "Managed HSM Crypto Auditor")
    admin.access.grant(a.ref, user, "Managed HSM Crypto Service Encryption User")
    assert admin.access.check(a.ref, user) == {"read", "wrap", "unwrap"}
    gone = admin.access.revoke(a.ref, user, "Managed HSM Crypto Service Encryption User")
    assert [x.role.name for x in gone] == ["Managed HSM Crypto Service Encryption User"]
    assert admin.access.check(a.ref, user) == {"read"}


def test_custom_role_wildcards_and_not_data_actions(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    a = ec_key(deployer, unique("custom"))
    perm = KeyVaultPermission(
        data_actions=["Microsoft.KeyVault/managedHsm/keys/*"],
        not_data_actions=[KeyVaultDataAction.SIGN_HSM_KEY, "Microsoft.KeyVault/managedHsm/keys/deletedKeys/*"],
    )
    role = sdk(hsm).set_role_definition("/", role_name=unique("no-sign"), permissions=[perm])
    user = str(uuid.uuid4())
    made = admin.access.grant(a.ref, user, role.role_name)
    assert made.role.custom
    assert admin.access.check(a.ref, user) == set(OPERATIONS) - {"sign", "recover", "purge"}
    with as_principal(hsm, admin, user) as mine:
        assert mine.verify(a.ref, "ES256", bytes(32), bytes(64)) is False  # read is allowed
        with pytest.raises(OperationNotPermitted, match="keys/sign/action"):
            mine.sign(a.ref, "ES256", bytes(32))


def test_unknown_role_is_invalid_argument_and_grants_nothing(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    a = ec_key(deployer, unique("unknown"))
    user = str(uuid.uuid4())
    with pytest.raises(InvalidArgument, match=r"unknown Managed HSM role 'Crypto Superuser'.*Managed HSM Crypto User"):
        admin.access.grant(a.ref, user, "Crypto Superuser")
    with pytest.raises(InvalidArgument, match="no role definition has this GUID"):
        admin.access.grant(a.ref, user, str(uuid.uuid4()))
    assert admin.access.list(a.ref, principal=user) == []


def test_bad_keys_and_principals_are_typed(admin) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidKeyUri, match="not of this provider's vault"):
        admin.access.grant("https://other.example/keys/k", str(uuid.uuid4()), "Crypto User")
    with pytest.raises(InvalidArgument, match="is not a key of"):
        admin.access.scope("/secrets/x")
    with pytest.raises(InvalidArgument, match="principal must be"):
        admin.access.grant("/keys", "", "Crypto User")
    assert admin.access.scope("//keys") == "/keys"
    assert admin.access.scope("/") == "/"
    # a bare word is a key name: neither "keys" nor "" may widen a grant to the whole HSM
    assert admin.access.scope("keys") == "/keys/keys"
    assert admin.access.scope("/keys/k1") == "/keys/k1"
    for bad in ("", "/keys/a/b", "/keys/bad name", "a b"):
        with pytest.raises(InvalidArgument, match="is not a key of"):
            admin.access.scope(bad)


def test_a_principal_without_role_rights_is_told_the_missing_action(hsm, admin) -> None:  # type: ignore[no-untyped-def]
    with as_principal(hsm, admin, str(uuid.uuid4())) as nobody, pytest.raises(OperationNotPermitted) as err:
        nobody.access.grant("/keys", str(uuid.uuid4()), "Crypto User")
    assert "do not grant Microsoft.KeyVault/managedHsm/roleDefinitions/read/action on /" in str(err.value)
    assert "Bearer" not in str(err.value)
    assert "kbemu-" not in str(err.value)  # the emulator's token prefix


def test_key_vault_has_no_local_rbac() -> None:
    provider = AzureKeyVaultProvider("https://example.vault.azure.net")
    with pytest.raises(UnsupportedAlgorithm, match=r"only Managed HSM has provider\.access"):
        _ = provider.access


@pytest.mark.parametrize(
    ("data", "not_data", "expected"),
    [
        (["*"], [], set(OPERATIONS)),
        (
            ["Microsoft.KeyVault/managedHsm/*"],
            ["Microsoft.KeyVault/managedHsm/keys/*/action"],
            {"create", "delete", "purge"},
        ),
        (["microsoft.keyvault/MANAGEDHSM/keys/sign/action"], [], {"sign"}),  # actions ignore case
        (
            ["Microsoft.KeyVault/managedHsm/keys/*/action"],
            ["*/deletedKeys/*"],
            set(OPERATIONS) - {"create", "delete", "purge", "recover"},
        ),
        (["Microsoft.KeyVault/managedHsm/keys/sign"], [], set()),  # no "/action": not the sign action
        (["Microsoft.KeyVault/managedHsm/roleAssignments/*"], [], set()),
    ],
)
def test_data_actions_fold_into_operations(data: list[str], not_data: list[str], expected: set[str]) -> None:
    from azure.keyvault.administration import KeyVaultRoleDefinition

    from keybridge.providers.azure._access import operations_of

    perm = KeyVaultPermission(data_actions=data, not_data_actions=not_data)
    assert operations_of(KeyVaultRoleDefinition(permissions=[perm])) == expected


def test_separate_permissions_do_not_exclude_each_other() -> None:
    from azure.keyvault.administration import KeyVaultRoleDefinition

    from keybridge.providers.azure._access import operations_of

    # a notDataAction applies within its own permission, as in Azure RBAC
    perms = [
        KeyVaultPermission(data_actions=["Microsoft.KeyVault/managedHsm/keys/sign/action"]),
        KeyVaultPermission(data_actions=["Microsoft.KeyVault/managedHsm/keys/verify/action"], not_data_actions=["*"]),
    ]
    assert operations_of(KeyVaultRoleDefinition(permissions=perms)) == {"sign"}


def test_role_lookup_prefers_an_exact_name() -> None:
    from keybridge.providers.azure import AccessControl, Role

    builtin = Role(CRYPTO_USER, "Managed HSM Crypto User", "x", frozenset(), custom=False)
    custom = Role(str(uuid.uuid4()), "Crypto User", "y", frozenset(), custom=True)
    for order in ([builtin, custom], [custom, builtin]):
        assert AccessControl._find("crypto user", order) is custom
        assert AccessControl._find("Managed HSM Crypto User", order) is builtin
        assert AccessControl._find(CRYPTO_USER.upper(), order) is builtin


def test_principals_compare_without_case(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    a = ec_key(deployer, unique("case"))
    user = str(uuid.uuid4())
    first = admin.access.grant(a.ref, user, "Crypto Auditor")
    assert admin.access.grant(a.ref, user.upper(), "Crypto Auditor").name == first.name
    assert admin.access.check(a.ref, user.upper()) == {"read"}
    assert [x.name for x in admin.access.revoke(a.ref, f" {user.upper()} ")] == [first.name]


def test_a_copy_with_another_credential_shares_but_does_not_close_a_transport(hsm, admin, deployer) -> None:  # type: ignore[no-untyped-def]
    from azure.core.pipeline.transport import RequestsTransport

    a = ec_key(deployer, unique("transport"))
    user = str(uuid.uuid4())
    admin.access.grant(a.ref, user, "Crypto Auditor")
    transport = RequestsTransport(connection_verify=hsm.ca_file)
    options = {**hsm.provider_options(), "credential": deployer.credential}
    with AzureKeyVaultProvider(hsm.vault_url, transport=transport, **options) as owner:
        with owner.with_credential(hsm.credential(user)) as copy:
            assert copy.get_key(a.ref.name).ref.name == a.ref.name
        assert owner.get_key(a.ref.name).ref.name == a.ref.name  # still open after the copy closed
