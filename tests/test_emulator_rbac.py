"""Managed HSM local RBAC in the emulator, driven by the real azure-keyvault-administration SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

pytest.importorskip("azure.keyvault.administration")
from azure.core.exceptions import HttpResponseError
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultDataAction, KeyVaultPermission
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from keybridge.emulator import ManagedHsmEmulator
from keybridge.emulator._rbac import BUILTIN_ROLES

CRYPTO_USER = BUILTIN_ROLES["Managed HSM Crypto User"][0]
AUDITOR = BUILTIN_ROLES["Managed HSM Crypto Auditor"][0]


@pytest.fixture(scope="module")
def hsm() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator(rbac="strict") as emulator:
        yield emulator


def _opts(hsm: ManagedHsmEmulator, principal: str | None = None) -> dict[str, object]:
    return {"connection_verify": hsm.ca_file, "verify_challenge_resource": False}


def _acl(hsm: ManagedHsmEmulator, principal: str | None = None) -> KeyVaultAccessControlClient:
    return KeyVaultAccessControlClient(hsm.vault_url, hsm.credential(principal), **_opts(hsm))  # type: ignore[arg-type]


def _keys(hsm: ManagedHsmEmulator, principal: str | None = None) -> KeyClient:
    return KeyClient(hsm.vault_url, hsm.credential(principal), **_opts(hsm))  # type: ignore[arg-type]


def test_builtin_definitions_have_real_names_and_guids(hsm: ManagedHsmEmulator) -> None:
    defs = {d.role_name: d for d in _acl(hsm).list_role_definitions("/")}
    assert defs["Managed HSM Crypto User"].name == "21dbd100-6940-42c2-9190-5d6cb909625b"
    assert defs["Managed HSM Administrator"].name == "a290e904-7015-4bba-90c8-60543313cdb4"
    assert defs["Managed HSM Crypto User"].role_type == "AKVBuiltInRole"
    actions = defs["Managed HSM Crypto Service Encryption User"].permissions[0].data_actions
    assert set(actions) == {
        "Microsoft.KeyVault/managedHsm/keys/read/action",
        "Microsoft.KeyVault/managedHsm/keys/wrap/action",
        "Microsoft.KeyVault/managedHsm/keys/unwrap/action",
    }


def test_strict_admin_cannot_create_keys_until_granted(hsm: ManagedHsmEmulator) -> None:
    with pytest.raises(HttpResponseError) as err:
        _keys(hsm).create_ec_key("strict-admin")
    assert err.value.status_code == 403
    assert err.value.error is not None
    assert err.value.error.code == "AccessDenied"
    assert "keys/create on /keys/strict-admin" in str(err.value)


def test_grant_on_one_key_allows_that_key_only(hsm: ManagedHsmEmulator) -> None:
    owner, user = str(uuid.uuid4()), str(uuid.uuid4())
    acl = _acl(hsm)
    acl.create_role_assignment("/keys", CRYPTO_USER, owner)
    key = _keys(hsm, owner).create_ec_key("scoped-a", curve="P-256")
    _keys(hsm, owner).create_ec_key("scoped-b", curve="P-256")
    assignment = acl.create_role_assignment("/keys/scoped-a", CRYPTO_USER, user)
    assert assignment.properties is not None
    assert assignment.properties.scope == "/keys/scoped-a"
    prefix = "/keys/scoped-a/providers/Microsoft.Authorization/roleAssignments/"
    assert assignment.role_assignment_id == f"{prefix}{assignment.name}"
    crypto = CryptographyClient(key, hsm.credential(user), **_opts(hsm))  # type: ignore[arg-type]
    digest = bytes(32)
    sig = crypto.sign(SignatureAlgorithm.es256, digest).signature
    # checked by an independent implementation, not by the emulator
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub = ec.EllipticCurvePublicNumbers(
        int.from_bytes(key.key.x, "big"), int.from_bytes(key.key.y, "big"), ec.SECP256R1()
    ).public_key()
    pub.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    with pytest.raises(HttpResponseError) as err:
        _keys(hsm, user).get_key("scoped-b")
    assert err.value.status_code == 403
    names = [a.name for a in acl.list_role_assignments("/keys/scoped-a")]
    assert assignment.name in names
    acl.delete_role_assignment("/keys/scoped-a", assignment.name)
    with pytest.raises(HttpResponseError) as err:
        _keys(hsm, user).get_key("scoped-a")
    assert err.value.status_code == 403


def test_unknown_principal_cannot_manage_roles(hsm: ManagedHsmEmulator) -> None:
    with pytest.raises(HttpResponseError) as err:
        list(_acl(hsm, str(uuid.uuid4())).list_role_assignments("/"))
    assert err.value.status_code == 403
    assert "roleAssignments/read/action on /" in str(err.value)


def test_auditor_reads_but_cannot_sign(hsm: ManagedHsmEmulator) -> None:
    owner, auditor = str(uuid.uuid4()), str(uuid.uuid4())
    _acl(hsm).create_role_assignment("/", CRYPTO_USER, owner)
    _acl(hsm).create_role_assignment("/", AUDITOR, auditor)
    key = _keys(hsm, owner).create_ec_key("audited", curve="P-256")
    assert _keys(hsm, auditor).get_key("audited").id == key.id
    crypto = CryptographyClient(key, hsm.credential(auditor), **_opts(hsm))  # type: ignore[arg-type]
    with pytest.raises(HttpResponseError) as err:
        crypto.sign(SignatureAlgorithm.es256, bytes(32))
    assert err.value.status_code == 403


def test_custom_role_with_not_data_actions(hsm: ManagedHsmEmulator) -> None:
    who = str(uuid.uuid4())
    acl = _acl(hsm)
    perm = KeyVaultPermission(
        data_actions=["Microsoft.KeyVault/managedHsm/keys/*"],
        not_data_actions=[KeyVaultDataAction.CREATE_HSM_KEY],
    )
    role = acl.set_role_definition("/", role_name="reader-no-create", permissions=[perm])
    assert role.role_type == "CustomRole"
    assert role.name
    acl.create_role_assignment("/", role.name, who)
    _keys(hsm).list_properties_of_keys()
    with pytest.raises(HttpResponseError) as err:
        _keys(hsm, who).create_ec_key("custom-denied")
    assert err.value.status_code == 403
    assert list(_keys(hsm, who).list_properties_of_keys()) is not None
    with pytest.raises(HttpResponseError) as err:
        acl.set_role_definition("/", name=CRYPTO_USER, role_name="hijack", permissions=[perm])
    assert err.value.status_code == 400
    acl.delete_role_definition("/", role.name)
    assert role.name not in {d.name for d in acl.list_role_definitions("/")}


def test_bad_scope_is_a_400(hsm: ManagedHsmEmulator) -> None:
    with pytest.raises(HttpResponseError) as err:
        _acl(hsm).create_role_assignment("/secrets", CRYPTO_USER, str(uuid.uuid4()))
    assert err.value.status_code == 400
