"""Azure Key Vault and Azure Key Vault Managed HSM, through azure-keyvault-keys and azure-identity.

Needs the ``azure`` extra: ``pip install "keybridge-sdk[azure]"``. See docs/azure.md.
"""

from __future__ import annotations

from ...errors import MissingDependency

try:
    import azure.core
    import azure.identity
    import azure.keyvault.keys  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in an environment without the extra
    raise MissingDependency("the Azure Key Vault provider", "azure") from exc

from ._access import OPERATIONS, AccessControl, Assignment, Role
from ._credential import StaticTokenCredential
from ._provider import CLIENT_OPTIONS, DEFAULT_CLIENT_OPTIONS, AzureKeyVaultProvider, from_uri

__all__ = [
    "CLIENT_OPTIONS",
    "DEFAULT_CLIENT_OPTIONS",
    "OPERATIONS",
    "AccessControl",
    "Assignment",
    "AzureKeyVaultProvider",
    "Role",
    "StaticTokenCredential",
    "from_uri",
]
