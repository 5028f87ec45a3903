"""Message header, format 2.0 (``data-format/message-header.md``): build, parse, authenticate.

Layout: version 02 | suite u16 | message ID (32) | AAD length u16 | encryption context | EDK count
u16 | EDKs (u16-prefixed provider ID, provider info, ciphertext) | content type 02 (framed) or
01 (non-framed, read only) | frame length u32 (0 when non-framed) | commit key (32) | header tag
(16, AES-GCM over all of the above, IV zero).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, InvalidArgument, InvalidMessage
from ._io import Truncated
from ._materials import EncryptedDataKey
from ._suites import (
    COMMIT_LEN,
    IV_LEN,
    MESSAGE_ID_LEN,
    PUBLIC_KEY_CONTEXT_KEY,
    RESERVED_CONTEXT_PREFIX,
    TAG_LEN,
    Suite,
    derive_keys,
)

__all__ = ["MessageInfo"]

VERSION = 2
CONTENT_FRAMED = 2
CONTENT_NONFRAMED = 1
MAX_FRAME_LENGTH = 2**31 - 1  # the ESDK's own cap; the format allows 2**32 - 1
_U16 = 0xFFFF
ZERO_IV = bytes(IV_LEN)


@dataclass(frozen=True, eq=False)
class MessageInfo:
    """What the authenticated header of a message says."""

    suite: Suite
    message_id: bytes
    context: Mapping[str, str]
    edks: tuple[EncryptedDataKey, ...]
    frame_length: int  # 0 for a non-framed message

    @property
    def framed(self) -> bool:
        """False for a non-framed message (content type 01, frame length 0), which keybridge reads
        but never writes."""
        return self.frame_length != 0

    def _more(self) -> str:
        return ""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(suite={self.suite.name}, message_id={self.message_id.hex()}, "
            f"context={dict(self.context)!r}, edks={len(self.edks)}, frame_length={self.frame_length}{self._more()})"
        )


@dataclass(frozen=True, eq=False)
class Header(MessageInfo):
    """A parsed header: the public info plus what authentication needs."""

    commitment: bytes = field(repr=False, default=b"")
    body: bytes = field(repr=False, default=b"")  # serialized header minus the tag (the tag's AAD)
    tag: bytes = field(repr=False, default=b"")

    def info(self) -> MessageInfo:
        """The public part."""
        return MessageInfo(self.suite, self.message_id, self.context, self.edks, self.frame_length)


def check_limit(name: str, value: int | None, *, minimum: int) -> None:
    """A caller's cap: an int of at least ``minimum``, or None for none."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise InvalidArgument(f"{name} must be an int of at least {minimum}, or None for no cap; got {value!r}")


def check_context(context: Mapping[str, str] | None) -> dict[str, str]:
    """Validate a caller's encryption context (strings, no reserved keys, fits the header)."""
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise InvalidArgument(f"context must be a mapping of str to str, got {type(context).__name__}")
    out: dict[str, str] = {}
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidArgument("context keys and values must be str")
        if k.startswith(RESERVED_CONTEXT_PREFIX):
            raise InvalidArgument(
                f"context key {k!r} uses the reserved prefix {RESERVED_CONTEXT_PREFIX!r}; choose another name"
            )
        out[k] = v
    return out  # encoding and size limits are checked when it is serialized


def serialize_context(context: Mapping[str, str]) -> bytes:
    """The ESDK serialization: u16 count, then u16-prefixed UTF-8 key and value, sorted by key bytes.

    An empty context serializes to nothing (the header then has AAD length 0).
    """
    if not context:
        return b""
    try:
        items = sorted((k.encode(), v.encode()) for k, v in context.items())
    except UnicodeEncodeError:
        raise InvalidArgument("context keys and values must be encodable as UTF-8") from None
    parts = [len(items).to_bytes(2, "big")]
    for k, v in items:
        if len(k) > _U16 or len(v) > _U16:
            raise InvalidArgument("a context key or value is longer than 65535 UTF-8 bytes")
        parts += (len(k).to_bytes(2, "big"), k, len(v).to_bytes(2, "big"), v)
    out = b"".join(parts)
    if len(out) > _U16:
        raise InvalidArgument(f"the serialized context is {len(out)} bytes; the header allows 65535")
    return out


def build_header(
    suite: Suite,
    message_id: bytes,
    context_bytes: bytes,
    edks: Sequence[EncryptedDataKey],
    frame_length: int,
    commitment: bytes,
) -> bytes:
    """The serialized header body (everything the header tag authenticates)."""
    if not 0 < len(edks) <= _U16:
        raise InvalidArgument(f"a message carries 1 to 65535 encrypted data keys, got {len(edks)}")
    parts = [
        bytes((VERSION,)),
        suite.to_bytes(2, "big"),
        message_id,
        len(context_bytes).to_bytes(2, "big"),
        context_bytes,
        len(edks).to_bytes(2, "big"),
    ]
    for edk in edks:
        for f in (edk.provider_id, edk.provider_info, edk.ciphertext):
            if len(f) > _U16:
                raise InvalidArgument("an encrypted data key field is longer than 65535 bytes")
            parts += (len(f).to_bytes(2, "big"), f)
    content = CONTENT_FRAMED if frame_length else CONTENT_NONFRAMED  # rewrap keeps a non-framed body
    parts += (bytes((content,)), frame_length.to_bytes(4, "big"), commitment)
    return b"".join(parts)


