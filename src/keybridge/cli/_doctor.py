"""``keybridge doctor``: is this machine set up to use keybridge, and if not, what to do.

Each check is one line: ``ok``, ``warn`` (works, but worth knowing) or ``FAIL`` (something the user
asked for cannot work), with what to do. Secrets are never shown: for a PIN, token or passphrase
only whether it is set. Exit 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click

from .._meta import DISTRIBUTION, VERSION, pip_install
from ..errors import KeybridgeError
from ._common import (
    AZURE_CA_ENV,
    AZURE_CHALLENGE_ENV,
    AZURE_TOKEN_ENV,
    KEYSTORE_ENV,
    PASSPHRASE_ENV,
    default_keystore,
    emit,
    json_option,
)
from ._messages import cli_message

__all__ = ["doctor"]

# providers.pkcs11's MODULE_ENV / PIN_ENV (a test keeps them equal): importing that package needs
# the pkcs11 extra, and a missing extra is one of the things this command reports.
PKCS11_MODULE_ENV = "KEYBRIDGE_PKCS11_MODULE"
PKCS11_PIN_ENV = "KEYBRIDGE_PKCS11_PIN"
# What DefaultAzureCredential reads; shown only as set / not set.
_AZURE_IDENTITY_ENV = (
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
)
# extra -> modules it provides (looked up, not imported: a check must not be slow or fail itself)
_EXTRAS = {
    "pkcs11": ("pkcs11",),
    "azure": ("azure.keyvault.keys", "azure.identity"),
    "cli": ("click", "rich"),
    "parquet": ("pyarrow",),
}


@dataclass
class Check:
    """One line of the report."""

    area: str
    status: str  # "ok", "warn" or "fail"
    detail: str


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def _is_set(name: str) -> str:
    return f"{name} set" if os.environ.get(name) else f"{name} not set"


def check_install() -> list[Check]:
    """Version, Python and which extras are installed."""
    out = [Check("install", "ok", f"{DISTRIBUTION} {VERSION}, Python {platform.python_version()} ({sys.executable})")]
    for extra, modules in _EXTRAS.items():
        missing = [m for m in modules if not _present(m)]
        if missing:
            out.append(Check(f"extra {extra}", "warn", f"not installed ({', '.join(missing)}): {pip_install(extra)}"))
        else:
            out.append(Check(f"extra {extra}", "ok", "installed"))
    return out


def check_keystore() -> list[Check]:
    """Where ``memory:`` keys live, whether that file is there and private, and whether it opens."""
    path = default_keystore()
    chosen = bool(click.get_current_context().find_root().params.get("keystore") or os.environ.get(KEYSTORE_ENV))
    if not path.exists():
        if chosen:
            return [Check("keystore", "fail", f"{path} does not exist; check --keystore / {KEYSTORE_ENV}")]
        return [Check("keystore", "warn", f"{path} does not exist yet; keybridge keys create NAME makes it")]
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    out: list[Check] = []
    if not stat.S_ISREG(st.st_mode):
        return [Check("keystore", "fail", f"{path} is not a regular file")]
    if mode & 0o077:
        out.append(Check("keystore", "fail", f"{path} is mode {mode:04o}, readable by others: chmod 600 {path}"))
    elif hasattr(os, "getuid") and st.st_uid != os.getuid():
        out.append(Check("keystore", "warn", f"{path} is owned by uid {st.st_uid}, not you ({os.getuid()})"))
    else:
        out.append(Check("keystore", "ok", f"{path} (mode {mode:04o}, {st.st_size} bytes)"))
    passphrase = os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        out.append(Check("keystore", "warn", f"{PASSPHRASE_ENV} not set: commands will prompt for the passphrase"))
        return out
    from ..providers.memory import InMemoryProvider

    try:
        with InMemoryProvider.open(path, passphrase) as provider:
            count = len(list(provider.list_keys()))
    except KeybridgeError as exc:
        out.append(Check("keystore", "fail", f"cannot open it with {PASSPHRASE_ENV}: {cli_message(exc)}"))
    else:
        out.append(Check("keystore", "ok", f"opens with {PASSPHRASE_ENV}: {count} key(s)"))
    return out


def _token_line(token: Any) -> str:
    label = str(token.label).strip()
    if not label:
        return "a free slot (no initialised token)"
    maker = str(getattr(token, "manufacturer_id", "")).strip()
    model = str(getattr(token, "model", "")).strip()
    return f"token {label!r} ({maker} {model})".replace(" )", ")")


def check_pkcs11(uri: str | None) -> list[Check]:
    """The PKCS#11 module and its tokens, when configured by ``--pkcs11 URI`` or the environment."""
    module = os.environ.get(PKCS11_MODULE_ENV)
    if not module and uri is None:
        return [Check("pkcs11", "ok", f"not configured (give --pkcs11 URI or set {PKCS11_MODULE_ENV})")]
    if not _present("pkcs11"):
        return [Check("pkcs11", "fail", f"PKCS#11 is configured but the extra is missing: {pip_install('pkcs11')}")]
    from ..providers.pkcs11._uri import parse, redact

    token_label = None
    if uri is not None:
        try:
            parsed = parse(uri)
        except KeybridgeError as exc:
            return [Check("pkcs11", "fail", cli_message(exc))]
        module = parsed.query.get("module-path") or module
        token_label = parsed.path.get("token")
    if not module:
        return [Check("pkcs11", "fail", f"the URI names no module: add ?module-path=... or set {PKCS11_MODULE_ENV}")]
    if not os.path.isfile(module):
        return [Check("pkcs11", "fail", f"module {module} does not exist; check module-path= or {PKCS11_MODULE_ENV}")]
    import pkcs11

    try:
        lib = pkcs11.lib(module)
        tokens = [slot.get_token() for slot in lib.get_slots(token_present=True)]
    except Exception as exc:  # anything a foreign shared library does wrong is this check's answer
        return [Check("pkcs11", "fail", f"module {module} does not load as PKCS#11: {type(exc).__name__}")]
    out = [Check("pkcs11", "ok", f"module {module}: {str(lib.library_description).strip()}, {len(tokens)} token(s)")]
    out += [Check("pkcs11", "ok", _token_line(t)) for t in tokens]
    out.append(Check("pkcs11", "ok", _is_set(PKCS11_PIN_ENV)))
    if token_label is None:
        return out
    if token_label not in {str(t.label).strip() for t in tokens}:
        out.append(Check("pkcs11", "fail", f"token {token_label!r} is not in {module}; the labels are listed above"))
        return out
    assert uri is not None
    has_pin = any(k in parsed.query for k in ("pin-value", "pin-source")) or os.environ.get(PKCS11_PIN_ENV)
    if not has_pin:
        out.append(Check("pkcs11", "warn", f"no PIN to log in with (pin-source= in the URI or {PKCS11_PIN_ENV})"))
        return out
    from ..provider import open_provider

    try:
        with open_provider(uri) as provider:
            count = len(list(provider.list_keys()))
    except KeybridgeError as exc:
        out.append(Check("pkcs11", "fail", f"{redact(uri)}: {cli_message(exc)}"))
    else:
        out.append(Check("pkcs11", "ok", f"logged in to {token_label!r}: {count} key(s)"))
    return out


