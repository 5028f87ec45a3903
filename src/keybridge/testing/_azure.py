"""The ``azure_emulator`` fixture: one local Managed HSM emulator over HTTPS per test session.

The emulator needs no azure package, so this module (and the pytest plugin) import without the
``[azure]`` extra; tests that use the Azure SDK against it need that extra.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..emulator import ManagedHsmEmulator

__all__ = ["azure_emulator"]


@pytest.fixture(scope="session")
def azure_emulator() -> Iterator[ManagedHsmEmulator]:
    """A started :class:`~keybridge.emulator.ManagedHsmEmulator`, shared by the whole session.

    Use ``azure_emulator.vault_url`` and ``**azure_emulator.provider_options()`` with
    ``AzureKeyVaultProvider`` or the SDK's ``KeyClient``. Keys persist for the session, so give
    each test its own key names (e.g. with ``uuid4().hex[:8]``).
    """
    with ManagedHsmEmulator() as emulator:
        yield emulator
