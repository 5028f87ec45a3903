"""Streams, files and rewrap: small reads and writes, the signed final frame held back until the
signature verifies, atomic file output, and rewrap that keeps the body bytes."""

from __future__ import annotations

import gc
import io
import os
import random
import stat
from pathlib import Path

import pytest

from _envelope_support import RawAesSource, esdk_client, esdk_raw_aes
from keybridge.envelope import (
    AnyOf,
    Suite,
    decrypt,
    decrypt_file,
    encrypt,
    encrypt_file,
    open_decryptor,
    open_encryptor,
    rewrap,
    rewrap_file,
)
from keybridge.errors import IntegrityError, InvalidArgument, OperationNotPermitted, UnsupportedAlgorithm

SIGNED = Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384
F = 64


@pytest.fixture
def key() -> RawAesSource:
    return RawAesSource(os.urandom(32))


def header_length(msg: bytes) -> int:
    """Walk the header fields by the spec (independent of keybridge's parser)."""
    pos = 1 + 2 + 32
    pos += 2 + int.from_bytes(msg[pos : pos + 2], "big")
    count = int.from_bytes(msg[pos : pos + 2], "big")
    pos += 2
    for _ in range(count * 3):
        pos += 2 + int.from_bytes(msg[pos : pos + 2], "big")
    return pos + 1 + 4 + 32 + 16


def drain(reader, size: int, sink: bytearray) -> None:  # type: ignore[no-untyped-def]
    """Read until the end or an error, keeping what was released."""
    while chunk := reader.read(size):
        sink += chunk


@pytest.mark.parametrize("suite", list(Suite), ids=lambda s: f"0x{s:04X}")
@pytest.mark.parametrize("size", [0, 1, F, F + 1, 10 * F + 3])
def test_small_random_writes_and_reads_round_trip(size: int, suite: Suite, key: RawAesSource) -> None:
    rng = random.Random(size)
    plaintext = os.urandom(size)
    sink = io.BytesIO()
    with open_encryptor(sink, key, frame_length=F, suite=suite, context={"s": "1"}) as w:
        pos = 0
        while pos < size:
            n = rng.randint(0, 3 * F)
            assert w.write(plaintext[pos : pos + n]) == len(plaintext[pos : pos + n])
            pos += n
    msg = sink.getvalue()
    assert decrypt(msg, key).plaintext == plaintext
    assert esdk_client().decrypt(source=msg, key_provider=esdk_raw_aes(key.kek))[0] == plaintext
    for read_size in (1, 7, F, 5 * F):
        out = bytearray()
        with open_decryptor(io.BytesIO(msg), key, expected_context={"s": "1"}) as r:
            while chunk := r.read(read_size):
                assert len(chunk) <= read_size
                out += chunk
        assert out == plaintext
    with open_decryptor(io.BytesIO(msg), key) as r:
        assert r.read() == plaintext
        assert r.read(10) == b""


def test_writes_of_exact_frame_multiples_give_a_full_final_frame(key: RawAesSource) -> None:
    sink = io.BytesIO()
    with open_encryptor(sink, key, frame_length=F) as w:
        w.write(os.urandom(F))
        w.write(os.urandom(F))
    one_shot = encrypt(os.urandom(2 * F), key, frame_length=F)
    assert len(sink.getvalue()) == len(one_shot)  # same framing as one-shot: regular + full final


@pytest.mark.parametrize("read_size", [1, 100 * F])
def test_signed_final_frame_waits_for_the_signature(key: RawAesSource, read_size: int) -> None:
    plaintext = os.urandom(3 * F + 10)
    msg = bytearray(encrypt(plaintext, key, frame_length=F, suite=SIGNED))
    msg[-1] ^= 1  # break only the signature
    released = bytearray()
    r = open_decryptor(io.BytesIO(bytes(msg)), key)
    with pytest.raises(IntegrityError, match="signature"):
        drain(r, read_size, released)
    assert released == plaintext[: 3 * F]  # regular frames out, the final frame held back
    with pytest.raises(IntegrityError):
        r.read(1)  # a failed reader stays failed
    r.close()
    with pytest.raises(IntegrityError, match="signature"):
        decrypt(bytes(msg), key)  # one-shot: nothing at all, and the real reason


