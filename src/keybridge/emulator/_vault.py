"""The vault's state: what Key Vault knows about keys beyond what the provider protocol holds.

Key material, versions and the enabled flag live in the provider; this layer adds the service's
own state on top: the wire ``kty``, the ``key_ops`` it reports and enforces, ``nbf``/``exp``, tags,
soft delete, rotation policies and backups. Azure key names map to provider names one to one
(``NAME``, or ``NAME.N`` when an older, still backed-up ``NAME`` is kept in the provider).

Backups never take key material out of the provider: a backup blob is an unguessable handle to a
snapshot of this state, and purging a key that has backups keeps its provider key (hidden) so a
restore can bring it back. Blobs therefore restore only into the emulator that made them.
"""

from __future__ import annotations

import copy
import re
import secrets
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict
from typing import Any

from ..errors import KeybridgeError
from ..keys import KeyInfo, KeyOp, KeyRef, KeySpec, KeyType
from ..provider import KeyProvider
from ._errors import ApiError, bad, from_keybridge, not_found
from ._policy import check_policy, rotation_due
from ._records import (
    NAME,
    RETENTION_DAYS,
    Backup,
    Clock,
    KeyRecord,
    Version,
    check_tags,
    entry_from_json,
    parse_duration,
)
from ._release import check_release_policy, replaced_release_policy

__all__ = ["Vault"]
_YEAR_10000 = 253402300800  # unix seconds; datetime cannot hold later times

_BACKUP_PREFIX = "KBEMU-BACKUP-1."
# Operations Key Vault still allows outside a key's nbf/exp window (they undo or check earlier work).
_OUTSIDE_WINDOW = frozenset({KeyOp.DECRYPT, KeyOp.UNWRAP_KEY, KeyOp.VERIFY})
# A policy rotates at most every 7 days, so this bounds one tick even after advance(days=36500).
_MAX_ROTATIONS = 6000


