"""The bytes keybridge writes, checked field by field against the ESDK format 2.0 specification
with independent primitives (cryptography's HKDF and AES-GCM, the ESDK's context serializer)."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping

import pytest
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy
from aws_encryption_sdk.internal.formatting.encryption_context import serialize_encryption_context
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from _envelope_support import RawAesSource, esdk_client, esdk_raw_aes
from keybridge.envelope import (
    DEFAULT_FRAME_LENGTH,
    DEFAULT_SUITE,
    EncryptionMaterials,
    Suite,
    decrypt,
    encrypt,
)
from keybridge.envelope._suites import derive_keys
from keybridge.errors import IntegrityError, InvalidArgument, InvalidMessage

SIGNED = Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384


class Recording(RawAesSource):
    """Remembers the data key it handed out, so the test can recompute everything."""

    data_key = b""

    def encryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], plaintext_length: int | None
    ) -> EncryptionMaterials:
        m = super().encryption_materials(suite_id=suite_id, context=context, plaintext_length=plaintext_length)
        self.data_key = m.data_key
        return m


def hkdf(data_key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA512(), length=32, salt=salt, info=info).derive(data_key)


class Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        assert len(out) == n
        self.pos += n
        return out

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")


def test_defaults_are_committing_suite_and_64k_frames() -> None:
    assert DEFAULT_SUITE == 0x0478
    assert DEFAULT_FRAME_LENGTH == 65536
    msg = encrypt(b"x", RawAesSource(os.urandom(32)))
    assert msg[:3] == b"\x02\x04\x78"


def test_key_derivation_matches_hkdf_sha512() -> None:
    dk, mid = os.urandom(32), os.urandom(32)
    for suite in Suite:
        enc, commit = derive_keys(suite, dk, mid)
        assert enc == hkdf(dk, mid, struct.pack(">H", suite) + b"DERIVEKEY")
        assert commit == hkdf(dk, mid, b"COMMITKEY")


@pytest.mark.parametrize("size", [0, 5, 48, 100])
def test_every_field_of_an_unsigned_message(size: int) -> None:
    src = Recording(os.urandom(32))
    ctx = {"zeta": "1", "alpha": "2", "é": "3", "Z": ""}
    plaintext = os.urandom(size)
    frame = 48
    msg = encrypt(plaintext, src, context=ctx, frame_length=frame)
    c = Cursor(msg)
    assert c.take(1) == b"\x02"
    assert c.u16() == 0x0478
    mid = c.take(32)
    aad = c.take(c.u16())
    assert aad == serialize_encryption_context(ctx)  # sorted by UTF-8 key bytes, ESDK's own serializer
    assert c.u16() == 1
    pid, info, edk_ct = c.take(c.u16()), c.take(c.u16()), c.take(c.u16())
    assert pid == b"keybridge-test"
    assert info[:-20] == b"kek-1"
    assert info[-20:-12] == struct.pack(">II", 128, 12)
    assert len(edk_ct) == 32 + 16
    assert c.take(1) == b"\x02"  # framed
    assert c.u32() == frame
    commitment = c.take(32)
    body_end = c.pos
    tag = c.take(16)
    dk = src.data_key
    enc_key = hkdf(dk, mid, b"\x04\x78DERIVEKEY")
    assert commitment == hkdf(dk, mid, b"COMMITKEY")
    assert AESGCM(enc_key).encrypt(bytes(12), b"", msg[:body_end]) == tag
    aead = AESGCM(enc_key)
    out = b""
    seq = 1
    while True:
        first = c.u32()
        if first == 0xFFFFFFFF:
            assert c.u32() == seq
            iv = c.take(12)
            n = c.u32()
            assert n <= frame
            label = b"AWSKMSEncryptionClient Final Frame"
        else:
            assert first == seq
            iv = c.take(12)
            n = frame
            label = b"AWSKMSEncryptionClient Frame"
        assert iv == seq.to_bytes(12, "big")
        sealed = c.take(n + 16)
        out += aead.decrypt(iv, sealed, mid + label + struct.pack(">IQ", seq, n))
        if first == 0xFFFFFFFF:
            break
        seq += 1
    assert c.pos == len(msg)  # no footer for 0x0478
    assert out == plaintext
    assert seq == max(1, -(-size // frame))  # exact multiples end in a full final frame


def test_signed_message_footer_is_a_103_byte_der_signature() -> None:
    msg = encrypt(b"hello", RawAesSource(os.urandom(32)), suite=SIGNED)
    n = int.from_bytes(msg[-105:-103], "big")
    assert n == 103
    assert msg[-103] == 0x30  # DER SEQUENCE


def test_empty_context_has_zero_aad_length() -> None:
    msg = encrypt(b"", RawAesSource(os.urandom(32)))
    assert msg[35:37] == b"\x00\x00"
    assert msg[37:39] == b"\x00\x01"  # the EDK count follows at once


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context": {"aws-crypto-public-key": "x"}}, "reserved"),
        ({"context": {"aws-crypto-anything": "x"}}, "reserved"),
        ({"context": {"k": 1}}, "str"),
        ({"context": ["k", "v"]}, "mapping"),
        ({"context": {"k": "v" * 70000}}, "65535"),
        ({"frame_length": 0}, "frame_length"),
        ({"frame_length": 2**31}, "frame_length"),
        ({"frame_length": True}, "frame_length"),
        ({"suite": 0x0014}, "unsupported algorithm suite"),
    ],
)
def test_bad_encrypt_arguments_are_invalid_argument(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidArgument, match=match):
        encrypt(b"data", RawAesSource(os.urandom(32)), **kwargs)


def test_text_is_refused_as_data() -> None:
    with pytest.raises(InvalidArgument, match="encode"):
        encrypt("text", RawAesSource(os.urandom(32)))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="bytes-like"):
        decrypt("text", RawAesSource(os.urandom(32)))  # type: ignore[arg-type]


def test_expected_context_mismatch_fails_before_any_key_is_used() -> None:
    src = RawAesSource(os.urandom(32))
    msg = encrypt(b"data", src, context={"tenant": "a", "env": "prod"})
    assert decrypt(msg, src, expected_context={"tenant": "a"}).plaintext == b"data"
    calls = src.calls
    for expected in ({"tenant": "b"}, {"missing": "x"}, {"tenant": "a", "env": "dev"}):
        with pytest.raises(IntegrityError, match="expected_context"):
            decrypt(msg, src, expected_context=expected)
    assert src.calls == calls


def test_expected_context_of_the_wrong_type_is_invalid_argument() -> None:
    src = RawAesSource(os.urandom(32))
    msg = encrypt(b"data", src, context={"n": "1"})
    for bad in ({"n": 1}, {1: "1"}, [("n", "1")]):
        with pytest.raises(InvalidArgument, match="expected_context"):
            decrypt(msg, src, expected_context=bad)  # type: ignore[arg-type]


def test_max_encrypted_data_keys_fails_before_any_key_is_used() -> None:
    src = RawAesSource(os.urandom(32))
    msg = encrypt(b"data", src)
    with pytest.raises(InvalidArgument, match="max_encrypted_data_keys"):
        decrypt(msg, src, max_encrypted_data_keys=0)
    assert decrypt(msg, src, max_encrypted_data_keys=1).plaintext == b"data"


def test_wrong_key_is_integrity_error() -> None:
    msg = encrypt(b"data", RawAesSource(os.urandom(32)))
    with pytest.raises(IntegrityError):
        decrypt(msg, RawAesSource(os.urandom(32)))


def test_commitment_mismatch_is_detected_even_with_a_valid_header_tag() -> None:
    """A data key that decrypts the header but not the commitment (the invisible-salamander
    attack) is refused: change the commit key, recompute the tag with the real derived key."""
    src = Recording(os.urandom(32))
    msg = bytearray(encrypt(b"data", src))
    body_end = len(msg) - 16 - (4 + 4 + 12 + 4 + 4 + 16)
    msg[body_end - 32] ^= 1
    mid = bytes(msg[3:35])
    enc_key = hkdf(src.data_key, mid, b"\x04\x78DERIVEKEY")
    msg[body_end : body_end + 16] = AESGCM(enc_key).encrypt(bytes(12), b"", bytes(msg[:body_end]))
    with pytest.raises(IntegrityError, match="commitment"):
        decrypt(bytes(msg), src)


def test_legacy_format_1_is_invalid_message_and_non_framed_is_read() -> None:
    import aws_encryption_sdk

    kek = os.urandom(32)
    legacy = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)
    v1, _ = legacy.encrypt(source=b"data", key_provider=esdk_raw_aes(kek))
    with pytest.raises(InvalidMessage, match="version"):
        decrypt(v1, RawAesSource(kek))
    unframed, _ = esdk_client().encrypt(
        source=b"data",
        key_provider=esdk_raw_aes(kek),
        frame_length=0,
        algorithm=Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
    )
    assert decrypt(unframed, RawAesSource(kek)).plaintext == b"data"  # tests/test_envelope_nonframed.py


def test_result_carries_the_authenticated_header() -> None:
    src = RawAesSource(os.urandom(32))
    msg = encrypt(b"s3cr", src, context={"a": "b"}, frame_length=1000)
    r = decrypt(msg, src)
    assert (r.suite, r.frame_length, dict(r.context), r.message_id) == (DEFAULT_SUITE, 1000, {"a": "b"}, msg[3:35])
    assert [e.provider_id for e in r.edks] == [b"keybridge-test"]
    assert "s3cr" not in repr(r)
    assert "plaintext=<4 bytes>" in repr(r)
