"""The ``tpm2`` test token: tpm2-pkcs11 on a software TPM (swtpm), a third PKCS#11 implementation.

tpm2-pkcs11 keeps key blobs in an SQLite store and does the cryptography in a TPM 2.0: RSA up to
3072 bits, P-256/384/521, no AES-GCM or AES key wrap, and keys it can only generate or import in
the shapes a TPM allows, which is why the suite is run on it. Bring-up (all as the current user,
in one throwaway directory, torn down in reverse order):

1. a private D-Bus bus (``dbus-daemon`` with its own config and socket);
2. ``swtpm socket`` on a free TCP port pair (the swtpm TCTI puts the control channel on port+1);
3. ``tpm2-abrmd`` on that bus: without a resource manager the TPM runs out of object slots
   (``TPM_RC_OBJECT_MEMORY``) after a few commands, since every ``tpm2_*`` tool leaves its
   transient objects loaded;
4. ``tpm2_ptool init`` + ``addtoken`` with random PINs.

The module reads ``TPM2_PKCS11_TCTI`` / ``TPM2_PKCS11_STORE`` in ``C_Initialize``, so they are set
in ``os.environ`` for the block (restored afterwards). Debian packages: ``libtpm2-pkcs11-1
libtpm2-pkcs11-tools swtpm tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus``.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .._softhsm import first_module
from ..errors import ProviderUnavailable
from ._tokens import run_step as _run

__all__ = ["TPM2_PACKAGES", "TPM2_TOKEN_LABEL", "Tpm2Token", "find_tpm2_module", "tpm2_token"]

TPM2_TOKEN_LABEL = "keybridge-tpm2"
TPM2_PACKAGES = "libtpm2-pkcs11-1 libtpm2-pkcs11-tools swtpm tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus"
_TOOLS = ("dbus-daemon", "swtpm", "tpm2-abrmd", "tpm2_ptool", "tpm2_getrandom")
_MODULE_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1",
    "/usr/lib/aarch64-linux-gnu/libtpm2_pkcs11.so.1",
    "/usr/lib64/libtpm2_pkcs11.so.1",
    "/usr/lib/libtpm2_pkcs11.so.1",
)
_READY_SECONDS = 20.0


class Tpm2Token:
    """A running tpm2-pkcs11 token: module path, label, user PIN (not in repr) and its environment."""

    def __init__(self, module_path: str, token_label: str, user_pin: str, env: dict[str, str]) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.user_pin = user_pin
        self.env = env

    def __repr__(self) -> str:
        return f"Tpm2Token(module_path={self.module_path!r}, token_label={self.token_label!r})"


def find_tpm2_module() -> str | None:
    """Path of libtpm2_pkcs11.so.1 ($KEYBRIDGE_TPM2_MODULE first), or None if not installed."""
    return first_module("KEYBRIDGE_TPM2_MODULE", _MODULE_CANDIDATES)


def _clashing_module() -> str | None:
    """A library mapped into this process that exports tpm2-pkcs11's internal names (opencryptoki's
    token libraries, loaded with RTLD_GLOBAL by libopencryptoki), or None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            if "/opencryptoki/stdll/" in line:
                return line.split()[-1]
    return None


