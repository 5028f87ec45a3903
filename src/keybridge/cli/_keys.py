"""``keybridge keys``: create, list, show, rotate, enable, disable and delete keys.

A KEY argument is a key URI (``memory:NAME``, ``pkcs11:…``, ``https://…/keys/NAME``) or a bare
NAME, which means ``memory:NAME`` in the default keystore."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click
from click.core import ParameterSource
from rich.table import Table

from ..errors import InvalidArgument
from ..keys import KeyInfo, KeySpec, KeyType
from ._common import cli_uri, emit, json_option, key_info_dict, keystore_of, open_cli_provider

__all__ = ["keys"]

_KTY = {"rsa": KeyType.RSA, "ec": KeyType.EC, "oct": KeyType.OCT, "aes": KeyType.OCT}


def _spec(kty: str, size: int | None, curve: str | None) -> KeySpec:
    t = _KTY[kty.lower()]
    if t is KeyType.EC:
        if size is not None:
            raise InvalidArgument("EC keys take --curve (P-256, P-384, P-521), not --size")
        return KeySpec.ec(curve or "P-256")
    if curve is not None:
        raise InvalidArgument(f"--curve is for EC keys; {t.value} keys take --size")
    return KeySpec.rsa(size or 2048) if t is KeyType.RSA else KeySpec.aes(size or 256)


def _ops(values: Iterable[str]) -> list[str] | None:
    ops = [op.strip() for value in values for op in value.split(",") if op.strip()]
    return ops or None


def _summary(info: KeyInfo) -> str:
    state = "enabled" if info.enabled else "disabled"
    ops = ", ".join(sorted(op.value for op in info.ops)) or "none"
    return f"{info.ref}  {info.spec}  ops: {ops}  {state}"


@click.group()
def keys() -> None:
    """Manage keys in any provider (default: the encrypted keystore of the in-memory provider)."""


@keys.command()
@click.argument("key")
@click.option("--kty", type=click.Choice(["RSA", "EC", "oct"], case_sensitive=False), default="RSA", show_default=True)
@click.option("--size", type=int, help="RSA: 2048/3072/4096 (default 2048); oct: 128/192/256 (default 256).")
@click.option("--curve", type=click.Choice(["P-256", "P-384", "P-521"]), help="EC curve (default P-256).")
@click.option("--ops", multiple=True, help="Allowed operations, comma-separated (JWK key_ops names).")
@click.option("--exportable", is_flag=True, help="Allow the key material to leave the provider.")
@click.option("--new-version", is_flag=True, help="KEY exists: give it a new version of the same type (rotate).")
@json_option
@click.pass_context
def create(
    ctx: click.Context,
    key: str,
    kty: str,
    size: int | None,
    curve: str | None,
    ops: tuple[str, ...],
    exportable: bool,
    new_version: bool,
    as_json: bool,
) -> None:
    """Create KEY; an existing KEY is refused unless --new-version (same type, like rotate)."""
    spec = _spec(kty, size, curve)
    uri = cli_uri(key)
    with open_cli_provider(uri, create=True) as provider:
        name = provider.ref(uri).name
        if not new_version:
            info = provider.create_key(name, spec, ops=_ops(ops), exportable=exportable)
        else:
            _check_same_kind(ctx, provider.get_key(name), spec)
            info = provider.rotate_key(name)
    verb = "new version" if new_version else "created"
    data, human = key_info_dict(info), f"{verb} {_summary(info)}"
    if (keystore := keystore_of(uri)) is not None:  # a bare NAME gives no hint of which file it went to
        data["keystore"], human = str(keystore), f"{human}\nin keystore {keystore}"
    emit(data, human, as_json=as_json)


def _check_same_kind(ctx: click.Context, current: KeyInfo, spec: KeySpec) -> None:
    """--new-version keeps the key's spec, ops and export policy: refuse options that ask otherwise."""
    have = {"kty": current.spec.kty, "size": current.spec.size, "curve": current.spec.curve}
    want = {"kty": spec.kty, "size": spec.size, "curve": spec.curve}
    given = [p for p in have if ctx.get_parameter_source(p) is not ParameterSource.DEFAULT]
    if any(have[p] != want[p] for p in given):
        raise InvalidArgument(
            f"{current.ref.name!r} is {current.spec}; --new-version keeps the key's type, so leave out"
            f" --{'/--'.join(given)} or give the same values, or create a key under another name"
        )
    if ctx.params["ops"] or ctx.params["exportable"]:
        raise InvalidArgument(
            "--new-version keeps the key's operations and export policy: leave out --ops and --exportable"
        )