def check_azure() -> list[Check]:
    """The variables the CLI and DefaultAzureCredential read (secrets only as set / not set)."""
    out: list[Check] = []
    ca = os.environ.get(AZURE_CA_ENV)
    if ca:
        if not os.path.isfile(ca):
            out.append(Check("azure", "fail", f"{AZURE_CA_ENV}={ca} does not exist"))
        elif b"-----BEGIN CERTIFICATE-----" not in Path(ca).read_bytes()[: 1 << 20]:
            out.append(Check("azure", "fail", f"{AZURE_CA_ENV}={ca} holds no PEM certificate"))
        else:
            out.append(Check("azure", "ok", f"{AZURE_CA_ENV}={ca}"))
    challenge = os.environ.get(AZURE_CHALLENGE_ENV)
    if challenge is not None:
        out.append(Check("azure", "ok", f"{AZURE_CHALLENGE_ENV}={challenge.strip()[:10]}"))
    out.append(Check("azure", "ok", _is_set(AZURE_TOKEN_ENV)))
    identity = ", ".join(_is_set(name) for name in _AZURE_IDENTITY_ENV)
    out.append(Check("azure", "ok", identity))
    if not _present("azure.keyvault.keys"):
        out.append(Check("azure", "warn", f"https:// keys need the azure extra: {pip_install('azure')}"))
    return out


_MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@click.command()
@click.option("--pkcs11", "pkcs11_uri", metavar="URI", help="Also check this token (pkcs11:token=T?module-path=...).")
@json_option
def doctor(pkcs11_uri: str | None, as_json: bool) -> None:
    """Check the installation, keystore, PKCS#11 module/token and Azure settings; exit 1 on a problem."""
    checks = [*check_install(), *check_keystore(), *check_pkcs11(pkcs11_uri), *check_azure()]
    ok = not any(c.status == "fail" for c in checks)
    width = max(len(c.area) for c in checks)
    human = "\n".join(f"{_MARK[c.status]}  {c.area:<{width}}  {c.detail}" for c in checks)
    human += "\n" + ("all checks passed" if ok else "some checks FAILED (see above)")
    emit({"ok": ok, "checks": [asdict(c) for c in checks]}, human, as_json=as_json)
    if not ok:
        raise click.exceptions.Exit(1)