def test_unsigned_frames_are_released_as_they_authenticate(key: RawAesSource) -> None:
    plaintext = os.urandom(3 * F + 10)
    msg = bytearray(encrypt(plaintext, key, frame_length=F))
    msg[-1] ^= 1  # final frame tag
    released = bytearray()
    with open_decryptor(io.BytesIO(bytes(msg)), key) as r, pytest.raises(IntegrityError, match="frame 4"):
        drain(r, F, released)
    assert released == plaintext[: 3 * F]


def test_allow_signed_false_refuses_signed_messages_before_any_key_is_used(key: RawAesSource) -> None:
    signed = encrypt(os.urandom(3 * F), key, frame_length=F, suite=Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384)
    unsigned = encrypt(b"plain", key, frame_length=F)
    calls_before = key.calls
    with pytest.raises(OperationNotPermitted, match="allow_signed=False"):
        open_decryptor(io.BytesIO(signed), key, allow_signed=False)
    assert key.calls == calls_before  # refused on the header alone: no data key was unwrapped
    assert open_decryptor(io.BytesIO(unsigned), key, allow_signed=False).read() == b"plain"


def test_exception_inside_encryptor_block_leaves_an_invalid_message(key: RawAesSource) -> None:
    sink = io.BytesIO()

    def produce() -> None:
        with open_encryptor(sink, key, frame_length=F) as w:
            w.write(os.urandom(5 * F))
            raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        produce()
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(sink.getvalue(), key)


def test_dropped_encryptor_is_not_sealed(key: RawAesSource) -> None:
    sink = io.BytesIO()
    w = open_encryptor(sink, key, frame_length=F)
    w.write(os.urandom(2 * F))
    del w
    gc.collect()
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(sink.getvalue(), key)


def test_declared_plaintext_length_is_enforced(key: RawAesSource) -> None:
    with (
        pytest.raises(InvalidArgument, match="plaintext_length"),
        open_encryptor(io.BytesIO(), key, plaintext_length=3) as w,
    ):
        w.write(b"four")
    w = open_encryptor(io.BytesIO(), key, plaintext_length=3)
    w.write(b"ab")
    with pytest.raises(InvalidArgument, match="plaintext_length"):
        w.close()


def test_paths_and_text_streams_are_refused_where_streams_belong(key: RawAesSource, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="encrypt_file"):
        open_encryptor(str(tmp_path / "x"), key)
    with pytest.raises(InvalidArgument, match="binary"):
        open_decryptor(io.StringIO("x"), key)
    with pytest.raises(InvalidArgument, match="file path"):
        encrypt_file(io.BytesIO(b"x"), tmp_path / "y", key)  # type: ignore[arg-type]


# ---- files -----------------------------------------------------------------------------------


def test_file_round_trip_is_private_and_interoperable(key: RawAesSource, tmp_path: Path) -> None:
    plaintext = os.urandom(300_000)
    (tmp_path / "in").write_bytes(plaintext)
    info = encrypt_file(tmp_path / "in", tmp_path / "enc", key, context={"f": "1"}, suite=SIGNED)
    assert info.suite is SIGNED
    assert info.context["f"] == "1"
    assert (
        esdk_client().decrypt(source=(tmp_path / "enc").read_bytes(), key_provider=esdk_raw_aes(key.kek))[0]
        == plaintext
    )
    out = decrypt_file(tmp_path / "enc", tmp_path / "out", key, expected_context={"f": "1"})
    assert (tmp_path / "out").read_bytes() == plaintext
    assert out.message_id == info.message_id
    for name in ("enc", "out"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "in", "out"]


