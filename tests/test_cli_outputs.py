"""Every CLI command that writes a file: refuses an existing output unless --force, never writes over
its own input or the keystore (even with --force, through symlinks and hard links), writes key
material 0600, and passes --max-encrypted-data-keys through. A real keystore, real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keybridge import InMemoryProvider, KeySpec, register_provider
from keybridge.byok import ByokPackage
from keybridge.cli._app import app
from keybridge.errors import InvalidArgument, InvalidMessage, OutputExists

PASSPHRASE = "correct horse battery staple"
KID = "https://example.managedhsm.azure.net/keys/kek/0123456789abcdef0123456789abcdef"


@pytest.fixture
def ks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    keystore = tmp_path / "ks.kbks"
    p = InMemoryProvider.open(keystore, PASSPHRASE, create=True)
    for name in ("a", "b", "c"):
        p.create_key(name, KeySpec.aes(256))
    monkeypatch.setenv("KEYBRIDGE_KEYSTORE", str(keystore))
    monkeypatch.setenv("KEYBRIDGE_PASSPHRASE", PASSPHRASE)
    monkeypatch.chdir(tmp_path)
    return keystore


def run(*args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input, catch_exceptions=True)


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def cli(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    """The real ``python -m keybridge.cli`` on these sources (the cwd is the test's directory)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path)}
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "keybridge.cli", *args], capture_output=True, check=False, timeout=120, env=env, **kw
    )


def refused(*args: str, error: type[Exception]) -> BaseException:
    result = run(*args)
    assert result.exit_code != 0
    assert isinstance(result.exception, error), (result.output, result.exception)
    return result.exception


@pytest.mark.parametrize("command", ["encrypt", "decrypt", "rewrap"])
def test_an_existing_output_needs_force(ks: Path, command: str) -> None:
    Path("plain").write_bytes(b"hello")
    ok("encrypt", "plain", "-o", "msg", "-k", "a")
    args = {
        "encrypt": ["encrypt", "plain", "-k", "a"],
        "decrypt": ["decrypt", "msg", "-k", "a"],
        "rewrap": ["rewrap", "msg", "--unwrap-with", "a", "--wrap-for", "b"],
    }[command]
    Path("out").write_bytes(b"keep me")
    exc = refused(*args, "-o", "out", error=OutputExists)
    assert "use --force" in str(exc)
    assert Path("out").read_bytes() == b"keep me"
    ok(*args, "-o", "out", "--force")
    assert Path("out").read_bytes() != b"keep me"
    assert stat.S_IMODE(Path("out").stat().st_mode) == 0o600
    assert sorted(p.name for p in Path().iterdir()) == ["ks.kbks", "ks.kbks.lock", "msg", "out", "plain"]


@pytest.mark.parametrize("how", ["path", "symlink", "hardlink"])
@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_encrypt_never_writes_over_the_keystore(ks: Path, how: str, force: bool) -> None:
    before = ks.read_bytes()
    target = {"path": ks, "symlink": Path("link"), "hardlink": Path("hard")}[how]
    if how == "symlink":
        target.symlink_to(ks)
    elif how == "hardlink":
        os.link(ks, target)
    Path("plain").write_bytes(b"hello")
    exc = refused("encrypt", "plain", "-o", str(target), "-k", "a", *(["--force"] if force else []), error=Exception)
    assert isinstance(exc, (InvalidArgument, OutputExists))
    if force:
        assert isinstance(exc, InvalidArgument)
        assert "same file as" in str(exc)
    assert ks.read_bytes() == before
    assert InMemoryProvider.open(ks, PASSPHRASE).get_key("a")


@pytest.mark.parametrize("command", ["encrypt", "decrypt", "rewrap"])
def test_no_command_writes_over_its_own_input_even_with_force(ks: Path, command: str) -> None:
    Path("plain").write_bytes(b"hello")
    ok("encrypt", "plain", "-o", "msg", "-k", "a")
    Path("alias").symlink_to("msg" if command != "encrypt" else "plain")
    src = "plain" if command == "encrypt" else "msg"
    args = {
        "encrypt": ["encrypt", src, "-k", "a"],
        "decrypt": ["decrypt", src, "-k", "a"],
        "rewrap": ["rewrap", src, "--unwrap-with", "a", "--wrap-for", "b"],
    }[command]
    before = Path(src).read_bytes()
    for out in (src, "alias"):
        exc = refused(*args, "-o", out, "--force", error=InvalidArgument)
        assert "same file as" in str(exc)
    assert Path(src).read_bytes() == before


def test_stdin_redirected_from_the_output_file_is_refused(ks: Path) -> None:
    Path("plain").write_bytes(b"hello")
    with open("plain", "rb") as stdin:
        done = cli("encrypt", "-", "-o", "plain", "--force", "-k", "a", stdin=stdin)
    assert done.returncode == 1
    assert done.stderr == (
        b"keybridge: error: plain is the same file as /dev/stdin; nothing was written: write to another path\n"
    )
    assert b"Traceback" not in done.stderr
    assert Path("plain").read_bytes() == b"hello"


