"""Framed message body (``data-format/message-body.md``, ``message-body-aad.md``).

Regular frame: seq u32 | IV (12) | ciphertext (frame length) | tag (16).
Final frame:   FFFFFFFF | seq u32 | IV (12) | content length u32 | ciphertext | tag (16).
IV = the sequence number as 12 big-endian bytes; AAD = message ID | "AWSKMSEncryptionClient Frame"
(or "... Final Frame") | seq u32 | content length u64. Sequence numbers start at 1.
Non-framed body (read only): IV (12) | content length u64 | ciphertext | tag (16), AAD = message ID |
"AWSKMSEncryptionClient Single Block" | u32 1 | content length u64.

The codec writes and reads frames in place through memoryviews with ``encrypt_into`` and
``decrypt_into``; it never allocates per frame beyond the 44-byte AAD.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IntegrityError, InvalidArgument
from ._suites import IV_LEN, TAG_LEN

__all__: list[str] = []

FINAL_MARKER = 0xFFFFFFFF
MAX_SEQ = 0xFFFFFFFF  # the final frame may use it; regular frames stop one short
REGULAR_PREFIX = 4 + IV_LEN  # seq, IV
FINAL_PREFIX = 4 + 4 + IV_LEN + 4  # marker, seq, IV, length
REGULAR_OVERHEAD = REGULAR_PREFIX + TAG_LEN
FINAL_OVERHEAD = FINAL_PREFIX + TAG_LEN

_SEQ_IV = struct.Struct(">I8xI")  # seq, then the IV (8 zero bytes + seq)
_FINAL_HEAD = struct.Struct(">II8xII")  # marker, seq, IV, length
_AAD_TAIL = struct.Struct(">IQ")


def frame_count(n: int, frame_length: int) -> int:
    """Frames for ``n`` plaintext bytes: full regular frames, then a final frame of 0..frame_length."""
    return max(1, -(-n // frame_length))


def check_frame_count(frames: int, frame_length: int) -> None:
    """The format numbers frames with a u32."""
    if frames > MAX_SEQ:
        raise InvalidArgument(
            f"the plaintext needs {frames} frames of {frame_length} bytes, more than the format's {MAX_SEQ};"
            " use a larger frame_length"
        )


def iv_for(seq: int) -> bytes:
    """The frame IV: the sequence number padded to 12 bytes."""
    return seq.to_bytes(IV_LEN, "big")


class FrameCodec:
    """Seals and opens the frames of one message."""

    __slots__ = ("_aead", "_final_aad", "_regular_aad", "_single_aad", "frame_length")

    def __init__(self, enc_key: bytes, message_id: bytes, frame_length: int) -> None:
        self._aead = AESGCM(enc_key)
        self._regular_aad = message_id + b"AWSKMSEncryptionClient Frame"
        self._final_aad = message_id + b"AWSKMSEncryptionClient Final Frame"
        self._single_aad = message_id + b"AWSKMSEncryptionClient Single Block"
        self.frame_length = frame_length

    def seal_regular(self, seq: int, plaintext: memoryview, out: memoryview) -> None:
        """Write a regular frame for ``plaintext`` (exactly frame_length) into ``out`` (frame_length + 32)."""
        _SEQ_IV.pack_into(out, 0, seq, seq)
        aad = self._regular_aad + _AAD_TAIL.pack(seq, self.frame_length)
        self._aead.encrypt_into(out[4:REGULAR_PREFIX], plaintext, aad, out[REGULAR_PREFIX:])

    def seal_final(self, seq: int, plaintext: memoryview, out: memoryview) -> None:
        """Write the final frame for ``plaintext`` into ``out`` (len(plaintext) + 40)."""
        n = len(plaintext)
        _FINAL_HEAD.pack_into(out, 0, FINAL_MARKER, seq, seq, n)
        aad = self._final_aad + _AAD_TAIL.pack(seq, n)
        self._aead.encrypt_into(out[8 : 8 + IV_LEN], plaintext, aad, out[FINAL_PREFIX:])

    def open(self, seq: int, final: bool, iv: memoryview, sealed: memoryview, out: memoryview) -> None:
        """Check and decrypt a frame's ``ciphertext || tag`` into ``out``.

        On failure ``out`` is wiped, because ``decrypt_into`` writes plaintext before it checks the tag.
        """
        if iv != iv_for(seq):
            raise IntegrityError(f"frame {seq} has a wrong IV: the message was modified")
        self._open(self._final_aad if final else self._regular_aad, seq, iv, sealed, out, f"frame {seq}")

    def open_single(self, iv: memoryview, sealed: memoryview, out: memoryview) -> None:
        """:meth:`open` for the one block of a non-framed body. Its IV is not checked against a
        sequence number: the spec asks only for a unique one (the Python ESDK happens to write 1),
        and the tag authenticates it."""
        self._open(self._single_aad, 1, iv, sealed, out, "the non-framed body")

    def _open(self, label: bytes, seq: int, iv: memoryview, sealed: memoryview, out: memoryview, what: str) -> None:
        aad = label + _AAD_TAIL.pack(seq, len(out))
        try:
            self._aead.decrypt_into(iv, sealed, aad, out)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise IntegrityError(f"{what} failed authentication: the message was modified") from None
