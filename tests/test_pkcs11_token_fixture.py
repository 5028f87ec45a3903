"""The ``pkcs11_token`` fixture: one run per kind in $KEYBRIDGE_TEST_TOKENS, run in a child pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import keybridge
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

TEST = """
def test_uses(pkcs11_token):
    with pkcs11_token.provider() as p:
        list(p.list_keys())
    assert pkcs11_token.user_pin not in repr(pkcs11_token)
    print("KIND", pkcs11_token.kind, pkcs11_token.token_label)
"""


def child_pytest(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_child.py").write_text(TEST)
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-rs",
        "-p",
        "no:cacheprovider",
        str(tmp_path / "test_child.py"),
    ]
    return subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_default_is_one_softhsm_token_and_env_without_settings_skips(tmp_path: Path) -> None:
    env = {**_clean_env(), "KEYBRIDGE_TEST_TOKENS": "softhsm,env"}
    out = child_pytest(tmp_path, env)
    assert "1 passed, 1 skipped" in out.stdout, out.stdout + out.stderr
    assert "KIND softhsm keybridge-test" in out.stdout
    assert "KEYBRIDGE_TEST_PKCS11_MODULE" in out.stdout  # the skip says what to set


def test_env_kind_uses_an_existing_token(tmp_path: Path, softhsm_token: SoftHsmToken) -> None:
    env = {
        **_clean_env(),  # with this process's SOFTHSM2_CONF, which shows softhsm_token
        "KEYBRIDGE_TEST_TOKENS": "env",
        "KEYBRIDGE_TEST_PKCS11_MODULE": softhsm_token.module_path,
        "KEYBRIDGE_TEST_PKCS11_TOKEN": softhsm_token.token_label,
        "KEYBRIDGE_TEST_PKCS11_PIN": softhsm_token.user_pin,
    }
    out = child_pytest(tmp_path, env)
    assert "1 passed" in out.stdout, out.stdout + out.stderr
    assert f"KIND env {softhsm_token.token_label}" in out.stdout


def test_nss_kind_is_an_nss_softokn_database(tmp_path: Path) -> None:
    if shutil.which("certutil") is None:
        pytest.skip("certutil (Debian libnss3-tools) is not installed")
    out = child_pytest(tmp_path, {**_clean_env(), "KEYBRIDGE_TEST_TOKENS": "softhsm,nss"})
    assert "2 passed" in out.stdout, out.stdout + out.stderr
    assert "KIND nss NSS Certificate DB" in out.stdout


def test_tpm2_kind_is_tpm2_pkcs11_on_a_software_tpm_and_stops_its_daemons(tmp_path: Path) -> None:
    from keybridge.testing._tpm2 import find_tpm2_module

    if find_tpm2_module() is None or shutil.which("swtpm") is None or shutil.which("tpm2-abrmd") is None:
        pytest.skip("tpm2-pkcs11, swtpm or tpm2-abrmd is not installed")
    base = tmp_path / "base"  # the daemons' command lines name their files under it
    env = {**_clean_env(), "KEYBRIDGE_TEST_TOKENS": "tpm2", "PYTEST_ADDOPTS": f"--basetemp={base}"}
    out = child_pytest(tmp_path, env)
    assert "1 passed" in out.stdout, out.stdout + out.stderr
    assert "KIND tpm2 keybridge-tpm2" in out.stdout
    time.sleep(0.5)  # SIGTERM was sent at teardown; give the daemons a moment to exit
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert [line for line in ps.splitlines() if str(base) in line] == []


def test_unknown_kind_is_a_usage_error_naming_the_known_ones(tmp_path: Path) -> None:
    out = child_pytest(tmp_path, {**_clean_env(), "KEYBRIDGE_TEST_TOKENS": "nitrokey"})
    assert out.returncode != 0
    known = "known kinds: softhsm, nss, opencryptoki, tpm2, env"
    assert f"unknown token kind 'nitrokey'; {known}" in out.stdout + out.stderr


def _clean_env() -> dict[str, str]:
    # The child runs in tmp_path: make this checkout's sources win there too.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYBRIDGE_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(keybridge.__file__).parents[1]), env.get("PYTHONPATH", "")])
    return env
