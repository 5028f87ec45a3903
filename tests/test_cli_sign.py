"""``keybridge sign csr|cert``: PEM files signed in a real backend (the encrypted keystore, a SoftHSM2
token, the Managed HSM emulator over HTTPS), checked with the OpenSSL CLI; bad input is one line on
stderr and exit 1, and writes nothing."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keybridge import KeySpec, audit, open_provider
from keybridge.cli import main
from keybridge.providers.memory import InMemoryProvider

PASSPHRASE = "cli-sign-passphrase"


@pytest.fixture
def keystore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InMemoryProvider:
    """A keystore file with an RSA, an EC and an AES key, as the CLI's default keystore."""
    path = tmp_path / "ks" / "keystore.kbks"
    path.parent.mkdir()
    monkeypatch.setenv("KEYBRIDGE_KEYSTORE", str(path))
    monkeypatch.setenv("KEYBRIDGE_PASSPHRASE", PASSPHRASE)
    kp = InMemoryProvider.open(path, PASSPHRASE, create=True)
    kp.create_key("rsa", KeySpec.rsa(2048))
    kp.create_key("ec", KeySpec.ec("P-256"))
    kp.create_key("aes", KeySpec.aes(256))
    return kp


@pytest.fixture
def events() -> Iterator[list[audit.AuditEvent]]:
    seen: list[audit.AuditEvent] = []
    audit.add_sink(seen.append)
    yield seen
    audit.remove_sink(seen.append)


def kb(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the real entry point in-process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


def assert_csr_ok(path: Path, subject: str) -> x509.CertificateSigningRequest:
    r = openssl("req", "-verify", "-noout", "-in", str(path))
    assert r.returncode == 0, r.stderr
    assert "verify OK" in r.stdout + r.stderr
    shown = openssl("req", "-in", str(path), "-noout", "-subject", "-nameopt", "RFC2253").stdout.strip()
    assert shown == f"subject={subject}"
    return x509.load_pem_x509_csr(path.read_bytes())


def public_pem(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# ---- CSRs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_csr_is_signed_by_the_keystore_key_and_verifies_with_openssl(
    keystore: InMemoryProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str], events: list[Any], name: str
) -> None:
    out = tmp_path / "out.csr"
    args = ["--subject", "CN=x,O=y", "--san", "DNS:a.example", "--san", "IP:192.0.2.7", "-o", str(out)]
    code, stdout, err = kb(capsys, "sign", "csr", "--key", name, *args)
    assert (code, err) == (0, "")
    assert stdout.startswith(f"wrote {out}: CSR for CN=x,O=y, signed by memory:{name}/")
    csr = assert_csr_ok(out, "CN=x,O=y")
    assert public_pem(csr.public_key()) == public_pem(keystore.get_key(name).public_key)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    assert "DNS:a.example, IP Address:192.0.2.7" in openssl("req", "-in", str(out), "-noout", "-text").stdout
    assert [e.operation for e in events if e.operation == "sign"] == ["sign"]
    assert out.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("name", "extra", "shown"),
    [
        ("rsa", ["--hash", "sha384"], "sha384WithRSAEncryption"),
        ("rsa", ["--pss", "--hash", "sha512"], "rsassaPss"),
        ("ec", ["--hash", "sha512"], "ecdsa-with-SHA512"),
    ],
)
def test_csr_hash_and_padding_options(
    keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, extra: list[str], shown: str
) -> None:
    out = tmp_path / "h.csr"
    code, _, err = kb(capsys, "sign", "csr", "--key", name, "--subject", "CN=h", "-o", str(out), *extra)
    assert (code, err) == (0, "")
    assert_csr_ok(out, "CN=h")
    text = openssl("req", "-in", str(out), "-noout", "-text").stdout
    assert f"Signature Algorithm: {shown}" in text
    if "--pss" in extra:
        assert "Hash Algorithm: sha512" in text
        assert "Salt Length: 0x40" in text  # the digest length, as the backends sign