def header_tag(enc_key: bytes, body: bytes) -> bytes:
    """AES-GCM with the derived key over an empty plaintext, IV zero, AAD = header body."""
    return AESGCM(enc_key).encrypt(ZERO_IV, b"", body)


def authenticate(header: Header, data_key: bytes) -> bytes:
    """Check key commitment and the header tag; return the derived data key."""
    enc_key, commit_key = derive_keys(header.suite, data_key, header.message_id)
    if not hmac.compare_digest(commit_key, header.commitment):
        raise IntegrityError("key commitment mismatch: the data key does not belong to this message")
    try:
        AESGCM(enc_key).decrypt(ZERO_IV, header.tag, header.body)
    except InvalidTag:
        raise IntegrityError("the message header failed authentication: it was modified") from None
    return enc_key


def parse_header(take: Callable[[int], memoryview], *, max_edks: int | None = None) -> Header:
    """Read and check the structure of a header; nothing in it is authenticated yet."""
    raw: list[bytes] = []

    def get(n: int) -> bytes:
        b = bytes(take(n))
        raw.append(b)
        return b

    def field() -> bytes:
        return get(int.from_bytes(get(2), "big"))

    try:
        # Fixed-size runs are read in one piece: this runs once per message, often for tiny ones.
        lead = get(1 + 2 + MESSAGE_ID_LEN + 2)  # version, suite, message ID, AAD length
        if lead[0] != VERSION:
            hint = " (format 1.0 from a legacy suite)" if lead[0] == 1 else ""
            raise InvalidMessage(f"not a format 2.0 message: version byte is {lead[0]}{hint}")
        suite_id = int.from_bytes(lead[1:3], "big")
        try:
            suite = Suite(suite_id)
        except ValueError:
            raise InvalidMessage(f"unsupported algorithm suite 0x{suite_id:04X}") from None
        message_id = lead[3 : 3 + MESSAGE_ID_LEN]
        context = _parse_context(get(int.from_bytes(lead[-2:], "big")))
        if (PUBLIC_KEY_CONTEXT_KEY in context) != suite.signed:
            raise InvalidMessage(f"the {PUBLIC_KEY_CONTEXT_KEY!r} context entry does not match suite {suite.name}")
        count = int.from_bytes(get(2), "big")
        if count == 0:
            raise InvalidMessage("the header lists no encrypted data keys")
        if max_edks is not None and count > max_edks:
            raise InvalidMessage(f"the message has {count} encrypted data keys, more than max_encrypted_data_keys")
        edks = tuple(EncryptedDataKey(field(), field(), field()) for _ in range(count))
        tail = get(1 + 4 + COMMIT_LEN)  # content type, frame length, commit key
        tag = bytes(take(TAG_LEN))
    except Truncated:
        raise InvalidMessage("the message is truncated inside its header") from None
    frame_length = int.from_bytes(tail[1:5], "big")
    if tail[0] == CONTENT_NONFRAMED:
        if frame_length != 0:  # the spec's rule, which the ESDK enforces too
            raise InvalidMessage(f"a non-framed message must have frame length 0, this one has {frame_length}")
    elif tail[0] != CONTENT_FRAMED:
        raise InvalidMessage(f"content type {tail[0]} is unknown; messages are framed (02) or non-framed (01)")
    elif not 0 < frame_length <= MAX_FRAME_LENGTH:
        # The ESDK refuses the same; a reader also sizes its buffers by this authenticated number.
        raise InvalidMessage(f"frame length {frame_length} is outside 1 .. {MAX_FRAME_LENGTH}")
    return Header(suite, message_id, MappingProxyType(context), edks, frame_length, tail[5:], b"".join(raw), tag)


def _parse_context(data: bytes) -> dict[str, str]:
    if not data:
        return {}
    n = len(data)
    count = int.from_bytes(data[:2], "big") if n >= 2 else 0
    if count == 0:
        raise InvalidMessage("malformed encryption context: non-empty AAD with no entries")
    out: dict[str, str] = {}
    pos = 2
    try:
        for _ in range(count):
            fields = []
            for _kv in range(2):
                if pos + 2 > n:
                    raise InvalidMessage("malformed encryption context: truncated entry")
                ln = int.from_bytes(data[pos : pos + 2], "big")
                if pos + 2 + ln > n:
                    raise InvalidMessage("malformed encryption context: truncated entry")
                fields.append(data[pos + 2 : pos + 2 + ln].decode())
                pos += 2 + ln
            key, value = fields
            if key in out:
                raise InvalidMessage(f"malformed encryption context: duplicate key {key!r}")
            out[key] = value
    except UnicodeDecodeError:
        raise InvalidMessage("malformed encryption context: not UTF-8") from None
    if pos != n:
        raise InvalidMessage("malformed encryption context: length does not match its entries")
    return out
