"""Service JSON shapes: key bundles, list items, deleted-key bundles, rotation policies."""

from __future__ import annotations

from typing import Any

from ..keys import KeyInfo
from ._jwk import public_jwk
from ._records import KeyRecord, Version

__all__ = ["bundle", "deleted_bundle", "deleted_item", "item", "policy"]

_RECOVERY_LEVEL = "CustomizedRecoverable+Purgeable"


def _attributes(entry: KeyRecord, ver: Version, info: KeyInfo) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "enabled": info.enabled,
        "created": ver.created,
        "updated": ver.updated,
        "recoveryLevel": _RECOVERY_LEVEL,
        "recoverableDays": entry.retention,
        "exportable": ver.exportable,
    }
    if ver.nbf is not None:
        attrs["nbf"] = ver.nbf
    if ver.exp is not None:
        attrs["exp"] = ver.exp
    return attrs


def _tags(out: dict[str, Any], ver: Version) -> dict[str, Any]:
    if ver.tags:  # the service leaves "tags" out when there are none
        out["tags"] = dict(ver.tags)
    return out


def kid(base: str, entry: KeyRecord, ver: Version | None = None) -> str:
    """The key id the service reports (versioned unless ``ver`` is None)."""
    return f"{base}/keys/{entry.name}" + (f"/{ver.id}" if ver is not None else "")


def bundle(base: str, entry: KeyRecord, ver: Version, info: KeyInfo) -> dict[str, Any]:
    """KeyBundle: the public JWK, attributes and tags of one version."""
    out = {
        "key": public_jwk(info, kid(base, entry, ver), ver.kty, ver.ops),
        "attributes": _attributes(entry, ver, info),
    }
    if ver.release_policy:
        out["release_policy"] = dict(ver.release_policy)
    return _tags(out, ver)


def _deletion(base: str, entry: KeyRecord) -> dict[str, Any]:
    assert entry.deleted is not None
    return {
        "recoveryId": f"{base}/deletedkeys/{entry.name}",
        "deletedDate": entry.deleted,
        "scheduledPurgeDate": entry.purge_at,
    }


def deleted_bundle(base: str, entry: KeyRecord, ver: Version, info: KeyInfo) -> dict[str, Any]:
    """DeletedKeyBundle: a KeyBundle plus recovery id and dates."""
    return {**bundle(base, entry, ver, info), **_deletion(base, entry)}


def item(base: str, entry: KeyRecord, ver: Version, info: KeyInfo, *, versioned: bool) -> dict[str, Any]:
    """KeyItem for list answers (key lists name keys; version lists name versions)."""
    out = {"kid": kid(base, entry, ver if versioned else None), "attributes": _attributes(entry, ver, info)}
    return _tags(out, ver)


def deleted_item(base: str, entry: KeyRecord, ver: Version, info: KeyInfo) -> dict[str, Any]:
    """DeletedKeyItem."""
    return {**item(base, entry, ver, info, versioned=False), **_deletion(base, entry)}


def policy(base: str, entry: KeyRecord) -> dict[str, Any]:
    """The key's rotation policy, or the service default (notify 30 days before expiry) if unset."""
    stored = entry.policy or {
        "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
        "attributes": {},
    }
    return {"id": f"{base}/keys/{entry.name}/rotationpolicy", **stored}
