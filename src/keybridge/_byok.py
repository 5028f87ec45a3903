"""The Azure BYOK package (.byok JSON) codec.

It sits below the provider protocol, not in :mod:`keybridge.byok`, because providers speak it:
the Azure backend sends it as ``key_hsm`` and the in-memory backend (and so the emulator) unwraps
it. :mod:`keybridge.byok` re-exports :class:`ByokPackage` as its public home.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm as _CryptoUnsupported
from cryptography.hazmat.primitives import serialization

from . import _b64url
from ._files import atomic_write
from ._redact import redact_uri
from .errors import InvalidKeySpec, InvalidPackage
from .keys import KeyInfo, KeyOp, KeySpec, KeyType, PrivateKey

__all__ = [
    "ByokPackage",
    "b64url_decode",
    "b64url_encode",
    "is_full_key_id",
    "is_kek",
    "load_unwrapped",
    "strip_der_padding",
]

SCHEMA_VERSION = "1.0.0"
ALG = "dir"
ENC = "CKM_RSA_AES_KEY_WRAP"
MAX_PACKAGE = 64 * 1024
# A .byok document nests two levels; the decoder recurses per level (RecursionError near 1,000).
MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[][{}]")
# Printable ASCII without spaces: a kid is echoed in messages and by `byok inspect`, so no control
# characters (urlsplit silently drops tabs and newlines, which would hide them).
_KID_CHARS = re.compile(r"[!-~]{1,2048}")
_DNS_NAME = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# Raw AES keys are the only plaintexts this short: the smallest PKCS#8 EC key (P-256) is 67 bytes.
_AES_LENGTHS = frozenset({16, 24, 32})
# RFC 5649 pads to 8 bytes, so a buggy wrapper (SoftHSM 2.6.1) can add at most 7 zero bytes.
_MAX_ZERO_PAD = 7  # an RSA-4096 target under a 4096-bit KEK is ~3 KiB of JSON


def is_full_key_id(kid: object) -> TypeGuard[str]:
    """True for ``https://HOST/keys/NAME/VERSION`` with nothing after it: the only KEK reference
    Azure can resolve (a versionless id would silently follow a KEK rotation)."""
    if not isinstance(kid, str) or not _KID_CHARS.fullmatch(kid):
        return False
    try:
        parts = urlsplit(kid)
        _ = parts.port  # parsing the port raises on garbage such as ":x"
    except ValueError:
        return False
    segments = parts.path.strip("/").split("/")
    return (
        parts.scheme == "https"
        and _host_ok(parts.hostname, parts.netloc)
        and not (parts.query or parts.fragment or parts.path.endswith("/"))
        and len(segments) == 3
        and segments[0] == "keys"
        and all(segments)
    )


def _host_ok(host: str | None, netloc: str) -> bool:
    """A DNS name, an IPv4 address or a bracketed IPv6 address, with no userinfo before it."""
    if not host or "@" in netloc:
        return False
    if netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    return bool(_DNS_NAME.fullmatch(host))


def is_kek(info: KeyInfo) -> bool:
    """True for a key-exchange key: an RSA key whose only operation is ``import`` (Azure's rule;
    ``KeySpec.check_ops`` already keeps ``import`` exclusive)."""
    return info.spec.kty is KeyType.RSA and info.ops == {KeyOp.IMPORT}


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (what Azure tools and the SDK write)."""
    return _b64url.encode(data)


def b64url_decode(text: str, what: str = "value") -> bytes:
    """Base64url, padded or not; anything else raises :class:`InvalidPackage`."""
    if not isinstance(text, str):
        raise InvalidPackage(f"{what} must be a base64url string, got {type(text).__name__}")
    try:
        return _b64url.decode(text.strip())
    except ValueError as exc:
        raise InvalidPackage(f"{what} is not valid base64url") from exc


