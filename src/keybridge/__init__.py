"""keybridge: use keys you hold yourself (PKCS#11 HSM, Azure Key Vault / Managed HSM, software)
through one protocol, move them into Azure with BYOK, and encrypt data under them.

``import keybridge`` needs only ``cryptography``; backends that need extras are imported on first
use and say which ``pip install "keybridge-sdk[...]"`` is missing (the distribution is
``keybridge-sdk``; the import name is ``keybridge``).
"""

from __future__ import annotations

import typing

from . import audit, errors
from ._meta import VERSION as __version__
from .base import BaseProvider
from .errors import (
    AuthenticationError,
    IntegrityError,
    InvalidArgument,
    InvalidKeySpec,
    InvalidKeyUri,
    InvalidMessage,
    InvalidPackage,
    KeybridgeError,
    KeyDisabled,
    KeyExists,
    KeyExpired,
    KeyNotFound,
    MissingDependency,
    OperationNotPermitted,
    OutputExists,
    ProviderUnavailable,
    UnsupportedAlgorithm,
    UnsupportedOperation,
)
from .keys import ALGORITHMS, Algorithm, KeyInfo, KeyOp, KeyRef, KeySpec, KeyType
from .provider import OPERATIONS, KeyHandle, KeyProvider, open_key, open_provider, register_provider

if typing.TYPE_CHECKING:
    from .providers.azure import AzureKeyVaultProvider
    from .providers.memory import InMemoryProvider
    from .providers.pkcs11 import Pkcs11Provider

__all__ = [
    "ALGORITHMS",
    "OPERATIONS",
    "Algorithm",
    "AuthenticationError",
    "AzureKeyVaultProvider",
    "BaseProvider",
    "InMemoryProvider",
    "IntegrityError",
    "InvalidArgument",
    "InvalidKeySpec",
    "InvalidKeyUri",
    "InvalidMessage",
    "InvalidPackage",
    "KeyDisabled",
    "KeyExists",
    "KeyExpired",
    "KeyHandle",
    "KeyInfo",
    "KeyNotFound",
    "KeyOp",
    "KeyProvider",
    "KeyRef",
    "KeySpec",
    "KeyType",
    "KeybridgeError",
    "MissingDependency",
    "OperationNotPermitted",
    "OutputExists",
    "Pkcs11Provider",
    "ProviderUnavailable",
    "UnsupportedAlgorithm",
    "UnsupportedOperation",
    "__version__",
    "audit",
    "errors",
    "open_key",
    "open_provider",
    "register_provider",
]

_LAZY = {
    "InMemoryProvider": "keybridge.providers.memory",
    "Pkcs11Provider": "keybridge.providers.pkcs11",
    "AzureKeyVaultProvider": "keybridge.providers.azure",
}


def __getattr__(name: str) -> object:
    # Backends load on first use so that a missing extra only matters to those who use it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'keybridge' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazily imported backends are part of the namespace: show them to dir() and completion.
    return sorted(set(globals()) | set(__all__))
