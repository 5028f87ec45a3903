"""``keybridge doctor`` against real files, a real SoftHSM2 token and real environment variables:
exit 0 when all is well, 1 with a line saying what to fix, and never a secret in its output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keybridge import InMemoryProvider, KeySpec

SRC = str(Path(__file__).resolve().parents[1] / "src")
PASSPHRASE = "doctor-passphrase-never-shown"
TOKEN = "doctor-bearer-token-never-shown"
CLIENT_SECRET = "doctor-client-secret-never-shown"


def _doctor(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keybridge", "doctor", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KEYBRIDGE_", "AZURE_"))}
    return {**env, "PYTHONPATH": SRC, "HOME": str(tmp_path / "home")}


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "ks.kbks"
    with InMemoryProvider.open(path, PASSPHRASE, create=True) as p:
        p.create_key("a", KeySpec.aes(256))
        p.create_key("b", KeySpec.ec("P-256"))
    path.chmod(0o600)
    return path


def _by_area(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for check in report["checks"]:
        out.setdefault(check["area"], []).append(check)
    return out


def test_healthy_setup_exits_0_and_shows_no_secret(tmp_path: Path, keystore: Path, softhsm_token) -> None:
    token = softhsm_token
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    # The session's token, in a directory of its own: the doctor sees only it.
    env = {
        **_clean_env(tmp_path),
        "SOFTHSM2_CONF": token.conf_path,
        "KEYBRIDGE_KEYSTORE": str(keystore),
        "KEYBRIDGE_PASSPHRASE": PASSPHRASE,
        "KEYBRIDGE_PKCS11_PIN": token.user_pin,
        "KEYBRIDGE_AZURE_CA_FILE": str(ca),
        "KEYBRIDGE_AZURE_ACCESS_TOKEN": TOKEN,
        "AZURE_CLIENT_SECRET": CLIENT_SECRET,
    }
    uri = f"pkcs11:token={token.token_label}?module-path={token.module_path}"
    human = _doctor("--pkcs11", uri, env=env)
    done = _doctor("--pkcs11", uri, "--json", env=env)
    for out in (human, done):
        assert out.returncode == 0, out.stdout + out.stderr
        for secret in (PASSPHRASE, TOKEN, CLIENT_SECRET, token.user_pin, token.so_pin):
            assert secret not in out.stdout + out.stderr
    assert human.stdout.strip().endswith("all checks passed")
    report = json.loads(done.stdout)
    assert report["ok"] is True
    areas = _by_area(report)
    details = " | ".join(c["detail"] for c in areas["keystore"])
    assert f"{keystore} (mode 0600" in details
    assert "2 key(s)" in details
    pkcs11 = " | ".join(c["detail"] for c in areas["pkcs11"])
    assert token.module_path in pkcs11
    assert f"token {token.token_label!r} (SoftHSM project SoftHSM v2)" in pkcs11
    assert re.search(rf"logged in to {token.token_label!r}: \d+ key\(s\)", pkcs11)
    azure = " | ".join(c["detail"] for c in areas["azure"])
    assert "KEYBRIDGE_AZURE_ACCESS_TOKEN set" in azure
    assert "AZURE_CLIENT_SECRET set" in azure
    assert {c["status"] for c in areas["extra cli"]} == {"ok"}


def test_problems_exit_1_with_what_to_do(tmp_path: Path, keystore: Path) -> None:
    keystore.chmod(0o644)
    env = {
        **_clean_env(tmp_path),
        "KEYBRIDGE_KEYSTORE": str(keystore),
        "KEYBRIDGE_PASSPHRASE": "wrong " + PASSPHRASE,
        "KEYBRIDGE_PKCS11_MODULE": str(tmp_path / "no-such-module.so"),
        "KEYBRIDGE_AZURE_CA_FILE": str(tmp_path / "missing-ca.pem"),
    }
    done = _doctor(env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL")]
    text = "\n".join(fails)
    assert f"chmod 600 {keystore}" in text
    assert "cannot open it with KEYBRIDGE_PASSPHRASE" in text
    assert f"module {tmp_path / 'no-such-module.so'} does not exist" in text
    assert f"KEYBRIDGE_AZURE_CA_FILE={tmp_path / 'missing-ca.pem'} does not exist" in text
    assert len(fails) == 4
    assert "wrong " + PASSPHRASE not in done.stdout
    assert done.stdout.strip().endswith("some checks FAILED (see above)")


def test_a_chosen_keystore_that_is_missing_fails_a_default_one_warns(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    quiet = json.loads(_doctor("--json", env=env).stdout)
    assert quiet["ok"] is True
    assert _by_area(quiet)["keystore"][0]["status"] == "warn"
    typo = _doctor("--json", env={**env, "KEYBRIDGE_KEYSTORE": str(tmp_path / "typo.kbks")})
    assert typo.returncode == 1
    check = _by_area(json.loads(typo.stdout))["keystore"][0]
    assert check["status"] == "fail"
    assert "check --keystore / KEYBRIDGE_KEYSTORE" in check["detail"]
    assert not (tmp_path / "typo.kbks").exists()


def test_doctor_reads_the_variables_the_pkcs11_provider_reads() -> None:
    from keybridge.cli import _doctor
    from keybridge.providers import pkcs11

    assert (_doctor.PKCS11_MODULE_ENV, _doctor.PKCS11_PIN_ENV) == (pkcs11.MODULE_ENV, pkcs11.PIN_ENV)
