"""The ``softhsm_token`` and ``pkcs11_token`` fixtures: PKCS#11 tokens for one test session.

See :mod:`keybridge._softhsm` for how a SoftHSM token is made; this module imports without
python-pkcs11, so the pytest plugin loads everywhere.

``pkcs11_token`` runs a test once per token kind named in ``$KEYBRIDGE_TEST_TOKENS``
(comma-separated, default ``softhsm``):

* ``softhsm`` — the session's throwaway SoftHSM2 token (the same one ``softhsm_token`` gives);
* ``env`` — an existing token, e.g. a real HSM: ``$KEYBRIDGE_TEST_PKCS11_MODULE``,
  ``$KEYBRIDGE_TEST_PKCS11_TOKEN`` and ``$KEYBRIDGE_TEST_PKCS11_PIN``. Tests create and delete
  keys on it, so use a token set aside for testing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pytest

from .._softhsm import SoftHsmToken, find_softhsm_module, throwaway_token
from ..errors import ProviderUnavailable

__all__ = ["TOKENS_ENV", "Pkcs11TestToken", "SoftHsmToken", "find_softhsm_module", "pkcs11_token", "softhsm_token"]

TOKENS_ENV = "KEYBRIDGE_TEST_TOKENS"
_ENV_VARS = ("KEYBRIDGE_TEST_PKCS11_MODULE", "KEYBRIDGE_TEST_PKCS11_TOKEN", "KEYBRIDGE_TEST_PKCS11_PIN")
KINDS = ("softhsm", "env")


@dataclass(frozen=True)
class Pkcs11TestToken:
    """A token a test may use: module, label, user PIN (hidden from repr) and which kind it is."""

    kind: str
    module_path: str
    token_label: str
    user_pin: str = field(repr=False)
    env: Mapping[str, str] = field(repr=False, default_factory=lambda: dict(os.environ))


def _kinds() -> list[str]:
    return [k.strip() for k in os.environ.get(TOKENS_ENV, "softhsm").split(",") if k.strip()]


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """A fresh SoftHSM2 token for the test session (skips the test if softhsm2 is not installed)."""
    try:
        with throwaway_token(tmp_path_factory.mktemp("softhsm"), "keybridge-test") as token:
            yield token
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session", params=_kinds())
def pkcs11_token(request: pytest.FixtureRequest) -> Pkcs11TestToken:
    """One token per kind in ``$KEYBRIDGE_TEST_TOKENS`` (default ``softhsm``); see the module docs."""
    kind = str(request.param)
    if kind == "softhsm":
        # The session's one SoftHSM token: a second would switch SOFTHSM2_CONF under the first.
        t: SoftHsmToken = request.getfixturevalue("softhsm_token")
        return Pkcs11TestToken(kind, t.module_path, t.token_label, t.user_pin, t.env)
    if kind == "env":
        module, label, pin = (os.environ.get(name, "") for name in _ENV_VARS)
        if not (module and label and pin):
            pytest.skip(f"{TOKENS_ENV} names 'env' but {', '.join(_ENV_VARS)} are not all set")
        return Pkcs11TestToken(kind, module, label, pin)
    raise pytest.UsageError(f"{TOKENS_ENV} names unknown token kind {kind!r}; known kinds: {', '.join(KINDS)}")
