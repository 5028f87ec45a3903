"""The encrypted keystore file: round trip, documented format, wrong passphrase, damage, crashes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keybridge import AuthenticationError, IntegrityError, InvalidArgument, KeyNotFound, KeySpec, ProviderUnavailable
from keybridge.providers.memory import InMemoryProvider

PASSPHRASE = "correct horse battery staple"
DIGEST = hashlib.sha256(b"m").digest()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ks.kbks"


@pytest.fixture
def small(path: Path) -> bytes:
    """A small keystore (one AES key) and its bytes."""
    kp = InMemoryProvider.open(path, PASSPHRASE, create=True)
    kp.create_key("k", KeySpec.aes(128))
    return path.read_bytes()


def test_round_trip_keeps_versions_metadata_and_material(path: Path) -> None:
    kp = InMemoryProvider.open(path, PASSPHRASE, create=True)
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    ec1 = kp.create_key("ec", KeySpec.ec("P-256"), tags={"a": "b"}, expires=expires, exportable=True)
    kp.rotate_key("ec")
    kp.set_enabled(ec1.ref, False)
    kp.create_key("rsa", KeySpec.rsa(2048), ops=["import"])
    kp.create_key("aes", KeySpec.aes(256), ops=["encrypt", "decrypt"])
    ct = kp.encrypt("aes", "A256GCM", b"secret", aad=b"x")

    again = InMemoryProvider.open(path, PASSPHRASE)
    for name in ("ec", "rsa", "aes"):
        before, after = list(kp.list_versions(name)), list(again.list_versions(name))
        assert after == before  # every field but public_key (compare=False)
        for b, a in zip(before, after, strict=True):
            assert (a.public_key is None) == (b.public_key is None)
            if a.public_key is not None:
                assert a.public_key.public_numbers() == b.public_key.public_numbers()  # type: ignore[union-attr]
    assert again.decrypt("aes", "A256GCM", ct, aad=b"x") == b"secret"
    ec2 = again.get_key("ec")
    sig = again.sign("ec", "ES256", DIGEST)
    assert isinstance(ec2.public_key, ec.EllipticCurvePublicKey)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    ec2.public_key.verify(encode_dss_signature(r, s), DIGEST, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_every_change_is_saved_at_once(path: Path) -> None:
    kp = InMemoryProvider.open(path, PASSPHRASE, create=True)

    def reopened() -> InMemoryProvider:
        return InMemoryProvider.open(path, PASSPHRASE)

    v1 = kp.create_key("k", KeySpec.aes(128))
    assert reopened().get_key("k").ref == v1.ref
    v2 = kp.rotate_key("k")
    assert reopened().get_key("k").ref == v2.ref
    kp.set_enabled(v1.ref, False)
    assert reopened().get_key(v1.ref).enabled is False
    kp.delete_key("k")
    with pytest.raises(KeyNotFound):
        reopened().get_key("k")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_save_rolls_the_change_back(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    kp = InMemoryProvider.open(folder / "ks", PASSPHRASE, create=True)
    for leftover in folder.iterdir():  # the keystore and its .lock sidecar
        leftover.unlink()
    folder.rmdir()  # now the save cannot create its lock or temp file
    with pytest.raises(ProviderUnavailable, match=r"cannot (lock|write) keystore"):
        kp.create_key("k", KeySpec.aes(128))
    assert list(kp.list_keys()) == []


def test_file_format_matches_the_documentation(path: Path, small: bytes) -> None:
    data = small
    assert data[:4] == b"KBKS"
    assert data[4] == 1
    log2n, r, p, salt = data[5], data[6], data[7], data[8:24]
    assert (log2n, r, p) == (15, 8, 1)
    header = data[:24]
    derived = Scrypt(salt=salt, length=64, n=1 << log2n, r=r, p=p).derive(PASSPHRASE.encode())
    assert hmac.compare_digest(data[24:56], hmac.new(derived[32:], header, hashlib.sha256).digest())
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()
    body = json.loads(AESGCM(derived[:32]).decrypt(data[56:68], data[68:-32], header))
    assert body["format"] == 1
    assert [v["kty"] for v in body["keys"]["k"]] == ["oct"]


def test_wrong_passphrase_is_an_authentication_error(path: Path, small: bytes) -> None:
    with pytest.raises(AuthenticationError, match="wrong passphrase") as exc:
        InMemoryProvider.open(path, "not the passphrase")
    assert "not the passphrase" not in str(exc.value)
    assert PASSPHRASE not in str(exc.value)
    assert InMemoryProvider.open(path, PASSPHRASE).get_key("k")  # the file is untouched


def test_every_truncation_is_an_integrity_error(path: Path, small: bytes) -> None:
    for n in range(len(small)):
        path.write_bytes(small[:n])
        with pytest.raises(IntegrityError):
            InMemoryProvider.open(path, PASSPHRASE)


def test_every_flipped_byte_is_detected(path: Path, small: bytes) -> None:
    for i in range(len(small)):
        damaged = bytearray(small)
        damaged[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(InvalidArgument if i < 4 else IntegrityError):
            InMemoryProvider.open(path, PASSPHRASE)


def _resealed(data: bytes, i: int) -> bytes:
    """Flip a byte and fix the unkeyed checksum, as a deliberate forger would."""
    damaged = bytearray(data[:-32])
    damaged[i] ^= 0x80
    return bytes(damaged) + hashlib.sha256(damaged).digest()


def test_forged_body_fails_gcm_and_forged_header_fails_the_passphrase_check(path: Path, small: bytes) -> None:
    path.write_bytes(_resealed(small, 70))  # inside the GCM ciphertext
    with pytest.raises(IntegrityError, match="modified or damaged"):
        InMemoryProvider.open(path, PASSPHRASE)
    path.write_bytes(_resealed(small, 10))  # inside the salt
    with pytest.raises(AuthenticationError):
        InMemoryProvider.open(path, PASSPHRASE)


@pytest.mark.parametrize(
    ("log2n", "r", "p"),
    [(40, 8, 1), (20, 8, 16), (18, 32, 16), (23, 1, 16), (22, 2, 16)],
    ids=["huge N", "16x memory and work", "max r and p", "OpenSSL memory limit", "work via p"],
)
def test_doctored_work_factor_is_refused_before_running_scrypt(
    path: Path, small: bytes, log2n: int, r: int, p: int
) -> None:
    # The header's checksum is unkeyed, so a forger can recompute it: the bounds are what stop
    # a small file from making the reader spend gigabytes or minutes in scrypt.
    doctored = bytearray(small[:-32])
    doctored[5:8] = bytes([log2n, r, p])
    path.write_bytes(bytes(doctored) + hashlib.sha256(doctored).digest())
    with pytest.raises(InvalidArgument, match="scrypt parameters"):
        InMemoryProvider.open(path, PASSPHRASE)


def test_not_a_keystore_and_missing_keystore(path: Path) -> None:
    path.write_bytes(b'{"not": "a keystore"}')
    with pytest.raises(InvalidArgument, match="not a keybridge keystore"):
        InMemoryProvider.open(path, PASSPHRASE)
    with pytest.raises(ProviderUnavailable, match=r"does not exist.*create=True"):
        InMemoryProvider.open(path.with_name("missing"), PASSPHRASE)


def test_create_opens_an_existing_keystore_instead_of_replacing_it(path: Path, small: bytes) -> None:
    assert InMemoryProvider.open(path, PASSPHRASE, create=True).get_key("k")
    with pytest.raises(AuthenticationError):
        InMemoryProvider.open(path, "other", create=True)


def test_save_copy_under_another_passphrase(path: Path, tmp_path: Path) -> None:
    kp = InMemoryProvider()
    with pytest.raises(InvalidArgument, match="nothing to save"):
        kp.save()
    kp.create_key("k", KeySpec.aes(128))
    kp.save(tmp_path / "copy", passphrase="copy-pass")
    assert InMemoryProvider.open(tmp_path / "copy", "copy-pass").get_key("k")


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from keybridge import KeySpec
    from keybridge.providers.memory import InMemoryProvider
    kp = InMemoryProvider.open(sys.argv[1], sys.argv[2], create=True, add_versions=True)  # "aes" may survive a kill
    if not list(kp.list_keys()):
        for i in range(4):
            kp.create_key(f"rsa{i}", KeySpec.rsa(2048))
    if len(sys.argv) > 3:
        # A random SIGKILL now rarely lands in the short write after the locked re-read, so the
        # child kills itself for real at a chosen fsync: the temp file is full, the rename not done.
        calls, stop_at, real_fsync = [0], int(sys.argv[3]), os.fsync
        def fsync(fd):
            real_fsync(fd)
            calls[0] += 1
            if calls[0] == stop_at:
                os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = fsync
    print("ready", flush=True)
    while True:  # every call below rewrites the whole keystore
        kp.create_key("aes", KeySpec.aes(256))
        kp.set_enabled("rsa0", False)
        kp.set_enabled("rsa0", True)
        kp.delete_key("aes")
    """
)


def _temp_files(path: Path) -> list[Path]:
    # The .lock sidecar is permanent by design (it carries no key data), not a stranded temp file.
    return [p for p in path.parent.iterdir() if p not in (path, path.with_name(path.name + ".lock"))]


def test_a_crash_during_save_never_leaves_a_partial_keystore(path: Path) -> None:
    # Each save fsyncs the new (still unnamed) file, then the directory once it is linked in: a
    # kill at every fsync count from 5 to 12 lands both between "data written" and "name given"
    # and just after the rename.
    for stop_at in range(5, 13):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), PASSPHRASE, str(stop_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        child.wait()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        kp = InMemoryProvider.open(path, PASSPHRASE)  # always a whole, authentic keystore
        assert {i.ref.name for i in kp.list_keys()} - {"aes"} == {f"rsa{i}" for i in range(4)}
        info = kp.get_key("rsa1")
        assert isinstance(info.public_key, rsa.RSAPublicKey)
        sig = kp.sign(info.ref, "RS256", DIGEST)
        info.public_key.verify(sig, DIGEST, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        # The new keystore is written as an O_TMPFILE: a SIGKILL strands no temp file at all.
        assert _temp_files(path) == [], f"SIGKILL at fsync {stop_at} left {_temp_files(path)}"
