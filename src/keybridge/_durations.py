"""Durations given as options: one check, and one name (``cache_seconds``) for how long a cache
keeps what it read, whichever layer the cache is in (issue #15)."""

from __future__ import annotations

import warnings

from .errors import InvalidArgument


def seconds(option: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float of seconds (0 or more; more than 0 if ``positive``), else
    InvalidArgument naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 if positive else value >= 0):
        need = "more than 0" if positive else "0 or more"
        raise InvalidArgument(f"{option} must be a number of seconds ({need}), got {value!r}")
    return float(value)


def renamed(old: str, old_value: object, new: str, new_value: object, default: object) -> object:
    """``new_value``; or, if the deprecated keyword ``old`` was given (not None), its value, with a
    DeprecationWarning pointing at the caller's caller. Both given is InvalidArgument."""
    if old_value is None:
        return new_value
    if new_value != default:
        raise InvalidArgument(f"{old} is the old name of {new}; pass only {new}")
    # 1: here, 2: the constructor that took the keyword, 3: the code that called it.
    warnings.warn(f"{old} is deprecated; use {new} (the same number of seconds)", DeprecationWarning, stacklevel=3)
    return old_value
