"""``keybridge emulator --json`` / ``--print-env`` are scriptable: start it, read what it prints,
use that with the CLI, stop it with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

SRC = str(Path(__file__).resolve().parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC}
CLI = [sys.executable, "-m", "keybridge"]


def _start(*flags: str, stdout: object = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "emulator", "--port", "0", *flags], stdout=stdout, stderr=subprocess.PIPE, text=True, env=ENV
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out or "", err


def _refused(url: str) -> bool:
    u = urlsplit(url)
    try:
        socket.create_connection((u.hostname, u.port), timeout=2).close()
    except OSError:
        return True
    return False


def _kb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120)


def test_json_line_then_cli_then_sigterm() -> None:
    proc = _start("--json")
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["url"].startswith("https://127.0.0.1:")
        assert Path(info["ca_file"]).is_file()
        assert info["pid"] == proc.pid
        assert info["env"]["KEYBRIDGE_AZURE_CA_FILE"] == info["ca_file"]
        created = _kb(
            "keys", "create", f"{info['url']}/keys/scripted", "--kty", "EC", "--json", env={**ENV, **info["env"]}
        )
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["uri"].startswith(f"{info['url']}/keys/scripted/")
    finally:
        rest, err = _stop(proc)
    assert rest == ""  # nothing but the one JSON line ever went to stdout
    assert "stopping" in err
    assert _refused(info["url"])
    assert not Path(info["ca_file"]).exists()


def test_print_env_sourced_by_a_shell(tmp_path: Path) -> None:
    env_file = tmp_path / "emu.env"
    with env_file.open("w") as out:
        proc = _start("--print-env", stdout=out)
    try:
        deadline = time.monotonic() + 60
        while not env_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = env_file.read_text().splitlines()
        assert lines
        assert all(line.startswith("export KEYBRIDGE_") for line in lines)
        script = (
            f'. {env_file} && {sys.executable} -m keybridge keys create "$KEYBRIDGE_EMULATOR_URL/keys/from-env"'
            ' --kty oct --size 256 --json && echo "pid=$KEYBRIDGE_EMULATOR_PID"'
        )
        done = subprocess.run(["sh", "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"pid={proc.pid}" in done.stdout
        assert '"kty": "oct"' in done.stdout
    finally:
        _stop(proc)


def test_json_and_print_env_together_is_a_usage_error() -> None:
    done = _kb("emulator", "--json", "--print-env", env=ENV)
    assert done.returncode == 2
    assert "--json and --print-env" in done.stderr


def test_audit_log_records_each_cli_request(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    proc = _start("--json", "--audit-log", str(log))
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        created = _kb("keys", "create", f"{info['url']}/keys/audited", "--kty", "EC", env={**ENV, **info["env"]})
        assert created.returncode == 0, created.stderr
    finally:
        _stop(proc)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["operationName"] == "KeyCreate" and r["httpStatusCode"] == 200 for r in records), records
    assert oct(log.stat().st_mode & 0o777) == "0o600"
