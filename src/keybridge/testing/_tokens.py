"""Non-SoftHSM test tokens for the ``pkcs11_token`` fixture: an NSS softokn database, and the
bring-up step runner the other kinds share.

NSS's software token (``libsoftokn3.so``, Debian ``libnss3``) is a second, independent PKCS#11
implementation: it checks templates and mechanism parameters differently from SoftHSM, needs an
init string in ``C_Initialize`` and refuses some objects SoftHSM takes, which is what the suite is
run on it for. Its key store is a directory made by ``certutil -N`` (Debian ``libnss3-tools``);
the token to use is "NSS Certificate DB" (the other slot, "NSS Generic Crypto Services", has no
login and keeps nothing). A module is initialised once per process, so one database per test
session.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from .._files import atomic_write
from .._softhsm import first_module
from ..errors import ProviderUnavailable

__all__ = ["NSS_TOKEN_LABEL", "find_nss_module", "nss_init_args", "nss_token_dir", "run_step"]

NSS_TOKEN_LABEL = "NSS Certificate DB"
_NSS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
    "/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
    "/usr/lib64/libsoftokn3.so",
    "/usr/lib/libsoftokn3.so",
)


def find_nss_module() -> str | None:
    """Path of NSS's libsoftokn3.so ($KEYBRIDGE_NSS_MODULE first), or None if not installed."""
    return first_module("KEYBRIDGE_NSS_MODULE", _NSS_CANDIDATES)


def nss_init_args(db_dir: str | os.PathLike[str]) -> str:
    """The softokn C_Initialize string for the SQL database in ``db_dir`` (no secmod modules)."""
    return f"configdir='sql:{os.fspath(db_dir)}' certPrefix='' keyPrefix='' secmod='secmod.db' flags="


def nss_token_dir(directory: Path) -> tuple[str, str]:
    """Create an NSS database in ``directory`` with a random user PIN; returns (module path, PIN).

    Raises ProviderUnavailable (naming the Debian packages) when softokn or certutil is missing.
    """
    module = find_nss_module()
    certutil = shutil.which("certutil")
    if module is None or certutil is None:
        raise ProviderUnavailable(
            "the NSS test token needs libsoftokn3.so and certutil; install them with"
            " `apt-get install libnss3 libnss3-tools` (or set KEYBRIDGE_NSS_MODULE)"
        )
    pin = secrets.token_hex(8)
    pin_file = directory / "pin.txt"
    atomic_write(pin_file, (pin + "\n").encode())
    try:
        subprocess.run(
            [certutil, "-N", "-d", f"sql:{directory}", "-f", str(pin_file)],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProviderUnavailable(f"`certutil -N` could not create an NSS database in {directory}") from exc
    finally:
        pin_file.unlink(missing_ok=True)
    return module, pin


def run_step(args: list[str], env: dict[str, str] | None, what: str, stdin: bytes | None = None) -> str:
    """Run a bring-up step; its stdout, or ProviderUnavailable with the last line it printed."""
    try:
        done = subprocess.run(args, env=env, check=True, capture_output=True, timeout=60, input=stdin)
    except subprocess.CalledProcessError as exc:
        said = exc.stderr or exc.stdout  # some tools (pkcsconf) report errors on stdout
        tail = said.decode(errors="replace").strip().splitlines()[-1:] if said else []
        raise ProviderUnavailable(f"{what} failed (exit {exc.returncode}): {' '.join(tail)}") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProviderUnavailable(f"{what} could not run: {type(exc).__name__}") from None
    return done.stdout.decode(errors="replace")
