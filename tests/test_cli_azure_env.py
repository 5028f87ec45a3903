"""The command line reaches a running `keybridge emulator` through the environment it prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def running_emulator(tmp_path: Path) -> Iterator[dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "keybridge.cli", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while "ca" not in seen and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.match(r"Vault URL:\s+(\S+)", line):
            seen["url"] = m.group(1)
        if m := re.match(r"CA file:\s+(\S+)", line):
            seen["ca"] = m.group(1)
    try:
        assert {"url", "ca"} <= seen.keys(), "the emulator did not print its URL and CA file"
        yield seen
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _kb(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keybridge.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_uses_the_emulator_from_the_printed_environment(running_emulator: dict[str, str]) -> None:
    env = {
        **os.environ,
        "KEYBRIDGE_AZURE_CA_FILE": running_emulator["ca"],
        "KEYBRIDGE_AZURE_ACCESS_TOKEN": "emulator",
        "KEYBRIDGE_AZURE_VERIFY_CHALLENGE_RESOURCE": "0",
    }
    done = _kb(["byok", "kek", "create", running_emulator["url"], "--name", "cli-kek", "--size", "2048", "--json"], env)
    assert done.returncode == 0, done.stderr
    kid = json.loads(done.stdout)["kek"]["uri"]
    assert kid.startswith(running_emulator["url"] + "/keys/cli-kek/")
    assert "emulator" not in done.stdout + done.stderr  # the token is never echoed

    # Without trusting the emulator's CA the same call fails cleanly: one line, no traceback.
    untrusted = {k: v for k, v in env.items() if k != "KEYBRIDGE_AZURE_CA_FILE"}
    failed = _kb(["byok", "kek", "show", kid], untrusted)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
