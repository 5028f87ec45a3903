"""``memory:NAME`` names the same key in the CLI and in Python: key NAME in a keystore file. The CLI
always uses one (--keystore, $KEYBRIDGE_KEYSTORE or the default path); Python uses it when given
``keystore=``, and without it says that it has none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keybridge import KeyNotFound, KeySpec, envelope, open_key, open_provider

SRC = str(Path(__file__).resolve().parents[1] / "src")
PASSPHRASE = "correct horse battery staple"


def _kb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keybridge", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k != "KEYBRIDGE_KEYSTORE"}
    # HOME points away from the real default keystore, so only --keystore can find the file.
    return {**base, "PYTHONPATH": SRC, "KEYBRIDGE_PASSPHRASE": PASSPHRASE, "HOME": str(tmp_path / "home")}


def test_key_made_by_the_cli_opens_from_python_with_the_same_uri(env, tmp_path) -> None:
    keystore = tmp_path / "team.kbks"
    made = _kb("--keystore", str(keystore), "keys", "create", "memory:shared", "--kty", "oct", env=env)
    assert made.returncode == 0, made.stderr
    (tmp_path / "in").write_bytes(b"quarterly numbers")
    enc = _kb("--keystore", str(keystore), "encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "m"), "-k", "shared",
              env=env)  # fmt: skip
    assert enc.returncode == 0, enc.stderr

    handle = open_key("memory:shared", keystore=keystore, passphrase=PASSPHRASE)
    assert str(handle.info().spec) == "AES-256"
    message = (tmp_path / "m").read_bytes()
    assert envelope.decrypt(message, handle).plaintext == b"quarterly numbers"

    # ... and the other way: a key Python adds to that keystore is the CLI's memory:py-made.
    with open_provider("memory:", keystore=keystore, passphrase=PASSPHRASE) as provider:
        provider.create_key("py-made", KeySpec.ec("P-256"))
    shown = _kb("--keystore", str(keystore), "keys", "show", "memory:py-made", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert '"spec": "EC-P-256"' in shown.stdout

    # The environment variable names the same file as the flag.
    listed = _kb("keys", "list", env={**env, "KEYBRIDGE_KEYSTORE": str(keystore)})
    assert "shared" in listed.stdout
    assert "py-made" in listed.stdout


def test_messages_say_which_keystore(env, tmp_path) -> None:
    keystore = tmp_path / "k.kbks"
    assert _kb("--keystore", str(keystore), "keys", "create", "a", "--kty", "oct", env=env).returncode == 0
    missing = _kb("--keystore", str(keystore), "keys", "show", "memory:nope", env=env)
    assert missing.returncode == 1
    assert f"no key named 'nope' in the keystore {str(keystore)!r}" in missing.stderr
    absent = _kb("--keystore", str(tmp_path / "typo.kbks"), "keys", "list", env=env)
    assert absent.returncode == 1
    assert f"no keystore at {tmp_path / 'typo.kbks'}" in absent.stderr
    assert "--keystore" in absent.stderr
    assert not (tmp_path / "typo.kbks").exists()


def test_python_without_a_keystore_says_so() -> None:
    with pytest.raises(KeyNotFound) as exc:
        open_key("memory:shared").info()
    assert "no keystore: pass keystore= and passphrase=" in str(exc.value)


def test_help_explains_memory_uris(env) -> None:
    top = _kb("--help", env=env)
    assert "memory:NAME is the key NAME in the" in " ".join(top.stdout.split())
    assert "--keystore PATH" in top.stdout
