"""Starting, stopping, persisting and running the emulator from the command line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import keybridge
from keybridge.emulator import EmulatorCredential, ManagedHsmEmulator
from keybridge.errors import InvalidArgument, ProviderUnavailable

azure_keys = pytest.importorskip("azure.keyvault.keys")


def test_a_stopped_emulator_says_so_and_refuses_connections() -> None:
    hsm = ManagedHsmEmulator()
    with pytest.raises(ProviderUnavailable, match="not running"):
        _ = hsm.vault_url
    with hsm:
        url, ca = hsm.vault_url, hsm.ca_file
        assert url.startswith("https://127.0.0.1:")
        assert Path(ca).read_bytes().startswith(b"-----BEGIN CERTIFICATE")
        options = hsm.provider_options()
        assert options["connection_verify"] == ca
        assert options["verify_challenge_resource"] is False
    assert not Path(ca).exists()  # certificate files are removed on stop
    from azure.core.exceptions import ServiceRequestError

    client = azure_keys.KeyClient(url, EmulatorCredential(), connection_verify=False, retry_total=0)
    with pytest.raises(ServiceRequestError):
        client.get_key("anything")


def test_stop_ends_keep_alive_connections_of_clients_that_already_talked_to_it(tmp_path: Path) -> None:
    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    from keybridge.providers.azure import AzureKeyVaultProvider

    hsm = ManagedHsmEmulator().start()
    try:
        # stop() deletes ca_file; a copy keeps TLS setup working so the failure is the connection's
        options = {**hsm.provider_options(), "connection_verify": str(shutil.copy(hsm.ca_file, tmp_path / "ca.pem"))}
        client = azure_keys.KeyClient(hsm.vault_url, retry_total=0, **options)
        name = client.create_ec_key("before-stop", curve="P-256").name
        provider = AzureKeyVaultProvider(hsm.vault_url, cache_seconds=0, retry_total=0, **options)
        assert provider.get_key(name).ref.name == name  # both now hold a keep-alive connection
    finally:
        hsm.stop()
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        client.get_key(name)
    with pytest.raises(ProviderUnavailable, match="cannot be reached"):
        provider.get_key(name)
    hsm.stop()  # idempotent
    with pytest.raises(ProviderUnavailable, match="not running"):
        _ = hsm.ca_file


def test_bad_port_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        ManagedHsmEmulator(port=70000)


def test_credential_hides_its_token() -> None:
    cred = EmulatorCredential("s3cret-token")
    assert "s3cret" not in repr(cred)
    assert "s3cret" not in repr(cred.get_token_info("scope"))
    assert cred.get_token("scope").token == "s3cret-token"


def test_only_the_ca_it_generated_is_trusted() -> None:
    from azure.core.exceptions import ServiceRequestError

    with ManagedHsmEmulator() as a, ManagedHsmEmulator() as b:
        client = azure_keys.KeyClient(
            a.vault_url, a.credential(), connection_verify=b.ca_file, verify_challenge_resource=False, retry_total=0
        )
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get_random_bytes(4)


def test_state_dir_keeps_keys_and_vault_state_across_runs(tmp_path: Path) -> None:
    from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

    state = tmp_path / "state"
    with ManagedHsmEmulator(state_dir=state) as hsm:
        client = azure_keys.KeyClient(hsm.vault_url, **hsm.provider_options())
        kept = client.create_ec_key("kept", curve="P-256", tags={"k": "v"})
        client.create_oct_key("gone", size=128)
        client.begin_delete_key("gone").wait()
    assert oct(os.stat(state / "keys.kbks").st_mode & 0o777) == "0o600"
    with ManagedHsmEmulator(state_dir=state) as hsm:
        client = azure_keys.KeyClient(hsm.vault_url, **hsm.provider_options())
        again = client.get_key("kept")
        assert (again.key.x, again.key.y, again.properties.tags) == (kept.key.x, kept.key.y, {"k": "v"})
        assert [d.name for d in client.list_deleted_keys()] == ["gone"]
        crypto = CryptographyClient(again.id, **hsm.provider_options())
        signature = crypto.sign(SignatureAlgorithm.es256, b"\1" * 32).signature
        assert crypto.verify(SignatureAlgorithm.es256, b"\1" * 32, signature).is_valid


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_cli_prints_url_ca_and_working_exports_then_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch, stop_signal: signal.Signals
) -> None:
    from keybridge.cli._common import azure_options
    from keybridge.keys import KeySpec

    proc = subprocess.Popen(
        [sys.executable, "-c", "from keybridge.cli import main; main()", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or "Ctrl-C" not in lines[-1]:
            line = proc.stdout.readline()
            assert line, f"the emulator exited early: {''.join(lines)}"
            lines.append(line)
        url = re.search(r"Vault URL: (https://127\.0\.0\.1:\d+)", lines[0])
        ca = re.search(r"CA file:\s+(\S+)", lines[1])
        assert url, lines
        assert ca, lines
        exports = dict(re.findall(r"^\s*export (KEYBRIDGE_AZURE_\w+)=(\S+)$", "".join(lines), re.M))
        assert exports.keys() == {
            "KEYBRIDGE_AZURE_CA_FILE",
            "KEYBRIDGE_AZURE_ACCESS_TOKEN",
            "KEYBRIDGE_AZURE_VERIFY_CHALLENGE_RESOURCE",
        }
        assert exports["KEYBRIDGE_AZURE_CA_FILE"] == ca.group(1)
        # what the keybridge commands do with those exports reaches this emulator
        for name, value in exports.items():
            monkeypatch.setenv(name, value)
        with keybridge.open_provider(url.group(1), **azure_options()) as provider:
            assert provider.create_key("cli-env-key", KeySpec.aes(128)).spec == KeySpec.aes(128)
        # the CLI emulator accepts any bearer token
        client = azure_keys.KeyClient(
            url.group(1), EmulatorCredential("anything"), connection_verify=ca.group(1), verify_challenge_resource=False
        )
        assert client.create_rsa_key("cli-key", size=2048).key_type == "RSA"
        proc.send_signal(stop_signal)
        proc.wait(timeout=15)
        out, err = proc.stdout.read(), proc.stderr.read() if proc.stderr else ""
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert "stopping" in out
        assert not Path(ca.group(1)).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_unreadable_state_dir_is_an_invalid_argument(tmp_path: Path) -> None:
    (tmp_path / "vault.json").write_text('{"entries": [{"name": "k"}]}')
    with pytest.raises(InvalidArgument, match="not emulator state"):
        ManagedHsmEmulator(state_dir=tmp_path)
    with pytest.raises(InvalidArgument, match="faults"):
        ManagedHsmEmulator(faults=0.3)  # type: ignore[arg-type]
