"""Managed HSM settings and full backup / restore in the emulator, driven by the real
azure-keyvault-administration SDK over HTTPS."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.keyvault.administration")
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.core.rest import HttpRequest
from azure.keyvault.administration import KeyVaultBackupClient, KeyVaultSetting, KeyVaultSettingsClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from keybridge.emulator import ManagedHsmEmulator
from keybridge.emulator._rbac import BUILTIN_ROLES
from keybridge.errors import InvalidArgument

AUDITOR = BUILTIN_ROLES["Managed HSM Crypto Auditor"][0]
CONTAINER = "https://acct.blob.core.windows.net/backups"
ARM = "AllowKeyManagementOperationsThroughARM"
SAS = "sv=2024-01-01&sig=not-a-real-signature"


@pytest.fixture
def hsm() -> Iterator[ManagedHsmEmulator]:
    with ManagedHsmEmulator() as emulator:
        yield emulator


def _opts(hsm: ManagedHsmEmulator) -> dict[str, Any]:
    return {"connection_verify": hsm.ca_file, "verify_challenge_resource": False}


def _settings(hsm: ManagedHsmEmulator, principal: str | None = None) -> KeyVaultSettingsClient:
    return KeyVaultSettingsClient(hsm.vault_url, hsm.credential(principal), **_opts(hsm))


def _backup(hsm: ManagedHsmEmulator, principal: str | None = None) -> KeyVaultBackupClient:
    return KeyVaultBackupClient(hsm.vault_url, hsm.credential(principal), **_opts(hsm))


def test_settings_get_list_update_as_the_service_shapes_them(hsm: ManagedHsmEmulator) -> None:
    client = _settings(hsm)
    setting = client.get_setting("AllowKeyManagementOperationsThroughARM")
    assert (setting.name, setting.value, setting.setting_type) == (
        "AllowKeyManagementOperationsThroughARM",
        "false",
        "boolean",
    )
    updated = client.update_setting(KeyVaultSetting(name="AllowKeyManagementOperationsThroughARM", value=True))
    assert updated.value == "true"
    assert updated.getboolean() is True
    assert [(s.name, s.value) for s in client.list_settings()] == [("AllowKeyManagementOperationsThroughARM", "true")]
    with pytest.raises(HttpResponseError) as err:
        client.get_setting("NoSuchSetting")
    assert err.value.status_code == 404
    assert "AllowKeyManagementOperationsThroughARM" in str(err.value)


def test_settings_are_rbac_checked(hsm: ManagedHsmEmulator) -> None:
    stranger, auditor = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(HttpResponseError) as err:
        _settings(hsm, stranger).get_setting("AllowKeyManagementOperationsThroughARM")
    assert err.value.status_code == 403
    assert err.value.error is not None
    assert err.value.error.code == "AccessDenied"
    hsm.rbac.assign(str(uuid.uuid4()), "/", auditor, AUDITOR)
    assert _settings(hsm, auditor).get_setting("AllowKeyManagementOperationsThroughARM").value == "false"
    with pytest.raises(HttpResponseError) as err:
        _settings(hsm, auditor).update_setting(
            KeyVaultSetting(name="AllowKeyManagementOperationsThroughARM", value=True)
        )
    assert err.value.status_code == 403
    assert _settings(hsm).get_setting("AllowKeyManagementOperationsThroughARM").value == "false"


def _public(key: Any) -> bytes:
    pub = ec.EllipticCurvePublicNumbers(
        int.from_bytes(key.key.x, "big"), int.from_bytes(key.key.y, "big"), ec.SECP256R1()
    ).public_key()
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _verify(der: bytes, digest: bytes, signature: bytes) -> None:
    pub = serialization.load_der_public_key(der)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    pub.verify(utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_full_backup_delete_full_restore_signs_with_the_same_key(hsm: ManagedHsmEmulator) -> None:
    keys = KeyClient(hsm.vault_url, hsm.credential(), **_opts(hsm))
    original = keys.create_ec_key("precious", curve="P-256")
    before = _public(original)
    seen: list[str] = []  # every job status the SDK received, in order

    def record(response: Any) -> None:
        body = response.http_response.read().decode("utf-8")
        if body.startswith("{") and "status" in (parsed := json.loads(body)):
            seen.append(parsed["status"])

    backup = KeyVaultBackupClient(hsm.vault_url, hsm.credential(), raw_response_hook=record, **_opts(hsm))
    result = backup.begin_backup(CONTAINER, sas_token=SAS).result()
    assert seen[0] == "InProgress"  # the service's sequence, as the SDK polled it
    assert seen[-1] == "Succeeded"
    assert result.folder_url.startswith(CONTAINER + "/mhsm-emulator-")
    folder = Path(hsm.backup_dir) / "acct.blob.core.windows.net" / "backups" / result.folder_url.rsplit("/", 1)[1]
    manifest = (folder / "backup.json").read_text("utf-8")
    assert "precious" in json.loads(manifest)["keys"]
    assert SAS not in manifest  # the SAS token is never stored

    keys.begin_delete_key("precious").wait()
    keys.purge_deleted_key("precious")
    keys.create_ec_key("made-after-backup", curve="P-256")

    backup.begin_restore(result.folder_url, sas_token=SAS).wait()
    names = sorted(p.name for p in keys.list_properties_of_keys())
    assert names == ["precious"]  # a full restore makes the HSM what the backup was
    restored = keys.get_key("precious")
    assert restored.id == original.id
    assert _public(restored) == before
    digest = bytes(range(32))
    crypto = CryptographyClient(restored, hsm.credential(), **_opts(hsm))
    signature = crypto.sign(SignatureAlgorithm.es256, digest).signature
    _verify(before, digest, signature)  # checked by cryptography, with the public key from before


def test_selective_key_restore_brings_back_one_key(hsm: ManagedHsmEmulator) -> None:
    keys = KeyClient(hsm.vault_url, hsm.credential(), **_opts(hsm))
    one = keys.create_ec_key("one", curve="P-256")
    keys.create_ec_key("two", curve="P-256")
    backup = _backup(hsm)
    folder_url = backup.begin_backup(CONTAINER, sas_token=SAS).result().folder_url
    keys.begin_delete_key("one").wait()  # soft-deleted: the restore replaces it
    keys.begin_delete_key("two").wait()
    backup.begin_restore(folder_url, sas_token=SAS, key_name="one").wait()
    assert _public(keys.get_key("one")) == _public(one)
    assert [p.name for p in keys.list_properties_of_keys()] == ["one"]
    assert [d.name for d in keys.list_deleted_keys()] == ["two"]
    with pytest.raises(HttpResponseError, match="not in backup"):
        backup.begin_restore(folder_url, sas_token=SAS, key_name="never-existed").wait()


def test_one_job_at_a_time_and_failures(hsm: ManagedHsmEmulator) -> None:
    backup = _backup(hsm)
    # started by hand: the SDK's poller starts polling at once, so this job stays InProgress
    body = {"storageResourceUri": CONTAINER, "token": SAS, "useManagedIdentity": False}
    started = backup.send_request(HttpRequest("POST", "/backup?api-version=7.5", json=body))
    assert started.status_code == 202
    assert started.json()["status"] == "InProgress"
    status_url = started.headers["Azure-AsyncOperation"]
    assert status_url == f"{hsm.vault_url}/backup/{started.json()['jobId']}/pending"
    with pytest.raises(ResourceExistsError) as err:
        backup.begin_backup(CONTAINER, sas_token=SAS)
    assert err.value.status_code == 409
    assert "in progress" in str(err.value)
    # the status URL is polled verbatim, with no api-version
    done = backup.send_request(HttpRequest("GET", status_url)).json()
    assert done["status"] == "Succeeded"
    assert done["error"] is None
    assert done["azureStorageBlobContainerUri"].startswith(CONTAINER + "/mhsm-emulator-")
    backup.begin_pre_backup(CONTAINER, sas_token=SAS).wait()  # free again once the first finished
    with pytest.raises(HttpResponseError, match="FolderNotFound"):
        backup.begin_restore(CONTAINER + "/mhsm-emulator-nothing", sas_token=SAS).wait()
    with pytest.raises(HttpResponseError) as err:
        backup.begin_backup("https://acct.blob.core.windows.net/Bad_Name", sas_token=SAS)
    assert err.value.status_code == 400
    with pytest.raises(HttpResponseError, match="token"):
        backup.begin_backup(CONTAINER, sas_token="")


def test_backup_needs_the_backup_role(hsm: ManagedHsmEmulator) -> None:
    stranger = str(uuid.uuid4())
    with pytest.raises(HttpResponseError) as err:
        _backup(hsm, stranger).begin_backup(CONTAINER, sas_token=SAS)
    assert err.value.status_code == 403
    assert "backup/start/action on /" in str(err.value)
    hsm.rbac.assign(str(uuid.uuid4()), "/", stranger, BUILTIN_ROLES["Managed HSM Backup User"][0])
    assert _backup(hsm, stranger).begin_backup(CONTAINER, sas_token=SAS).result().folder_url.startswith(CONTAINER)
    with pytest.raises(HttpResponseError) as err:
        _backup(hsm, stranger).begin_restore(CONTAINER + "/mhsm-emulator-x", sas_token=SAS)
    assert err.value.status_code == 403


def test_a_backup_restores_after_a_restart_with_the_same_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with ManagedHsmEmulator(state_dir=state) as hsm:
        keys = KeyClient(hsm.vault_url, hsm.credential(), **_opts(hsm))
        before = _public(keys.create_ec_key("kept", curve="P-256"))
        folder_url = _backup(hsm).begin_backup(CONTAINER, sas_token=SAS).result().folder_url
        keys.begin_delete_key("kept").wait()
        keys.purge_deleted_key("kept")
        assert Path(hsm.backup_dir) == state / "backups"
    with ManagedHsmEmulator(state_dir=state) as hsm:
        _backup(hsm).begin_restore(folder_url, use_managed_identity=True).wait()
        keys = KeyClient(hsm.vault_url, hsm.credential(), **_opts(hsm))
        assert _public(keys.get_key("kept")) == before
    with ManagedHsmEmulator(state_dir=tmp_path / "other") as hsm:
        # another emulator's folder (copied over) is not one this one can restore
        other = Path(hsm.backup_dir) / "acct.blob.core.windows.net"
        other.mkdir(parents=True)
        shutil.copytree(state / "backups" / "acct.blob.core.windows.net" / "backups", other / "backups")
        with pytest.raises(HttpResponseError, match="another emulator"):
            _backup(hsm).begin_restore(folder_url, sas_token=SAS).wait()


def test_an_unwritable_backup_folder_fails_the_job(hsm: ManagedHsmEmulator) -> None:
    root = Path(hsm.backup_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "acct.blob.core.windows.net").write_text("a file where the account folder would go")
    with pytest.raises(HttpResponseError, match="StorageError"):
        _backup(hsm).begin_backup(CONTAINER, sas_token=SAS).result()


def test_backup_jobs_are_audited_without_the_sas_token() -> None:
    records: list[dict[str, Any]] = []
    with ManagedHsmEmulator(audit=records.append) as hsm:
        folder_url = _backup(hsm).begin_backup(CONTAINER, sas_token=SAS).result().folder_url
        _backup(hsm).begin_restore(folder_url, sas_token=SAS).wait()
        _settings(hsm).get_setting(ARM)
    names = [r["operationName"] for r in records if r["httpStatusCode"] != 401]
    assert names == ["BackupCreate", "BackupStatus", "RestoreStart", "RestoreStatus", "SettingGet"]
    assert [r["httpStatusCode"] for r in records if r["httpStatusCode"] != 401] == [202, 200, 202, 200, 200]
    assert SAS not in json.dumps(records)


def test_settings_survive_a_restart_with_the_same_state_dir(tmp_path: Path) -> None:
    with ManagedHsmEmulator(state_dir=tmp_path) as hsm:
        _settings(hsm).update_setting(KeyVaultSetting(name=ARM, value=True))
    with ManagedHsmEmulator(state_dir=tmp_path) as hsm:
        assert _settings(hsm).get_setting(ARM).value == "true"
    (tmp_path / "settings.json").write_text("[1, 2]")
    with pytest.raises(InvalidArgument, match="not emulator settings"):
        ManagedHsmEmulator(state_dir=tmp_path)
