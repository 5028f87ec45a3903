"""How a person gets keybridge: the distribution name, its extras, the README quickstart (as root and
as a sudo user) and ``python -m keybridge``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import keybridge
from keybridge._meta import DISTRIBUTION, VERSION
from keybridge.errors import MissingDependency

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

tomllib = pytest.importorskip("tomllib")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_distribution_is_not_the_unrelated_pypi_keybridge() -> None:
    project = _pyproject()["project"]
    assert project["name"] == DISTRIBUTION == "keybridge-sdk"
    # The import name and the command stay `keybridge`.
    assert project["scripts"] == {"keybridge": "keybridge.cli:main"}


def test_extras_refer_to_this_distribution() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    self_refs = [dep for deps in extras.values() for dep in deps if re.match(r"keybridge\b", dep)]
    assert self_refs, "the all/dev extras should build on the other extras"
    for dep in self_refs:
        assert dep.startswith(f"{DISTRIBUTION}["), dep
        for name in re.search(r"\[(.*)\]", dep).group(1).split(","):  # type: ignore[union-attr]
            assert name in extras, f"{dep} names an extra that does not exist"


def test_version_has_one_source() -> None:
    pyproject = _pyproject()
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "keybridge._meta.VERSION"}
    assert keybridge.__version__ == VERSION


def test_every_pip_install_line_names_the_distribution() -> None:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(SRC.rglob("*.py"))]
    bad = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(r"pip install\s+(?:-\w+\s+)*[\"']?([A-Za-z][\w.-]*)", line):
                if m.group(1) == "keybridge":
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_missing_dependency_message_is_installable() -> None:
    assert 'pip install "keybridge-sdk[pkcs11]"' in str(MissingDependency("PKCS#11", "pkcs11"))


# ---- README quickstart: real bash runs the real block; only the programs it would install with
# (apt-get, sudo, python3) and `id` (to be a non-root user) are stand-ins that log their argv.

_SHIM = """#!/bin/sh
echo "$(basename "$0") $*" >> "$SHIM_LOG"
"""
_SUDO = """#!/bin/sh
echo "sudo $*" >> "$SHIM_LOG"
exec "$@"
"""
_ID = """#!/bin/sh
echo "$SHIM_UID"
"""
_PYTHON = """#!/bin/sh
echo "python3 $*" >> "$SHIM_LOG"
mkdir -p .venv/bin
for tool in pip keybridge; do printf '#!/bin/sh\\necho "%s $*" >> "$SHIM_LOG"\\n' "$tool" > .venv/bin/$tool
chmod +x .venv/bin/$tool; done
"""


def _quickstart() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- quickstart:[^>]*-->\s*```sh\n(.*?)```", text, flags=re.S)
    assert m, "README lost its quickstart block"
    return m.group(1)


def test_quickstart_never_assumes_sudo() -> None:
    for line in _quickstart().splitlines():
        assert not re.search(r"(^|[;&|]\s*)sudo\b", line), f"bare sudo in the quickstart: {line}"


@pytest.mark.parametrize(("uid", "prefix"), [("0", ""), ("1000", "sudo ")])
def test_quickstart_runs_as_root_and_as_a_sudo_user(tmp_path: Path, uid: str, prefix: str) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, body in {"apt-get": _SHIM, "sudo": _SUDO, "id": _ID, "python3": _PYTHON}.items():
        (shims / name).write_text(body)
        (shims / name).chmod(0o755)
    log = tmp_path / "log"
    env = {**os.environ, "PATH": f"{shims}:/usr/bin:/bin", "SHIM_LOG": str(log), "SHIM_UID": uid}
    script = "set -eu\n" + _quickstart()
    subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, check=True, timeout=30)
    calls = log.read_text().splitlines()
    apt = [c for c in calls if "apt-get" in c]
    assert apt[0] == f"{prefix}apt-get update"
    assert apt[-1].startswith("apt-get install -y softhsm2 opensc python3-venv")
    assert any(c == f"{prefix}apt-get install -y softhsm2 opensc python3-venv" for c in calls)
    assert ("sudo" in " ".join(calls)) == bool(prefix)
    assert calls[-1] == "keybridge demo"


def test_python_dash_m_keybridge_runs_the_cli() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-m", "keybridge", "--version"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"keybridge, version {VERSION}"
    bad = subprocess.run(
        [sys.executable, "-m", "keybridge", "no-such-command"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert "Usage: keybridge" in bad.stderr
    assert "Traceback" not in bad.stderr
