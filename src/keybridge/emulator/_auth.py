"""Bearer-token auth the way Key Vault does it, and a credential the emulator accepts.

The SDK's challenge flow: its first request carries no ``Authorization`` header (and an empty
body); the service answers 401 with a ``WWW-Authenticate: Bearer authorization=…, resource=…``
challenge; the SDK asks its credential for ``<resource>/.default`` and replays the request.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Any, NamedTuple

__all__ = ["AccessToken", "AccessTokenInfo", "EmulatorCredential", "challenge", "token_ok"]

TENANT = "00000000-0000-0000-0000-000000000000"
AUTHORITY = f"https://login.microsoftonline.com/{TENANT}"
RESOURCE = "https://managedhsm.azure.net"
_LIFETIME = 3600


class AccessToken(NamedTuple):
    """Shape-compatible with ``azure.core.credentials.AccessToken``; its repr (and so ``str``,
    f-strings and ``%r`` in logs) hides the token."""

    token: str
    expires_on: int

    def __repr__(self) -> str:
        return f"AccessToken(token=<hidden>, expires_on={self.expires_on})"


class AccessTokenInfo:
    """Shape-compatible with ``azure.core.credentials.AccessTokenInfo``."""

    __slots__ = ("expires_on", "refresh_on", "token", "token_type")

    def __init__(self, token: str, expires_on: int) -> None:
        self.token = token
        self.expires_on = expires_on
        self.token_type = "Bearer"
        self.refresh_on: int | None = None

    def __repr__(self) -> str:
        return f"AccessTokenInfo(token=<hidden>, expires_on={self.expires_on})"


class EmulatorCredential:
    """An azure-core ``TokenCredential`` (and ``SupportsTokenInfo``) that hands out one fixed
    bearer token, whatever the scope. Pass it to ``KeyClient``/``CryptographyClient`` or
    ``AzureKeyVaultProvider``. Needs no azure package to construct."""

    def __init__(self, token: str | None = None) -> None:
        self._token = token or "kbemu-" + secrets.token_urlsafe(24)

    def __repr__(self) -> str:
        return "EmulatorCredential(token=<hidden>)"

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """A token valid for an hour (``claims``, ``tenant_id`` and ``enable_cae`` are ignored)."""
        return AccessToken(self._token, int(time.time()) + _LIFETIME)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        """The same token in the newer ``AccessTokenInfo`` shape."""
        return AccessTokenInfo(self._token, int(time.time()) + _LIFETIME)

    def close(self) -> None:
        """Nothing to release; present for the credential protocol."""

    def __enter__(self) -> EmulatorCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def challenge(host: str) -> str:
    """The ``WWW-Authenticate`` value for a request to ``host`` (the Host header).

    For ``<vault>.localhost:PORT`` the resource is ``https://localhost:PORT``, which satisfies the
    SDK's challenge-resource check without ``verify_challenge_resource=False``; for any other
    host it is Managed HSM's real resource, so that check must be turned off.
    """
    hostname, _, port = host.partition(":")
    resource = RESOURCE
    if hostname.lower().endswith(".localhost"):
        resource = "https://localhost" + (f":{port}" if port and port != "443" else "")
    return f'Bearer authorization="{AUTHORITY}", resource="{resource}"'


def token_ok(header: str | None, expected: str | None) -> bool:
    """True if ``header`` is a bearer token the emulator accepts (any, when ``expected`` is None)."""
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return expected is None or hmac.compare_digest(token.strip().encode(), expected.encode())
