"""CLI errors speak CLI: flags and environment variables, never Python parameter names; and a
message that no given key opens names the keys it was encrypted for."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from keybridge import InMemoryProvider, KeySpec
from keybridge.cli import main
from keybridge.cli._messages import MAX_LISTED, cli_message
from keybridge.errors import KeybridgeError
from keybridge.providers.pkcs11._pin import resolve_pin

SRC = Path(__file__).resolve().parents[1] / "src" / "keybridge"
PASSPHRASE = "correct horse battery staple"
PYTHON_HINT = re.compile(
    r"\b[a-z]+_[a-z_]+=|\b[a-z_]+=(True|False)\b|\b(expected_context|frame_length|plaintext_length"
    r"|max_encrypted_data_keys|user_pin|pin_source)\b"
)
# Raised only for Python callers: the CLI never passes these arguments.
PYTHON_ONLY = (
    "max_encrypted_data_keys must be",
    "plaintext_length must be",
    "allow_signed=False",
    "cannot wrap an existing data key",
    "already registered; pass replace=True",
    "ekm %s",
    "use salt_length=padding.PSS",  # cryptography signing API (as_private_key)
    "grant= needs grant_credential=",
)


@pytest.fixture
def keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "ks.kbks"
    p = InMemoryProvider.open(path, PASSPHRASE, create=True)
    for name in ("a", "b", *(f"k{i}" for i in range(MAX_LISTED + 2))):
        p.create_key(name, KeySpec.aes(256))
    p.create_key("r", KeySpec.rsa(2048))
    monkeypatch.setenv("KEYBRIDGE_KEYSTORE", str(path))
    monkeypatch.setenv("KEYBRIDGE_PASSPHRASE", PASSPHRASE)
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    return int(done.value.code or 0), capsys.readouterr().err


def test_wrong_key_names_the_keys_that_open_the_message(keystore, tmp_path, capsys) -> None:
    (tmp_path / "in").write_bytes(os.urandom(5000))
    code, err = cli(capsys, "encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "msg"), "-k", "a", "-k", "r")
    assert code == 0, err
    code, err = cli(capsys, "decrypt", str(tmp_path / "msg"), "-o", str(tmp_path / "out"), "-k", "b")
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith("keybridge: error: ")
    assert "encrypted for memory:a (keybridge), memory:r (keybridge): pass one of them with --key" in first
    assert "memory:b" in err  # the failure for the key that was tried is still listed
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_wrong_key_list_is_bounded_and_rewrap_names_its_flag(keystore, tmp_path, capsys) -> None:
    (tmp_path / "in").write_bytes(b"x" * 100)
    many = [arg for i in range(MAX_LISTED + 2) for arg in ("-k", f"k{i}")]
    code, err = cli(capsys, "encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "msg"), *many)
    assert code == 0, err
    code, err = cli(
        capsys, "rewrap", str(tmp_path / "msg"), "-o", str(tmp_path / "new"), "--unwrap-with", "a", "--wrap-for", "b"
    )
    assert code == 1
    first = err.splitlines()[0]
    named = re.findall(r"memory:k\d+ \(keybridge\)", first)
    assert len(named) == MAX_LISTED
    assert "and 2 more: pass one of them with --unwrap-with" in first


def test_wrong_context_names_the_flag(keystore, tmp_path, capsys) -> None:
    (tmp_path / "in").write_bytes(b"payroll")
    assert cli(capsys, "encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "m"), "-k", "a", "-c", "app=x")[0] == 0
    code, err = cli(capsys, "decrypt", str(tmp_path / "m"), "-o", str(tmp_path / "o"), "-k", "a", "-c", "app=y")
    assert code == 1
    assert "does not match --context" in err
    assert "expected_context" not in err


def test_real_library_errors_translate_to_flags(monkeypatch) -> None:
    with InMemoryProvider() as p:
        p.create_key("k", KeySpec.aes(256))
        with pytest.raises(KeybridgeError) as exc:
            p.export_key("k")
    assert "exportable=True" in str(exc.value)
    assert "keybridge keys create --exportable" in cli_message(exc.value)

    monkeypatch.delenv("KEYBRIDGE_PKCS11_PIN", raising=False)
    with pytest.raises(KeybridgeError) as exc:
        resolve_pin(None, None, "tok")
    out = cli_message(exc.value)
    assert "KEYBRIDGE_PKCS11_PIN" in out
    assert "pin-source=file:/path" in out
    assert not PYTHON_HINT.search(out), out


def _raised_messages() -> list[tuple[str, str]]:
    """Every literal message a library call is given (f-string fields filled with a number)."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        if {"cli", "testing", "emulator", "parquet"} & set(path.relative_to(SRC).parts):  # no CLI reaches these
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            arg = node.args[0]
            parts = arg.values if isinstance(arg, ast.JoinedStr) else [arg]
            if not isinstance(arg, (ast.Constant, ast.JoinedStr)) or not any(
                isinstance(p, ast.Constant) and isinstance(p.value, str) for p in parts
            ):
                continue
            text = "".join(p.value if isinstance(p, ast.Constant) else "7" for p in parts)
            out.append((f"{path.relative_to(SRC)}:{node.lineno}", text))
    return out


def test_no_library_message_reaches_the_cli_with_a_python_parameter_name() -> None:
    messages = _raised_messages()
    assert len(messages) > 100
    leaks = [
        f"{where}: {cli_message(Exception(text))}"
        for where, text in messages
        if PYTHON_HINT.search(cli_message(Exception(text)))
        and not any(marker in text for marker in PYTHON_ONLY)
        and not re.fullmatch(r"[a-z_]+", text)  # option names in tuples, not messages
    ]
    assert not leaks, "\n".join(leaks)