def _free_port_pair() -> int:
    """A port p with p and p+1 both free on 127.0.0.1 (swtpm's command and control channels)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise ProviderUnavailable("no free TCP port pair on 127.0.0.1 for swtpm; free some ports and retry")


def _wait_ready(env: dict[str, str], tcti: str, abrmd: subprocess.Popen[bytes], log: Path) -> None:
    """Poll with tpm2_getrandom until abrmd has claimed its bus name and reaches the TPM."""
    deadline = time.monotonic() + _READY_SECONDS
    while time.monotonic() < deadline:
        if abrmd.poll() is not None:
            said = log.read_text(errors="replace").strip().splitlines()[-1:]
            raise ProviderUnavailable(
                f"tpm2-abrmd exited with status {abrmd.returncode} before it was ready: {' '.join(said)}"
            )
        probe = subprocess.run(["tpm2_getrandom", "-T", tcti, "8"], env=env, capture_output=True, timeout=30)
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise ProviderUnavailable(f"tpm2-abrmd did not answer within {_READY_SECONDS:.0f} s")


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _read_pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return None


@contextlib.contextmanager
def tpm2_token(directory: Path) -> Iterator[Tpm2Token]:
    """Bring up swtpm + tpm2-abrmd + a tpm2-pkcs11 token under ``directory``; stop them afterwards.

    Raises ProviderUnavailable (naming the Debian packages) when a piece is missing, or saying which
    step failed.
    """
    module = find_tpm2_module()
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if ctypes.util.find_library("tss2-tcti-tabrmd") is None:  # else every probe fails for 20 s
        missing.append("libtss2-tcti-tabrmd.so.0")
    if module is None or missing:
        what = ", ".join(missing + ([] if module else ["libtpm2_pkcs11.so.1"]))
        raise ProviderUnavailable(
            f"the tpm2 test token needs {what}; install them with `apt-get install {TPM2_PACKAGES}`"
            " (or set KEYBRIDGE_TPM2_MODULE)"
        )
    clash = _clashing_module()
    if clash is not None:
        raise ProviderUnavailable(
            f"{clash} is loaded in this process: it exports object_create, as tpm2-pkcs11 1.9 does, and"
            " tpm2-pkcs11 then calls that one (C_CreateObject fails with CKR_KEY_HANDLE_INVALID); run the"
            " tpm2 kind in a process of its own (`nox -s tokens` runs each kind separately)"
        )
    state, store = directory / "tpm-state", directory / "store"
    state.mkdir(mode=0o700)
    store.mkdir(mode=0o700)
    bus = directory / "bus"
    (directory / "dbus.conf").write_text(
        f"<busconfig><type>session</type><listen>unix:path={bus}</listen><auth>EXTERNAL</auth>"
        '<policy context="default"><allow user="*"/><allow send_destination="*" eavesdrop="true"/>'
        '<allow eavesdrop="true"/><allow own="*"/></policy>'
        "</busconfig>\n"
    )
    bus_name = f"com.intel.tss2.Tabrmd.kb{os.getpid()}x{secrets.token_hex(3)}"
    tcti = f"tabrmd:bus_type=session,bus_name={bus_name}"
    env = {
        **os.environ,
        "DBUS_SESSION_BUS_ADDRESS": f"unix:path={bus}",
        "TPM2_PKCS11_TCTI": tcti,
        "TPM2TOOLS_TCTI": tcti,
        "TPM2_PKCS11_STORE": str(store),
        "TPM2_PKCS11_LOG_LEVEL": "0",  # its errors would otherwise go to stderr for every probe
    }
    pids: list[int] = []
    abrmd: subprocess.Popen[bytes] | None = None
    saved = {
        name: os.environ.get(name)
        for name in ("DBUS_SESSION_BUS_ADDRESS", "TPM2_PKCS11_TCTI", "TPM2_PKCS11_STORE", "TPM2_PKCS11_LOG_LEVEL")
    }
    stack = contextlib.ExitStack()
    try:
        # --fork returns once the bus is listening; --print-pid names the daemon left running.
        dbus = _run(
            ["dbus-daemon", f"--config-file={directory / 'dbus.conf'}", "--fork", "--print-pid"], env, "dbus-daemon"
        )
        pids += [int(dbus.split()[0])]
        port = _free_port_pair()
        swtpm_pid = directory / "swtpm.pid"
        _run(
            [
                "swtpm", "socket", "--tpm2", "--daemon",
                "--tpmstate", f"dir={state}",
                "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--flags", "not-need-init,startup-clear",
                "--pid", f"file={swtpm_pid}",
            ],
            env,
            "swtpm",
        )  # fmt: skip
        pids += [p for p in (_read_pid(swtpm_pid),) if p is not None]
        log_path = directory / "abrmd.log"
        log = stack.enter_context(open(log_path, "wb"))  # noqa: SIM115 (closed by stack)
        abrmd = subprocess.Popen(
            [
                "tpm2-abrmd",
                "--session",
                "--allow-root",
                # tpm2-pkcs11 keeps each key it used loaded; the default 27 per client runs out
                # within a test session (TPM_RC_OBJECT_MEMORY), and 100 within the suite on one
                # token (conformance plus the 8-thread stress). abrmd swaps them in and out.
                "--max-transients=100",
                f"--dbus-name={bus_name}",
                f"--tcti=swtpm:host=127.0.0.1,port={port}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        _wait_ready(env, tcti, abrmd, log_path)
        user_pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        _run(["tpm2_ptool", "init", f"--path={store}"], env, "tpm2_ptool init")
        # The PINs appear on this short-lived command line only; the token dies with its directory.
        addtoken = ["tpm2_ptool", "addtoken", "--pid=1", f"--label={TPM2_TOKEN_LABEL}", f"--path={store}"]
        _run([*addtoken, f"--userpin={user_pin}", f"--sopin={so_pin}"], env, "tpm2_ptool addtoken")
        for name in saved:
            os.environ[name] = env[name]
        yield Tpm2Token(module, TPM2_TOKEN_LABEL, user_pin, env)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if abrmd is not None:
            abrmd.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                abrmd.wait(timeout=10)
        for pid in reversed(pids):
            _stop(pid)
        stack.close()