def test_the_cli_error_for_a_taken_output_is_one_line(ks: Path) -> None:
    Path("plain").write_bytes(b"hello")
    Path("out").write_bytes(b"keep")
    done = cli("encrypt", "plain", "-o", "out", "-k", "a")
    assert done.returncode == 1
    assert done.stderr == b"keybridge: error: out already exists; nothing was written (use --force to replace it)\n"


# ---- --max-encrypted-data-keys --------------------------------------------------------------------


@pytest.fixture
def msg17(ks: Path) -> Path:
    """A message for 17 recipients, one more than the default cap of 16."""
    p = InMemoryProvider.open(ks, PASSPHRASE)
    names = [f"k{i}" for i in range(17)]
    for name in names:
        p.create_key(name, KeySpec.aes(128))
    Path("plain").write_bytes(b"seventeen")
    ok("encrypt", "plain", "-o", "msg17", *[arg for n in names for arg in ("-k", n)])
    return Path("msg17")


def test_decrypt_max_encrypted_data_keys(msg17: Path) -> None:
    exc = refused("decrypt", str(msg17), "-o", "out", "-k", "k3", error=InvalidMessage)
    assert "17" in str(exc)
    assert not Path("out").exists()
    refused("decrypt", str(msg17), "-o", "out", "-k", "k3", "--max-encrypted-data-keys", "5", error=InvalidMessage)
    assert not Path("out").exists()
    ok("decrypt", str(msg17), "-o", "out", "-k", "k3", "--max-encrypted-data-keys", "17")
    assert Path("out").read_bytes() == b"seventeen"
    assert run("decrypt", str(msg17), "-k", "k3", "--max-encrypted-data-keys", "0").exit_code == 2


def test_rewrap_max_encrypted_data_keys(msg17: Path) -> None:
    base = ["rewrap", str(msg17), "-o", "new", "--unwrap-with", "k0", "--wrap-for", "a"]
    refused(*base, error=InvalidMessage)
    assert not Path("new").exists()
    ok(*base, "--max-encrypted-data-keys", "17")
    ok("decrypt", "new", "-o", "out", "-k", "a")
    assert Path("out").read_bytes() == b"seventeen"


# ---- byok ------------------------------------------------------------------------------------------


def _kek_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_byok_export_is_0600_exclusive_and_checked_before_generating(ks: Path) -> None:
    Path("kek.pem").write_bytes(_kek_pem())
    base = ["byok", "export", "--kek-pem", "kek.pem", "--kek-id", KID, "-o", "app.byok"]
    ok(*base, "--source", "memory:app", "--generate", "--kty", "oct", "--size", "256")
    assert stat.S_IMODE(Path("app.byok").stat().st_mode) == 0o600
    first = Path("app.byok").read_bytes()
    assert ByokPackage.read("app.byok").kid == KID
    # Taken output: refused before --generate creates a key.
    exc = refused(*base, "--source", "memory:other", "--generate", "--kty", "oct", error=OutputExists)
    assert "use --force" in str(exc)
    assert "other" not in {i.ref.name for i in InMemoryProvider.open(ks, PASSPHRASE).list_keys()}
    assert Path("app.byok").read_bytes() == first
    ok(*base, "--source", "memory:app", "--force")
    assert Path("app.byok").read_bytes() != first
    assert stat.S_IMODE(Path("app.byok").stat().st_mode) == 0o600
    for target in (str(ks), "kek.pem"):  # never the keystore or the KEK it reads
        refused(*base[:-1], target, "--source", "memory:app", "--force", error=InvalidArgument)
    assert Path("kek.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


@pytest.fixture
def vault(azure_emulator) -> Iterator[str]:  # type: ignore[no-untyped-def]
    from keybridge.providers import azure

    options = azure_emulator.provider_options()
    register_provider("https", lambda uri, **o: azure.from_uri(uri, **{**options, **o}), replace=True)
    try:
        yield azure_emulator.vault_url
    finally:
        register_provider("https", azure.from_uri, replace=True)


def test_byok_kek_pem_needs_force_and_is_refused_before_the_kek_is_made(ks: Path, vault: str) -> None:
    name = f"kek-{uuid.uuid4().hex[:8]}"
    Path("kek.pem").write_bytes(b"keep")
    exc = refused("byok", "kek", "create", vault, "--name", name, "--size", "2048", "--pem", "kek.pem",
                  error=OutputExists)  # fmt: skip
    assert "use --force" in str(exc)
    assert Path("kek.pem").read_bytes() == b"keep"
    refused("byok", "kek", "show", f"{vault}/keys/{name}", error=Exception)  # no KEK was created
    ok("byok", "kek", "create", vault, "--name", name, "--size", "2048", "--pem", "kek.pem", "--force")
    assert Path("kek.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(Path("kek.pem").stat().st_mode) == 0o644  # a public key
    refused("byok", "kek", "show", f"{vault}/keys/{name}", "--pem", "kek.pem", error=OutputExists)
    ok("byok", "kek", "show", f"{vault}/keys/{name}", "--pem", "kek.pem", "--force")
    refused("byok", "kek", "show", f"{vault}/keys/{name}", "--pem", str(ks), "--force", error=InvalidArgument)