def _too_deep(data: bytes) -> bool:
    """True if ``[``/``{`` nest more than :data:`MAX_DEPTH` deep outside JSON strings: a linear
    scan, so hostile input is refused before the recursive decoder sees it (an unterminated
    string only makes the count larger)."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:  # every real package: no scan needed
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub(b'""', data)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _shown(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, for quoting a field in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ByokPackage:
    """A .byok package: ``ciphertext`` is RSA-OAEP-SHA1(AES key) || RFC 5649 wrap of the target,
    under the key-exchange key ``kid``."""

    kid: str
    ciphertext: bytes
    generator: str = "keybridge"
    alg: str = ALG
    enc: str = ENC
    schema_version: str = SCHEMA_VERSION

    def __repr__(self) -> str:
        return f"ByokPackage(kid={self.kid!r}, ciphertext=<{len(self.ciphertext)} bytes>, generator={self.generator!r})"

    def to_json(self) -> bytes:
        """The package as .byok file bytes."""
        doc = {
            "schema_version": self.schema_version,
            "header": {"kid": self.kid, "alg": self.alg, "enc": self.enc},
            "ciphertext": b64url_encode(self.ciphertext),
            "generator": self.generator,
        }
        return json.dumps(doc, indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> ByokPackage:
        """Parse and strictly validate .byok bytes; any defect raises :class:`InvalidPackage`."""
        if not isinstance(data, (bytes, bytearray, str)):
            raise InvalidPackage(f"a .byok package is JSON text or bytes, got {type(data).__name__}")
        if len(data) > MAX_PACKAGE:
            raise InvalidPackage(f"package is {len(data)} bytes; a .byok file is at most {MAX_PACKAGE}")
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        if _too_deep(raw):
            raise InvalidPackage(
                f"not a .byok package: JSON nested more than {MAX_DEPTH} levels deep (a .byok file nests two)"
            )
        try:
            doc: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidPackage("not a .byok package: the content is not JSON") from exc
        if not isinstance(doc, dict):
            raise InvalidPackage("not a .byok package: expected a JSON object")
        header = doc.get("header")
        if not isinstance(header, dict):
            raise InvalidPackage("not a .byok package: 'header' object is missing")
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise InvalidPackage(f"schema_version {_shown(doc.get('schema_version'))} is not {SCHEMA_VERSION!r}")
        if header.get("alg") != ALG:
            raise InvalidPackage(f"header alg {_shown(header.get('alg'))} is not supported; Azure BYOK uses {ALG!r}")
        if header.get("enc") != ENC:
            raise InvalidPackage(f"header enc {_shown(header.get('enc'))} is not supported; Azure BYOK uses {ENC!r}")
        kid = header.get("kid")
        if not is_full_key_id(kid):
            raise InvalidPackage(
                f"header kid {_shown(redact_uri(kid))} is not a full key identifier with version"
                " (https://HOST/keys/NAME/VERSION, printable ASCII)"
            )
        ciphertext = b64url_decode(doc.get("ciphertext"), "ciphertext")  # type: ignore[arg-type]
        # 256 bytes is the smallest KEK modulus (RSA-2048); 24 the smallest RFC 5649 output.
        if len(ciphertext) < 256 + 16:
            raise InvalidPackage(
                f"ciphertext is {len(ciphertext)} bytes, shorter than an RSA-2048 KEK block plus a wrapped key"
            )
        generator = doc.get("generator", "")
        if not isinstance(generator, str):
            raise InvalidPackage(f"generator must be a string, got {type(generator).__name__}")
        return cls(kid=kid, ciphertext=ciphertext, generator=generator)

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the package atomically, mode 0600 (it is a wrapped private key: only the KEK
        holder can open it, but who may read it is still the owner's call). An existing ``path``
        raises :class:`~keybridge.errors.OutputExists` unless ``overwrite``."""
        atomic_write(path, self.to_json(), mode=0o600, overwrite=overwrite)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ByokPackage:
        """Read and validate a .byok file."""
        try:
            with Path(path).open("rb") as f:
                data = f.read(MAX_PACKAGE + 1)  # a bound, so a huge file or /dev/zero is not read whole
        except OSError as exc:
            raise InvalidPackage(f"cannot read package {os.fspath(path)!r}: {exc.strerror}") from exc
        return cls.from_json(data)


def _der_length(data: bytes) -> int | None:
    """Length of the DER SEQUENCE that starts ``data`` (header included), or None."""
    if len(data) < 2 or data[0] != 0x30:
        return None
    if data[1] < 0x80:
        return 2 + data[1]
    n = data[1] & 0x7F
    if not 1 <= n <= 4 or len(data) < 2 + n:
        return None
    return 2 + n + int.from_bytes(data[2 : 2 + n], "big")


def strip_der_padding(plaintext: bytes) -> bytes:
    """Raw AES keys unchanged; a PKCS#8 DER key cut to its encoded length (see :func:`unwrap`)."""
    if len(plaintext) in _AES_LENGTHS:
        return plaintext
    total = _der_length(plaintext)
    if total is None or total > len(plaintext):
        raise InvalidPackage("the unwrapped key is neither raw AES key bytes nor a PKCS#8 DER key")
    pad = plaintext[total:]
    if len(pad) > _MAX_ZERO_PAD or any(pad):
        raise InvalidPackage("the unwrapped PKCS#8 key is followed by unexpected bytes; the package is damaged")
    return plaintext[:total]


def load_unwrapped(plaintext: bytes, spec: KeySpec) -> PrivateKey | bytes:
    """Turn :func:`unwrap` output into a key of ``spec``: a ``cryptography`` private key, or AES
    bytes. A package holding another kind of key raises :class:`~keybridge.InvalidPackage`."""
    if spec.kty is KeyType.OCT:
        if len(plaintext) != spec.size // 8:
            raise InvalidPackage(f"the package does not hold an {spec} key ({len(plaintext)} bytes of key material)")
        return bytes(plaintext)
    if len(plaintext) in _AES_LENGTHS:
        raise InvalidPackage(f"the package holds a raw AES key, not an {spec} key; import it as oct")
    try:
        key = serialization.load_der_private_key(strip_der_padding(plaintext), password=None)
        found = KeySpec.of(key)  # type: ignore[arg-type]
    except (ValueError, TypeError, _CryptoUnsupported, InvalidKeySpec) as exc:
        raise InvalidPackage(f"the package does not hold a usable PKCS#8 key for {spec}") from exc
    if found != spec:
        raise InvalidPackage(f"the package holds an {found} key, not {spec}; import it with the matching key type")
    return key  # type: ignore[return-value]
