"""Managed HSM local RBAC in tests: the administration SDK as the independent view, and a deployer
principal with what key management needs (Crypto User on every key, Policy Administrator)."""

from __future__ import annotations

import uuid
from typing import Any

from azure.keyvault.administration import KeyVaultAccessControlClient

from keybridge.emulator import ManagedHsmEmulator
from keybridge.emulator._rbac import BUILTIN_ROLES

CRYPTO_USER = BUILTIN_ROLES["Managed HSM Crypto User"][0]
POLICY_ADMIN = BUILTIN_ROLES["Managed HSM Policy Administrator"][0]


def admin_sdk(hsm: ManagedHsmEmulator) -> KeyVaultAccessControlClient:
    """The administration SDK on its own, as the HSM administrator."""
    return KeyVaultAccessControlClient(
        hsm.vault_url, hsm.credential(), connection_verify=hsm.ca_file, verify_challenge_resource=False
    )


def deployer_options(hsm: ManagedHsmEmulator, sdk: KeyVaultAccessControlClient) -> dict[str, Any]:
    """Azure provider options for a new principal with Crypto User on /keys and Policy Administrator."""
    who = str(uuid.uuid4())
    sdk.create_role_assignment("/keys", CRYPTO_USER, who)
    sdk.create_role_assignment("/", POLICY_ADMIN, who)
    return {**hsm.provider_options(), "credential": hsm.credential(who)}
