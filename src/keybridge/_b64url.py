"""Base64url without padding (RFC 4648 §5), the one encoding of JOSE/Key Vault fields, .byok
ciphertexts, EKM blobs and keystore entries: one implementation, so they cannot drift apart."""

from __future__ import annotations

import base64
import binascii

__all__ = ["decode", "encode"]


def encode(data: bytes) -> str:
    """``data`` as base64url text without ``=`` padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    """Base64url text, padded or not; any other character (``+``, ``/``, spaces) raises
    ``ValueError``, which callers turn into the keybridge error of their context."""
    s = text.rstrip("=")
    if "+" in s or "/" in s:
        # b64decode(altchars=...) maps '-_' onto '+/' and would then take '+/' too.
        raise ValueError("standard base64 ('+', '/') where base64url ('-', '_') is expected")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError("not valid base64url") from exc
