"""The ``softhsm_token`` and ``pkcs11_token`` fixtures: PKCS#11 tokens for one test session.

See :mod:`keybridge._softhsm` for how a SoftHSM token is made; this module imports without
python-pkcs11, so the pytest plugin loads everywhere.

``pkcs11_token`` runs a test once per token kind named in ``$KEYBRIDGE_TEST_TOKENS``
(comma-separated, default ``softhsm``):

* ``softhsm`` — the session's throwaway SoftHSM2 token (the same one ``softhsm_token`` gives);
* ``nss`` — a throwaway NSS softokn database (see :mod:`._tokens`; needs ``libnss3-tools``);
* ``opencryptoki`` — opencryptoki's soft token behind pkcsslotd (see :mod:`._ock`; needs root,
  Debian ``opencryptoki`` and a soft token nobody has initialised);
* ``tpm2`` — tpm2-pkcs11 on a throwaway software TPM (swtpm + tpm2-abrmd, see :mod:`._tpm2`);
* ``env`` — an existing token, e.g. a real HSM: ``$KEYBRIDGE_TEST_PKCS11_MODULE``,
  ``$KEYBRIDGE_TEST_PKCS11_TOKEN`` and ``$KEYBRIDGE_TEST_PKCS11_PIN``. Tests create and delete
  keys on it, so use a token set aside for testing; ``$KEYBRIDGE_TEST_PKCS11_INIT_ARGS`` gives the
  module's C_Initialize string if it needs one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from .._softhsm import SoftHsmToken, find_softhsm_module, throwaway_token
from ..errors import ProviderUnavailable
from ._ock import opencryptoki_token
from ._tokens import NSS_TOKEN_LABEL, nss_init_args, nss_token_dir
from ._tpm2 import tpm2_token

__all__ = [
    "TOKENS_ENV",
    "Pkcs11TestToken",
    "SoftHsmToken",
    "find_softhsm_module",
    "nss_token",
    "opencryptoki_test_token",
    "pkcs11_token",
    "softhsm_token",
    "tpm2_test_token",
]

TOKENS_ENV = "KEYBRIDGE_TEST_TOKENS"
_ENV_VARS = ("KEYBRIDGE_TEST_PKCS11_MODULE", "KEYBRIDGE_TEST_PKCS11_TOKEN", "KEYBRIDGE_TEST_PKCS11_PIN")
KINDS = ("softhsm", "nss", "opencryptoki", "tpm2", "env")


@dataclass(frozen=True)
class Pkcs11TestToken:
    """A token a test may use: module, label, user PIN (hidden from repr) and which kind it is.

    ``init_args`` is the module's C_Initialize string (NSS), to pass as ``Pkcs11Provider(init_args=)``;
    :meth:`provider` does that.
    """

    kind: str
    module_path: str
    token_label: str
    user_pin: str = field(repr=False)
    env: Mapping[str, str] = field(repr=False, default_factory=lambda: dict(os.environ))
    init_args: str | None = None

    def provider(self, **options: Any) -> Any:
        """A ``Pkcs11Provider`` on this token (``options`` as for its constructor)."""
        from ..providers.pkcs11 import Pkcs11Provider

        return Pkcs11Provider(self.module_path, self.token_label, self.user_pin, init_args=self.init_args, **options)


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


@pytest.fixture(scope="session")
def nss_token(tmp_path_factory: pytest.TempPathFactory) -> Pkcs11TestToken:
    """A fresh NSS softokn database for the test session (skips if NSS's tools are not installed).

    One per session: softokn is initialised once per process, with one database.
    """
    directory = tmp_path_factory.mktemp("nss")
    try:
        module, pin = nss_token_dir(directory)
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))
    return Pkcs11TestToken("nss", module, NSS_TOKEN_LABEL, pin, init_args=nss_init_args(directory))


@pytest.fixture(scope="session")
def opencryptoki_test_token() -> Iterator[Pkcs11TestToken]:
    """opencryptoki's soft token, initialised for the test session and wiped back to fresh after it
    (skips if opencryptoki is missing, if not root, or if the token is already someone's)."""
    try:
        with opencryptoki_token() as (module, label, pin):
            yield Pkcs11TestToken("opencryptoki", module, label, pin)
    except ProviderUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tpm2_test_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pkcs11TestToken]:
    """tpm2-pkcs11 on a fresh software TPM for the test session (skips if its packages are missing).

    The daemons (dbus-daemon, swtpm, tpm2-abrmd) are stopped at the end of the session.
    """
    try:
        with tpm2_token(tmp_path_factory.mktemp("tpm2")) as t:
            yield Pkcs11TestToken("tpm2", t.module_path, t.token_label, t.user_pin, t.env)
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
    if kind == "nss":
        nss: Pkcs11TestToken = request.getfixturevalue("nss_token")
        return nss
    if kind == "opencryptoki":
        ock: Pkcs11TestToken = request.getfixturevalue("opencryptoki_test_token")
        return ock
    if kind == "tpm2":
        tpm2: Pkcs11TestToken = request.getfixturevalue("tpm2_test_token")
        return tpm2
    if kind == "env":
        module, label, pin = (os.environ.get(name, "") for name in _ENV_VARS)
        if not (module and label and pin):
            pytest.skip(f"{TOKENS_ENV} names 'env' but {', '.join(_ENV_VARS)} are not all set")
        init = os.environ.get("KEYBRIDGE_TEST_PKCS11_INIT_ARGS") or None
        return Pkcs11TestToken(kind, module, label, pin, init_args=init)
    raise pytest.UsageError(f"{TOKENS_ENV} names unknown token kind {kind!r}; known kinds: {', '.join(KINDS)}")
