"""A credential for a bearer token obtained elsewhere (a pipeline's ``az account get-access-token``,
a workload's token file): the azure-core ``TokenCredential`` shape with nothing to refresh."""

from __future__ import annotations

import time
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo

from ...errors import InvalidArgument

__all__ = ["StaticTokenCredential"]


class StaticTokenCredential:
    """An azure-core ``TokenCredential`` (and ``SupportsTokenInfo``) that returns one fixed
    bearer token for every scope. Pass it as ``AzureKeyVaultProvider(credential=...)`` (the
    CLI builds one from ``$KEYBRIDGE_AZURE_ACCESS_TOKEN``). ``expires_on`` (POSIX seconds) is
    reported to the SDK; without it the token is said to be good for ``lifetime`` seconds from
    each request, since the caller knows nothing better. Its repr never shows the token."""

    __slots__ = ("_expires_on", "_lifetime", "_token")

    def __init__(self, token: str, *, expires_on: int | None = None, lifetime: int = 3600) -> None:
        if not isinstance(token, str) or not token.strip():
            raise InvalidArgument("StaticTokenCredential needs the bearer token as a non-empty str")
        if any(c.isspace() for c in token):
            # A header value cannot hold it; a pasted "Bearer x" or trailing newline is the usual cause.
            raise InvalidArgument("the bearer token (not shown) contains whitespace: pass the token alone")
        self._token = token
        self._expires_on = expires_on
        self._lifetime = lifetime

    def __repr__(self) -> str:
        return "StaticTokenCredential(token=<hidden>)"

    def _expiry(self) -> int:
        return self._expires_on if self._expires_on is not None else int(time.time()) + self._lifetime

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        """The token, whatever the scopes (``claims``, ``tenant_id``, ``enable_cae`` are ignored:
        a fixed token cannot be re-issued for them)."""
        return AccessToken(self._token, self._expiry())

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        """The same token in the newer ``AccessTokenInfo`` shape."""
        return AccessTokenInfo(self._token, self._expiry())

    def close(self) -> None:
        """Nothing to release; present for the credential protocol."""

    def __enter__(self) -> StaticTokenCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
