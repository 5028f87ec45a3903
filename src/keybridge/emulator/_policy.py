"""Key rotation policies: the service's validation rules and when a policy's Rotate action is due.

The limits are Key Vault's documented ones (key-rotation docs): a Rotate trigger fires no earlier
than 7 days after a version is created and no later than 7 days before it expires, and
``expiryTime`` is at least 28 days. Breaking one is ``400 BadParameter``, like any bad argument.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ._errors import ApiError, bad
from ._records import KeyRecord, parse_duration

__all__ = ["check_policy", "rotation_due"]

_DAY = 86400
MIN_ROTATE = 7 * _DAY  # P7D: after creation, and before expiry
MIN_EXPIRY = 28 * _DAY  # P28D
_TRIGGERS = ("timeAfterCreate", "timeBeforeExpiry")


def _duration(value: object, where: str) -> int:
    try:
        return parse_duration(value)
    except ApiError as exc:  # name the field that was wrong
        raise bad(f"rotation policy {where}: {exc.message}") from None


def check_policy(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Validate a ``PUT …/rotationpolicy`` body; answer its lifetime actions and ``expiryTime``."""
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise bad("attributes must be an object")
    expiry_text = attributes.get("expiryTime")
    expiry = _duration(expiry_text, "attributes.expiryTime") if expiry_text is not None else None
    if expiry is not None and expiry < MIN_EXPIRY:
        raise bad(f"rotation policy attributes.expiryTime {expiry_text} is too short: the minimum is 28 days (P28D)")
    actions = body.get("lifetimeActions", [])
    if not isinstance(actions, list):
        raise bad("lifetimeActions must be a list")
    seen: set[str] = set()
    for i, action in enumerate(actions):
        trigger = action.get("trigger") if isinstance(action, dict) else None
        what = action.get("action") if isinstance(action, dict) else None
        kind = what.get("type") if isinstance(what, dict) else None
        if not isinstance(trigger, dict) or not isinstance(kind, str) or kind.lower() not in ("rotate", "notify"):
            raise bad("each lifetime action needs a trigger and an action type of Rotate or Notify")
        if kind.lower() in seen:
            raise bad(f"rotation policy has more than one {kind} action; give at most one of each type")
        seen.add(kind.lower())
        given = [k for k in _TRIGGERS if trigger.get(k) is not None]
        if len(given) != 1:
            raise bad(f"lifetimeActions[{i}].trigger needs exactly one of timeAfterCreate or timeBeforeExpiry")
        where = f"lifetimeActions[{i}].trigger.{given[0]}"
        seconds = _duration(trigger[given[0]], where)
        if kind.lower() == "rotate":
            _check_rotate(where, str(trigger[given[0]]), seconds, expiry)
    return copy.deepcopy(actions), expiry_text


def _check_rotate(where: str, text: str, seconds: int, expiry: int | None) -> None:
    if seconds < MIN_ROTATE:
        raise bad(f"rotation policy {where} {text} is too short: the minimum is 7 days (P7D)")
    # Either trigger (after create, or before expiry) must leave 7 days on both sides.
    if expiry is not None and seconds > expiry - MIN_ROTATE:
        raise bad(
            f"rotation policy {where} {text} is too long: with expiryTime set, a rotation must come at"
            " least 7 days before the key version expires"
        )


def rotation_due(entry: KeyRecord) -> int | None:
    """When the policy's Rotate action next fires for the current version (unix seconds), or None
    if the policy has none (or it counts from an expiry the version does not have)."""
    for action in (entry.policy or {}).get("lifetimeActions", []):
        if str(action["action"]["type"]).lower() != "rotate":
            continue
        trigger, cur = action["trigger"], entry.current
        if trigger.get("timeAfterCreate") is not None:
            return cur.created + parse_duration(trigger["timeAfterCreate"])
        if cur.exp is not None:
            return cur.exp - parse_duration(trigger["timeBeforeExpiry"])
    return None
