"""Managed HSM's audit log: one ``AuditEvent`` record per request, as the service writes them.

Field names follow the service's diagnostic records (``AZKVAuditLogs`` / the storage JSON):
``time``, ``operationName`` (``KeySign``, ``KeyCreate`` …, ``Authentication`` for the 401
challenge), ``resultType``, ``resultSignature`` (the HTTP reason, ``OK``/``Forbidden``),
``httpStatusCode``, ``identity`` (a JSON *string*, as the service nests it), ``requestUri``,
``correlationId`` (the caller's ``x-ms-client-request-id``), ``durationMs``, ``callerIpAddress``
and ``clientInfo`` (the User-Agent). Records never hold a token, a request body or a response
body: only the error message, which the emulator never fills with key bytes.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from email.message import Message
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ._rbac import Rbac

__all__ = ["AuditLog", "AuditRecord", "operation_name"]

log = logging.getLogger("keybridge.emulator")
AuditRecord = dict[str, Any]
POOL = "emulator"
RESOURCE_ID = (
    "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/KEYBRIDGE-EMULATOR"
    f"/PROVIDERS/MICROSOFT.KEYVAULT/MANAGEDHSMS/{POOL.upper()}"
)
_CRYPTO = {"encrypt": "Encrypt", "decrypt": "Decrypt", "sign": "Sign", "verify": "Verify"}
_CRYPTO |= {"wrapkey": "Wrap", "unwrapkey": "Unwrap", "release": "Release", "attestation": "AttestationGet"}
_KEY_VERB = {"PUT": "Import", "DELETE": "Delete", "GET": "Get", "PATCH": "Update"}
_KEY_SUB = {"create": "Create", "versions": "ListVersions", "backup": "Backup", "rotate": "Rotate"}
_ADMIN = {"backup": "BackupCreate", "prebackup": "PreBackupCreate", "restore": "RestoreStart"}
_ADMIN["prerestore"] = "PreRestoreStart"


def operation_name(method: str, parts: list[str], status: int) -> str:
    """The ObjectVerb ``operationName`` of a request (``KeySign``, ``KeyListDeleted`` …).

    Key names are the service's documented ones; names for role, settings, backup and restore
    operations are the emulator's choice in the same form (the service's are not documented).
    """
    if status == 401:
        return "Authentication"
    segs = [p for p in parts if p]
    head, n = (segs[0] if segs else ""), len(segs)
    if "providers" in segs:
        kind = segs[-1] if segs[-1] in ("roleAssignments", "roleDefinitions") else segs[-2] if n > 1 else ""
        noun = {"roleAssignments": "RoleAssignment", "roleDefinitions": "RoleDefinition"}.get(kind, "Role")
        listing = segs[-1] == kind
        verb = "List" if listing else {"PUT": "Create", "DELETE": "Delete"}.get(method, "Get")
        return noun + verb
    if head == "keys":
        if n == 1:
            return "KeyList"
        if n == 2 and segs[1] == "restore":
            return "KeyRestore"
        if n == 3 and segs[2] == "rotationpolicy":
            return "KeyRotationPolicySet" if method == "PUT" else "KeyRotationPolicyGet"
        if n == 3 and segs[2] == "restore":
            return "SelectiveKeyRestore"
        if segs[-1] in _CRYPTO:
            return "Key" + _CRYPTO[segs[-1]]
        if n == 3 and segs[2] in _KEY_SUB:
            return "Key" + _KEY_SUB[segs[2]]
        return "Key" + _KEY_VERB.get(method, method.title())
    if head == "deletedkeys":
        if n == 1:
            return "KeyListDeleted"
        if n == 3:
            return "KeyRecover"
        return "KeyPurge" if method == "DELETE" else "KeyGetDeleted"
    if head == "rng":
        return "RandomGenerate"
    if head == "settings":
        return "SettingUpdate" if method == "PATCH" else ("SettingGet" if n > 1 else "SettingList")
    if head in _ADMIN:
        return _ADMIN[head] if n == 1 else head.capitalize() + "Status"
    return "Unknown"


def _identity(principal: str | None) -> str | None:
    if principal is None:
        return None
    claims = {
        "appid": None,
        "http_schemas_microsoft_com_identity": {"claims": {"objectidentifier": principal}},
        # emulator principals are bare object ids; a upn in their name keeps the shape joinable
        "http_schemas_xmlsoap_org_ws_2005_05_identity": {"claims": {"upn": f"{principal}@emulator.localhost"}},
    }
    return json.dumps({"claim": claims}, separators=(",", ":"))


class AuditLog:
    """Where the emulator's ``AuditEvent`` records go: a JSON-lines file and/or a callable.

    The file is opened for append (created 0600) and each record is one ``write`` of one line,
    flushed, so concurrent requests never interleave. A failing callback is logged and does not
    change the answer the client gets.
    """

    def __init__(self, path: str | Path | None, callback: Callable[[AuditRecord], None] | None, rbac: Rbac) -> None:
        self.path = Path(path) if path is not None else None
        self.callback = callback
        self.rbac = rbac
        self.require_token = True
        self._lock = threading.Lock()
        if self.path is not None:
            # O_APPEND: one write() per line lands whole at the end even beside another writer
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.close(fd)

    def record(
        self,
        *,
        method: str,
        target: str,
        headers: Message,
        base: str,
        caller: str,
        status: int,
        body: Mapping[str, Any] | None,
        started: float | None,
    ) -> AuditRecord:
        """Build the record of one answered request and write it to every destination."""
        url = urlsplit(target)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        err = (body or {}).get("error") if isinstance(body, Mapping) else None
        principal = self._principal(headers.get("Authorization")) if status != 401 else None
        try:
            reason = HTTPStatus(status).phrase.replace(" ", "")
        except ValueError:
            reason = str(status)
        rec: AuditRecord = {
            "time": _now(),
            "resourceId": RESOURCE_ID,
            "operationName": operation_name(method, parts, status),
            "operationVersion": query.get("api-version"),
            "category": "AuditEvent",
            "resultType": "Success" if status < 400 else "Failure",
            "resultSignature": reason,
            "resultDescription": err.get("message") if isinstance(err, Mapping) else None,
            "durationMs": 0 if started is None else int((time.monotonic() - started) * 1000),
            "callerIpAddress": caller,
            "clientInfo": headers.get("User-Agent"),
            "correlationId": headers.get("x-ms-client-request-id"),
            "httpStatusCode": status,
            "requestUri": base + target,
            "identity": _identity(principal),
            "IsRbacAuthorized": None if principal is None else not (status == 403 and _code(err) == "AccessDenied"),
            "PoolName": POOL,
            "properties": {"PoolType": "M-HSM", "sku_Family": "B", "sku_Name": "Standard_B1"},
            "resourceProvider": "MICROSOFT.KEYVAULT",
            "resourceType": "managedHSMs",
        }
        self._write(rec)
        return rec

    def _principal(self, header: str | None) -> str | None:
        who = self.rbac.principal(header)
        if who is None and not self.require_token and header:
            return self.rbac.default_principal  # any bearer token is the first principal
        return who

    def _write(self, rec: AuditRecord) -> None:
        if self.path is not None:
            line = (json.dumps(rec, separators=(",", ":")) + "\n").encode("utf-8")
            with self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
        if self.callback is not None:
            try:
                self.callback(rec)
            except Exception:  # the client's answer must not depend on a test's callback
                log.exception("emulator audit callback %r failed", self.callback)


def _code(err: object) -> object:
    return err.get("code") if isinstance(err, Mapping) else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
