"""Azure SDK exceptions -> keybridge errors.

Every call into the SDK runs inside :func:`translated`, so callers only ever see :mod:`keybridge.errors`
with the Azure exception kept as ``__cause__``. Messages carry the service's error code and text,
which never contain credentials; anything that looks like a bearer token or JWT is still redacted,
because a broken proxy or identity endpoint may echo one back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from ...errors import (
    AuthenticationError,
    InvalidArgument,
    KeybridgeError,
    KeyExists,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
)

_SECRETS = re.compile(r"(?i)bearer\s+[\w.~+/=-]+|eyJ[\w-]+\.[\w-]+\.[\w-]*")
_MAX_DETAIL = 300
# Managed HSM local RBAC names the data action it wanted: "Not authorized to access A on '/keys/x'".
_RBAC_DENIED = re.compile(r"Not authorized to access (\S+) on '?(/[^'\s]*)")


def redact(text: str) -> str:
    """Drop anything token-shaped from ``text`` and keep it short."""
    text = _SECRETS.sub("<redacted>", text)
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"


def service_error(exc: HttpResponseError) -> tuple[str, str, str]:
    """(code, inner code, message) from a Key Vault error body ``{"error":{"code","message","innererror"}}``."""
    body: object = None
    try:
        if exc.response is not None:
            body = json.loads(exc.response.text())
    except (ValueError, TypeError, AttributeError):
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", "", ""
    inner = err.get("innererror")
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    return str(err.get("code") or ""), str(inner_code or ""), str(err.get("message") or "")


def translate(
    action: str, what: object, exc: BaseException, *, bad_input: type[KeybridgeError] = InvalidArgument
) -> KeybridgeError:
    """The keybridge error for an Azure SDK exception raised while doing ``action`` (on ``what``, if
    given); raise it ``from exc``. A 400 answer becomes ``bad_input`` (InvalidPackage for a BYOK
    import, IntegrityError for decrypt/unwrap). The same shape as the PKCS#11 backend's ``translate``."""
    if what is not None:
        action = f"{action} {what}"
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return ProviderUnavailable(
            f"{action}: the vault cannot be reached ({redact(first)}); check the vault URL, network and TLS settings"
        )
    if isinstance(exc, ValueError) and "challenge resource" in str(exc):
        # The SDK refuses a challenge whose resource does not match the vault's domain.
        return AuthenticationError(
            f"{action}: {redact(str(exc))}; for a local emulator pass verify_challenge_resource=False"
        )
    if not isinstance(exc, HttpResponseError):
        return ProviderUnavailable(f"{action}: {type(exc).__name__}: {redact(str(exc))}")
    status = exc.status_code or 0
    code, inner, message = service_error(exc)
    detail = redact(f"{code or status}{'/' + inner if inner else ''}: {message or exc.reason or ''}".rstrip(": "))
    if isinstance(exc, ClientAuthenticationError) or status == 401:
        return AuthenticationError(f"{action}: the credential was rejected or could not get a token ({detail})")
    if status == 403 and (denied := _RBAC_DENIED.search(message)):
        return OperationNotPermitted(
            f"{action}: the caller's Managed HSM role assignments do not grant {denied[1]} on {denied[2]};"
            f" grant a role that includes it at that scope (keybridge access grant) ({detail})"
        )
    if status == 403:
        return OperationNotPermitted(f"{action}: forbidden by the key's operations or your access policy ({detail})")
    if status == 404:
        return KeyNotFound(f"{action}: not found ({detail})")
    if status == 409:
        if "DeletedButRecoverable" in inner or "DeletedButRecoverable" in code:
            return OperationNotPermitted(
                f"{action}: a deleted key of this name is still recoverable; recover it or purge it first ({detail})"
            )
        return KeyExists(f"{action}: conflict ({detail})")
    if status == 400:
        return bad_input(f"{action}: the service refused the request ({detail})")
    if status == 429 or status >= 500:
        return ProviderUnavailable(f"{action}: the service is busy or failing and retries ran out ({detail})")
    return ProviderUnavailable(f"{action}: unexpected HTTP {status} ({detail})")


@contextmanager
def translated(
    action: str, what: object = None, *, bad_input: type[KeybridgeError] = InvalidArgument
) -> Iterator[None]:
    """Run SDK calls, turning Azure exceptions into keybridge errors (original kept as ``__cause__``);
    arguments as for :func:`translate`."""
    try:
        yield
    except OSError as exc:
        # e.g. the CA bundle named by connection_verify is missing: requests raises before connecting
        at = action if what is None else f"{action} {what}"
        raise ProviderUnavailable(f"{at}: {redact(str(exc))}") from exc
    except (AzureError, ValueError) as exc:
        if isinstance(exc, KeybridgeError):
            raise
        if isinstance(exc, ValueError) and not isinstance(exc, AzureError) and "challenge resource" not in str(exc):
            raise
        raise translate(action, what, exc, bad_input=bad_input) from exc
