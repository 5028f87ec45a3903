"""``keybridge demo`` as a user runs it: a real subprocess, SoftHSM when installed, else in memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

DEMO = [sys.executable, "-c", "from keybridge.cli import main; main()", "demo"]


def run_demo(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    out = done.stdout + done.stderr
    for secret in ("pin-value", "user.pin", "--pin", "so-pin"):
        assert secret not in out
    return done.stdout


@pytest.mark.skipif(shutil.which("softhsm2-util") is None, reason="softhsm2 is not installed")
def test_demo_moves_rsa_ec_and_aes_from_softhsm_with_proof() -> None:
    out = run_demo()
    assert "throwaway SoftHSM2 token" in out
    for spec in ("RSA-2048", "EC-P-256", "AES-256"):
        assert spec in out
    assert out.count("✓") >= 3
    assert "✓ signature PS256" in out
    assert "✓ signature ES256" in out
    assert "A256GCM" in out
    assert "It worked" in out


def test_demo_json_without_softhsm_says_it_used_the_in_memory_provider() -> None:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no softhsm2-util on PATH
    data = json.loads(run_demo("--json", env=env))
    assert data["ok"] is True
    assert "in-memory provider" in data["source"]
    assert [t["key"] for t in data["transfers"]] == ["RSA-2048", "EC-P-256", "AES-256"]
    assert [t["proof"]["method"] for t in data["transfers"]] == ["signature", "signature", "encryption"]
    for t in data["transfers"]:
        assert t["target"].startswith(data["target"] + "/keys/")
        assert t["source"].startswith("memory:")
