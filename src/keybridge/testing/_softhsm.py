"""The ``softhsm_token`` fixture: an isolated SoftHSM2 token for one test session.

See :mod:`keybridge._softhsm` for how the token is made; this module imports without
python-pkcs11, so the pytest plugin loads everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .._softhsm import SoftHsmToken, find_softhsm_module, throwaway_token
from ..errors import ProviderUnavailable

__all__ = ["SoftHsmToken", "find_softhsm_module", "softhsm_token"]


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """A fresh SoftHSM2 token for the test session (skips the test if softhsm2 is not installed)."""
    try:
        with throwaway_token(tmp_path_factory.mktemp("softhsm"), "keybridge-test") as token:
            yield token
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))