def test_csr_to_stdout_is_plain_pem_and_json_names_the_key(keystore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = kb(capsys, "sign", "csr", "--key", "ec", "--subject", "CN=stdout")
    assert code == 0
    assert out.startswith("-----BEGIN CERTIFICATE REQUEST-----\n")
    assert out.endswith("-----END CERTIFICATE REQUEST-----\n")
    assert x509.load_pem_x509_csr(out.encode()).is_signature_valid
    code, out, _ = kb(capsys, "sign", "csr", "--key", "ec", "--subject", "CN=stdout", "--json")
    data = json.loads(out)
    assert data["kind"] == "csr"
    assert data["subject"] == "CN=stdout"
    assert data["key"].startswith("memory:ec/")
    assert x509.load_pem_x509_csr(data["pem"].encode()).is_signature_valid


def test_existing_output_is_refused_without_force(
    keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str], events: list[Any]
) -> None:
    out = tmp_path / "keep.csr"
    out.write_bytes(b"precious")
    code, stdout, err = kb(capsys, "sign", "csr", "--key", "rsa", "--subject", "CN=x", "-o", str(out))
    assert (code, stdout) == (1, "")
    assert err.startswith("keybridge: error: ")
    assert str(out) in err
    assert "--force" in err
    assert out.read_bytes() == b"precious"
    assert not [e for e in events if e.operation == "sign"]  # refused before the backend signed
    code, _, _ = kb(capsys, "sign", "csr", "--key", "rsa", "--subject", "CN=x", "-o", str(out), "--force")
    assert code == 0
    assert_csr_ok(out, "CN=x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csr", "ks"]  # no temp file left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "CN=x,,O=y"], "--subject 'CN=x,,O=y' is not an RFC 4514 name (bad syntax"),
        (["--subject", "FOO=x"], "--subject 'FOO=x' is not an RFC 4514 name"),
        (["--subject", "C=USA"], "--subject 'C=USA' is not an RFC 4514 name (Attribute's length must be >= 2"),
        (["--subject", ""], "--subject is empty"),
        (["--subject", "CN=x", "--san", "a.example"], "--san 'a.example' has no type; expected DNS:NAME"),
        (["--subject", "CN=x", "--san", "IP:999.1.1.1"], "--san 'IP:999.1.1.1' is not valid"),
        (["--subject", "CN=x", "--san", "rid:1.2.3"], "--san type 'rid' is not supported"),
        (["--subject", "CN=x", "--key", "aes"], "is an AES-256 key; as_private_key() needs an RSA or EC key"),
        (["--subject", "CN=x", "--key", "ec", "--pss"], "--pss is for RSA keys"),
        (["--subject", "CN=x", "--key", "missing"], "missing"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_writes_nothing(
    keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "bad.csr"
    key = [] if "--key" in args else ["--key", "rsa"]
    code, stdout, err = kb(capsys, "sign", "csr", *key, *args, "-o", str(out))
    assert code == 1
    assert stdout == ""
    assert err.startswith("keybridge: error: ")
    assert err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


# ---- self-signed certificates ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rsa", "ec"])
def test_self_signed_certificate_verifies_with_openssl(
    keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / "ca.pem"
    code, stdout, err = kb(
        capsys, "sign", "cert", "--self-signed", "--key", name, "--subject", "CN=Test CA,O=kb",
        "--days", "30", "--san", "DNS:ca.example", "-o", str(out),
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert "self-signed certificate for CN=Test CA,O=kb" in stdout
    r = openssl("verify", "-CAfile", str(out), str(out))
    assert r.stdout.strip() == f"{out}: OK", r.stderr
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert cert.subject == cert.issuer
    assert cert.subject.rfc4514_string() == "CN=Test CA,O=kb"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=30)
    assert abs(cert.not_valid_before_utc - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert public_pem(cert.public_key()) == public_pem(keystore.get_key(name).public_key)
    assert openssl("x509", "-in", str(out), "-noout", "-checkend", str(29 * 86400)).returncode == 0
    assert openssl("x509", "-in", str(out), "-noout", "-checkend", str(31 * 86400)).returncode != 0


def test_cert_needs_self_signed_and_sane_days(keystore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = kb(capsys, "sign", "cert", "--key", "rsa", "--subject", "CN=x")
    assert code == 1
    assert "pass --self-signed, or send a CSR from 'keybridge sign csr' to your CA" in err
    code, _, err = kb(capsys, "sign", "cert", "--self-signed", "--key", "rsa", "--subject", "CN=x", "--days", "0")
    assert code == 2  # a click usage error
    assert "--days" in err


# ---- other backends ----------------------------------------------------------------------------


def test_csr_signed_in_a_softhsm_token(
    softhsm_token, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pkcs11")
    name = f"csr-{uuid.uuid4().hex[:8]}"
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        info = hsm.create_key(name, KeySpec.ec("P-256"))
    monkeypatch.setenv("KEYBRIDGE_PKCS11_PIN", softhsm_token.user_pin)
    out = tmp_path / "hsm.csr"
    code, stdout, err = kb(
        capsys,
        "sign",
        "csr",
        "--key",
        softhsm_token.uri(name, pin=False),
        "--subject",
        "CN=hsm.example",
        "-o",
        str(out),
    )
    assert (code, err) == (0, "")
    assert softhsm_token.user_pin not in stdout
    csr = assert_csr_ok(out, "CN=hsm.example")
    assert public_pem(csr.public_key()) == public_pem(info.public_key)


def test_certificate_signed_in_the_emulator(
    azure_emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("azure.keyvault.keys")
    name = f"crt-{uuid.uuid4().hex[:8]}"
    with open_provider(azure_emulator.vault_url, **azure_emulator.provider_options()) as azure:
        info = azure.create_key(name, KeySpec.rsa(2048))
    monkeypatch.setenv("KEYBRIDGE_AZURE_CA_FILE", azure_emulator.ca_file)
    monkeypatch.setenv("KEYBRIDGE_AZURE_ACCESS_TOKEN", azure_emulator.credential().get_token("x").token)
    monkeypatch.setenv("KEYBRIDGE_AZURE_VERIFY_CHALLENGE_RESOURCE", "0")
    out = tmp_path / "azure.pem"
    code, _, err = kb(
        capsys, "sign", "cert", "--self-signed", "--key", str(info.ref), "--subject", "CN=azure.example",
        "--pss", "-o", str(out),
    )  # fmt: skip
    assert (code, err) == (0, "")
    r = openssl("verify", "-CAfile", str(out), str(out))
    assert r.stdout.strip() == f"{out}: OK", r.stderr
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert public_pem(cert.public_key()) == public_pem(info.public_key)


def test_a_pin_in_the_key_uri_never_reaches_the_output(
    softhsm_token, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pkcs11")
    name = f"pin-{uuid.uuid4().hex[:8]}"
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        hsm.create_key(name, KeySpec.rsa(2048))
    out = tmp_path / "pin.csr"
    code, stdout, err = kb(capsys, "sign", "csr", "--key", softhsm_token.uri(name), "--subject", "CN=p", "-o", str(out))
    assert (code, err) == (0, "")
    assert_csr_ok(out, "CN=p")
    code, stdout2, err = kb(capsys, "sign", "csr", "--key", softhsm_token.uri("absent"), "--subject", "CN=p")
    assert code == 1
    assert "absent" in err
    for text in (stdout, stdout2, err):
        assert softhsm_token.user_pin not in text
