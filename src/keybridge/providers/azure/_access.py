"""Managed HSM local RBAC for one provider: who may do what with which key.

Managed HSM decides every data-plane call by role assignments at three scopes: ``/`` and ``/keys``
(the whole HSM) and ``/keys/NAME`` (one key). A role is a list of data actions, with ``*``
wildcards and ``notDataActions`` exclusions. :class:`AccessControl` grants and revokes built-in or
custom roles through azure-keyvault-administration's ``KeyVaultAccessControlClient`` and folds
assignments and role definitions into keybridge operation names (``sign``, ``wrap`` …), so that a
least-privilege setup can be checked without reading data action strings.
"""

from __future__ import annotations

import builtins
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...errors import InvalidArgument, MissingDependency
from ...keys import KeyInfo, KeyRef
from ._errors import translated
from ._uri import NAME_RE

if TYPE_CHECKING:
    from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleDefinition

    from ._provider import AzureKeyVaultProvider

__all__ = ["OPERATIONS", "AccessControl", "Assignment", "Role"]

_PREFIX = "Microsoft.KeyVault/managedHsm/"
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_HSM_WIDE = ("/", "/keys")

OPERATIONS: Mapping[str, str] = {
    op: _PREFIX + action
    for op, action in {
        "read": "keys/read/action",
        "write": "keys/write/action",
        "create": "keys/create",
        "delete": "keys/delete",
        "import": "keys/import/action",
        "rotate": "keys/rotate/action",
        "backup": "keys/backup/action",
        "restore": "keys/restore/action",
        "release": "keys/release/action",
        "export": "keys/export/action",
        "encrypt": "keys/encrypt/action",
        "decrypt": "keys/decrypt/action",
        "wrap": "keys/wrap/action",
        "unwrap": "keys/unwrap/action",
        "sign": "keys/sign/action",
        "verify": "keys/verify/action",
        "derive": "keys/derive/action",
        "recover": "keys/deletedKeys/recover/action",
        "purge": "keys/deletedKeys/delete",
    }.items()
}
"""keybridge operation name -> the Managed HSM data action a key-scoped request for it needs."""


@dataclass(frozen=True)
class Role:
    """A role definition: ``id`` is its GUID, ``name`` its display name ("Managed HSM Crypto
    User"), ``operations`` the keybridge operations its data actions allow on a key."""

    id: str
    name: str
    definition_id: str
    operations: frozenset[str]
    custom: bool


@dataclass(frozen=True)
class Assignment:
    """One role assignment: ``principal`` (an Entra object id) holds ``role`` at ``scope``
    (``/``, ``/keys`` or ``/keys/NAME``); ``name`` identifies the assignment itself."""

    name: str
    principal: str
    role: Role
    scope: str


def _pattern(action: str) -> re.Pattern[str]:
    # Azure RBAC wildcards: '*' stands for any run of characters; actions compare case-insensitively.
    return re.compile(".*".join(re.escape(part) for part in action.split("*")), re.IGNORECASE)


def operations_of(definition: KeyVaultRoleDefinition) -> frozenset[str]:
    """The keybridge operations a role definition's data actions allow (``notDataActions`` of the
    same permission excluded, as the service does)."""
    allowed: set[str] = set()
    for perm in definition.permissions or []:
        grants = [_pattern(a) for a in perm.data_actions or []]
        denies = [_pattern(a) for a in perm.not_data_actions or []]
        for op, action in OPERATIONS.items():
            if any(p.fullmatch(action) for p in grants) and not any(p.fullmatch(action) for p in denies):
                allowed.add(op)
    return frozenset(allowed)


def _role(definition: KeyVaultRoleDefinition) -> Role:
    return Role(
        id=str(definition.name),
        name=str(definition.role_name or definition.name),
        definition_id=str(definition.id),
        operations=operations_of(definition),
        custom=definition.role_type == "CustomRole",  # a str enum in the SDK
    )


def _norm_scope(scope: str) -> str:
    segments = [s for s in scope.split("/") if s]
    return "/" + "/".join(segments)


