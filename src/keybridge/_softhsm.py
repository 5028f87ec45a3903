"""Throwaway SoftHSM2 tokens, for the ``softhsm_token`` test fixture and for ``keybridge demo``.

A token lives in a directory of its own with its own ``SOFTHSM2_CONF``, so nothing touches the
machine's tokens, and gets random PINs that are never printed. SoftHSM reads that variable only in
``C_Initialize``, so a module already loaded in this process is initialised again (through the
PKCS#11 backend's public ``reinitialize``, imported only then). Otherwise this is file and process
plumbing around ``softhsm2-util``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ._files import atomic_write
from .errors import ProviderUnavailable

__all__ = ["SoftHsmToken", "find_softhsm_module", "throwaway_token"]

_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def first_module(env_var: str, candidates: tuple[str, ...]) -> str | None:
    """The path in ``$env_var`` if set, else the first of ``candidates`` that exists, or None."""
    env = os.environ.get(env_var)
    for path in ((env,) if env else ()) + candidates:
        if os.path.exists(path):
            return path
    return None


def find_softhsm_module() -> str | None:
    """Path of libsofthsm2.so ($KEYBRIDGE_SOFTHSM_MODULE first), or None if not installed."""
    return first_module("KEYBRIDGE_SOFTHSM_MODULE", _CANDIDATES)


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
    try:
        from .providers.pkcs11._compat import reinitialize
    except ImportError:  # no python-pkcs11: nothing in this process can have loaded the module
        return
    reinitialize(module_path)


@contextlib.contextmanager
def throwaway_token(workdir: Path, label: str) -> Iterator[SoftHsmToken]:
    """Initialise a token labelled ``label`` under ``workdir`` and point ``SOFTHSM2_CONF`` at it
    for the duration of the block (restored afterwards). Raises ``ProviderUnavailable`` when
    SoftHSM2 is not installed."""
    module = find_softhsm_module()
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        raise ProviderUnavailable(
            "SoftHSM2 is not installed (apt-get install softhsm2), or set KEYBRIDGE_SOFTHSM_MODULE"
        )
    tokens = workdir / "tokens"
    tokens.mkdir(mode=0o700, exist_ok=True)
    conf = workdir / "softhsm2.conf"
    settings = f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    atomic_write(conf, settings.encode(), overwrite=True)
    token = SoftHsmToken(module, label, secrets.token_hex(8), secrets.token_hex(8), str(conf))
    # The PINs appear on this short-lived command line only; the token dies with its directory.
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--so-pin", token.so_pin, "--pin", token.user_pin],
        env=dict(token.env),
        check=True,
        capture_output=True,
        timeout=60,
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
