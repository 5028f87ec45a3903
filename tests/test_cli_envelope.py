"""``keybridge encrypt`` / ``decrypt`` / ``rewrap`` over a real keystore file, via click's runner and
one real subprocess (files and pipes). Output is checked with aws-encryption-sdk as well."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aws_encryption_sdk
import pytest
from aws_encryption_sdk.identifiers import CommitmentPolicy, EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from click.testing import CliRunner

from keybridge import InMemoryProvider, KeySpec
from keybridge.cli._app import app

PASSPHRASE = "correct horse battery staple"
KEK_A = bytes(range(32))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    keystore = tmp_path / "ks.kbks"
    p = InMemoryProvider.open(keystore, PASSPHRASE, create=True)
    p.import_key("a", KEK_A)
    p.create_key("b", KeySpec.aes(256))
    p.create_key("r", KeySpec.rsa(2048))
    values = {"KEYBRIDGE_KEYSTORE": str(keystore), "KEYBRIDGE_PASSPHRASE": PASSPHRASE}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def run(*args: str, input: bytes | None = None):
    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=True)
    return result


def esdk_decrypt(message: bytes) -> tuple[bytes, dict[str, str]]:
    mk = RawMasterKey(
        provider_id="keybridge",
        key_id=b"memory:a",
        wrapping_key=WrappingKey(
            WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING, KEK_A, EncryptionKeyType.SYMMETRIC
        ),
    )
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    pt, header = client.decrypt(source=message, key_provider=mk)
    return pt, dict(header.encryption_context)


def test_encrypt_then_decrypt_files_with_json_summaries(env, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    (tmp_path / "in.bin").write_bytes(data)
    enc = run(
        "encrypt",
        str(tmp_path / "in.bin"),
        "-o",
        str(tmp_path / "msg"),
        "--key",
        "a",
        "--context",
        "purpose=test",
        "--frame-length",
        "4096",
        "--json",
    )
    assert enc.exit_code == 0, enc.output
    summary = json.loads(enc.output)
    assert summary["suite"] == "0x0478"
    assert summary["context"] == {"purpose": "test"}
    assert summary["edks"] == 1
    assert summary["frame_length"] == 4096
    assert summary["bytes_in"] == len(data)
    assert summary["bytes_out"] == (tmp_path / "msg").stat().st_size
    assert KEK_A.hex() not in enc.output
    # An independent reader: aws-encryption-sdk with a raw AES key named like keybridge's default.
    assert esdk_decrypt((tmp_path / "msg").read_bytes()) == (data, {"purpose": "test"})

    dec = run(
        "decrypt",
        str(tmp_path / "msg"),
        "-o",
        str(tmp_path / "out.bin"),
        "--key",
        "memory:a",
        "--context",
        "purpose=test",
        "--json",
    )
    assert dec.exit_code == 0, dec.output
    assert (tmp_path / "out.bin").read_bytes() == data
    assert json.loads(dec.output)["bytes_out"] == len(data)
    assert oct((tmp_path / "out.bin").stat().st_mode & 0o777) == "0o600"


def test_repeated_keys_make_any_one_of_them_decrypt(env, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"disaster recovery")
    enc = run("encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "msg"), "-k", "a", "-k", "r", "--signed", "--json")
    assert enc.exit_code == 0, enc.output
    assert json.loads(enc.output)["edks"] == 2
    assert json.loads(enc.output)["suite"] == "0x0578"
    for key in ("r", "a"):
        dec = run("decrypt", str(tmp_path / "msg"), "-o", str(tmp_path / f"out-{key}"), "-k", key, "--json")
        assert dec.exit_code == 0, dec.output
        assert (tmp_path / f"out-{key}").read_bytes() == b"disaster recovery"
        (opened,) = json.loads(dec.output)["opened_by"]  # the key that opened it, with its version
        assert opened.startswith(f"memory:{key}/")


def test_wrong_key_or_context_fails_and_leaves_no_output(env, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"secret")
    assert run("encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "msg"), "-k", "a", "-c", "t=1").exit_code == 0
    wrong_key = run("decrypt", str(tmp_path / "msg"), "-o", str(tmp_path / "out"), "-k", "b")
    assert wrong_key.exit_code != 0
    assert type(wrong_key.exception).__name__ == "DataKeyUnavailable"
    wrong_ctx = run("decrypt", str(tmp_path / "msg"), "-o", str(tmp_path / "out"), "-k", "a", "-c", "t=2")
    assert wrong_ctx.exit_code != 0
    # ks.kbks.lock is the keystore's permanent lock sidecar (no key data); no decrypt output may appear.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "ks.kbks", "ks.kbks.lock", "msg"]


@pytest.mark.parametrize("bad", ["novalue", "=v"])
def test_malformed_context_is_a_usage_error(env, tmp_path: Path, bad: str) -> None:
    (tmp_path / "in").write_bytes(b"x")
    result = run("encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "msg"), "-k", "a", "-c", bad)
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output
    assert not (tmp_path / "msg").exists()


def test_stdin_to_stdout_through_a_real_process(env, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "keybridge.cli"] if _has_main() else ["keybridge"]
    environ = {**os.environ, **env}
    data = os.urandom(100_000)
    enc = subprocess.run(
        [*cmd, "encrypt", "-", "-k", "a", "-k", "b"],
        input=data,
        capture_output=True,
        env=environ,
        check=False,
        timeout=120,
    )
    assert enc.returncode == 0, enc.stderr
    assert esdk_decrypt(enc.stdout)[0] == data
    dec = subprocess.run(
        [*cmd, "decrypt", "-k", "b"], input=enc.stdout, capture_output=True, env=environ, check=False, timeout=120
    )
    assert dec.returncode == 0, dec.stderr
    assert dec.stdout == data
    # Errors: one line, no traceback, nothing secret.
    (tmp_path / "msg").write_bytes(enc.stdout[:-1])
    bad = subprocess.run(
        [*cmd, "decrypt", str(tmp_path / "msg"), "-o", str(tmp_path / "out"), "-k", "a"],
        capture_output=True,
        env=environ,
        check=False,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.startswith(b"keybridge: error:")
    assert b"Traceback" not in bad.stderr
    assert PASSPHRASE.encode() not in bad.stderr
    assert not (tmp_path / "out").exists()


def test_rewrap_replaces_recipients_and_keeps_the_body(env, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"rewrap me" * 1000)
    assert run("encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "old"), "-k", "b").exit_code == 0
    result = run(
        "rewrap",
        str(tmp_path / "old"),
        "-o",
        str(tmp_path / "new"),
        "--unwrap-with",
        "b",
        "--wrap-for",
        "a",
        "--wrap-for",
        "r",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["edks"] == 2
    assert esdk_decrypt((tmp_path / "new").read_bytes())[0] == b"rewrap me" * 1000
    assert run("decrypt", str(tmp_path / "new"), "-o", str(tmp_path / "o"), "-k", "b").exit_code != 0
    assert run("decrypt", str(tmp_path / "new"), "-o", str(tmp_path / "o"), "-k", "r").exit_code == 0
    assert (tmp_path / "o").read_bytes() == b"rewrap me" * 1000


def _has_main() -> bool:
    import importlib.util

    return importlib.util.find_spec("keybridge.cli.__main__") is not None


@pytest.mark.parametrize("signed", [False, True], ids=["0x0478", "0x0578"])
def test_decrypt_to_stdout_never_writes_the_final_frame_of_a_damaged_message(env, tmp_path: Path, signed: bool) -> None:
    data = os.urandom(3 * 4096 + 100)  # three regular frames and a final one
    (tmp_path / "in").write_bytes(data)
    flags = ["--signed"] if signed else []
    args = ["encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "msg"), "-k", "a", "--frame-length", "4096"]
    assert run(*args, *flags).exit_code == 0
    msg = bytearray((tmp_path / "msg").read_bytes())
    msg[-1] ^= 1  # the last byte: the signature (0x0578) or the final frame's tag (0x0478)
    result = CliRunner().invoke(app, ["decrypt", "-k", "a"], input=bytes(msg), catch_exceptions=True)
    assert result.exit_code != 0
    released = result.stdout_bytes
    assert released == data[: len(released)]
    assert len(released) <= 3 * 4096
