"""``keybridge sign``: X.509 certificate signing requests and self-signed certificates, signed by a
key in any provider through :meth:`~keybridge.provider.KeyHandle.as_private_key` (the private key
stays in the backend)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .._asymmetric import BackendECPrivateKey, BackendRSAPrivateKey
from ..errors import InvalidArgument
from ._common import emit, json_option, open_cli_key
from ._outputs import cli_write, early_check, force_option

__all__ = ["sign"]

_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_SAN_FORMS = "DNS:NAME, IP:ADDRESS, email:ADDRESS or URI:URI"
_MAX_DAYS = 36500


def parse_subject(text: str) -> x509.Name:
    """An RFC 4514 distinguished name such as ``CN=api.example,O=Example Ltd``."""
    try:
        name = x509.Name.from_rfc4514_string(text)
    except ValueError as exc:
        # cryptography says nothing for bad syntax or an unknown attribute name, so say it here.
        why = str(exc) or "bad syntax or an unknown attribute name; known: CN, O, OU, L, ST, C, DC, ..."
        raise InvalidArgument(
            f"--subject {text!r} is not an RFC 4514 name ({why}); expected e.g. 'CN=api.example,O=Example Ltd'"
        ) from None
    if not name.rdns:
        raise InvalidArgument("--subject is empty; give at least a common name, e.g. 'CN=api.example'")
    return name


def parse_san(text: str) -> x509.GeneralName:
    """One subjectAltName entry: ``DNS:a.example``, ``IP:192.0.2.1``, ``email:a@b.example``, ``URI:...``."""
    kind, sep, value = text.partition(":")
    if not sep or not value:
        raise InvalidArgument(f"--san {text!r} has no type; expected {_SAN_FORMS}")
    try:
        match kind.strip().lower():
            case "dns":
                return x509.DNSName(value)
            case "ip":
                return x509.IPAddress(ipaddress.ip_address(value))
            case "email":
                return x509.RFC822Name(value)
            case "uri":
                return x509.UniformResourceIdentifier(value)
    except ValueError as exc:
        raise InvalidArgument(f"--san {text!r} is not valid ({exc}); expected {_SAN_FORMS}") from None
    raise InvalidArgument(f"--san type {kind!r} is not supported; expected {_SAN_FORMS}")


def _check_output(output: str | None, force: bool) -> None:
    # Checked before the backend signs, so a refused run costs no HSM operation.
    if output is not None and output != "-":
        early_check(output, force=force)


def _sign_kwargs(key: BackendRSAPrivateKey | BackendECPrivateKey, h: hashes.HashAlgorithm, pss: bool) -> dict[str, Any]:
    if not pss:
        return {}
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidArgument("--pss is for RSA keys; EC keys always sign with ECDSA")
    return {"rsa_padding": padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.DIGEST_LENGTH)}


def _write(pem: bytes, output: str | None, what: str, info: dict[str, Any], as_json: bool, force: bool) -> None:
    if output is None or output == "-":
        if as_json:
            emit({**info, "pem": pem.decode("ascii")}, "", as_json=True)
        else:
            click.echo(pem.decode("ascii"), nl=False)  # plain PEM, so `> file` and pipes get it byte for byte
        return
    cli_write(output, pem, force=force, mode=0o644)  # a CSR or certificate is public
    emit(
        {**info, "path": output},
        f"wrote {output}: {what} for {info['subject']}, signed by {info['key']}",
        as_json=as_json,
    )


def _options(f: Any) -> Any:
    for option in reversed(
        [
            click.option("--key", "key_uri", required=True, help="Key URI (or a bare NAME in the keystore)."),
            click.option("--subject", required=True, help="RFC 4514 name, e.g. 'CN=api.example,O=Example Ltd'."),
            click.option("--san", multiple=True, help=f"subjectAltName, repeatable: {_SAN_FORMS}."),
            click.option("-o", "--output", help="Write the PEM here (atomically) instead of stdout."),
            force_option,
            click.option(
                "--hash", "hash_name", type=click.Choice(sorted(_HASHES)), default="sha256", show_default=True
            ),
            click.option("--pss", is_flag=True, help="RSA keys: sign with RSA-PSS instead of PKCS#1 v1.5."),
            json_option,
        ]
    ):
        f = option(f)
    return f


@click.group()
def sign() -> None:
    """Make X.509 requests and certificates signed by a key in any provider (it never leaves it)."""


@sign.command()
@_options
def csr(
    key_uri: str,
    subject: str,
    san: tuple[str, ...],
    output: str | None,
    force: bool,
    hash_name: str,
    pss: bool,
    as_json: bool,
) -> None:
    """A PEM certificate signing request for KEY's public key, signed in the backend."""
    name, sans = parse_subject(subject), [parse_san(s) for s in san]
    _check_output(output, force)
    handle = open_cli_key(key_uri)
    with handle.provider:
        key, h = handle.as_private_key(), _HASHES[hash_name]()
        builder = x509.CertificateSigningRequestBuilder().subject_name(name)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        request = builder.sign(key, h, **_sign_kwargs(key, h, pss))
    info = {"key": str(key.handle.ref), "subject": name.rfc4514_string(), "kind": "csr"}
    _write(request.public_bytes(serialization.Encoding.PEM), output, "CSR", info, as_json, force)


@sign.command()
@_options
@click.option("--self-signed", is_flag=True, help="Issuer = subject, signed by KEY itself (required).")
@click.option("--days", type=click.IntRange(1, _MAX_DAYS), default=365, show_default=True, help="Validity period.")
def cert(
    key_uri: str,
    subject: str,
    san: tuple[str, ...],
    output: str | None,
    force: bool,
    hash_name: str,
    pss: bool,
    as_json: bool,
    self_signed: bool,
    days: int,
) -> None:
    """A PEM self-signed CA certificate for KEY, signed in the backend."""
    if not self_signed:
        raise InvalidArgument(
            "only self-signed certificates are made here: pass --self-signed, or send a CSR from"
            " 'keybridge sign csr' to your CA"
        )
    name, sans = parse_subject(subject), [parse_san(s) for s in san]
    _check_output(output, force)
    handle = open_cli_key(key_uri)
    with handle.provider:
        key, h = handle.as_private_key(), _HASHES[hash_name]()
        public = key.public_key()
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        certificate = builder.sign(key, h, **_sign_kwargs(key, h, pss))
    info = {
        "key": str(key.handle.ref),
        "subject": name.rfc4514_string(),
        "kind": "certificate",
        "serial": format(certificate.serial_number, "x"),
        "not_after": certificate.not_valid_after_utc.isoformat(),
    }
    _write(
        certificate.public_bytes(serialization.Encoding.PEM), output, "self-signed certificate", info, as_json, force
    )
