"""``keybridge keys``: each command changes the real keystore file, prints what it did, and errors
are one line without a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from keybridge import AuthenticationError, InvalidArgument, KeyNotFound, KeySpec, ProviderUnavailable
from keybridge.cli._common import default_keystore, emit, open_cli_key
from keybridge.cli._keys import keys
from keybridge.providers.memory import InMemoryProvider

PASSPHRASE = "cli-test-passphrase"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"KEYBRIDGE_KEYSTORE": str(tmp_path / "ks" / "keystore.kbks"), "KEYBRIDGE_PASSPHRASE": PASSPHRASE}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


def run(*args: str) -> Any:
    result = CliRunner().invoke(keys, list(args), catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").output)


def keystore(env: dict[str, str]) -> InMemoryProvider:
    return InMemoryProvider.open(env["KEYBRIDGE_KEYSTORE"], PASSPHRASE)


def test_create_writes_a_usable_key_to_the_default_keystore(env: dict[str, str]) -> None:
    out = run("create", "signer", "--kty", "EC", "--curve", "P-384").output
    assert out.startswith("created memory:signer/")
    assert "EC-P-384" in out
    assert "sign, verify" in out
    kp = keystore(env)
    info = kp.get_key("signer")
    digest = hashlib.sha384(b"m").digest()
    sig = kp.sign("signer", "ES384", digest)
    der = encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big"))
    assert isinstance(info.public_key, ec.EllipticCurvePublicKey)
    info.public_key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA384())))
    assert oct(Path(env["KEYBRIDGE_KEYSTORE"]).stat().st_mode & 0o777) == "0o600"


def test_create_options_reach_the_key(env: dict[str, str]) -> None:
    d = run_json(
        "create",
        "memory:wrapper",
        "--kty",
        "oct",
        "--size",
        "128",
        "--ops",
        "wrapKey,unwrapKey",
        "--ops",
        "wrapKey",
        "--exportable",
    )
    assert (d["spec"], d["ops"], d["exportable"]) == ("AES-128", ["unwrapKey", "wrapKey"], True)
    info = keystore(env).get_key("wrapper")
    assert (info.spec, info.exportable) == (KeySpec.aes(128), True)
    assert {op.value for op in info.ops} == {"wrapKey", "unwrapKey"}


def test_list_show_rotate_enable_disable_delete(env: dict[str, str]) -> None:
    first = run_json("create", "k", "--kty", "RSA")
    run("create", "other", "--kty", "oct")
    listed = run_json("list")
    assert [k["name"] for k in listed["keys"]] == ["k", "other"]
    assert "k" in run("list").output
    assert "AES-256" in run("list").output

    rotated = run_json("rotate", "k")
    assert rotated["version"] != first["version"]
    shown = run_json("show", "k")
    assert shown["versions"] == [first["version"], rotated["version"]]
    assert shown["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    pem = serialization.load_pem_public_key(shown["public_key_pem"].encode())
    assert pem.public_numbers() == keystore(env).get_key("k").public_key.public_numbers()  # type: ignore[union-attr]

    assert run("disable", f"memory:k/{first['version']}").output.strip() == f"disabled memory:k/{first['version']}"
    kp = keystore(env)
    assert kp.get_key("k", first["version"]).enabled is False
    assert kp.get_key("k").enabled is True
    assert run_json("enable", f"memory:k/{first['version']}")["enabled"] is True

    assert run("delete", "k", "--yes").output.strip() == "deleted memory:k (all versions)"
    with pytest.raises(KeyNotFound):
        keystore(env).get_key("k")


def test_delete_without_yes_and_without_a_terminal_refuses(env: dict[str, str]) -> None:
    run("create", "k", "--kty", "oct")
    with pytest.raises(InvalidArgument, match="pass --yes"):
        run("delete", "k")
    assert keystore(env).get_key("k")


def test_missing_passphrase_without_a_terminal_says_which_variable(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KEYBRIDGE_PASSPHRASE")
    with pytest.raises(AuthenticationError, match="set KEYBRIDGE_PASSPHRASE"):
        run("create", "k", "--kty", "oct")


def test_reading_commands_never_create_a_keystore(env: dict[str, str]) -> None:
    # A mistyped $KEYBRIDGE_KEYSTORE must be an error, not a new empty keystore.
    with pytest.raises(ProviderUnavailable, match="KEYBRIDGE_KEYSTORE"):
        run("list")
    assert not Path(env["KEYBRIDGE_KEYSTORE"]).exists()


def test_shared_helpers(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert default_keystore() == Path(env["KEYBRIDGE_KEYSTORE"])
    run("create", "bare", "--kty", "oct")
    handle = open_cli_key("bare")
    assert handle.ref.uri == "memory:bare"
    assert handle.decrypt("A256GCM", handle.encrypt("A256GCM", b"x")) == b"x"
    emit({"b": 1, "a": [1]}, "human [bold]text[/bold]", as_json=True)
    assert capsys.readouterr().out == json.dumps({"a": [1], "b": 1}, indent=2, sort_keys=True) + "\n"
    emit({}, "human [bold]text[/bold]", as_json=False)
    assert capsys.readouterr().out == "human [bold]text[/bold]\n"  # strings are printed literally


def test_real_subprocess_round_trip_and_one_line_errors(env: dict[str, str]) -> None:
    full_env = {**os.environ, **env}
    exe = [str(Path(sys.executable).with_name("keybridge"))]  # the installed console script

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, "keys", *args], capture_output=True, text=True, env=full_env, timeout=60)

    made = cli("create", "proc", "--kty", "EC", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["spec"] == "EC-P-256"
    assert "proc" in cli("list").stdout

    missing = cli("show", "nope")
    assert missing.returncode == 1
    keystore = env["KEYBRIDGE_KEYSTORE"]
    assert missing.stderr.splitlines() == [f"keybridge: error: no key named 'nope' in the keystore {keystore!r}"]
    assert missing.stdout == ""

    wrong = subprocess.run(
        [*exe, "keys", "list"],
        capture_output=True,
        text=True,
        env={**full_env, "KEYBRIDGE_PASSPHRASE": "wrong"},
        timeout=60,
    )
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines() == ["keybridge: error: wrong passphrase for this keystore"]
    assert "Traceback" not in missing.stderr + wrong.stderr


def test_create_and_list_say_which_keystore_file_the_keys_are_in(env: dict[str, str]) -> None:
    path = env["KEYBRIDGE_KEYSTORE"]
    out = run("create", "where").output
    assert out.splitlines()[-1] == f"in keystore {path}"
    assert run_json("create", "where2")["keystore"] == path
    listed = run("list").output
    assert f"keystore: {path}" in listed.replace("\n", "")
    assert run_json("list")["keystore"] == path
