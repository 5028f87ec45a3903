"""Wire encoding shared by the EKM server and client: unpadded base64url and the API version."""

from __future__ import annotations

from .. import _b64url
from ..errors import InvalidArgument

API_VERSION = "0.1-preview"
# The EKM API names AES-KWP "A256KWP"; keybridge providers name RFC 5649 by its PKCS#11 mechanism.
PROVIDER_ALG = {
    "A256KW": "A256KW",
    "A256KWP": "CKM_AES_KEY_WRAP_PAD",
    "RSA-OAEP": "RSA-OAEP",
    "RSA-OAEP-256": "RSA-OAEP-256",
}


def b64u(data: bytes) -> str:
    """Unpadded base64url, as every EKM blob and integer travels."""
    return _b64url.encode(data)


def unb64u(text: object, field: str) -> bytes:
    """Decode an unpadded base64url field; padding, PEM or other alphabets are refused."""
    if not isinstance(text, str) or "=" in text or not text:
        raise InvalidArgument(f"field {field!r} must be non-empty unpadded base64url")
    try:
        return _b64url.decode(text)
    except ValueError:
        raise InvalidArgument(f"field {field!r} is not valid unpadded base64url") from None
