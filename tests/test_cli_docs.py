"""docs/cli.md covers the real command line: every command, every global option, every environment
variable the sources read, the exit codes, and shell completion that actually works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click

from keybridge.cli._app import app

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _commands(group: click.Group, prefix: str = "keybridge") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        out += _commands(cmd, path) if isinstance(cmd, click.Group) else [path]
    return out


def test_every_command_is_documented() -> None:
    commands = _commands(app)
    assert "keybridge doctor" in commands
    missing = [c for c in commands if f"`{c}" not in DOC]
    assert not missing, missing


def test_every_global_option_is_documented() -> None:
    for param in app.params:
        for opt in (*param.opts, *param.secondary_opts):
            assert opt in DOC, opt


def test_every_environment_variable_in_the_sources_is_in_the_table() -> None:
    names = set()
    for path in (ROOT / "src" / "keybridge").rglob("*.py"):
        if "testing" in path.parts:  # the test fixtures' own switches: docs/testing.md and docs/pkcs11.md
            continue
        names |= set(re.findall(r"[\"']((?:KEYBRIDGE|SOFTHSM2)_[A-Z0-9_]+)[\"']", path.read_text(encoding="utf-8")))
    assert {"KEYBRIDGE_KEYSTORE", "KEYBRIDGE_PKCS11_PIN", "KEYBRIDGE_AZURE_CA_FILE"} <= names
    table = DOC[DOC.index("## Environment variables") :]
    missing = sorted(n for n in names if f"`{n}`" not in table)
    assert not missing, missing


def test_documented_exit_codes_are_the_real_ones(tmp_path: Path) -> None:
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert code in DOC

    def rc(*args: str) -> int:
        env = {**ENV, "KEYBRIDGE_KEYSTORE": str(tmp_path / "none.kbks"), "KEYBRIDGE_PASSPHRASE": "x"}
        return subprocess.run([sys.executable, "-m", "keybridge", *args], env=env, capture_output=True).returncode

    assert rc("--version") == 0
    assert rc("keys", "show", "nothing-here") == 1
    assert rc("keys", "--no-such-option") == 2


def test_bash_completion_as_documented() -> None:
    assert "_KEYBRIDGE_COMPLETE=bash_source keybridge" in DOC
    script = subprocess.run(
        [sys.executable, "-m", "keybridge"],
        env={**ENV, "_KEYBRIDGE_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "_keybridge_completion" in script
    # Real bash loads the script and completes `keybridge ke` through the keybridge command.
    bindir = Path(sys.executable).parent
    assert (bindir / "keybridge").exists()
    complete = 'COMP_WORDS=(keybridge ke); COMP_CWORD=1; _keybridge_completion keybridge; echo "${COMPREPLY[@]}"'
    probe = f"{script}\n{complete}\n"
    path = f"{bindir}:{ENV['PATH']}"
    done = subprocess.run(["bash", "-c", probe], env={**ENV, "PATH": path}, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["keys"], done.stderr
