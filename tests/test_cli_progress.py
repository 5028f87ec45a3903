"""Progress of long envelope commands: on stderr, only for a terminal or --progress, never with --json
and never on stdout."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from keybridge import InMemoryProvider, KeySpec
from keybridge.cli import main
from keybridge.cli._progress import human_bytes

SRC = str(Path(__file__).resolve().parents[1] / "src")
PASSPHRASE = "correct horse battery staple"
MIB = 1 << 20


@pytest.fixture
def keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    path = tmp_path / "ks.kbks"
    p = InMemoryProvider.open(path, PASSPHRASE, create=True)
    p.create_key("a", KeySpec.aes(256))
    p.create_key("b", KeySpec.aes(256))
    env = {"KEYBRIDGE_KEYSTORE": str(path), "KEYBRIDGE_PASSPHRASE": PASSPHRASE}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * MIB) == "3.0 MiB"
    assert human_bytes(5 << 40) == "5.0 TiB"


def test_forced_progress_goes_to_stderr_with_bytes_and_speed(keystore, tmp_path, capsys) -> None:
    (tmp_path / "in").write_bytes(os.urandom(3 * MIB))
    code, out, err = cli(capsys, "--progress", "encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "m"), "-k", "a")
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("encrypting: 3.0 MiB of 3.0 MiB (100%), ")
    assert "/s, done in " in last
    assert "encrypting" not in out

    code, out, err = cli(
        capsys, "--progress", "rewrap", str(tmp_path / "m"), "-o", str(tmp_path / "m2"), "--unwrap-with", "a",
        "--wrap-for", "b",
    )  # fmt: skip
    assert code == 0, err
    assert err.strip().splitlines()[-1].startswith("rewrapping: ")


def test_no_progress_with_json_or_without_a_terminal(keystore, tmp_path, capsys) -> None:
    (tmp_path / "in").write_bytes(os.urandom(2 * MIB))
    code, out, err = cli(
        capsys, "--progress", "encrypt", str(tmp_path / "in"), "-o", str(tmp_path / "m"), "-k", "a", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["bytes_in"] == 2 * MIB
    assert err == ""
    # stderr is not a terminal here, so the default is quiet.
    code, out, err = cli(capsys, "decrypt", str(tmp_path / "m"), "-o", str(tmp_path / "o"), "-k", "a")
    assert code == 0, err
    assert err == ""
    assert (tmp_path / "o").read_bytes() == (tmp_path / "in").read_bytes()


def test_terminal_gets_a_redrawn_line_that_is_erased(keystore, tmp_path) -> None:
    """A real pseudo-terminal as stderr and a slow pipe as stdin (the size is unknown)."""
    master, slave = pty.openpty()
    out = (tmp_path / "msg").open("wb")
    env = {**os.environ, **keystore, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-m", "keybridge", "encrypt", "-", "-k", "a"],
        stdin=subprocess.PIPE, stdout=out, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    assert proc.stdin is not None
    for pause in (1.0, 0.3, 0.0):
        proc.stdin.write(os.urandom(MIB))
        proc.stdin.flush()
        time.sleep(pause)
    proc.stdin.close()
    seen = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    assert proc.wait(timeout=60) == 0, seen
    os.close(master)
    out.close()
    text = seen.decode()
    assert "\rencrypting: " in text
    assert "MiB/s" in text
    assert " of " not in text  # a pipe has no known total
    assert text.endswith("\r\x1b[K")  # erased: the terminal is left clean
    assert (tmp_path / "msg").stat().st_size > 3 * MIB
