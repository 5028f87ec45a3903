"""The ``opencryptoki`` test token: opencryptoki's soft token (swtok) behind ``pkcsslotd``.

opencryptoki is IBM's PKCS#11 stack (Debian ``opencryptoki``): one module, ``libopencryptoki.so``,
that reaches each token's STDLL through the ``pkcsslotd`` daemon. Its soft token does RSA, AES
(ECB/CBC) and DES, but no EC, no AES-GCM and no AES key wrap, and it decides CKA_SENSITIVE and
CKA_EXTRACTABLE of unwrapped keys itself, which is why the suite is run on it.

Unlike the other kinds it cannot live in a throwaway directory: the token's store is the fixed
``/var/lib/opencryptoki/swtok``, the daemon's state is in ``/var/run`` and ``/dev/shm``, and both
belong to root. So this kind needs root, takes only a *fresh* soft token (never one someone
initialised, whose keys and PINs are theirs: use kind ``env`` for that), initialises it with random
PINs, and at the end removes every file it added and stops ``pkcsslotd`` if it started it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .._softhsm import first_module
from ..errors import ProviderUnavailable
from ._tokens import run_step

__all__ = ["OCK_PACKAGES", "OCK_TOKEN_LABEL", "find_ock_module", "opencryptoki_token"]

OCK_TOKEN_LABEL = "keybridge-ock"
OCK_PACKAGES = "opencryptoki"
_SWTOK = Path("/var/lib/opencryptoki/swtok")
_RUNTIME_DIRS = (Path("/var/lock/opencryptoki"), Path("/var/lock/opencryptoki/swtok"), Path("/var/log/opencryptoki"))
_PID_FILE = Path("/var/run/pkcsslotd.pid")
# The token's state, shared by its processes; opencryptoki names it so (not a temp file of ours).
_SHM = Path("/dev/shm/var.lib.opencryptoki.swtok")  # noqa: S108
_DEFAULT_SO_PIN = "87654321"  # what every fresh opencryptoki token starts with (its documentation)
_SOFT_MODEL = "IBM SoftTok"
_MODULE_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libopencryptoki.so",
    "/usr/lib64/opencryptoki/libopencryptoki.so",
    "/usr/lib/opencryptoki/libopencryptoki.so",
)


def find_ock_module() -> str | None:
    """Path of libopencryptoki.so ($KEYBRIDGE_OCK_MODULE first), or None if not installed."""
    return first_module("KEYBRIDGE_OCK_MODULE", _MODULE_CANDIDATES)


def _daemon_pid() -> int | None:
    """The running pkcsslotd's pid, from its pid file; None if none runs (a zombie does not)."""
    with contextlib.suppress(OSError, ValueError, IndexError):  # IndexError: being written
        pid = int(_PID_FILE.read_text().split()[0])
        if "State:\tZ" not in Path(f"/proc/{pid}/status").read_text():
            return pid
    return None


def _start_daemon() -> int:
    try:
        for d in _RUNTIME_DIRS:  # pkcsslotd and the module expect these, group pkcs11, mode 770
            d.mkdir(parents=True, exist_ok=True)
            shutil.chown(d, group="pkcs11")
            d.chmod(0o770)
    except (LookupError, OSError) as exc:  # LookupError: no pkcs11 group (the package makes it)
        what = f"{type(exc).__name__}: {exc}"
        raise ProviderUnavailable(f"cannot prepare opencryptoki's runtime folders ({what})") from None
    run_step(["pkcsslotd"], None, "pkcsslotd")  # daemonises once its shared memory is ready
    deadline = time.monotonic() + 10
    while (pid := _daemon_pid()) is None:
        if time.monotonic() > deadline:
            raise ProviderUnavailable("pkcsslotd did not write its pid file within 10 s; see /var/log/opencryptoki")
        time.sleep(0.05)
    return pid


# pkcsslotd ignores SIGTERM while a process that loaded the module lives, and this process has:
# a detached helper sends it once this process has exited (for at most an hour).
_STOP_LATER = """
import os, signal, sys, time
parent, daemon = int(sys.argv[1]), int(sys.argv[2])
for _ in range(18000):
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(0.2)
try:
    with open(f"/proc/{daemon}/comm") as comm:
        if comm.read().strip() == "pkcsslotd":
            os.kill(daemon, signal.SIGTERM)
except OSError:
    pass
"""


