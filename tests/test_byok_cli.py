"""The ``keybridge byok`` commands, run through click's CliRunner against the emulator (the real
Azure SDK over HTTPS) with software keys from the CLI keystore as the source."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import rsa

from keybridge import InMemoryProvider, InvalidArgument, register_provider
from keybridge.byok import ByokPackage, wrap_for_azure
from keybridge.cli import main
from keybridge.cli._app import app

PASSPHRASE = "correct horse battery staple"
azure = pytest.importorskip("keybridge.providers.azure")


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KEYBRIDGE_KEYSTORE", str(tmp_path / "keystore.kbks"))
    monkeypatch.setenv("KEYBRIDGE_PASSPHRASE", PASSPHRASE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def vault(azure_emulator) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """https:// URIs reach the emulator: the CLI opens providers by URI, so route the scheme."""
    options = azure_emulator.provider_options()
    register_provider("https", lambda uri, **o: azure.from_uri(uri, **{**options, **o}), replace=True)
    try:
        yield azure_emulator.vault_url
    finally:
        register_provider("https", azure.from_uri, replace=True)


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert PASSPHRASE not in result.output
    return result.output


def run_json(*args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(run(*args, "--json"))  # type: ignore[no-any-return]


def test_kek_export_inspect_import_step_by_step(cli_env: Path, vault: str) -> None:
    n = uuid.uuid4().hex[:8]
    kek = run_json("byok", "kek", "create", vault, "--name", f"kek-{n}", "--size", "2048", "--pem", "kek.pem")
    kid = kek["kek"]["uri"]
    assert kek["kek"]["ops"] == ["import"]
    assert kid.startswith(f"{vault}/keys/kek-{n}/")
    shown = run("byok", "kek", "show", kid, "--pem", "again.pem")
    assert "ops: import" in shown
    assert "warning" not in shown
    assert Path("again.pem").read_bytes() == Path("kek.pem").read_bytes()

    exported = run_json(
        "byok", "export", "--source", f"memory:app-{n}", "--generate", "--kty", "EC", "--curve", "P-384",
        "--kek-pem", "kek.pem", "--kek-id", kid, "-o", "app.byok",
    )  # fmt: skip
    assert exported["generated"]["exportable"] is True
    assert ByokPackage.read("app.byok").kid == kid

    inspected = run_json("byok", "inspect", "app.byok")
    assert inspected["kid"] == kid
    assert inspected["enc"] == "CKM_RSA_AES_KEY_WRAP"
    assert inspected["ciphertext_bytes"] == len(ByokPackage.read("app.byok").ciphertext)

    imported = run_json("byok", "import", f"{vault}/keys/app-{n}", "--byok", "app.byok", "--kty", "EC",
                        "--curve", "P-384")  # fmt: skip
    assert imported["imported"]["public_key_pem"] == exported["generated"]["public_key_pem"]
    assert imported["imported"]["spec"] == "EC-P-384"


def test_import_reads_the_rsa_size_off_the_package(cli_env: Path, vault: str) -> None:
    n = uuid.uuid4().hex[:8]
    kid = run_json("byok", "kek", "create", vault, "--name", f"kek-{n}", "--size", "2048", "--pem", "kek.pem")["kek"]
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    wrap_for_azure(key, Path("kek.pem").read_bytes(), kid["uri"]).write("k.byok")
    assert "RSA-3072 under an RSA-2048 KEK" in run("byok", "inspect", "k.byok")
    imported = run_json("byok", "import", f"{vault}/keys/r-{n}", "--byok", "k.byok")
    assert imported["imported"]["spec"] == "RSA-3072"
    # Key Vault's import names only the key type, so a wrong --size is caught here, before sending.
    with pytest.raises(InvalidArgument, match="--size 2048 does not fit"):
        run("byok", "import", f"{vault}/keys/r2-{n}", "--byok", "k.byok", "--size", "2048")


def test_transfer_prints_each_step_and_the_proof(cli_env: Path, vault: str) -> None:
    n = uuid.uuid4().hex[:8]
    out = run("byok", "transfer", "--source", "memory:", "--target", vault, "--name", f"t-{n}", "--kty", "oct",
              "--size", "256", "--kek-size", "2048")  # fmt: skip
    assert "created" in out
    assert f"Imported it as {vault}/keys/t-{n}/" in out
    assert "Proof ✓ the target decrypts A256GCM output of the source" in out
    assert "KEK deleted" in out
    data = run_json("byok", "transfer", "--source", "memory:", "--target", vault, "--name", f"u-{n}",
                    "--kty", "EC", "--kek-size", "2048", "--keep-kek")  # fmt: skip
    assert data["proof"]["method"] == "signature"
    assert data["kek_kept"] is True


def test_transfer_within_the_keystore_uses_one_provider(cli_env: Path) -> None:
    data = run_json("byok", "transfer", "--source", "memory:", "--target", "memory:", "--name", "src",
                    "--target-name", "dst", "--kty", "EC", "--kek-size", "2048")  # fmt: skip
    assert data["target"].startswith("memory:dst/")
    saved = InMemoryProvider.open(cli_env / "keystore.kbks", PASSPHRASE)
    assert {k.ref.name for k in saved.list_keys()} == {"src", "dst"}  # both sides' saves survived


def test_errors_are_one_line_on_stderr_and_exit_1(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Path("bad.byok").write_text("[]")
    with pytest.raises(SystemExit) as exit_info:
        main(["byok", "inspect", "bad.byok"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert err.startswith("keybridge: error: not a .byok package")
    assert "Traceback" not in err


def test_import_of_a_package_for_another_key_type_fails_cleanly(
    cli_env: Path, vault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    n = uuid.uuid4().hex[:8]
    kid = run_json("byok", "kek", "create", vault, "--name", f"kek-{n}", "--size", "2048", "--pem", "kek.pem")["kek"]
    wrap_for_azure(os.urandom(32), Path("kek.pem").read_bytes(), kid["uri"]).write("aes.byok")
    with pytest.raises(SystemExit) as exit_info:
        main(["byok", "import", f"{vault}/keys/x-{n}", "--byok", "aes.byok", "--kty", "EC"])
    assert exit_info.value.code == 1
    assert "keybridge: error:" in capsys.readouterr().err
