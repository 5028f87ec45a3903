"""The emulator's Managed HSM audit log (AuditEvent records), driven by the real Azure SDK."""

from __future__ import annotations

import base64
import datetime
import json
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.keys")
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from keybridge import KeySpec, audit, open_provider
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
        # written before the answer went out: a client that has its answer finds the record
        assert any(r["correlationId"] == sign_ids[-1] for r in _records(log))
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


def test_keybridge_audit_line_joins_the_emulator_record(tmp_path: Path) -> None:
    service_log, client_log = tmp_path / "hsm.jsonl", tmp_path / "keybridge.jsonl"
    with ManagedHsmEmulator(audit_log=service_log) as hsm, audit.JsonLinesSink(client_log) as sink:
        provider = open_provider(hsm.vault_url, **hsm.provider_options())
        audit.add_sink(sink)
        try:
            info = provider.create_key("joined", KeySpec.ec("P-256"))
            digest = bytes(range(32))
            signature = provider.sign(info.ref, "ES256", digest)
            provider.delete_key("joined")
        finally:
            audit.remove_sink(sink)
            provider.close()
        token = hsm.credential().get_token().token
    assert stat.S_IMODE(client_log.stat().st_mode) == 0o600
    ours = [e for e in _records(client_log) if e["provider"] == "https"]
    assert [e["operation"] for e in ours] == ["create_key", "sign", "delete_key"]
    service = _records(service_log)
    for event, expected in zip(ours, ("KeyCreate", "KeySign", "KeyDelete"), strict=True):
        assert event["outcome"] == "ok"
        joined = [r for r in service if r["correlationId"] == event["correlation_id"]]
        assert expected in [r["operationName"] for r in joined]
        # create_key first looks the name up (404), and the first request is the 401 challenge
        assert {r["httpStatusCode"] for r in joined} <= {200, 401, 404}
    # every keybridge operation has its own id
    assert len({e["correlation_id"] for e in ours}) == 3
    # checked independently: the signature verifies under the public key the service reported
    assert isinstance(info.public_key, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    info.public_key.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    text = client_log.read_text("utf-8") + service_log.read_text("utf-8")
    assert token not in text
    assert base64.urlsafe_b64encode(signature).rstrip(b"=").decode() not in text


def _event(i: int) -> audit.AuditEvent:
    now = datetime.datetime.now(datetime.timezone.utc)
    return audit.AuditEvent("sign", "memory", f"memory:k{i}", "ES256", "ok", 0.001, now, str(uuid.uuid4()))


def test_json_lines_sink_writes_whole_lines_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    path.chmod(0o644)  # an existing, wider file is narrowed
    with audit.JsonLinesSink(path) as sink:
        threads = [
            threading.Thread(target=lambda t=t: [sink(_event(t * 100 + i)) for i in range(50)]) for t in range(8)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = _records(path)
    assert sorted(e["key"] for e in lines) == sorted(f"memory:k{t * 100 + i}" for t in range(8) for i in range(50))
    with pytest.raises(InvalidArgument, match="closed"):
        sink(_event(0))
    with pytest.raises(InvalidArgument, match="cannot open audit log"):
        audit.JsonLinesSink(tmp_path / "no-dir" / "x.jsonl")
