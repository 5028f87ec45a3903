"""The ``softhsm_token`` fixture: an isolated SoftHSM2 token for one test session.

The token lives in a temporary directory with its own ``SOFTHSM2_CONF``, so tests never touch the
machine's tokens. SoftHSM reads that variable only in ``C_Initialize``, so when the module is
already loaded in this process it is initialised again. python-pkcs11 is imported only when the
fixture runs, so this module (and the pytest plugin) import without it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest

__all__ = ["SoftHsmToken", "find_softhsm_module", "softhsm_token"]

_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def find_softhsm_module() -> str | None:
    """Path of libsofthsm2.so ($KEYBRIDGE_SOFTHSM_MODULE first), or None if not installed."""
    env = os.environ.get("KEYBRIDGE_SOFTHSM_MODULE")
    for path in ((env,) if env else ()) + _CANDIDATES:
        if os.path.exists(path):
            return path
    return None


@dataclass(frozen=True)
class SoftHsmToken:
    """An initialised SoftHSM2 token: where it is and how to log in (PINs hidden from repr)."""

    module_path: str
    token_label: str
    user_pin: str = field(repr=False)
    so_pin: str = field(repr=False)
    conf_path: str

    def uri(self, object: str | None = None, *, pin: bool = True) -> str:
        """A ``pkcs11:`` URI for the token (and key ``object``), with module path and PIN."""
        path = f"pkcs11:token={quote(self.token_label, safe='')}"
        if object is not None:
            path += f";object={quote(object, safe='')}"
        query = f"module-path={quote(self.module_path, safe='/')}"
        if pin:
            query += f"&pin-value={quote(self.user_pin, safe='')}"
        return f"{path}?{query}"

    @property
    def env(self) -> Mapping[str, str]:
        """Environment for subprocesses (pkcs11-tool, softhsm2-util, python) that use this token."""
        return {**os.environ, "SOFTHSM2_CONF": self.conf_path}


def _reinitialize_loaded(module_path: str) -> None:
    """Make a module loaded before SOFTHSM2_CONF changed read the new configuration."""
    if "pkcs11" not in sys.modules:
        return  # first C_Initialize is still to come and will read the new conf
    session_mod = sys.modules.get("keybridge.providers.pkcs11._library")
    real = os.path.realpath(module_path)
    if session_mod is not None and real in session_mod.Library._registry:
        session_mod.Library._registry[real].reinitialize()
        return
    loaded = sys.modules["pkcs11"]._loaded
    for path in (module_path, real):
        if path in loaded:
            loaded[path].reinitialize()
            return


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """A fresh SoftHSM2 token for the test session (skips the test if softhsm2 is not installed)."""
    module = find_softhsm_module()
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        pytest.skip("softhsm2 is not installed (e.g. apt-get install softhsm2); set KEYBRIDGE_SOFTHSM_MODULE")
    root = tmp_path_factory.mktemp("softhsm")
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    token = SoftHsmToken(module, "keybridge-test", secrets.token_hex(4), secrets.token_hex(8), str(conf))
    subprocess.run(
        [
            util,
            "--init-token",
            "--free",
            "--label",
            token.token_label,
            "--so-pin",
            token.so_pin,
            "--pin",
            token.user_pin,
        ],
        env=dict(token.env),
        check=True,
        capture_output=True,
    )
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    _reinitialize_loaded(module)
    try:
        yield token
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old
