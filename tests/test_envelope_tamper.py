"""Exhaustive tampering on small messages: every single-bit flip of every byte and every
truncation is rejected with IntegrityError or InvalidMessage (nothing else), the one-shot API
returns no plaintext, and the streaming reader never hands out a byte that is not authentic."""

from __future__ import annotations

import io
import os

import pytest

from _envelope_support import RawAesSource
from keybridge.envelope import Suite, decrypt, encrypt, open_decryptor
from keybridge.errors import IntegrityError, InvalidMessage

FRAME = 16
PLAINTEXT = bytes(range(40))  # two regular frames and an 8-byte final frame
REJECTED = (IntegrityError, InvalidMessage)


@pytest.fixture(scope="module")
def key() -> RawAesSource:
    return RawAesSource(os.urandom(32))


@pytest.fixture(scope="module", params=list(Suite), ids=lambda s: f"0x{s:04X}")
def message(request: pytest.FixtureRequest, key: RawAesSource) -> tuple[Suite, bytes]:
    suite = request.param
    return suite, encrypt(PLAINTEXT, key, context={"k": "v"}, frame_length=FRAME, suite=suite)


def stream_released(data: bytes, key: RawAesSource, size: int = 3) -> tuple[bytes, BaseException | None]:
    """Everything the streaming reader hands out (``size`` bytes per read), and the error that stopped it."""
    out = bytearray()
    try:
        with open_decryptor(io.BytesIO(data), key) as r:
            while chunk := r.read(size):
                out += chunk
    except Exception as exc:
        return bytes(out), exc
    return bytes(out), None


def check_rejected(data: bytes, key: RawAesSource, suite: Suite, where: str, size: int = 3) -> None:
    with pytest.raises(REJECTED):
        decrypt(data, key)
    released, exc = stream_released(data, key, size)
    assert isinstance(exc, REJECTED), f"{where}: stream raised {exc!r}"
    assert released == PLAINTEXT[: len(released)], f"{where}: inauthentic plaintext released"
    # The final frame (8 bytes) is never released from a rejected message, signed or not.
    assert len(released) <= 2 * FRAME, f"{where}: final frame released"


def test_untampered_message_decrypts(message: tuple[Suite, bytes], key: RawAesSource) -> None:
    _, msg = message
    assert decrypt(msg, key).plaintext == PLAINTEXT
    assert stream_released(msg, key) == (PLAINTEXT, None)


def test_every_bit_flip_is_rejected(message: tuple[Suite, bytes], key: RawAesSource) -> None:
    suite, msg = message
    for i in range(len(msg)):
        for bit in range(8):
            bad = bytearray(msg)
            bad[i] ^= 1 << bit
            # Small reads go through the staging buffer, large ones decrypt into the caller's buffer.
            check_rejected(bytes(bad), key, suite, f"byte {i} bit {bit}", 3 if bit % 2 else 4096)


def test_every_truncation_is_rejected(message: tuple[Suite, bytes], key: RawAesSource) -> None:
    suite, msg = message
    for n in range(len(msg)):
        check_rejected(msg[:n], key, suite, f"truncated to {n}")


def test_truncation_inside_header_is_invalid_message_and_after_it_integrity_error(
    message: tuple[Suite, bytes], key: RawAesSource
) -> None:
    _, msg = message
    header_len = 1 + 2 + 32 + 2 + (2 + 2 + 1 + 2 + 1) + 2  # up to the EDK count, context {"k": "v"}
    with pytest.raises(InvalidMessage, match="truncated"):
        decrypt(msg[:header_len], key)
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(msg[:-1], key)


def test_trailing_data_is_rejected(message: tuple[Suite, bytes], key: RawAesSource) -> None:
    suite, msg = message
    check_rejected(msg + b"\0", key, suite, "trailing byte")


def test_reordered_and_dropped_frames_are_rejected(key: RawAesSource) -> None:
    msg = encrypt(PLAINTEXT, key, frame_length=FRAME)
    regular = 4 + 12 + FRAME + 16
    body = len(msg) - 2 * regular - (4 + 4 + 12 + 4 + 8 + 16)
    f1, f2 = msg[body : body + regular], msg[body + regular : body + 2 * regular]
    tail = msg[body + 2 * regular :]
    for bad in (msg[:body] + f2 + f1 + tail, msg[:body] + f1 + tail, msg[:body] + tail):
        check_rejected(bad, key, Suite.AES256_GCM_HKDF_SHA512_COMMIT, "frames moved")