class AccessControl:
    """Role assignments of the provider's Managed HSM (``provider.access``).

    A ``key`` argument is a key name, a key id or :class:`~keybridge.KeyRef` of this HSM (scope
    ``/keys/NAME``; a version is ignored, because roles apply to every version), or the literal
    HSM-wide scopes ``"/"`` and ``"/keys"``. A role is its name (``"Managed HSM Crypto User"``;
    the ``"Managed HSM "`` prefix and case may be left out) or its GUID; custom roles count too.
    Calls use the provider's credential and client options; a denied call raises
    :class:`~keybridge.OperationNotPermitted` naming the data action the caller lacks.
    """

    def __init__(self, provider: AzureKeyVaultProvider) -> None:
        self._provider = provider
        self._client: KeyVaultAccessControlClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<AccessControl {self._provider.vault_url}>"

    @property
    def client(self) -> KeyVaultAccessControlClient:
        """The underlying ``KeyVaultAccessControlClient`` (created on first use)."""
        with self._lock:
            if self._client is None:
                try:
                    from azure.keyvault.administration import KeyVaultAccessControlClient
                except ImportError as exc:  # pragma: no cover - the azure extra pulls it in
                    raise MissingDependency("Managed HSM access control", "azure") from exc
                p = self._provider
                self._client = KeyVaultAccessControlClient(p.vault_url, p.credential, **p.client_options)
            return self._client

    def close(self) -> None:
        """Close the HTTP session (the provider's ``close()`` calls this)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- scopes and roles -----------------------------------------------------------------------

    def scope(self, key: str | KeyRef | KeyInfo) -> str:
        """The RBAC scope for ``key``: ``/keys/NAME``, or ``/`` / ``/keys`` as given."""
        if isinstance(key, KeyInfo):
            key = key.ref
        if isinstance(key, KeyRef):
            key = key.uri or key.name
        if not isinstance(key, str):
            raise InvalidArgument(f"a key must be a name, key id or KeyRef, got {type(key).__name__}")
        if key.lower().startswith("https:"):
            name, _ = self._provider._parse_uri(key)
            return f"/keys/{name}"
        if key.startswith("/"):
            scope = _norm_scope(key)  # "//keys" is how the JS SDK writes "/keys"
            if scope in _HSM_WIDE or (scope.startswith("/keys/") and NAME_RE.fullmatch(scope[6:])):
                return scope
        elif NAME_RE.fullmatch(key):
            # A bare word is a key name, never a scope: a key called "keys" must not mean every key.
            return f"/keys/{key}"
        raise InvalidArgument(
            f"{key!r} is not a key of {self._provider.vault_url}: give a key name, its key id, or the"
            " HSM-wide scope '/' or '/keys'"
        )

    def roles(self) -> list[Role]:
        """Every role definition of the HSM, built-in and custom."""
        with translated(f"list role definitions of {self._provider.vault_url}"):
            return [_role(d) for d in self.client.list_role_definitions("/")]

    def role(self, role: str | Role) -> Role:
        """The role named ``role`` (display name or GUID), or InvalidArgument listing the valid ones."""
        if isinstance(role, Role):
            return role
        if not isinstance(role, str) or not role.strip():
            raise InvalidArgument(f"a role must be a role name or GUID, got {role!r}")
        return self._find(role, self.roles())

    @staticmethod
    def _find(role: str, roles: Iterable[Role]) -> Role:
        wanted = role.strip().lower()
        known = list(roles)
        # An exact GUID or name first, so a custom role called "Crypto User" beats the built-in one.
        for candidate in (wanted, "managed hsm " + wanted):
            for r in known:
                if candidate in (r.id.lower(), r.name.lower()):
                    return r
        names = ", ".join(sorted(r.name for r in known))
        hint = "no role definition has this GUID" if _GUID.fullmatch(role.strip()) else "no role has this name"
        raise InvalidArgument(f"unknown Managed HSM role {role!r} ({hint}); use one of: {names}")

    # ---- assignments ----------------------------------------------------------------------------

    def _at(self, scope: str, roles: Mapping[str, Role]) -> Iterator[Assignment]:
        with translated(f"list role assignments at {scope} of {self._provider.vault_url}"):
            found = list(self.client.list_role_assignments(scope))
        for a in found:
            props = a.properties
            if props is None or not props.principal_id or not props.role_definition_id:
                continue
            at = _norm_scope(props.scope or scope)
            if at != scope:
                continue  # a service that also lists child scopes: each scope is read on its own
            guid = props.role_definition_id.rstrip("/").rsplit("/", 1)[-1]
            role = roles.get(guid.lower()) or Role(guid, guid, props.role_definition_id, frozenset(), True)
            yield Assignment(str(a.name), props.principal_id, role, at)

    def _scopes(self, key: str | KeyRef | KeyInfo | None) -> list[str]:
        if key is None:
            # Finding every key's scope needs keys/read at /keys, which Administrator lacks.
            with translated(f"list keys of {self._provider.vault_url} (for their role assignments; or pass one key)"):
                names = sorted({str(p.name) for p in self._provider.client.list_properties_of_keys() if not p.managed})
            return [*_HSM_WIDE, *(f"/keys/{n}" for n in names)]
        scope = self.scope(key)
        return ["/", "/keys"] if scope == "/keys" else ["/"] if scope == "/" else [*_HSM_WIDE, scope]

    def list(self, key: str | KeyRef | KeyInfo | None = None, *, principal: str | None = None) -> list[Assignment]:
        """Assignments that apply to ``key`` (its own scope and the HSM-wide ones), or with no key
        every assignment of the HSM (``/``, ``/keys`` and each key's scope); only ``principal``'s
        if given."""
        roles = {r.id.lower(): r for r in self.roles()}
        out = [a for s in self._scopes(key) for a in self._at(s, roles)]
        return out if principal is None else [a for a in out if _same(a.principal, principal)]

    def grant(self, key: str | KeyRef | KeyInfo, principal: str, role: str | Role) -> Assignment:
        """Give ``principal`` the ``role`` at ``key``'s scope; an identical assignment that already
        exists is returned instead of making a second one."""
        principal = _principal(principal)
        scope = self.scope(key)
        roles = self.roles()
        wanted = role if isinstance(role, Role) else self._find(role, roles)
        by_id = {r.id.lower(): r for r in roles}
        for existing in self._at(scope, by_id):
            if _same(existing.principal, principal) and existing.role.id.lower() == wanted.id.lower():
                return existing
        with translated(f"grant {wanted.name!r} at {scope} of {self._provider.vault_url}"):
            made = self.client.create_role_assignment(scope, wanted.definition_id, principal)
        return Assignment(str(made.name), principal, wanted, scope)

    def revoke(
        self, key: str | KeyRef | KeyInfo, principal: str, role: str | Role | None = None
    ) -> builtins.list[Assignment]:
        """Remove ``principal``'s assignments at exactly ``key``'s scope (only those of ``role`` if
        given) and return them; HSM-wide assignments stay unless ``key`` is ``/`` or ``/keys``."""
        principal = _principal(principal)
        scope = self.scope(key)
        roles = self.roles()
        only = None if role is None else (role if isinstance(role, Role) else self._find(role, roles)).id.lower()
        doomed = [
            a
            for a in self._at(scope, {r.id.lower(): r for r in roles})
            if _same(a.principal, principal) and only in (None, a.role.id.lower())
        ]
        for a in doomed:
            self.remove(a)
        return doomed

    def remove(self, assignment: Assignment) -> None:
        """Delete exactly this assignment (by its name), whatever else the principal holds."""
        with translated(
            f"remove role assignment {assignment.name} at {assignment.scope} of {self._provider.vault_url}"
        ):
            self.client.delete_role_assignment(assignment.scope, assignment.name)

    def who_can(self, key: str | KeyRef | KeyInfo) -> dict[str, set[str]]:
        """principal -> the keybridge operations (:data:`OPERATIONS`) it may perform on ``key``,
        from every assignment that covers the key's scope."""
        result: dict[str, set[str]] = {}
        for a in self.list(key):
            result.setdefault(a.principal, set()).update(a.role.operations)
        return result

    def check(self, key: str | KeyRef | KeyInfo, principal: str) -> set[str]:
        """The operations ``principal`` may perform on ``key`` (empty if none)."""
        wanted = _principal(principal)
        return {op for who, ops in self.who_can(key).items() if _same(who, wanted) for op in ops}


def _principal(principal: object) -> str:
    if not isinstance(principal, str) or not principal.strip() or any(c.isspace() for c in principal.strip()):
        raise InvalidArgument(f"a principal must be an Entra object id (a GUID string), got {principal!r}")
    return principal.strip()


def _same(a: str, b: str) -> bool:
    # Entra object ids are GUIDs, which the service compares without regard to case.
    return a.strip().lower() == b.strip().lower()
