"""Test PKI for the EKM proxy: a root CA, a server certificate for 127.0.0.1, client certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HSM_CN = "contoso.managedhsmclient.azure.net"


def make_cert(
    path: Path, cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, san: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
    )
    b = b.not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
    b = b.issuer_name(issuer[0].subject if issuer else name)
    b = b.add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    cert = b.sign(issuer[1] if issuer else key, hashes.SHA256())
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key


def make_pki(d: Path) -> Path:
    """ca.crt, server.crt/.key (127.0.0.1), hsm.crt/.key (the allowed CN), stranger.crt/.key."""
    ca = make_cert(d / "ca", "test root", None)
    make_cert(d / "server", "localhost", ca, san=True)
    make_cert(d / "hsm", HSM_CN, ca)
    make_cert(d / "stranger", "evil.example", ca)
    return d
