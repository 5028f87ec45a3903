"""The emulator's Managed HSM audit log (AuditEvent records), driven by the real Azure SDK."""

from __future__ import annotations

import base64
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.keys")
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

from keybridge.emulator import ManagedHsmEmulator
from keybridge.emulator._audit import operation_name
from keybridge.emulator._rbac import BUILTIN_ROLES
from keybridge.errors import InvalidArgument

CRYPTO_USER = BUILTIN_ROLES["Managed HSM Crypto User"][0]


def _sent_ids(into: list[str]) -> Any:
    """A raw_response_hook that records the client request id the SDK put on the wire."""

    def hook(response: PipelineResponse[Any, Any]) -> None:
        into.append(response.http_request.headers["x-ms-client-request-id"])

    return hook


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_denied_missing_and_signed_calls_are_all_recorded(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    seen: list[dict[str, Any]] = []
    with ManagedHsmEmulator(rbac="strict", audit_log=log, audit=seen.append) as hsm:
        opts: dict[str, Any] = {"connection_verify": hsm.ca_file, "verify_challenge_resource": False}
        outsider = str(uuid.uuid4())
        denied_ids: list[str] = []
        with pytest.raises(HttpResponseError) as err:
            KeyClient(hsm.vault_url, hsm.credential(outsider), **opts).create_ec_key(
                "audited", raw_response_hook=_sent_ids(denied_ids)
            )
        assert err.value.status_code == 403

        user = str(uuid.uuid4())
        hsm.rbac.assign(str(uuid.uuid4()), "/", user, CRYPTO_USER)
        keys = KeyClient(hsm.vault_url, hsm.credential(user), **opts)
        key = keys.create_ec_key("audited", curve="P-256")
        missing_ids: list[str] = []
        with pytest.raises(ResourceNotFoundError):
            keys.get_key("no-such-key", raw_response_hook=_sent_ids(missing_ids))
        sign_ids: list[str] = []
        digest = bytes(range(32))
        crypto = CryptographyClient(key, hsm.credential(user), **opts)
        signature = crypto.sign(SignatureAlgorithm.es256, digest, raw_response_hook=_sent_ids(sign_ids)).signature
        tokens = [hsm.credential(p).get_token().token for p in (outsider, user, None)]
        vault_url = hsm.vault_url

    records = _records(log)
    assert records == seen  # the file and the callback get the same records
    assert stat.S_IMODE(log.stat().st_mode) == 0o600

    denied = [r for r in records if r["correlationId"] == denied_ids[-1] and r["httpStatusCode"] == 403]
    assert len(denied) == 1
    rec = denied[0]
    assert rec["operationName"] == "KeyCreate"
    assert rec["resultSignature"] == "Forbidden"
    assert rec["resultType"] == "Failure"
    assert rec["IsRbacAuthorized"] is False
    assert rec["requestUri"].startswith(f"{vault_url}/keys/audited/create?api-version=")
    assert "keys/create" in rec["resultDescription"]
    assert json.loads(rec["identity"])["claim"]["http_schemas_microsoft_com_identity"]["claims"] == {
        "objectidentifier": outsider
    }
    assert rec["callerIpAddress"] == "127.0.0.1"
    assert rec["category"] == "AuditEvent"
    assert isinstance(rec["durationMs"], int)
    assert rec["durationMs"] >= 0
    assert "azsdk-python-keyvault-keys" in rec["clientInfo"]

    # the SDK's first, token-less request of each client is the challenge: "Authentication"
    challenges = [r for r in records if r["httpStatusCode"] == 401]
    assert challenges
    assert all(r["operationName"] == "Authentication" and r["identity"] is None for r in challenges)

    (missing,) = [r for r in records if r["correlationId"] == missing_ids[-1]]
    assert (missing["httpStatusCode"], missing["operationName"], missing["resultSignature"]) == (
        404,
        "KeyGet",
        "NotFound",
    )
    signed = [r for r in records if r["correlationId"] == sign_ids[-1]]
    assert [(r["operationName"], r["httpStatusCode"], r["IsRbacAuthorized"]) for r in signed] == [
        ("KeySign", 200, True)
    ]

    text = log.read_text("utf-8")
    for secret in tokens:
        assert secret not in text
    for blob in (signature, digest):
        assert base64.urlsafe_b64encode(blob).rstrip(b"=").decode() not in text
        assert blob.hex() not in text


@pytest.mark.parametrize(
    ("method", "path", "status", "name"),
    [
        ("POST", "/keys/k/create", 200, "KeyCreate"),
        ("POST", "/keys/k//sign", 200, "KeySign"),
        ("POST", "/keys/k/v1/unwrapkey", 200, "KeyUnwrap"),
        ("GET", "/keys/k/", 200, "KeyGet"),
        ("GET", "/keys", 200, "KeyList"),
        ("GET", "/keys/k/versions", 200, "KeyListVersions"),
        ("DELETE", "/deletedkeys/k", 204, "KeyPurge"),
        ("GET", "/deletedkeys", 200, "KeyListDeleted"),
        ("PUT", "/keys/k/rotationpolicy", 200, "KeyRotationPolicySet"),
        ("GET", "/providers/Microsoft.Authorization/roleAssignments", 200, "RoleAssignmentList"),
        ("PUT", "/keys/providers/Microsoft.Authorization/roleAssignments/a", 201, "RoleAssignmentCreate"),
        ("POST", "/backup", 202, "BackupCreate"),
        ("GET", "/backup/j/pending", 200, "BackupStatus"),
        ("GET", "/keys/k", 401, "Authentication"),
    ],
)
def test_operation_names(method: str, path: str, status: int, name: str) -> None:
    assert operation_name(method, path.split("/")[1:], status) == name


def test_bad_audit_arguments_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="audit must be a callable"):
        ManagedHsmEmulator(audit="not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="cannot open the audit log"):
        ManagedHsmEmulator(audit_log=tmp_path / "missing-dir" / "audit.jsonl")
