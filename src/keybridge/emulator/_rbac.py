"""Managed HSM local RBAC: built-in roles, role assignments, and the data action each route needs.

Scopes are ``/``, ``/keys`` (both HSM-wide) or ``/keys/<name>``. Python's SDK collapses the
``/{scope}/providers/…`` template's leading slashes and the JS SDK does not, so leading empty
path segments are ignored. A principal is the token's ``oid``; each emulator token maps to one.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from ._errors import ApiError, bad

__all__ = ["BUILTIN_ROLES", "Rbac", "definition_id", "required_action"]

_P = "Microsoft.KeyVault/managedHsm/"
_DEF_PREFIX = "Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/"
_RA = ["roleAssignments/read/action", "roleAssignments/write/action", "roleAssignments/delete/action"]
_RD = ["roleDefinitions/read/action", "roleDefinitions/write/action", "roleDefinitions/delete/action"]
_SD = ["download/action", "download/read", "upload/action", "upload/read", "transferkey/read"]
_CU_KEYS = [
    "rotate",
    "import",
    "release",
    "backup",
    "restore",
    "encrypt",
    "decrypt",
    "wrap",
    "unwrap",
    "sign",
    "verify",
    "derive",
]


def _k(*names: str) -> list[str]:
    return [f"keys/{n}/action" for n in names]


# name -> (GUID, data actions without the managedHsm prefix), from the service's own list
BUILTIN_ROLES: dict[str, tuple[str, list[str]]] = {
    "Managed HSM Administrator": (
        "a290e904-7015-4bba-90c8-60543313cdb4",
        [
            *_RA,
            *_RD,
            *(f"securitydomain/{a}" for a in _SD),
            "backup/start/action",
            "backup/status/action",
            "restore/start/action",
            "restore/status/action",
        ],
    ),
    "Managed HSM Crypto Officer": (
        "515eb02d-2335-4d2d-92f2-b1cbdf9c3778",
        [*_RA, *_RD, *_k("deletedKeys/read", "deletedKeys/recover", "export"), "keys/deletedKeys/delete"],
    ),
    "Managed HSM Crypto User": (
        "21dbd100-6940-42c2-9190-5d6cb909625b",
        [
            "roleDefinitions/read/action",
            "roleAssignments/read/action",
            *_k("read", "write", *_CU_KEYS),
            "keys/delete",
            "keys/create",
            "rng/action",
        ],
    ),
    "Managed HSM Policy Administrator": ("4bd23610-cdcf-4971-bdee-bdc562cc28e4", [*_RD, *_RA]),
    "Managed HSM Crypto Auditor": (
        "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3",
        ["roleAssignments/read/action", "roleDefinitions/read/action", *_k("read", "deletedKeys/read")],
    ),
    "Managed HSM Crypto Service Encryption User": (
        "33413926-3206-4cdd-b39a-83574fe37a17",
        _k("read", "wrap", "unwrap"),
    ),
    "Managed HSM Crypto Service Release User": ("21dbd100-6940-42c2-9190-5d6cb909625c", _k("release")),
    "Managed HSM Backup User": (
        "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8",
        ["backup/start/action", "backup/status/action", *_k("backup")],
    ),
    "Managed HSM Restore": (
        "6efe6056-5259-49d2-8b3d-d3d73544b20b",
        ["restore/start/action", "restore/status/action", *_k("restore")],
    ),
}
_BUILTIN_GUIDS = {guid for guid, _ in BUILTIN_ROLES.values()}
_CRYPTO = {"encrypt": "encrypt", "decrypt": "decrypt", "sign": "sign", "verify": "verify"}
_CRYPTO |= {"wrapkey": "wrap", "unwrapkey": "unwrap", "release": "release"}
_MANAGE = {"create": "keys/create", "backup": "keys/backup/action", "rotate": "keys/rotate/action"}
_MANAGE["release"] = "keys/release/action"  # versionless POST /keys/NAME/release


def definition_id(guid: str) -> str:
    """The ``roleDefinitionId`` the service writes (no leading slash)."""
    return _DEF_PREFIX + guid


def required_action(method: str, parts: list[str]) -> tuple[str, str] | None:
    """(data action, scope) a keys data-plane request needs, or None for a path no role governs
    (the router then answers 404/405 as it would anyway)."""
    head, n = (parts[0] if parts else ""), len(parts)
    name = parts[1] if n > 1 else ""
    if head in ("backup", "prebackup", "restore", "prerestore") or (
        head == "keys" and n == 3 and parts[2] == "restore"
    ):
        kind = "backup" if "backup" in head else "restore"
        return f"{_P}{kind}/{'status' if n > 1 and head != 'keys' else 'start'}/action", "/"
    if head == "settings":  # the service names no settings action; role management's stand in
        return f"{_P}roleDefinitions/{'write' if method == 'PATCH' else 'read'}/action", "/"
    scope = f"/keys/{name}" if name and name != "restore" else "/keys"
    if head == "rng":
        return _P + "rng/action", "/"
    if head == "deletedkeys":
        act = {"GET": "keys/deletedKeys/read/action", "DELETE": "keys/deletedKeys/delete"}.get(method)
        if n == 3:
            act = "keys/deletedKeys/recover/action"
        return (_P + act, scope) if act else None
    if head != "keys":
        return None
    if n == 1 or method == "GET":
        act = "keys/read/action"
    elif n == 2 and name == "restore":
        act = "keys/restore/action"
    elif n == 2:
        act = {"PUT": "keys/import/action", "DELETE": "keys/delete", "PATCH": "keys/write/action"}.get(method, "")
    elif n == 3:
        act = _MANAGE.get(parts[2], "keys/write/action")
    else:
        act = f"keys/{_CRYPTO[parts[3]]}/action" if parts[3] in _CRYPTO else "keys/read/action"
    return (_P + act, scope) if act else None


def _matches(action: str, pattern: str) -> bool:
    return action == pattern or (pattern.endswith("/*") and action.startswith(pattern[:-1]))


def _norm_scope(raw: str) -> str:
    segs = [s for s in raw.split("/") if s]
    if not segs:
        return "/"
    if segs[0] != "keys" or len(segs) > 2:
        raise bad(f"scope {raw!r} is not valid: use '/', '/keys' or '/keys/<key name>'")
    return "/" + "/".join(segs)


def _covers(assigned: str, scope: str) -> bool:
    return assigned in ("/", "/keys") or assigned == scope


class Rbac:
    """Role definitions and assignments, and the token -> principal map; thread-safe."""

    def __init__(self, default_token: str, *, strict: bool = False) -> None:
        self.lock = threading.Lock()
        self.default_principal = str(uuid.uuid4())
        self._tokens: dict[str, str] = {default_token: self.default_principal}
        self.definitions: dict[str, dict[str, Any]] = {
            guid: _definition(guid, name, "AKVBuiltInRole", [_P + a for a in acts])
            for name, (guid, acts) in BUILTIN_ROLES.items()
        }
        self.assignments: dict[str, dict[str, Any]] = {}
        roles = ["Administrator", "Crypto Officer"] + ([] if strict else ["Crypto User"])
        for role in roles:
            self.assign(str(uuid.uuid4()), "/", self.default_principal, BUILTIN_ROLES["Managed HSM " + role][0])

    def token_for(self, principal: str) -> str:
        """A bearer token that authenticates as ``principal`` (the same one each time)."""
        with self.lock:
            for token, who in self._tokens.items():
                if who == principal:
                    return token
            token = "kbemu-" + secrets.token_urlsafe(24)
            self._tokens[token] = principal
            return token

    def principal(self, header: str | None) -> str | None:
        """The principal a ``Bearer`` header authenticates, or None."""
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self.lock:
            return self._tokens.get(token.strip())

    def assign(self, name: str, scope: str, principal: str, guid: str) -> dict[str, Any]:
        """Record one assignment and return its wire form."""
        scope = _norm_scope(scope)
        prefix = "" if scope == "/" else scope
        rec = {
            "id": f"{prefix}/providers/Microsoft.Authorization/roleAssignments/{name}",
            "name": name,
            "type": "Microsoft.Authorization/roleAssignments",
            "properties": {"principalId": principal, "roleDefinitionId": definition_id(guid), "scope": scope},
        }
        self.assignments[name] = rec
        return rec

    def allowed(self, principal: str, action: str, scope: str) -> bool:
        """True if some assignment of ``principal`` covering ``scope`` grants ``action``."""
        with self.lock:
            for rec in self.assignments.values():
                props = rec["properties"]
                if props["principalId"] != principal or not _covers(props["scope"], scope):
                    continue
                role = self.definitions.get(props["roleDefinitionId"].rsplit("/", 1)[-1])
                if role is None:
                    continue
                for perm in role["properties"]["permissions"]:
                    if any(_matches(action, p) for p in perm["dataActions"]) and not any(
                        _matches(action, p) for p in perm["notDataActions"]
                    ):
                        return True
        return False

    def check(self, principal: str, action: str, scope: str) -> None:
        """Raise the service's 403 ``AccessDenied`` unless allowed."""
        if not self.allowed(principal, action, scope):
            raise ApiError(
                403, "AccessDenied", f"Not authorized to access {action} on {scope} (Activity ID: {uuid.uuid4()})"
            )

    # ---- the Microsoft.Authorization routes -----------------------------------------------------

    def handle(self, method: str, parts: list[str], principal: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        """Answer ``/{scope}/providers/Microsoft.Authorization/{kind}[/{name}]``."""
        i = parts.index("providers")
        scope = _norm_scope("/".join(parts[:i]))
        rest = parts[i + 2 :]
        kind = rest[0] if rest else ""
        if kind not in ("roleAssignments", "roleDefinitions") or len(rest) > 2:
            raise ApiError(404, "NotFound", f"no such operation: /{'/'.join(parts)}")
        verb = {"GET": "read", "PUT": "write", "DELETE": "delete"}.get(method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed here")
        self.check(principal, f"{_P}{kind}/{verb}/action", scope)
        table = self.assignments if kind == "roleAssignments" else self.definitions
        if len(rest) == 1:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on a list")
            with self.lock:
                items = [r for r in table.values() if kind == "roleDefinitions" or r["properties"]["scope"] == scope]
            return 200, {"value": items, "nextLink": None}
        name = rest[1]
        with self.lock:
            if method == "PUT":
                return 201, self._put(kind, scope, name, body)
            rec = table.get(name)
            if rec is None:
                what = "role assignment" if kind == "roleAssignments" else "role definition"
                raise ApiError(404, f"{kind[:-1].capitalize()}NotFound", f"Requested {what} not found")
            if method == "DELETE":
                if name in _BUILTIN_GUIDS:
                    raise bad("built-in role definitions cannot be deleted")
                del table[name]
            return 200, rec

    def _put(self, kind: str, scope: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        props = body.get("properties")
        if not isinstance(props, dict):
            raise bad("the request body needs a 'properties' object")
        if kind == "roleAssignments":
            principal, role = props.get("principalId"), props.get("roleDefinitionId")
            if not isinstance(principal, str) or not isinstance(role, str) or not principal:
                raise bad("properties.principalId and properties.roleDefinitionId are required strings")
            guid = role.rsplit("/", 1)[-1]
            if guid not in self.definitions:
                raise bad(f"role definition {guid} does not exist; list roleDefinitions at '/' for valid ids")
            return self.assign(name, scope, principal, guid)
        if scope != "/":
            raise bad("role definitions can only be created at scope '/'")
        if name in _BUILTIN_GUIDS:
            raise bad(f"Cannot re-use the name/GUID {name} of a built-in role")
        perms = props.get("permissions") or []
        if not isinstance(perms, list) or not all(isinstance(p, dict) for p in perms):
            raise bad("properties.permissions must be a list of objects")
        data = [a for p in perms for a in p.get("dataActions") or []]
        nots = [a for p in perms for a in p.get("notDataActions") or []]
        rec = _definition(name, str(props.get("roleName") or name), "CustomRole", data, nots)
        rec["properties"]["description"] = str(props.get("description") or "")
        self.definitions[name] = rec
        return rec


def _definition(guid: str, name: str, kind: str, data: list[str], nots: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": definition_id(guid),
        "name": guid,
        "type": "Microsoft.Authorization/roleDefinitions",
        "properties": {
            "roleName": name,
            "description": "",
            "type": kind,
            "assignableScopes": ["/"],
            "permissions": [{"actions": [], "notActions": [], "dataActions": data, "notDataActions": nots or []}],
        },
    }
