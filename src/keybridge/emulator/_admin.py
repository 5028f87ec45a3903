"""Managed HSM administration: account settings and full backup / restore as long-running jobs.

Settings (``/settings[/{name}]``) hold the one documented setting,
``AllowKeyManagementOperationsThroughARM``, as the strings the service uses.

Backups go to a folder, not to Azure Storage: the container URL the SDK sends
(``https://<account>.blob.core.windows.net/<container>``) names the directory
``<backup root>/<account host>/<container>``, and each full backup writes a folder
``mhsm-emulator-<yyyymmddhhmmssfff>`` there, as the service names its blob folders. The folder
holds a manifest of per-key backup handles (see :mod:`._vault`: key material never leaves the
provider), so it restores only into the emulator, or ``state_dir``, that made it. A SAS token is
required unless ``useManagedIdentity`` is true; it is checked for presence only, never stored.

Jobs answer 202 with ``Azure-AsyncOperation`` (the status URL the SDK polls) and run one at a
time: starting another while one is ``InProgress`` is 409 Conflict. The work is done when the job
starts; it reports ``InProgress`` until its status is first read (or :data:`JOB_SECONDS` pass), so
a client always sees the service's InProgress -> Succeeded/Failed sequence.
"""

from __future__ import annotations

import datetime
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._files import atomic_write
from ..errors import InvalidArgument, KeybridgeError
from ._errors import ApiError, bad
from ._vault import _BACKUP_PREFIX, Vault

__all__ = ["ADMIN_HEADS", "Admin", "JOB_SECONDS"]

ADMIN_HEADS = frozenset({"settings", "backup", "prebackup", "restore", "prerestore"})
JOB_SECONDS = 2.0
_ARM = "AllowKeyManagementOperationsThroughARM"
_MANIFEST = "backup.json"
_FORMAT = "kbemu-full-backup-1"
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61}[a-z0-9])?")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d{1,5})?")
_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,127}")
Reply = tuple[int, "dict[str, Any] | None", dict[str, str]]
Handler = Callable[[list[str], Mapping[str, str], Mapping[str, Any], str], Reply]


@dataclass
class Setting:
    """One account setting: its name, string value and type."""

    name: str
    value: str
    type: str = "boolean"

    def wire(self) -> dict[str, str]:
        """The service's JSON form."""
        return {"name": self.name, "value": self.value, "type": self.type}


@dataclass
class Job:
    """One backup, restore or pre-check job and what it ended with."""

    id: str
    kind: str  # "backup" or "restore": which status route answers for it
    outcome: str  # what status it reports once no longer InProgress
    started: float  # monotonic, for JOB_SECONDS
    start_time: int  # unix seconds on the emulator's clock, for the wire
    error: dict[str, Any] | None = None
    folder_uri: str | None = None
    read: bool = False

    def status(self) -> str:
        """InProgress until first read or JOB_SECONDS after start, then the outcome."""
        if self.read or time.monotonic() - self.started >= JOB_SECONDS:
            return self.outcome
        return "InProgress"

    def wire(self) -> dict[str, Any]:
        """The status body the SDK polls."""
        status = self.status()
        out: dict[str, Any] = {
            "status": status,
            "statusDetails": self.error["message"] if self.error and status == "Failed" else None,
            "error": self.error if status == "Failed" else None,
            "jobId": self.id,
            "startTime": self.start_time,
            "endTime": self.start_time if status != "InProgress" else None,
        }
        if self.kind == "backup":
            out["azureStorageBlobContainerUri"] = self.folder_uri if status == "Succeeded" else None
        return out