@keys.command("list")
@click.argument("provider_uri", default="memory:", required=False)
@json_option
def list_(provider_uri: str, as_json: bool) -> None:
    """List the current version of every key in PROVIDER_URI (default: the keystore)."""
    uri = cli_uri(provider_uri)
    with open_cli_provider(uri) as provider:
        infos = list(provider.list_keys())
    keystore = keystore_of(uri)
    where = {} if keystore is None else {"keystore": str(keystore)}
    caption = None if keystore is None else f"keystore: {keystore}"
    table = Table("key", "spec", "ops", "state", "version", caption=caption)
    for i in infos:
        table.add_row(
            i.ref.name,
            str(i.spec),
            ",".join(sorted(op.value for op in i.ops)),
            "enabled" if i.enabled else "disabled",
            i.ref.version or "",
        )
    empty = "no keys" if keystore is None else f"no keys in keystore {keystore}"
    emit({"keys": [key_info_dict(i) for i in infos], **where}, table if infos else empty, as_json=as_json)


@keys.command()
@click.argument("key")
@json_option
def show(key: str, as_json: bool) -> None:
    """Show KEY's metadata and public key."""
    uri = cli_uri(key)
    with open_cli_provider(uri) as provider:
        info = provider.get_key(uri)
        versions = [v.ref.version for v in provider.list_versions(provider.ref(uri).name)]
    d = key_info_dict(info)
    lines = [
        _summary(info),
        f"created: {d['created']}  not before: {d['not_before']}  expires: {d['expires']}",
        f"exportable: {info.exportable}  hsm protected: {info.hsm_protected}  tags: {d['tags']}",
        f"versions (oldest first): {', '.join(str(v) for v in versions)}",
    ]
    if d["public_key_pem"]:
        lines.append(d["public_key_pem"].rstrip())
    emit({**d, "versions": versions}, "\n".join(lines), as_json=as_json)


@keys.command()
@click.argument("key")
@json_option
def rotate(key: str, as_json: bool) -> None:
    """Give KEY a new version; older versions stay usable."""
    uri = cli_uri(key)
    with open_cli_provider(uri) as provider:
        info = provider.rotate_key(provider.ref(uri).name)
    emit(key_info_dict(info), f"rotated: new version {_summary(info)}", as_json=as_json)


def _set_enabled(key: str, enabled: bool, as_json: bool) -> None:
    uri = cli_uri(key)
    with open_cli_provider(uri) as provider:
        info = provider.set_enabled(uri, enabled)
    emit(key_info_dict(info), f"{'enabled' if enabled else 'disabled'} {info.ref}", as_json=as_json)


@keys.command()
@click.argument("key")
@json_option
def enable(key: str, as_json: bool) -> None:
    """Enable KEY (its current version, or the version the URI names)."""
    _set_enabled(key, True, as_json)


@keys.command()
@click.argument("key")
@json_option
def disable(key: str, as_json: bool) -> None:
    """Disable KEY (its current version, or the version the URI names)."""
    _set_enabled(key, False, as_json)


@keys.command()
@click.argument("key")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def delete(key: str, yes: bool, as_json: bool) -> None:
    """Delete KEY and all its versions."""
    uri = cli_uri(key)
    if not yes:
        if not sys.stdin.isatty():
            raise InvalidArgument(f"deleting {uri} cannot be undone; pass --yes to confirm")
        click.confirm(f"Delete {uri} and all its versions?", abort=True, err=True)
    with open_cli_provider(uri) as provider:
        name = provider.ref(uri).name
        provider.delete_key(name)
    emit({"deleted": uri, "name": name}, f"deleted {uri} (all versions)", as_json=as_json)
