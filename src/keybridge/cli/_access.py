"""``keybridge access``: Managed HSM local RBAC on one key: grant, revoke, list and check.

KEY_URI is a Managed HSM key id, ``https://HSM/keys/NAME``; ``list`` also takes the HSM's URL
(every assignment). The HSM is reached like every other ``https://`` command (see _common)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from ..errors import InvalidArgument
from ._common import emit, json_option, open_cli_provider

if TYPE_CHECKING:
    from ..providers.azure import AccessControl, Assignment

__all__ = ["access"]

principal_option = click.option("--principal", help="Entra object id of a user, group, service principal or identity.")


@contextmanager
def _access(uri: str, *, key: bool = True) -> Iterator[tuple[AccessControl, str | None]]:
    """The HSM's access control and the key (None for a bare HSM URL when ``key`` is False)."""
    if not uri.lower().startswith("https://"):
        raise InvalidArgument(f"{uri!r} is not a Managed HSM key id: use https://HSM/keys/NAME")
    with open_cli_provider(uri) as provider:
        # The provider parses its own URIs and says whether it has local RBAC (`access`).
        name = provider.ref(uri).name if "/keys/" in uri.lower() else None
        if name is None and key:
            raise InvalidArgument(f"{uri!r} names no key: use https://HSM/keys/NAME (roles on one key)")
        if not hasattr(type(provider), "access"):
            raise InvalidArgument(f"{uri!r} is not served by the Azure provider")
        yield provider.access, (uri if name else None)  # type: ignore[attr-defined]


def _row(a: Assignment) -> dict[str, Any]:
    return {
        "assignment": a.name,
        "principal": a.principal,
        "role": a.role.name,
        "role_id": a.role.id,
        "scope": a.scope,
        "operations": sorted(a.role.operations),
    }


def _need(value: str | None, option: str) -> str:
    if not value:
        raise click.UsageError(f"{option} is required")
    return value


@click.group()
def access() -> None:
    """Managed HSM role assignments on a key (local RBAC): least privilege, checked."""


@access.command()
@click.argument("key_uri")
@principal_option
@click.option("--role", help='Role name ("Managed HSM Crypto User", "Crypto User") or GUID; custom roles too.')
@json_option
def grant(key_uri: str, principal: str | None, role: str | None, as_json: bool) -> None:
    """Give --principal the --role on KEY_URI only (scope /keys/NAME); no duplicate if it has it."""
    who, what = _need(principal, "--principal"), _need(role, "--role")
    with _access(key_uri) as (acl, key):
        assert key is not None
        made = acl.grant(key, who, what)
    emit(_row(made), f"granted {made.role.name} to {made.principal} at {made.scope} ({made.name})", as_json=as_json)


@access.command()
@click.argument("key_uri")
@principal_option
@click.option("--role", help="Only this role (default: every role the principal has at the key's scope).")
@json_option
def revoke(key_uri: str, principal: str | None, role: str | None, as_json: bool) -> None:
    """Remove --principal's assignments at KEY_URI's own scope (HSM-wide ones stay)."""
    who = _need(principal, "--principal")
    with _access(key_uri) as (acl, key):
        assert key is not None
        gone = acl.revoke(key, who, role)
    lines = [f"revoked {a.role.name} from {a.principal} at {a.scope}" for a in gone]
    human = "\n".join(lines) or f"nothing to revoke: {who} has no matching assignment at {acl.scope(key)}"
    emit({"revoked": [_row(a) for a in gone]}, human, as_json=as_json)


@access.command("list")
@click.argument("uri")
@principal_option
@json_option
def list_(uri: str, principal: str | None, as_json: bool) -> None:
    """Assignments that apply to the key URI (its scope, /keys and /), or with the HSM URL every one."""
    with _access(uri, key=False) as (acl, key):
        found = acl.list(key, principal=principal)
    table = Table("principal", "role", "scope", "assignment")
    for a in found:
        table.add_row(a.principal, a.role.name, a.scope, a.name)
    emit({"assignments": [_row(a) for a in found]}, table if found else "no role assignments", as_json=as_json)


@access.command()
@click.argument("key_uri")
@principal_option
@click.option("--op", "ops", multiple=True, help="Require this operation (sign, wrap, …; repeatable).")
@json_option
def check(key_uri: str, principal: str | None, ops: tuple[str, ...], as_json: bool) -> None:
    """Who can do what with KEY_URI. With --principal, only its operations; exit status 1 if it may
    do none, or not every --op."""
    if principal is None:
        if ops:
            raise click.UsageError("--op needs --principal")
        _everyone(key_uri, as_json)
        return
    from ..providers.azure import OPERATIONS

    unknown = sorted(set(ops) - set(OPERATIONS))
    if unknown:
        raise InvalidArgument(f"unknown --op {', '.join(unknown)}; use one of: {', '.join(OPERATIONS)}")
    with _access(key_uri) as (acl, key):
        assert key is not None
        allowed = acl.check(key, principal)
    missing = sorted(set(ops) - allowed)
    ok = not missing if ops else bool(allowed)
    human = f"{principal}: {', '.join(sorted(allowed)) or 'no operations'} on {key}"
    if missing:
        human += f"\nnot allowed: {', '.join(missing)}"
    result = {"key": key, "principal": principal, "operations": sorted(allowed), "missing": missing, "ok": ok}
    emit(result, human, as_json=as_json)
    if not ok:
        raise click.exceptions.Exit(1)


def _everyone(key_uri: str, as_json: bool) -> None:
    with _access(key_uri) as (acl, key):
        assert key is not None
        who_can = acl.who_can(key)
    table = Table("principal", "operations")
    for who, allowed in sorted(who_can.items()):
        table.add_row(who, ", ".join(sorted(allowed)) or "none")
    data: dict[str, Any] = {"key": key, "principals": {w: sorted(o) for w, o in who_can.items()}}
    emit(data, table if who_can else "nobody has a role on this key", as_json=as_json)
