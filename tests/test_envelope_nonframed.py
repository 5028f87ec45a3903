"""Non-framed messages (content type 01), as aws-encryption-sdk writes them with frame_length=0:
read by the one-shot, stream and file APIs; tampering and truncation are typed errors; the
stream reader holds at most max_nonframed_bytes and releases nothing before the tag verifies."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from aws_encryption_sdk.identifiers import Algorithm
from cryptography.hazmat.primitives.asymmetric import rsa

from _envelope_support import RawAesSource, esdk_client, esdk_raw_aes, esdk_raw_rsa
from keybridge import InMemoryProvider
from keybridge.envelope import Keyring, Suite, decrypt, decrypt_file, open_decryptor, rewrap
from keybridge.envelope._decrypt import MAX_NONFRAMED_BYTES
from keybridge.errors import IntegrityError, InvalidArgument, InvalidMessage

SUITES = {
    Suite.AES256_GCM_HKDF_SHA512_COMMIT: Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
    Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384: Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384,
}
CTX = {"purpose": "non-framed"}
BODY_PREFIX = 12 + 8  # IV, u64 content length
TAG = 16


@pytest.fixture(scope="module")
def kek() -> bytes:
    return os.urandom(32)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _keys(kind: str, kek: bytes, rsa_key: rsa.RSAPrivateKey):  # type: ignore[no-untyped-def]
    """(keybridge keys, ESDK master key) for one KEK."""
    if kind == "raw-aes":
        return RawAesSource(kek), esdk_raw_aes(kek)
    provider = InMemoryProvider()
    provider.import_key("rsa", rsa_key)
    keyring = Keyring(provider.key("rsa"), namespace="keybridge-test", name="rsa-1")
    return keyring, esdk_raw_rsa(rsa_key, "RSA_OAEP_SHA256_MGF1")


def _nonframed(plaintext: bytes, mk, suite: Suite) -> bytes:  # type: ignore[no-untyped-def]
    message, header = esdk_client().encrypt(
        source=plaintext, key_provider=mk, encryption_context=CTX, algorithm=SUITES[suite], frame_length=0
    )
    assert header.frame_length == 0
    assert header.content_type.value == 1
    return bytes(message)


def _body_start(message: bytes, plaintext_len: int) -> int:
    """Where the body of an unsigned non-framed message starts (it ends the message)."""
    return len(message) - TAG - plaintext_len - BODY_PREFIX


@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: f"0x{s:04X}")
@pytest.mark.parametrize("size", [0, 1, 3 * 2**20 + 7], ids=["empty", "one-byte", "3MiB"])
@pytest.mark.parametrize("kind", ["raw-aes", "raw-rsa"])
def test_esdk_nonframed_messages_decrypt(
    kind: str, size: int, suite: Suite, kek: bytes, rsa_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    keys, mk = _keys(kind, kek, rsa_key)
    plaintext = os.urandom(size)
    message = _nonframed(plaintext, mk, suite)

    result = decrypt(message, keys, expected_context=CTX)
    assert result.plaintext == plaintext
    assert (result.suite, result.frame_length, result.framed) == (suite, 0, False)

    with open_decryptor(io.BytesIO(message), keys) as reader:
        assert not reader.info.framed
        chunks = []
        while chunk := reader.read(1 << 16):
            chunks.append(chunk)
    assert b"".join(chunks) == plaintext

    src, dst = tmp_path / "m.esdk", tmp_path / "m.out"
    src.write_bytes(message)
    assert decrypt_file(src, dst, keys).frame_length == 0
    assert dst.read_bytes() == plaintext


@pytest.mark.parametrize("suite", list(SUITES), ids=lambda s: f"0x{s:04X}")
def test_every_tampered_byte_and_every_cut_is_a_typed_error(suite: Suite, kek: bytes) -> None:
    keys, mk = RawAesSource(kek), esdk_raw_aes(kek)
    plaintext = os.urandom(40)
    message = _nonframed(plaintext, mk, suite)
    for i in range(len(message)):
        bad = bytearray(message)
        bad[i] ^= 0x01
        with pytest.raises((IntegrityError, InvalidMessage)):
            decrypt(bytes(bad), keys)
        # The stream reader releases nothing of a damaged non-framed body: its one tag is at the end.
        try:
            reader = open_decryptor(io.BytesIO(bytes(bad)), keys)
        except (IntegrityError, InvalidMessage):
            continue
        with pytest.raises((IntegrityError, InvalidMessage)):
            reader.read(1)
    for cut in range(len(message)):
        with pytest.raises((IntegrityError, InvalidMessage)):
            decrypt(message[:cut], keys)
    with pytest.raises(IntegrityError, match="after the end"):
        decrypt(message + b"\0", keys)


def test_stream_cap_refuses_a_long_body_before_reading_it(kek: bytes) -> None:
    keys, mk = RawAesSource(kek), esdk_raw_aes(kek)
    suite = Suite.AES256_GCM_HKDF_SHA512_COMMIT
    plaintext = os.urandom(1001)
    message = _nonframed(plaintext, mk, suite)
    start = _body_start(message, len(plaintext))

    with open_decryptor(io.BytesIO(message), keys, max_nonframed_bytes=1001) as reader:
        assert reader.read() == plaintext
    src = io.BytesIO(message)
    reader = open_decryptor(src, keys, max_nonframed_bytes=1000)
    with pytest.raises(InvalidMessage, match=r"1001 bytes, more than the 1000 .*max_nonframed_bytes"):
        reader.read(1)
    assert src.tell() == start + BODY_PREFIX  # the body itself was never read
    with pytest.raises(InvalidArgument, match="max_nonframed_bytes"):
        open_decryptor(io.BytesIO(message), keys, max_nonframed_bytes=-1)

    # The default cap: a header that authenticates, then a body announcing 64 MiB + 1.
    forged = bytearray(message)
    forged[start + 12 : start + 20] = (MAX_NONFRAMED_BYTES + 1).to_bytes(8, "big")
    assert MAX_NONFRAMED_BYTES == 64 * 2**20
    with pytest.raises(InvalidMessage, match=str(MAX_NONFRAMED_BYTES)):
        open_decryptor(io.BytesIO(bytes(forged)), keys).read()
    # One-shot decrypt has the message in memory already: no cap, just the truth about its length.
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(bytes(forged), keys)


def test_nonframed_header_rules(kek: bytes) -> None:
    keys, mk = RawAesSource(kek), esdk_raw_aes(kek)
    message = _nonframed(b"x", mk, Suite.AES256_GCM_HKDF_SHA512_COMMIT)
    header_end = _body_start(message, 1)
    type_at = header_end - 16 - 32 - 4 - 1  # content type, frame length, commit key, header tag
    assert message[type_at : type_at + 5] == b"\x01\0\0\0\0"
    bad = bytearray(message)
    bad[type_at + 4] = 1
    with pytest.raises(InvalidMessage, match="non-framed message must have frame length 0"):
        decrypt(bytes(bad), keys)
    bad = bytearray(message)
    bad[type_at] = 3
    with pytest.raises(InvalidMessage, match="content type 3"):
        decrypt(bytes(bad), keys)


def test_rewrap_keeps_a_nonframed_body_the_esdk_still_reads(kek: bytes) -> None:
    plaintext = os.urandom(5000)
    message = _nonframed(plaintext, esdk_raw_aes(kek), Suite.AES256_GCM_HKDF_SHA512_COMMIT)
    new_kek = os.urandom(32)
    out = io.BytesIO()
    info = rewrap(io.BytesIO(message), out, unwrap_with=RawAesSource(kek), wrap_for=RawAesSource(new_kek))
    assert not info.framed
    got, header = esdk_client().decrypt(source=out.getvalue(), key_provider=esdk_raw_aes(new_kek))
    assert got == plaintext
    assert header.frame_length == 0
