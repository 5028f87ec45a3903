"""A throwaway certificate authority and server certificate for one emulator run.

Each emulator makes its own CA, so trusting ``ca_file`` trusts this emulator and nothing else;
the CA key never touches disk and is dropped as soon as the leaf certificate is signed.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._files import atomic_write

__all__ = ["make_server_context"]

_LIFETIME = _dt.timedelta(days=7)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "keybridge emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _certificates() -> tuple[bytes, bytes, bytes]:
    """(CA cert PEM, leaf cert PEM, leaf key PEM)."""
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("keybridge emulator CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("localhost"),
            # lets a ``<vault>.localhost`` host name pass both TLS and the SDK's resource check
            x509.DNSName("*.localhost"),
        ]
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _LIFETIME)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def make_server_context(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A TLS 1.2+ server context with a fresh certificate, and the path of the CA PEM to trust.

    ``directory`` is private to the emulator; the leaf key is written there (mode 0600) only
    because :meth:`ssl.SSLContext.load_cert_chain` reads files, and removed right after loading.
    """
    ca_pem, cert_pem, key_pem = _certificates()
    ca_file = directory / "ca.pem"
    chain_file = directory / "server.pem"
    atomic_write(ca_file, ca_pem, mode=0o644, overwrite=True)
    atomic_write(chain_file, key_pem + cert_pem, mode=0o600, overwrite=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(chain_file)
    finally:
        chain_file.unlink()
    return ctx, ca_file