class _JobFailed(Exception):
    """The job runs but ends Failed with this error code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Admin:
    """Settings and backup/restore jobs over one :class:`Vault`; the caller holds the vault lock."""

    def __init__(self, vault: Vault, backup_root: Callable[[], Path], settings_file: Path | None = None) -> None:
        self.vault = vault
        self.backup_root = backup_root
        self.settings = {_ARM: Setting(_ARM, "false")}
        self.jobs: dict[str, Job] = {}
        self._settings_file = settings_file
        if settings_file is not None and settings_file.exists():
            self._load_settings(settings_file)

    def _load_settings(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text("utf-8"))
            values = {str(k): str(v) for k, v in saved.items() if k in self.settings}
        except (OSError, ValueError, AttributeError):
            raise InvalidArgument(f"{path} is not emulator settings; delete it to start from the defaults") from None
        for name, value in values.items():
            self.settings[name].value = value

    @staticmethod
    def routes(parts: list[str]) -> bool:
        """True for the paths this module answers."""
        head = parts[0] if parts else ""
        return head in ADMIN_HEADS or (head == "keys" and len(parts) == 3 and parts[2] == "restore")

    def table(self, parts: list[str]) -> dict[str, Handler]:
        """Method -> handler for one of :meth:`routes`' paths ({} when it is not one)."""
        head, n = parts[0], len(parts)
        if head == "keys":
            return {"PUT": self.selective_restore}
        if head == "settings":
            return {"GET": self.list_settings} if n == 1 else {"GET": self.get_setting, "PATCH": self.update_setting}
        if n == 1:
            starts: dict[str, dict[str, Handler]] = {
                "backup": {"POST": self.backup},
                "prebackup": {"POST": self.pre_backup},
                "restore": {"PUT": self.restore},
                "prerestore": {"PUT": self.pre_restore},
            }
            return starts[head]
        if n == 3 and parts[2] == "pending" and head in ("backup", "restore"):
            return {"GET": self.status}
        return {}

    # ---- settings ------------------------------------------------------------------------------

    def _setting(self, name: str) -> Setting:
        setting = self.settings.get(name)
        if setting is None:
            known = ", ".join(sorted(self.settings))
            raise ApiError(404, "NotFound", f"Setting {name!r} was not found; the settings are: {known}")
        return setting

    def list_settings(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """GET /settings."""
        return 200, {"settings": [s.wire() for s in self.settings.values()]}, {}

    def get_setting(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """GET /settings/{name}."""
        return 200, self._setting(parts[1]).wire(), {}

    def update_setting(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """PATCH /settings/{name} with ``{"value": "true"}``: values are strings, as on the wire."""
        setting = self._setting(parts[1])
        value = body.get("value")
        if not isinstance(value, str):
            raise bad('value is required and must be a string, e.g. {"value": "true"}')
        if setting.type == "boolean" and value.lower() not in ("true", "false"):
            raise bad(f"setting {setting.name} is a boolean; value must be 'true' or 'false', got {value!r}")
        setting.value = value.lower() if setting.type == "boolean" else value
        if self._settings_file is not None:
            atomic_write(self._settings_file, json.dumps({s.name: s.value for s in self.settings.values()}).encode())
        return 200, setting.wire(), {}

    # ---- storage -------------------------------------------------------------------------------

    def _container(self, params: Mapping[str, Any]) -> tuple[str, Path]:
        """The container URL of ``{storageResourceUri, token, useManagedIdentity}`` and its folder."""
        uri = params.get("storageResourceUri")
        if not isinstance(uri, str) or not uri:
            raise bad("storageResourceUri (the blob container URL) is required")
        if params.get("useManagedIdentity") is not True and not params.get("token"):
            raise bad("token (a SAS token for the container) is required unless useManagedIdentity is true")
        url = urlsplit(uri)
        container = url.path.strip("/")
        if (
            url.scheme not in ("https", "http")
            or not _HOST.fullmatch(url.netloc)
            or not _CONTAINER.fullmatch(container)
        ):
            raise bad(
                "storageResourceUri must be a blob container URL, https://<account>.blob.core.windows.net/<container>"
                " (container: 3-63 lowercase letters, digits and '-'); the emulator keeps it as a local folder"
            )
        folder = self.backup_root() / url.netloc.replace(":", "_") / container
        return f"{url.scheme}://{url.netloc}/{container}", folder

    @staticmethod
    def _folder_name(value: object) -> str:
        if not isinstance(value, str) or not _FOLDER.fullmatch(value):
            raise bad("the backup folder name is required: the last path segment of the backup's folder_url")
        return value

    @staticmethod
    def _manifest(folder: Path) -> dict[str, str]:
        try:
            doc = json.loads((folder / _MANIFEST).read_text("utf-8"))
        except FileNotFoundError:
            raise _JobFailed("FolderNotFound", f"no backup folder {folder.name} in the container") from None
        except (OSError, ValueError):
            raise _JobFailed("InvalidBackup", f"backup folder {folder.name} is not an emulator backup") from None
        keys = doc.get("keys") if isinstance(doc, dict) and doc.get("format") == _FORMAT else None
        if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
            raise _JobFailed("InvalidBackup", f"backup folder {folder.name} is not an emulator backup")
        return keys

    # ---- jobs ----------------------------------------------------------------------------------

    def _start(self, kind: str, base: str, work: Callable[[], str | None]) -> Reply:
        busy = [j for j in self.jobs.values() if j.status() == "InProgress"]
        if busy:
            raise ApiError(
                409,
                "Conflict",
                f"Another backup or restore operation (job {busy[0].id}) is in progress; wait until it has"
                " finished (poll its status) and try again.",
            )
        job = Job(uuid.uuid4().hex, kind, "Succeeded", time.monotonic(), self.vault.now())
        try:
            job.folder_uri = work()
        except _JobFailed as exc:
            job.outcome, job.error = "Failed", {"code": exc.code, "message": exc.message, "innererror": None}
        self.jobs[job.id] = job
        url = f"{base}/{kind}/{job.id}/pending"
        return 202, job.wire(), {"Azure-AsyncOperation": url, "Retry-After": "1"}

    def status(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """GET /backup/{jobId}/pending or /restore/{jobId}/pending."""
        job = self.jobs.get(parts[1])
        if job is None or job.kind != parts[0]:
            raise ApiError(404, "NotFound", f"There is no {parts[0]} job {parts[1]}; start one first.")
        job.read = True  # the work is done: the first poll sees how it ended
        return 200, job.wire(), {}

    def backup(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """POST /backup: write every live key's backup handle to a new folder."""
        container_url, container = self._container(body)

        def work() -> str:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S%f")[:-3]
            name = f"mhsm-emulator-{stamp}"
            while (container / name).exists():  # two backups in one millisecond
                name += "0"
            live = sorted(n for n, e in self.vault.entries.items() if e.deleted is None)
            manifest = {"format": _FORMAT, "created": self.vault.now(), "keys": {}}
            try:
                (container / name).mkdir(mode=0o700, parents=True)
                manifest["keys"] = {n: self.vault.backup(n).decode("ascii") for n in live}
                (container / name / _MANIFEST).write_text(json.dumps(manifest), "utf-8")
            except OSError as exc:
                raise _JobFailed("StorageError", f"cannot write backup folder {name}: {exc.strerror}") from None
            return f"{container_url}/{name}"

        return self._start("backup", base, work)

    def pre_backup(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """POST /prebackup: the same checks as a backup, nothing written."""
        self._container(body)
        return self._start("backup", base, lambda: None)

    def _restore_params(self, body: Mapping[str, Any], folder_key: str) -> Path:
        params = body.get("sasTokenParameters")
        if not isinstance(params, dict):
            raise bad("sasTokenParameters (storageResourceUri, token, useManagedIdentity) is required")
        _, container = self._container(params)
        return container / self._folder_name(body.get(folder_key))

    def restore(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """PUT /restore: the HSM's keys become the backup's (keys made since are purged)."""
        folder = self._restore_params(body, "folderToRestore")
        return self._start("restore", base, lambda: self._restore_keys(folder, None))

    def pre_restore(self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str) -> Reply:
        """PUT /prerestore: check that the folder is a backup this emulator can restore."""
        folder = self._restore_params(body, "folderToRestore")
        return self._start("restore", base, lambda: self._check(self._manifest(folder)))

    def selective_restore(
        self, parts: list[str], query: Mapping[str, str], body: Mapping[str, Any], base: str
    ) -> Reply:
        """PUT /keys/{name}/restore: bring back one key from a full backup, replacing it if present."""
        folder = self._restore_params(body, "folder")
        return self._start("restore", base, lambda: self._restore_keys(folder, parts[1]))

    def _check(self, keys: Mapping[str, str]) -> None:
        for blob in keys.values():
            if not blob.startswith(_BACKUP_PREFIX) or blob[len(_BACKUP_PREFIX) :] not in self.vault.backups:
                raise _JobFailed("InvalidBackup", "the backup was made by another emulator; it restores only there")

    def _restore_keys(self, folder: Path, only: str | None) -> None:
        keys = self._manifest(folder)
        if only is not None:
            if only not in keys:
                raise _JobFailed("KeyNotFound", f"key {only} is not in backup {folder.name}")
            keys = {only: keys[only]}
        self._check(keys)
        doomed = [only] if only is not None else list(self.vault.entries)
        try:
            for name in doomed:
                entry = self.vault.entries.get(name)
                if entry is None:
                    continue
                if entry.deleted is None:
                    self.vault.delete(name)
                self.vault.purge(name)  # the provider key stays if a backup (this one) holds it
            for blob in keys.values():
                self.vault.restore(blob.encode("ascii"))
        except (ApiError, KeybridgeError) as exc:
            raise _JobFailed("RestoreFailed", f"restore from {folder.name} failed: {exc}") from None
