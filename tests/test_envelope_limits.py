"""Resource limits and robustness of the decrypt path against authentic-looking but hostile
messages: a header is forged with a known data key (what any encrypter can do), and memory is
measured with tracemalloc (allocation sizes, not time)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Mapping, Sequence

import pytest

from _envelope_support import RawAesSource
from keybridge.envelope import (
    DataKeyCache,
    EncryptedDataKey,
    Suite,
    decrypt,
    encrypt,
    open_decryptor,
    open_encryptor,
)
from keybridge.envelope._header import build_header, header_tag, serialize_context
from keybridge.envelope._suites import derive_keys
from keybridge.errors import IntegrityError, InvalidArgument, InvalidMessage

SIGNED = Suite.AES256_GCM_HKDF_SHA512_COMMIT_ECDSA_P384


@pytest.fixture(scope="module")
def key() -> RawAesSource:
    return RawAesSource(os.urandom(32))


def forged_header(key: RawAesSource, frame_length: int) -> bytes:
    """A header that authenticates under ``key``, with any frame length (no encrypt API writes these)."""
    suite = Suite.AES256_GCM_HKDF_SHA512_COMMIT
    m = key.encryption_materials(suite_id=int(suite), context={}, plaintext_length=None)
    message_id = os.urandom(32)
    enc_key, commit_key = derive_keys(suite, m.data_key, message_id)
    body = build_header(suite, message_id, serialize_context({}), m.edks, frame_length, commit_key)
    return body + header_tag(enc_key, body)


def both_apis(msg: bytes, key: RawAesSource) -> list[Callable[[], object]]:
    return [lambda: decrypt(msg, key), lambda: open_decryptor(io.BytesIO(msg), key).read()]


def peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
    except (IntegrityError, InvalidMessage):
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_frame_length_above_the_esdk_maximum_is_refused(key: RawAesSource) -> None:
    msg = forged_header(key, 2**32 - 1) + (1).to_bytes(4, "big") + (1).to_bytes(12, "big") + b"x" * 64
    for run in both_apis(msg, key):
        with pytest.raises(InvalidMessage, match="frame length"):
            run()


@pytest.mark.parametrize("final", [False, True], ids=["regular", "final"])
def test_a_frame_that_never_arrives_costs_no_memory(key: RawAesSource, final: bool) -> None:
    # A tiny message announcing a 2 GiB frame must fail as truncated without allocating the frame.
    seq_iv = (1).to_bytes(4, "big") + (1).to_bytes(12, "big")
    head = b"\xff\xff\xff\xff" + seq_iv + (2**31 - 1).to_bytes(4, "big") if final else seq_iv
    msg = forged_header(key, 2**31 - 1) + head + b"x" * 100
    for run in both_apis(msg, key):
        with pytest.raises(IntegrityError, match="truncated"):
            run()
        assert peak_bytes(run) < 4 << 20


def test_a_big_frame_is_read_with_memory_in_step_with_the_data(key: RawAesSource) -> None:
    # Legitimate large frames still work; the stream reader's buffer grows only as bytes arrive.
    data = os.urandom(3 << 20)
    msg = encrypt(data, key, frame_length=8 << 20)
    with open_decryptor(io.BytesIO(msg), key) as r:
        assert r.read() == data
    cut = msg[: len(msg) // 3]
    assert peak_bytes(lambda: open_decryptor(io.BytesIO(cut), key).read()) < 4 << 20


def test_a_reader_whose_setup_failed_is_collected_quietly(key: RawAesSource) -> None:
    # IOBase.__del__ calls close(); in development mode a failing close() is printed to stderr.
    code = (
        "import gc, io, os, sys\n"
        "sys.path.insert(0, 'tests')\n"
        "from _envelope_support import RawAesSource\n"
        "from keybridge.envelope import encrypt, open_decryptor\n"
        "msg = encrypt(b'hi', RawAesSource(os.urandom(32)))\n"
        "try:\n"
        "    open_decryptor(io.BytesIO(msg), RawAesSource(os.urandom(32)))\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "gc.collect()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, cwd=root)
    assert done.stdout.strip() == "IntegrityError"
    assert "Exception ignored" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


class BadSource(RawAesSource):
    """A custom materials source that returns something other than a 32-byte key."""

    def __init__(self, value: object) -> None:
        super().__init__(os.urandom(32))
        self.value = value

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        return self.value  # type: ignore[return-value]


@pytest.mark.parametrize("value", [None, "k" * 32, b"short"], ids=["none", "str", "short"])
def test_a_materials_source_returning_a_bad_key_gets_a_typed_error(value: object) -> None:
    source = BadSource(value)
    msg = encrypt(b"data", source)
    with pytest.raises((InvalidArgument, IntegrityError)):
        decrypt(msg, source)


def test_cache_entries_never_show_their_key(key: RawAesSource) -> None:
    cache = DataKeyCache(key, cache_seconds=60)
    materials = cache.encryption_materials(suite_id=0x0478, context={}, plaintext_length=10)
    shown = repr(list(cache._entries.values()))
    assert materials.data_key.hex() not in shown
    assert repr(materials.data_key)[2:-1] not in shown
    assert repr(bytearray(materials.data_key)) not in shown


def test_signed_messages_do_not_fill_the_encrypt_cache(key: RawAesSource) -> None:
    # Each 0x0578 message carries its own verification key in the context, so an encrypt entry
    # could never be reused: caching it would only keep a data key in memory for nothing.
    cache = DataKeyCache(key, cache_seconds=60)
    for _ in range(3):
        assert decrypt(encrypt(b"x", cache, suite=SIGNED), key).plaintext == b"x"
    assert len(cache) == 0


@pytest.mark.parametrize("size", [0, 3, 3 * 1024 * 1024 + 5])
def test_a_huge_frame_length_costs_memory_only_for_data_that_arrives(key: RawAesSource, size: int) -> None:
    data = os.urandom(size)
    sink = io.BytesIO()

    def stream() -> None:
        with open_encryptor(sink, key, frame_length=2**31 - 1) as w:  # plaintext length unknown
            for i in range(0, size, 4096):
                w.write(data[i : i + 4096])

    assert peak_bytes(stream) < 4 * size + 4 * 1024 * 1024  # not 2 x 2 GiB up front
    assert decrypt(sink.getvalue(), key).plaintext == data


def test_staging_buffers_grow_across_frames_without_losing_pending_bytes(key: RawAesSource) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    sink = io.BytesIO()
    with open_encryptor(sink, key, frame_length=3 * 1024 * 1024) as w:  # > the 1 MiB starting buffer
        for i in range(0, len(data), 1000):
            w.write(data[i : i + 1000])
    assert decrypt(sink.getvalue(), key).plaintext == data


@pytest.mark.parametrize("announced", [4096 + 1, 2**32 - 1])
def test_a_final_frame_longer_than_the_frame_length_is_refused(key: RawAesSource, announced: int) -> None:
    # The final frame may be shorter than the frame length, never longer: refused on its header,
    # before any buffer is sized for what it announces.
    seq_iv = (1).to_bytes(4, "big") + (1).to_bytes(12, "big")
    head = b"\xff\xff\xff\xff" + seq_iv + announced.to_bytes(4, "big")
    msg = forged_header(key, 4096) + head + b"x" * 100
    for run in both_apis(msg, key):
        with pytest.raises(IntegrityError, match="longer than the frame length"):
            run()
        assert peak_bytes(run) < 4 << 20


def test_seventeen_edks_are_refused_by_default_before_any_key_call() -> None:
    from keybridge import InMemoryProvider, KeySpec, audit
    from keybridge.envelope import decrypt as _decrypt
    from keybridge.envelope import encrypt as _encrypt
    from keybridge.errors import InvalidMessage

    with InMemoryProvider() as kp:
        keys = [kp.key(kp.create_key(f"k{i}", KeySpec.aes(256)).ref.name) for i in range(17)]
        message = _encrypt(b"data", keys)
        calls: list[audit.AuditEvent] = []
        audit.add_sink(calls.append)
        try:
            with pytest.raises(InvalidMessage, match="17 encrypted data keys"):
                _decrypt(message, keys[-1])
            assert calls == []  # the cap is checked on the header, before any KEK is asked
            assert _decrypt(message, keys[-1], max_encrypted_data_keys=None).plaintext == b"data"
            assert calls  # lifting the cap does reach the key
        finally:
            audit.remove_sink(calls.append)
