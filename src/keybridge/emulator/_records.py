"""The service-side records of keys and the rules for their field values.

:class:`KeyRecord` (one key name) and :class:`Version` hold what Key Vault knows about a key beyond what
the provider protocol holds; they are plain data, JSON-ready through :func:`dataclasses.asdict`.
The functions check and convert single request values (names, tags, durations, timestamps,
base64url) into those records' units, answering 400 BadParameter for anything malformed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._byok import b64url_decode, b64url_encode
from ..errors import InvalidArgument, InvalidPackage
from ._errors import bad

__all__ = [
    "NAME",
    "RETENTION_DAYS",
    "Backup",
    "Clock",
    "KeyRecord",
    "Version",
    "check_tags",
    "decode_b64",
    "encode_b64",
    "entry_from_json",
    "now",
    "parse_duration",
]

NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
RETENTION_DAYS = 90
_MAX_TAGS = 15
_DURATION = re.compile(
    r"P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)S)?)?"
)
_SECONDS = {"y": 365 * 86400, "mo": 30 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "mi": 60, "s": 1}


def parse_duration(text: object) -> int:
    """Seconds in an ISO 8601 duration such as ``P90D`` or ``P1Y`` (a year = 365 days, a month = 30)."""
    m = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if m is None or text in ("P", "PT") or not any(m.groupdict().values()):
        raise bad(f"{text!r} is not an ISO 8601 duration such as 'P90D' or 'P1Y'")
    return sum(int(v) * _SECONDS[k] for k, v in m.groupdict().items() if v)


def now() -> int:
    """Unix seconds, the unit of every Key Vault timestamp."""
    return int(time.time())


class Clock:
    """The emulator's time: the wall clock plus an offset that tests move forward with
    :meth:`advance`, so that rotation policies and soft-delete retention come due without waiting."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def now(self) -> int:
        """Emulator time in unix seconds."""
        return now() + self.offset

    def advance(self, seconds: int) -> None:
        """Move emulator time forward (never back: Key Vault timestamps only grow)."""
        if seconds < 0:
            raise InvalidArgument(f"the emulator clock only moves forward; got {seconds} seconds")
        self.offset += seconds


@dataclass
class Version:
    """Service-side attributes of one key version (``id`` is the provider's version id)."""

    id: str
    kty: str
    ops: list[str]
    tags: dict[str, str] = field(default_factory=dict)
    nbf: int | None = None
    exp: int | None = None
    created: int = field(default_factory=now)
    updated: int = field(default_factory=now)
    exportable: bool = False
    release_policy: dict[str, Any] | None = None

    def in_window(self, when: int) -> bool:
        """True if ``when`` (emulator time) lies inside the version's ``nbf``/``exp`` window."""
        return (self.nbf is None or when >= self.nbf) and (self.exp is None or when < self.exp)


@dataclass
class KeyRecord:
    """One key name: its provider name, versions (oldest first), deletion and rotation policy."""

    name: str
    pname: str
    versions: dict[str, Version] = field(default_factory=dict)
    deleted: int | None = None
    policy: dict[str, Any] | None = None
    retention: int = RETENTION_DAYS  # recoverableDays: days a soft-deleted key is kept before purge

    @property
    def purge_at(self) -> int | None:
        """When a soft-deleted entry is purged (its ``scheduledPurgeDate``), else None."""
        return None if self.deleted is None else self.deleted + self.retention * 86400

    @property
    def current(self) -> Version:
        """The newest version."""
        return next(reversed(self.versions.values()))


@dataclass
class Backup:
    """A snapshot of an entry and of each version's enabled flag."""

    entry: KeyRecord
    enabled: dict[str, bool]


def entry_from_json(data: Mapping[str, Any]) -> KeyRecord:
    """Inverse of ``dataclasses.asdict(entry)``, for state kept in ``state_dir``."""
    versions = {vid: Version(**v) for vid, v in data["versions"].items()}
    retention = int(data.get("retention", RETENTION_DAYS))
    return KeyRecord(data["name"], data["pname"], versions, data.get("deleted"), data.get("policy"), retention)


def check_tags(tags: object) -> dict[str, str]:
    """Tags must be a string-to-string object (Key Vault allows at most 15)."""
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise bad("tags must be an object of string values")
    if len(tags) > _MAX_TAGS:
        raise bad(f"a key may have at most {_MAX_TAGS} tags")
    return dict(tags)


def decode_b64(value: object, what: str) -> bytes:
    """Base64url (padded or not) from a request field, or 400."""
    try:
        return b64url_decode(value, what)  # type: ignore[arg-type]
    except InvalidPackage as exc:
        raise bad(str(exc)) from None


def encode_b64(data: bytes) -> str:
    """Base64url without padding, as the service writes it."""
    return b64url_encode(data)