def _stop_daemon(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2
    while _daemon_pid() == pid:
        if time.monotonic() > deadline:
            subprocess.Popen(
                [sys.executable, "-c", _STOP_LATER, str(os.getpid()), str(pid)],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return
        time.sleep(0.05)


def _soft_slot() -> tuple[int, bool]:
    """The slot whose token reports opencryptoki's soft-token model, from ``pkcsconf -t``, and
    whether that token is initialised already."""
    listing = run_step(["pkcsconf", "-t"], None, "pkcsconf -t")
    for number, body in re.findall(r"Token #(\d+) Info:(.*?)(?=Token #|\Z)", listing, re.S):
        if re.search(rf"Model:\s*{re.escape(_SOFT_MODEL)}", body):
            return int(number), "TOKEN_INITIALIZED" in body
    raise ProviderUnavailable(
        "pkcsconf -t lists no opencryptoki soft token; enable libpkcs11_sw.so in opencryptoki.conf"
    )


def _pin() -> str:
    return f"{secrets.randbelow(10**8):08d}"  # the soft token takes PINs of 4 to 8 characters


def _initialise(slot: int) -> str:
    """Initialise the token with fresh SO and user PINs; returns the user PIN.

    A fresh token insists that both PINs be changed once before use, hence set-then-change.
    """
    so_pin, first_user, user_pin = _pin(), _pin(), _pin()
    c = ["pkcsconf", "-c", str(slot)]
    # The PINs appear on these short-lived command lines only; the token is wiped at the end.
    run_step([*c, "-I", "-S", _DEFAULT_SO_PIN], None, "pkcsconf -I", stdin=f"{OCK_TOKEN_LABEL}\n".encode())
    run_step([*c, "-P", "-S", _DEFAULT_SO_PIN, "-n", so_pin], None, "pkcsconf -P")
    run_step([*c, "-u", "-S", so_pin, "-n", first_user], None, "pkcsconf -u")
    run_step([*c, "-p", "-U", first_user, "-n", user_pin], None, "pkcsconf -p")
    return user_pin


def _snapshot(root: Path) -> dict[Path, bytes | None]:
    """Every path under ``root`` with its content (None for folders): a fresh store is a few bytes."""
    return {p: None if p.is_dir() else p.read_bytes() for p in root.rglob("*")} if root.exists() else {}


def _restore(root: Path, before: dict[Path, bytes | None]) -> None:
    """Put ``root`` back as :func:`_snapshot` saw it: remove what was added, rewrite what changed."""
    for path in sorted(set(_snapshot(root)) - set(before), reverse=True):  # files before their folders
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()
    for path, content in before.items():
        if content is not None:
            with contextlib.suppress(OSError):
                path.write_bytes(content)


@contextlib.contextmanager
def opencryptoki_token() -> Iterator[tuple[str, str, str]]:
    """Initialise the fresh opencryptoki soft token for the block, giving (module path, token
    label, user PIN); wipe it back to fresh afterwards.

    Raises ProviderUnavailable when opencryptoki is missing, when not root, or when the soft token
    is already initialised (it is left untouched then).
    """
    module = find_ock_module()
    missing = [tool for tool in ("pkcsslotd", "pkcsconf") if shutil.which(tool) is None]
    if module is None or missing:
        what = ", ".join(missing + ([] if module else ["libopencryptoki.so"]))
        raise ProviderUnavailable(
            f"the opencryptoki test token needs {what}; install them with `apt-get install {OCK_PACKAGES}`"
            " (or set KEYBRIDGE_OCK_MODULE)"
        )
    if os.geteuid() != 0:
        raise ProviderUnavailable(
            "the opencryptoki test token needs root (its store and pkcsslotd are system-wide);"
            " run as root, or initialise a token yourself and use token kind 'env'"
        )
    before, shm_before = _snapshot(_SWTOK), _SHM.exists()
    started = None if _daemon_pid() is not None else _start_daemon()
    try:
        slot, initialised = _soft_slot()
        if initialised:  # left as it is: _restore below only undoes what this block did
            raise ProviderUnavailable(
                f"the opencryptoki soft token in {_SWTOK} is already initialised and keybridge's tests only"
                " take a fresh one; to test on it, use token kind 'env' with its module, label and user PIN"
            )
        yield module, OCK_TOKEN_LABEL, _initialise(slot)
    finally:
        _restore(_SWTOK, before)
        if not shm_before:  # else it would tell the next user that the wiped token is initialised
            _SHM.unlink(missing_ok=True)
        if started is not None:
            _stop_daemon(started)
