"""Creating never rotates: a name in use is refused on every path (issue #9, item 1).

The conformance suite proves the generic check on every backend; these tests prove the atomic
checks behind it (a stale in-memory view, a PKCS#11 label another tool uses) and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from keybridge import InvalidArgument, KeyExists, KeySpec
from keybridge.cli._keys import keys
from keybridge.providers.memory import InMemoryProvider
from keybridge.testing._softhsm import SoftHsmToken

PASSPHRASE = "names-test-passphrase"


def test_a_stale_view_of_a_shared_keystore_still_refuses_a_name_in_use(tmp_path: Path) -> None:
    path = tmp_path / "ks.kbks"
    first = InMemoryProvider.open(path, PASSPHRASE, create=True)
    second = InMemoryProvider.open(path, PASSPHRASE)  # read before the key exists
    made = first.create_key("shared", KeySpec.aes(256))
    # BaseProvider's lookup sees only second's stale copy (no "shared"): the locked re-read refuses.
    assert "shared" not in second._keys
    with pytest.raises(KeyExists, match="rotate_key"):
        second.create_key("shared", KeySpec.aes(128))
    reread = InMemoryProvider.open(path, PASSPHRASE)
    assert [v.ref.version for v in reread.list_versions("shared")] == [made.ref.version]


def test_rotation_is_still_how_a_name_gets_a_new_version() -> None:
    kp = InMemoryProvider()
    v1 = kp.create_key("k", KeySpec.ec("P-384"), ops=["sign"])
    with pytest.raises(KeyExists):
        kp.import_key("k", bytes(32))
    v2 = kp.rotate_key("k")
    assert (v2.spec, v2.ops) == (v1.spec, v1.ops)
    assert [v.ref.version for v in kp.list_versions("k")] == [v1.ref.version, v2.ref.version]


@pytest.fixture
def pkcs11_provider(softhsm_token: SoftHsmToken) -> Iterator[Any]:
    pytest.importorskip("pkcs11")
    from keybridge.providers.pkcs11 import Pkcs11Provider

    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        yield p


def test_pkcs11_refuses_a_label_another_tool_uses(pkcs11_provider: Any) -> None:
    from pkcs11 import Attribute as A
    from pkcs11 import ObjectClass as OC

    label = "names-foreign-label"
    tpl = {A.CLASS: OC.DATA, A.TOKEN: True, A.LABEL: label, A.APPLICATION: "other-tool", A.VALUE: b"not a key"}
    pkcs11_provider._pool.run(lambda e: e.session.create_object(tpl), "creating a foreign object")

    def count() -> int:
        return int(pkcs11_provider._pool.run(lambda e: len(list(e.session.get_objects({A.LABEL: label}))), "count"))

    try:
        for attempt in (
            lambda: pkcs11_provider.create_key(label, KeySpec.aes(128)),
            lambda: pkcs11_provider.import_key(label, bytes(16)),
        ):
            with pytest.raises(KeyExists, match="rotate_key"):
                attempt()
        assert count() == 1  # nothing was added next to the other tool's object
    finally:
        pkcs11_provider._pool.run(
            lambda e: [o.destroy() for o in list(e.session.get_objects({A.LABEL: label}))], "cleaning up"
        )


# ---- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "keystore.kbks"
    monkeypatch.setenv("KEYBRIDGE_KEYSTORE", str(path))
    monkeypatch.setenv("KEYBRIDGE_PASSPHRASE", PASSPHRASE)
    return path


def _cli(*args: str) -> Any:
    return CliRunner().invoke(keys, list(args), catch_exceptions=True)


def _versions(path: Path, name: str) -> list[KeySpec]:
    return [v.spec for v in InMemoryProvider.open(path, PASSPHRASE).list_versions(name)]


def test_cli_create_refuses_an_existing_name(env: Path) -> None:
    assert _cli("create", "app", "--kty", "EC", "--curve", "P-384").exit_code == 0
    again = _cli("create", "app", "--kty", "EC", "--curve", "P-384")
    assert isinstance(again.exception, KeyExists)
    assert "--new-version" in str(again.exception)
    assert _versions(env, "app") == [KeySpec.ec("P-384")]


def test_cli_new_version_rotates_keeping_the_type(env: Path) -> None:
    assert _cli("create", "app", "--kty", "EC", "--curve", "P-384").exit_code == 0
    plain = _cli("create", "app", "--new-version", "--json")
    assert plain.exit_code == 0, plain.output
    same = _cli("create", "app", "--new-version", "--kty", "EC", "--curve", "P-384")
    assert same.exit_code == 0, same.output
    assert json.loads(plain.output)["spec"] == "EC-P-384"
    assert _versions(env, "app") == [KeySpec.ec("P-384")] * 3


@pytest.mark.parametrize(
    "extra",
    [("--kty", "RSA"), ("--kty", "EC", "--curve", "P-256"), ("--ops", "sign"), ("--exportable",)],
)
def test_cli_new_version_refuses_another_type_or_policy(env: Path, extra: tuple[str, ...]) -> None:
    assert _cli("create", "app", "--kty", "EC", "--curve", "P-384").exit_code == 0
    result = _cli("create", "app", "--new-version", *extra)
    assert isinstance(result.exception, InvalidArgument), result.output
    assert "--new-version keeps" in str(result.exception)
    assert _versions(env, "app") == [KeySpec.ec("P-384")]


def test_cli_refusal_is_one_line_without_a_traceback(env: Path) -> None:
    exe = [sys.executable, "-m", "keybridge.cli"]
    full_env = {**os.environ, "KEYBRIDGE_KEYSTORE": str(env), "KEYBRIDGE_PASSPHRASE": PASSPHRASE}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, "keys", *args], capture_output=True, text=True, env=full_env, timeout=60)

    assert cli("create", "proc", "--kty", "oct").returncode == 0
    again = cli("create", "proc", "--kty", "oct")
    assert again.returncode == 1
    [line] = again.stderr.splitlines()
    assert line.startswith("keybridge: error: a key named 'proc' already exists")
    assert "--new-version" in line
    other = cli("create", "proc", "--new-version", "--kty", "RSA")
    assert other.returncode == 1
    assert other.stderr.splitlines() == [
        "keybridge: error: 'proc' is AES-256; --new-version keeps the key's type, so leave out --kty"
        " or give the same values, or create a key under another name"
    ]
    assert "Traceback" not in again.stderr + other.stderr
    assert cli("create", "proc", "--new-version").returncode == 0
    assert _versions(env, "proc") == [KeySpec.aes(256)] * 2
