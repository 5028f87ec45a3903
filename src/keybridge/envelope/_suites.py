"""Algorithm suites of message format 2.0: key derivation, key commitment and the footer signature.

Only the two committing suites of the ESDK are offered: 0x0478 (AES-256-GCM, HKDF-SHA512 with key
commitment, no signature; the default) and 0x0578 (the same plus an ECDSA P-384 footer signature).
Legacy non-committing suites are format 1.0 and are rejected on decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature

from .._crypto import GCM_IV, GCM_TAG
from ..errors import IntegrityError, InvalidArgument, InvalidMessage

__all__ = ["DEFAULT_SUITE", "PUBLIC_KEY_CONTEXT_KEY", "RESERVED_CONTEXT_PREFIX", "Signer", "Suite", "Verifier"]

KEY_LEN = 32  # AES-256 data key, derived key and commit key
IV_LEN = GCM_IV  # every v2 suite is AES-GCM with a 96-bit IV and a 128-bit tag
TAG_LEN = GCM_TAG
MESSAGE_ID_LEN = 32
COMMIT_LEN = 32

PUBLIC_KEY_CONTEXT_KEY = "aws-crypto-public-key"
RESERVED_CONTEXT_PREFIX = "aws-crypto-"

# The ESDK writes P-384 signatures as DER of exactly this length (r and s both without a leading
# zero byte), flipping s to n - s when needed; keeping the length fixed lets a reader size the footer.
_SIG_LEN = 103
_P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


class Suite(IntEnum):
    """Algorithm suite IDs (``framework/algorithm-suites.md`` of the ESDK specification)."""

    AES256_GCM_HKDF_SHA512_COMMIT = 0x0478
    AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384 = 0x0578

    @property
    def signed(self) -> bool:
        """True when the message ends with an ECDSA P-384 signature footer."""
        return self is Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384

    @classmethod
    def of(cls, value: Suite | int) -> Suite:
        """Validate a caller's suite choice."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(f"{s.name} (0x{s.value:04X})" for s in cls)
            raise InvalidArgument(f"unsupported algorithm suite {value!r}; choose one of {choices}") from None


DEFAULT_SUITE = Suite.AES256_GCM_HKDF_SHA512_COMMIT


def derive_keys(suite: Suite, data_key: bytes, message_id: bytes) -> tuple[bytes, bytes]:
    """The derived data key and the commit key: HKDF-SHA512 with salt = message ID, one extract and
    two single-block expands (info = suite ID || "DERIVEKEY" and "COMMITKEY")."""
    # Written out with hmac.digest because this runs once per message and the HKDF class costs
    # several times more for two 32-byte outputs of the same extract.
    prk = hmac.digest(message_id, data_key, "sha512")
    enc_key = hmac.digest(prk, suite.to_bytes(2, "big") + b"DERIVEKEY\x01", "sha512")[:KEY_LEN]
    commit_key = hmac.digest(prk, b"COMMITKEY\x01", "sha512")[:COMMIT_LEN]
    return enc_key, commit_key


class Signer:
    """An ephemeral P-384 key that signs header || body with SHA-384, as the ESDK does."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP384R1())
        self._hash = hashes.Hash(hashes.SHA384())

    def public_key_b64(self) -> str:
        """The context value: base64 of the SEC 1 compressed public point."""
        point = self._key.public_key().public_bytes(
            encoding=serialization.Encoding.X962, format=serialization.PublicFormat.CompressedPoint
        )
        return base64.b64encode(point).decode("ascii")

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed signed bytes in message order."""
        self._hash.update(data)

    def finalize(self) -> bytes:
        """The DER signature, exactly 103 bytes long."""
        digest = self._hash.finalize()
        while True:
            der = self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA384())))
            if len(der) != _SIG_LEN:
                r, s = decode_dss_signature(der)
                der = encode_dss_signature(r, _P384_ORDER - s)
            if len(der) == _SIG_LEN:
                return der


class Verifier:
    """Checks the footer signature against the public key stored in the encryption context."""

    def __init__(self, encoded: str) -> None:
        try:
            point = base64.b64decode(encoded, validate=True)
            self._key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point)
        except (binascii.Error, ValueError):
            raise InvalidMessage(f"the {PUBLIC_KEY_CONTEXT_KEY!r} context entry is not a base64 P-384 point") from None
        self._hash = hashes.Hash(hashes.SHA384())

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed signed bytes in message order."""
        self._hash.update(data)

    def verify(self, signature: bytes) -> None:
        """Raise :class:`IntegrityError` unless ``signature`` is valid over everything fed so far."""
        try:
            self._key.verify(signature, self._hash.finalize(), ec.ECDSA(Prehashed(hashes.SHA384())))
        except (InvalidSignature, ValueError):
            raise IntegrityError("the message signature does not verify: the message was modified") from None
