"""A local Azure Key Vault / Managed HSM keys endpoint that the real Azure SDK talks to over HTTPS.

It is a REST facade over :class:`~keybridge.providers.memory.InMemoryProvider`: every key lives in
the provider and every operation goes through the :class:`~keybridge.provider.KeyProvider`
protocol; the emulator adds what the service has beyond that protocol (soft delete with purge
after retention, backups, rotation policies run on its own clock, ``key_ops`` and ``nbf``/``exp``
updates, tags, random bytes, key attestation). It accepts BYOK imports (``key_hsm``), Managed
HSM's AES keys (A*KW, A*GCM, A*CBC[PAD], CKM_AES_KEY_WRAP[_PAD]) and can inject faults. See
docs/emulator.md for usage and fidelity limits.
"""

from __future__ import annotations

from ._auth import EmulatorCredential
from ._emulator import ManagedHsmEmulator
from ._faults import Faults

__all__ = ["EmulatorCredential", "Faults", "ManagedHsmEmulator"]
