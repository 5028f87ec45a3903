"""Key attestation: signed statements about where a key version lives, from the emulator's own CA.

A real Managed HSM answers with the HSM vendor's binary attestation blobs and the vendor's
certificate chain; the emulator cannot make those. It answers in the same places of the same
``attributes.attestation`` object with statements of its own that a test can still check end to
end: each blob is a compact JWS (ES256) whose payload names the key version, and whose signing
certificate, issued by a CA made for this emulator instance, is in ``certificatePemFile``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .. import _crypto
from ..keys import KeyInfo
from ._records import Version, encode_b64
from ._tls import _name

__all__ = ["VERSION", "Attestor"]

VERSION = "keybridge-emulator-1"
# The emulator's clock may be advanced by years; the chain must stay valid meanwhile.
_LIFETIME = _dt.timedelta(days=365 * 100)


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey, *, ca: bool
) -> x509.Certificate:
    start = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    usage = x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(usage, critical=True)
        .sign(signer, hashes.SHA256())
    )


class Attestor:
    """This emulator's attestation authority: a CA and one signing certificate under it, made on
    first use and kept for the emulator's lifetime (the CA key is dropped once the leaf is signed)."""

    def __init__(self) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        self._key = ec.generate_private_key(ec.SECP256R1())
        ca_cn, leaf_cn = "keybridge emulator attestation CA", "keybridge emulator HSM attestation"
        ca = _cert(ca_cn, ca_key, ca_cn, ca_key, ca=True)
        leaf = _cert(leaf_cn, self._key, ca_cn, ca_key, ca=False)
        pem = serialization.Encoding.PEM
        self.chain_pem = leaf.public_bytes(pem) + ca.public_bytes(pem)
        der = serialization.Encoding.DER
        self._x5c = [base64.b64encode(c.public_bytes(der)).decode("ascii") for c in (leaf, ca)]
        self._x5t = encode_b64(leaf.fingerprint(hashes.SHA256()))

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (ES256) of ``claims`` whose header carries the chain (``x5c``), as the
        service's secure key release answers are signed."""
        return self._jws(claims, x5c=True).decode("ascii")

    def _jws(self, claims: dict[str, Any], *, x5c: bool = False) -> bytes:
        header: dict[str, Any] = {"alg": "ES256", "typ": "JWT", "x5t#S256": self._x5t}
        if x5c:
            header["x5c"] = list(self._x5c)
        signing_input = ".".join(encode_b64(json.dumps(p, sort_keys=True).encode()) for p in (header, claims))
        digest = hashlib.sha256(signing_input.encode("ascii")).digest()
        signature = _crypto.ecdsa_der_to_raw(self._key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))), 256)
        return f"{signing_input}.{encode_b64(signature)}".encode("ascii")

    def attestation(self, kid: str, ver: Version, info: KeyInfo, when: int) -> dict[str, Any]:
        """The ``attributes.attestation`` object for one key version: a private-key statement for
        every key, and a public-key statement (with the SPKI's SHA-256) for RSA and EC keys."""
        claims: dict[str, Any] = {
            "iss": "keybridge emulator",
            "iat": when,
            "kid": kid,
            "kty": ver.kty,
            "key": str(info.spec),
            "key_ops": list(ver.ops),
            "exportable": ver.exportable,
            "version": VERSION,
        }
        out = {
            "certificatePemFile": encode_b64(self.chain_pem),
            "privateKeyAttestation": encode_b64(self._jws({**claims, "material": "private"})),
            "version": VERSION,
        }
        if info.public_key is not None:
            spki = info.public_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            public = {**claims, "material": "public", "spki_sha256": encode_b64(hashlib.sha256(spki).digest())}
            out["publicKeyAttestation"] = encode_b64(self._jws(public))
        return out
