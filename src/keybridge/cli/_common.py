"""Helpers every CLI command module shares: where the default keystore is, how a key URI becomes
a provider (with the keystore passphrase), and one way to print results for people or machines."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.text import Text

from ..errors import AuthenticationError, ProviderUnavailable
from ..keys import KeyInfo
from ..provider import KeyHandle, KeyProvider, open_provider

__all__ = [
    "PASSPHRASE_ENV",
    "KEYSTORE_ENV",
    "cli_uri",
    "default_keystore",
    "emit",
    "json_option",
    "keystore_of",
    "keystore_option",
    "key_info_dict",
    "open_cli_key",
    "open_cli_provider",
]

KEYSTORE_ENV = "KEYBRIDGE_KEYSTORE"
PASSPHRASE_ENV = "KEYBRIDGE_PASSPHRASE"
# How the CLI reaches an Azure endpoint that is not Azure itself (a local emulator, a proxy), or
# uses a token from elsewhere (`az account get-access-token`): `keybridge emulator` prints these.
AZURE_CA_ENV = "KEYBRIDGE_AZURE_CA_FILE"
AZURE_TOKEN_ENV = "KEYBRIDGE_AZURE_ACCESS_TOKEN"
AZURE_CHALLENGE_ENV = "KEYBRIDGE_AZURE_VERIFY_CHALLENGE_RESOURCE"

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
"""The ``--json`` flag; the command receives it as ``as_json``."""


KEYSTORE_HELP = (
    "The keystore file that memory:NAME keys live in (the same file Python opens with"
    " open_provider('memory:NAME', keystore=PATH, passphrase=...)). Default: $KEYBRIDGE_KEYSTORE,"
    " else ~/.local/share/keybridge/keystore.kbks."
)
keystore_option = click.option("--keystore", "keystore", metavar="PATH", default=None, help=KEYSTORE_HELP)
"""The group's ``--keystore`` flag; :func:`default_keystore` reads it from the root context."""


def default_keystore() -> Path:
    """The keystore the CLI uses for ``memory:`` keys: ``keybridge --keystore PATH``, else
    ``$KEYBRIDGE_KEYSTORE``, else ``~/.local/share/keybridge/keystore.kbks``."""
    ctx = click.get_current_context(silent=True)
    flag = ctx.find_root().params.get("keystore") if ctx is not None else None
    env = flag or os.environ.get(KEYSTORE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "keybridge" / "keystore.kbks"


def _passphrase(keystore: Path) -> str:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if sys.stdin.isatty():
        new = not keystore.exists()
        prompt = f"New passphrase for keystore {keystore}" if new else f"Passphrase for keystore {keystore}"
        value: str = click.prompt(prompt, hide_input=True, confirmation_prompt=new, err=True)
        return value
    raise AuthenticationError(
        f"the keystore {keystore} needs a passphrase: set {PASSPHRASE_ENV} (no terminal to ask on)"
    )


def keystore_of(uri: str) -> Path | None:
    """The keystore file a ``memory:`` URI's keys live in, for output that says where a key went;
    ``None`` for other providers, whose URI already says where."""
    return default_keystore() if uri.split(":", 1)[0].lower() == "memory" else None


def open_cli_provider(uri: str, *, create: bool = False) -> KeyProvider:
    """The provider for ``uri``. ``memory:`` URIs open the default keystore with the passphrase
    from ``$KEYBRIDGE_PASSPHRASE`` or a hidden prompt; only commands that make keys pass
    ``create=True`` (so a mistyped ``$KEYBRIDGE_KEYSTORE`` is an error, not a new empty store)."""
    if uri.split(":", 1)[0].lower() == "memory":
        keystore = default_keystore()
        if not create and not keystore.exists():
            raise ProviderUnavailable(
                f"no keystore at {keystore} (memory: keys live in a keystore file); check --keystore or"
                f" {KEYSTORE_ENV}, or create a key first (keybridge keys create NAME)"
            )
        passphrase = _passphrase(keystore)
        keystore.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return open_provider(uri, keystore=keystore, passphrase=passphrase, create=create)
    if uri.split(":", 1)[0].lower() == "https":
        return open_provider(uri, **azure_options())
    return open_provider(uri)


def azure_options() -> dict[str, Any]:
    """Azure provider options from the environment: ``$KEYBRIDGE_AZURE_CA_FILE`` (a CA bundle to
    trust), ``$KEYBRIDGE_AZURE_ACCESS_TOKEN`` (a fixed bearer token instead of
    DefaultAzureCredential) and ``$KEYBRIDGE_AZURE_VERIFY_CHALLENGE_RESOURCE=0`` (for hosts that
    are not ``*.vault.azure.net`` / ``*.managedhsm.azure.net``, such as the emulator)."""
    options: dict[str, Any] = {}
    if ca := os.environ.get(AZURE_CA_ENV):
        options["connection_verify"] = ca
    if token := os.environ.get(AZURE_TOKEN_ENV):
        # Only the Azure provider reads these options, and it needs the azure extra anyway.
        from ..providers.azure import StaticTokenCredential

        options["credential"] = StaticTokenCredential(token.strip())
    if os.environ.get(AZURE_CHALLENGE_ENV, "1").strip().lower() in ("0", "false", "no"):
        options["verify_challenge_resource"] = False
    return options


def cli_uri(uri: str) -> str:
    """A bare key NAME (no ``:``) means ``memory:NAME`` in the default keystore."""
    return uri if ":" in uri else f"memory:{uri}"


def open_cli_key(uri: str, *, create: bool = False) -> KeyHandle:
    """A handle for a key URI, or for a bare NAME in the default keystore."""
    full = cli_uri(uri)
    return open_cli_provider(full, create=create).key(full)


def key_info_dict(info: KeyInfo) -> dict[str, Any]:
    """Key metadata as plain JSON-able values (no key material; the public key as PEM)."""
    from cryptography.hazmat.primitives import serialization

    pem = None
    if info.public_key is not None:
        pem = info.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
    return {
        "uri": str(info.ref),
        "name": info.ref.name,
        "version": info.ref.version,
        "spec": str(info.spec),
        "kty": info.spec.kty.value,
        "size": info.spec.size,
        "curve": info.spec.curve,
        "ops": sorted(op.value for op in info.ops),
        "enabled": info.enabled,
        "created": info.created.isoformat() if info.created else None,
        "not_before": info.not_before.isoformat() if info.not_before else None,
        "expires": info.expires.isoformat() if info.expires else None,
        "tags": dict(info.tags),
        "hsm_protected": info.hsm_protected,
        "exportable": info.exportable,
        "public_key_pem": pem,
    }


def emit(data: dict[str, Any], human: str | RenderableType, *, as_json: bool) -> None:
    """Print ``data`` as JSON (sorted keys) or ``human`` for people. A plain string is printed
    as is (no rich markup), so key names and paths are never reinterpreted."""
    if as_json:
        click.echo(json.dumps(data, sort_keys=True, indent=2, default=str))
        return
    Console(soft_wrap=True).print(Text(human) if isinstance(human, str) else human, highlight=False)