def test_failure_mid_way_leaves_no_output_and_no_temp(key: RawAesSource, tmp_path: Path) -> None:
    plaintext = os.urandom(200_000)
    msg = bytearray(encrypt(plaintext, key, frame_length=4096))
    msg[-20] ^= 1  # the last frame fails after many frames were already written to the temp file
    (tmp_path / "enc").write_bytes(bytes(msg))
    with pytest.raises(IntegrityError):
        decrypt_file(tmp_path / "enc", tmp_path / "out", key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc"]
    (tmp_path / "out").write_bytes(b"previous")  # an existing destination survives a failure untouched
    with pytest.raises(IntegrityError):
        decrypt_file(tmp_path / "enc", tmp_path / "out", key, overwrite=True)
    assert (tmp_path / "out").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "out"]


def test_encrypt_file_failure_leaves_nothing(tmp_path: Path) -> None:
    class Broken(RawAesSource):
        def encryption_materials(self, **kw):  # type: ignore[no-untyped-def]
            raise IntegrityError("KEK unavailable")

    (tmp_path / "in").write_bytes(b"data")
    with pytest.raises(IntegrityError):
        encrypt_file(tmp_path / "in", tmp_path / "enc", Broken(os.urandom(32)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_encrypt_file_in_place(key: RawAesSource, tmp_path: Path) -> None:
    p = tmp_path / "doc"
    p.write_bytes(b"in place")
    encrypt_file(p, p, key, overwrite=True)
    assert decrypt(p.read_bytes(), key).plaintext == b"in place"


# ---- rewrap ----------------------------------------------------------------------------------


def test_rewrap_replaces_edks_and_keeps_body_bytes(tmp_path: Path) -> None:
    old, new = RawAesSource(os.urandom(32)), RawAesSource(os.urandom(32), name="kek-2")
    plaintext = os.urandom(5 * F + 1)
    msg = encrypt(plaintext, old, context={"c": "1"}, frame_length=F)
    out = io.BytesIO()
    info = rewrap(io.BytesIO(msg), out, unwrap_with=old, wrap_for=new)
    rewrapped = out.getvalue()
    assert rewrapped[header_length(rewrapped) :] == msg[header_length(msg) :]  # body + tail identical
    assert rewrapped[3:35] == msg[3:35]
    assert info.message_id == msg[3:35]
    assert [e.provider_info[:5] for e in info.edks] == [b"kek-2"]
    assert decrypt(rewrapped, new, expected_context={"c": "1"}).plaintext == plaintext
    with pytest.raises(IntegrityError):
        decrypt(rewrapped, old)  # the old EDK is gone
    assert esdk_client().decrypt(source=rewrapped, key_provider=esdk_raw_aes(new.kek, name="kek-2"))[0] == plaintext


def test_rewrap_can_add_a_key(tmp_path: Path) -> None:
    a, b = RawAesSource(os.urandom(32)), RawAesSource(os.urandom(32), name="kek-b")
    msg = encrypt(b"payload", a)
    (tmp_path / "m").write_bytes(msg)
    info = rewrap_file(tmp_path / "m", tmp_path / "m", unwrap_with=a, wrap_for=AnyOf(a, b), overwrite=True)
    assert len(info.edks) == 2
    data = (tmp_path / "m").read_bytes()
    assert decrypt(data, a).plaintext == decrypt(data, b).plaintext == b"payload"
    assert data[header_length(data) :] == msg[header_length(msg) :]


def test_rewrap_refuses_signed_messages_and_bad_keys_without_writing(key: RawAesSource) -> None:
    out = io.BytesIO()
    with pytest.raises(UnsupportedAlgorithm, match="re-encrypt"):
        rewrap(io.BytesIO(encrypt(b"x", key, suite=SIGNED)), out, unwrap_with=key, wrap_for=key)
    with pytest.raises(IntegrityError):
        rewrap(io.BytesIO(encrypt(b"x", key)), out, unwrap_with=RawAesSource(os.urandom(32)), wrap_for=key)
    tampered = bytearray(encrypt(b"x", key))
    tampered[3] ^= 1  # message ID: the header no longer authenticates, so it must not be re-signed
    with pytest.raises(IntegrityError):
        rewrap(io.BytesIO(bytes(tampered)), out, unwrap_with=key, wrap_for=key)
    assert out.getvalue() == b""