class Vault:
    """Key Vault semantics over a :class:`KeyProvider`; every method holds one lock."""

    def __init__(
        self,
        provider: KeyProvider,
        on_change: Callable[[], None] | None = None,
        *,
        clock: Clock | None = None,
        retention_days: int = RETENTION_DAYS,
    ) -> None:
        self.provider = provider
        self.lock = threading.RLock()
        self.entries: dict[str, KeyRecord] = {}
        self.backups: dict[str, Backup] = {}
        self.clock = clock or Clock()
        self.retention_days = retention_days
        self._on_change = on_change or (lambda: None)
        self._serial = 0
        self._ref = re.compile(re.escape(provider.scheme) + r":([0-9A-Za-z._-]+)(?:/([0-9A-Za-z_-]+))?")

    def now(self) -> int:
        """Emulator time (unix seconds): the wall clock moved on by :meth:`Clock.advance`."""
        return self.clock.now()

    def advance(self, seconds: int) -> None:
        """Move the emulator's clock forward, run what came due, and save the new time."""
        with self.lock:
            self.clock.advance(seconds)
            self.tick()
            self._on_change()

    def tick(self) -> None:
        """Do what has come due by the emulator's clock, as the service's background jobs would:
        purge soft-deleted keys whose retention ran out, then run rotation policies."""
        t = self.now()
        for entry in list(self.entries.values()):
            purge_at = entry.purge_at
            if purge_at is not None and purge_at <= t:
                self._purge(entry)
            elif entry.deleted is None:
                for _ in range(_MAX_ROTATIONS):
                    due = rotation_due(entry)
                    if due is None or due > t:
                        break
                    # The new version is dated when the policy fired, so a long advance() yields
                    # the versions the service would have made along the way; a due time before
                    # the current version existed (an exp set in the past) fires once, now.
                    self.rotate(entry.name, at=due if due >= entry.current.created else t)

    def public_message(self, text: str, base: str) -> str:
        """``text`` with provider references (``memory:NAME/VERSION``) replaced by the key ids the
        service would name, so no error shows the emulator's insides."""
        names = {e.pname: e.name for e in self.entries.values()}

        def kid(m: re.Match[str]) -> str:
            name = names.get(m.group(1))
            if name is None:
                return "a key of this HSM"
            return f"{base}/keys/{name}" + (f"/{m.group(2)}" if m.group(2) else "")

        text = self._ref.sub(kid, text)
        return text.replace(f"the {self.provider.scheme} provider", "this HSM").replace("in-memory provider", "HSM")

    # ---- lookups -------------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a provider method, translating its errors into service errors."""
        try:
            return fn(*args, **kwargs)
        except KeybridgeError as exc:
            raise from_keybridge(exc) from exc

    def active(self, name: str) -> KeyRecord:
        """The live (not deleted) entry for ``name``, else 404."""
        entry = self.entries.get(name)
        if entry is None or entry.deleted is not None:
            raise not_found(name)
        return entry

    def deleted(self, name: str) -> KeyRecord:
        """The soft-deleted entry for ``name``, else 404."""
        entry = self.entries.get(name)
        if entry is None or entry.deleted is None:
            raise ApiError(404, "KeyNotFound", f"Deleted Key not found: {name}")
        return entry

    def version(self, entry: KeyRecord, vid: str | None) -> Version:
        """A version of ``entry`` (the current one for an empty/None id), else 404."""
        if not vid:
            return entry.current
        if vid not in entry.versions:
            raise not_found(entry.name, vid)
        return entry.versions[vid]

    def ref(self, entry: KeyRecord, ver: Version) -> KeyRef:
        """The provider reference of one version."""
        return self.provider.ref(entry.pname, ver.id)

    def info(self, entry: KeyRecord, ver: Version) -> KeyInfo:
        """The provider's metadata (public key, enabled flag) of one version."""
        info: KeyInfo = self.call(self.provider.get_key, entry.pname, ver.id)
        return info

    # ---- creating ------------------------------------------------------------------------------

    def _pname(self, name: str) -> str:
        taken = {e.pname for e in self.entries.values()} | {b.entry.pname for b in self.backups.values()}
        if name not in taken:
            return name
        while True:
            self._serial += 1
            if f"{name}.{self._serial}" not in taken:
                return f"{name}.{self._serial}"

    def add(
        self,
        name: str,
        kind: KeyType,
        kty: str,
        ops: Collection[str] | None,
        make: Callable[[str, list[str] | None], KeyInfo],
        *,
        attributes: Mapping[str, Any],
        tags: Mapping[str, str],
        release_policy: object = None,
    ) -> tuple[KeyRecord, Version]:
        """Create, import or BYOK-import: ``make(provider_name, provider_ops)`` adds the key to the
        provider. The provider gets every operation the key type allows (or exactly ``import`` for
        a key-exchange key) and this layer enforces the reported ``key_ops``, which the service lets
        callers change later."""
        if not NAME.fullmatch(name):
            raise bad(f"key name {name!r} is invalid: use 1-127 letters, digits and '-'")
        existing = self.entries.get(name)
        self._refuse_deleted(name)
        spec_ops = self.check_ops(kind, ops)
        exportable = attributes.get("exportable") is True
        policy = check_release_policy(release_policy)
        if exportable and policy is None:
            raise bad("AKV.SKR.1004: Exportable keys must have release policy.")
        pname = existing.pname if existing else self._pname(name)
        info = self.call(make, pname, ["import"] if spec_ops == ["import"] else None)
        t = self.now()
        ver = Version(info.ref.version or "", kty, spec_ops, dict(tags), created=t, updated=t, exportable=exportable)
        ver.release_policy = policy
        self._apply_attributes(ver, attributes)
        entry = existing or KeyRecord(name, pname, retention=self.retention_days)
        entry.versions[ver.id] = ver
        self.entries[name] = entry
        if attributes.get("enabled") is False:
            self.call(self.provider.set_enabled, self.ref(entry, ver), False)
        self._on_change()
        return entry, ver

    def _refuse_deleted(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is not None and entry.deleted is not None:
            raise ApiError(
                409,
                "Conflict",
                f"Key {name} is currently in a deleted but recoverable state, and its name cannot be reused;"
                " in this state, the key can only be recovered or purged.",
                "ObjectIsDeletedButRecoverable",
            )

    @staticmethod
    def check_ops(kind: KeyType | KeySpec, ops: Collection[str] | None) -> list[str]:
        """Validate ``key_ops`` for a key (its spec, so that errors name it) or, before the key
        exists, for its family; None means the defaults."""
        families = {KeyType.RSA: KeySpec.rsa(), KeyType.EC: KeySpec.ec(), KeyType.OCT: KeySpec.aes()}
        spec = kind if isinstance(kind, KeySpec) else families[kind]
        if ops is not None and (not isinstance(ops, list) or not all(isinstance(o, str) for o in ops)):
            raise bad("key_ops must be a list of operation names")
        try:
            checked = spec.check_ops(ops)
        except KeybridgeError as exc:
            # a family stand-in (RSA-2048, EC-P-256, AES-256) must not be named as the key
            raise bad(
                str(exc) if isinstance(kind, KeySpec) else str(exc).replace(f"an {spec} key", f"{kind} keys")
            ) from None
        return list(dict.fromkeys(ops)) if ops is not None else sorted(o.value for o in checked)

    @staticmethod
    def _apply_attributes(ver: Version, attributes: Mapping[str, Any]) -> None:
        for key in ("nbf", "exp"):
            if key in attributes:
                value = attributes[key]
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise bad(f"attributes.{key} must be an integer (unix seconds)")
                if value is not None and not 0 <= value < _YEAR_10000:
                    raise bad(f"attributes.{key} must be unix seconds between 1970 and 9999")
                setattr(ver, key, value)
        if "enabled" in attributes and not isinstance(attributes["enabled"], (bool, type(None))):
            raise bad("attributes.enabled must be true or false")

    # ---- changing ------------------------------------------------------------------------------

    def update(self, name: str, vid: str | None, body: Mapping[str, Any]) -> tuple[KeyRecord, Version]:
        """PATCH: key_ops, attributes (enabled, nbf, exp), tags and release policy of one version."""
        entry = self.active(name)
        ver = self.version(entry, vid)
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise bad("attributes must be an object")
        policy = replaced_release_policy(ver, body.get("release_policy"))  # checked before any change
        if "key_ops" in body and body["key_ops"] is not None:
            ops = self.check_ops(self.info(entry, ver).spec, body["key_ops"])
            if (ops == ["import"]) != (ver.ops == ["import"]):
                # The store fixes at creation whether a key is a key-exchange key; a PATCH cannot
                # turn one into the other (the real service's answer here is unverified).
                raise bad(f"key {name}: key_ops cannot change to or from ['import'] after creation")
            ver.ops = ops
        self._apply_attributes(ver, attributes)
        if "tags" in body and body["tags"] is not None:
            ver.tags = check_tags(body["tags"])
        if policy is not None:
            ver.release_policy = policy
        if isinstance(attributes.get("enabled"), bool):
            self.call(self.provider.set_enabled, self.ref(entry, ver), attributes["enabled"])
        ver.updated = self.now()
        self._on_change()
        return entry, ver

    def rotate(self, name: str, at: int | None = None) -> tuple[KeyRecord, Version]:
        """A new version (created ``at``, default now) with the current one's kty, key_ops and
        tags; the policy's expiryTime sets its ``exp``."""
        entry = self.active(name)
        cur = entry.current
        info = self.call(self.provider.rotate_key, entry.pname)
        t = self.now() if at is None else at
        ver = Version(info.ref.version or "", cur.kty, list(cur.ops), dict(cur.tags), created=t, updated=t)
        # the provider keeps the current version's exportable flag; the service its release policy
        ver.exportable, ver.release_policy = cur.exportable, copy.deepcopy(cur.release_policy)
        expiry = ((entry.policy or {}).get("attributes") or {}).get("expiryTime")
        if expiry:
            ver.exp = ver.created + parse_duration(expiry)
        entry.versions[ver.id] = ver
        self._on_change()
        return entry, ver

    def set_policy(self, name: str, body: Mapping[str, Any]) -> KeyRecord:
        """Store a rotation policy after checking it as the service does (see :mod:`._policy`)."""
        entry = self.active(name)
        actions, expiry = check_policy(body)
        t = self.now()
        created = (entry.policy or {}).get("attributes", {}).get("created", t)
        entry.policy = {
            "lifetimeActions": actions,
            "attributes": {**({"expiryTime": expiry} if expiry else {}), "created": created, "updated": t},
        }
        self._on_change()
        return entry

    # ---- deleting ------------------------------------------------------------------------------

    def delete(self, name: str) -> KeyRecord:
        """Soft delete: the key disappears from the live routes until recovered or purged."""
        entry = self.active(name)
        entry.deleted = self.now()
        self._on_change()
        return entry

    def recover(self, name: str) -> KeyRecord:
        """Undo a soft delete."""
        entry = self.deleted(name)
        entry.deleted = None
        self._on_change()
        return entry

    def purge(self, name: str) -> None:
        """Remove a soft-deleted key for good; its provider key goes too unless a backup holds it."""
        self._purge(self.deleted(name))

    def _purge(self, entry: KeyRecord) -> None:
        del self.entries[entry.name]
        if not any(b.entry.pname == entry.pname for b in self.backups.values()):
            self.call(self.provider.delete_key, entry.pname)
        self._on_change()

    # ---- backup and restore --------------------------------------------------------------------

    def backup(self, name: str) -> bytes:
        """An opaque blob naming a snapshot of the key (all versions, attributes, policy)."""
        entry = self.active(name)
        enabled = {vid: self.info(entry, v).enabled for vid, v in entry.versions.items()}
        handle = secrets.token_urlsafe(32)
        self.backups[handle] = Backup(copy.deepcopy(entry), enabled)
        self._on_change()
        return (_BACKUP_PREFIX + handle).encode("ascii")

    def restore(self, blob: bytes) -> KeyRecord:
        """Bring a backed-up key back under its name, which must be free (not live, not deleted)."""
        text = blob.decode("ascii", "replace")
        backup = self.backups.get(text[len(_BACKUP_PREFIX) :]) if text.startswith(_BACKUP_PREFIX) else None
        if backup is None:
            raise bad("the backup blob is not one this emulator made (blobs restore only where they were made)")
        name = backup.entry.name
        self._refuse_deleted(name)
        if name in self.entries:
            raise ApiError(409, "Conflict", f"Key {name} already exists; restore needs a free name.")
        entry = copy.deepcopy(backup.entry)
        entry.deleted = None
        for vid, enabled in backup.enabled.items():
            self.call(self.provider.set_enabled, self.provider.ref(entry.pname, vid), enabled)
        self.entries[name] = entry
        self._on_change()
        return entry

    # ---- key operations ------------------------------------------------------------------------

    def usable(self, name: str, vid: str | None, op: KeyOp) -> tuple[KeyRecord, Version, KeyRef]:
        """Resolve a key version for ``op`` and refuse what its key_ops or nbf/exp window forbid;
        the provider then checks the algorithm, the key type and the enabled flag."""
        entry = self.active(name)
        ver = self.version(entry, vid)
        if op.value not in ver.ops:
            raise ApiError(
                403, "Forbidden", f"Operation {op.value} is not permitted on this key.", "KeyOperationForbidden"
            )
        if not ver.in_window(self.now()) and op not in _OUTSIDE_WINDOW:
            raise ApiError(
                403,
                "Forbidden",
                f"Operation {op.value} is not allowed outside the key's not-before/expiry window.",
                "KeyOperationForbidden",
            )
        return entry, ver, self.ref(entry, ver)

    # ---- persistence ---------------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The service-side state as JSON-ready data (no key material: that is the provider's)."""
        return {
            "format": 1,
            "serial": self._serial,
            "clock_offset": self.clock.offset,
            "entries": [asdict(e) for e in self.entries.values()],
            "backups": {h: {"entry": asdict(b.entry), "enabled": b.enabled} for h, b in self.backups.items()},
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Inverse of :meth:`dump`."""
        self._serial = int(data.get("serial", 0))
        self.clock.offset = max(self.clock.offset, int(data.get("clock_offset", 0)))
        self.entries = {e["name"]: entry_from_json(e) for e in data.get("entries", [])}
        self.backups = {
            h: Backup(entry_from_json(b["entry"]), dict(b["enabled"])) for h, b in data.get("backups", {}).items()
        }
