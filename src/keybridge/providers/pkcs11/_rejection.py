"""Implicit rejection for RSA1_5 (CKM_RSA_PKCS) decrypt and unwrap on a token.

A token reports bad PKCS#1 v1.5 padding as an error (CKR_ENCRYPTED_DATA_INVALID and friends), so
"error or bytes" tells an attacker whether a chosen ciphertext was well padded: Bleichenbacher's
oracle. OpenSSL 3.2+ (and so the in-memory provider and the emulator) instead returns bytes derived
deterministically from the private key and the ciphertext. A token's private key cannot be used
for that, so the secret here is a random key per provider instance: the same ciphertext always
gives the same bytes from one provider, and nothing about the padding leaks through the result.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["ImplicitRejection"]

_LABEL = b"keybridge RSA1_5 implicit rejection"
_PKCS1_OVERHEAD = 11  # 0x00 0x02, at least 8 non-zero padding bytes, 0x00


class ImplicitRejection:
    """Synthetic plaintexts for ciphertexts the token refused (see the module docstring)."""

    __slots__ = ("_secret",)

    def __init__(self) -> None:
        self._secret = os.urandom(32)

    def __repr__(self) -> str:
        return "<ImplicitRejection>"

    def synthetic(self, key_id: str, modulus_bytes: int, ciphertext: bytes) -> bytes:
        """0 to ``modulus_bytes - 11`` bytes, both length and content from HMAC-SHA256 under the
        provider's secret over the key and the ciphertext."""
        prk = hmac.new(self._secret, _LABEL + key_id.encode() + b"\0" + ciphertext, hashlib.sha256).digest()
        limit = max(modulus_bytes - _PKCS1_OVERHEAD, 0)
        length = int.from_bytes(_block(prk, b"length", 0)[:4], "big") % (limit + 1)
        stream = b"".join(_block(prk, b"message", i) for i in range(-(-length // 32)))
        return stream[:length]


def _block(prk: bytes, what: bytes, counter: int) -> bytes:
    return hmac.new(prk, what + counter.to_bytes(4, "big"), hashlib.sha256).digest()
