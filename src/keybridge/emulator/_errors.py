"""Service errors: the status, ``code`` and ``innererror`` Key Vault answers with."""

from __future__ import annotations

from typing import Any

from ..errors import (
    IntegrityError,
    InvalidArgument,
    KeybridgeError,
    KeyExists,
    KeyNotFound,
    OperationNotPermitted,
    UnsupportedAlgorithm,
)

__all__ = ["ApiError", "bad", "from_keybridge", "not_found"]


class ApiError(Exception):
    """An error answer: HTTP ``status`` and the ``{"error": {...}}`` body."""

    def __init__(
        self, status: int, code: str, message: str, inner: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            err["innererror"] = {"code": self.inner}
        return {"error": err}


def bad(message: str) -> ApiError:
    """400 BadParameter."""
    return ApiError(400, "BadParameter", message)


def not_found(name: str, version: str | None = None) -> ApiError:
    """404 KeyNotFound, worded like the service."""
    what = f"{name}/{version}" if version else name
    return ApiError(404, "KeyNotFound", f"A key with (name/id) {what} was not found in this key vault.")


def from_keybridge(exc: KeybridgeError) -> ApiError:
    """Translate a provider error into the answer the service would give."""
    if isinstance(exc, KeyNotFound):
        return ApiError(404, "KeyNotFound", str(exc))
    if isinstance(exc, OperationNotPermitted):  # includes KeyDisabled and KeyExpired
        return ApiError(403, "Forbidden", str(exc), "KeyOperationForbidden")
    if isinstance(exc, KeyExists):
        return ApiError(409, "Conflict", str(exc))
    if isinstance(exc, (InvalidArgument, UnsupportedAlgorithm, IntegrityError)):
        return bad(str(exc))
    return ApiError(500, "InternalError", f"the emulator's key store failed: {type(exc).__name__}")
