"""python-pkcs11 internals: used in one module only, for the supported releases only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from keybridge import ProviderUnavailable
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import _compat

SRC = Path(__file__).resolve().parents[1] / "src" / "keybridge"
INTERNALS = re.compile(
    r"pkcs11\._loaded|_pkcs11\.lib|from pkcs11 import _pkcs11|int\.__new__\(|sys\.modules\[\"pkcs11\"\]"
)


def test_internals_are_touched_only_in_the_compat_module() -> None:
    users = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if INTERNALS.search(p.read_text(encoding="utf-8"))}
    assert users == {"providers/pkcs11/_compat.py"}


@pytest.mark.parametrize("version", ["0.10.0", "0.10.1", "0.10.2rc1"])
def test_supported_releases_pass(version: str) -> None:
    _compat.check_version(version)


@pytest.mark.parametrize("version", ["0.9.3", "0.11.0", "0.11.0rc1", "1.0", "unknown"])
def test_other_releases_are_refused_with_the_range_and_the_fix(version: str) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        _compat.check_version(version)
    text = str(caught.value)
    assert f"python-pkcs11 {version} is installed" in text
    assert "pip install 'python-pkcs11>=0.10,<0.11'" in text


def test_provider_refuses_an_unsupported_installed_release(tmp_path: Path, softhsm_token: SoftHsmToken) -> None:
    # A real distribution record that importlib.metadata finds before the installed one.
    meta = tmp_path / "python_pkcs11-0.11.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: python-pkcs11\nVersion: 0.11.0\n")
    code = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
from keybridge import ProviderUnavailable
from keybridge.providers.pkcs11 import Pkcs11Provider
try:
    Pkcs11Provider({softhsm_token.module_path!r}, {softhsm_token.token_label!r}, sys.stdin.read())
except ProviderUnavailable as exc:
    print(exc)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(softhsm_token.env),
        input=softhsm_token.user_pin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "python-pkcs11 0.11.0 is installed" in out.stdout
    assert softhsm_token.user_pin not in out.stdout + out.stderr


def test_reinitialize_makes_a_loaded_module_read_a_new_configuration(
    tmp_path: Path, softhsm_token: SoftHsmToken
) -> None:
    # In a child process: switching SOFTHSM2_CONF here would hide the session token from other tests.
    code = f"""
import os, sys
from pathlib import Path
import pkcs11
from keybridge._softhsm import throwaway_token
from keybridge.providers.pkcs11 import _compat
from keybridge.providers.pkcs11._library import Library
lib = Library.get({softhsm_token.module_path!r})
assert pkcs11.lib(lib.path) is lib.lib, "other python-pkcs11 users must share keybridge's instance"
labels = lambda: sorted(t.label for t in lib.lib.get_tokens() if t.label)
before = labels()
with throwaway_token(Path({str(tmp_path)!r}), "second") as tok:  # calls _compat.reinitialize
    during = labels()
assert _compat.reinitialize(lib.path) is True
after = labels()
assert _compat.reinitialize("/nonexistent/libother.so") is False
print(before, during, after, lib.generation)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(softhsm_token.env), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    tok = softhsm_token.token_label
    assert out.stdout.split("] ")[:2] == [f"['{tok}'", "['second'"]
    assert out.stdout.strip().endswith(f"['{tok}'] 2")
