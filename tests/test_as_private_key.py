"""``KeyHandle.as_private_key()``: backend keys handed to code that signs with ``cryptography``.

Each backend is real (the in-memory provider, a SoftHSM2 token, the Managed HSM emulator over HTTPS
through the azure SDK). Certificates and CSRs are checked by the OpenSSL CLI, JWTs made by PyJWT by
joserfc, raw signatures by ``cryptography`` with the public key alone; an audit sink counts the
backend calls.
"""

from __future__ import annotations

import copy
import datetime as dt
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.x509.oid import NameOID
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, RSAKey

from keybridge import (
    InvalidArgument,
    KeyHandle,
    KeyProvider,
    KeySpec,
    OperationNotPermitted,
    UnsupportedAlgorithm,
    audit,
    open_provider,
)
from keybridge.providers.memory import InMemoryProvider

BACKENDS = ["memory", "softhsm", "emulator"]
HASHES = [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def providers(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Opened lazily, so selecting one backend does not start the others."""
    opened: dict[str, KeyProvider] = {}

    def get(backend: str) -> KeyProvider:
        if backend not in opened:
            if backend == "memory":
                opened[backend] = InMemoryProvider()
            elif backend == "softhsm":
                pytest.importorskip("pkcs11")
                token = request.getfixturevalue("softhsm_token")
                opened[backend] = open_provider(token.uri(pin=False), user_pin=token.user_pin)
            else:
                pytest.importorskip("azure.keyvault.keys")
                emulator = request.getfixturevalue("azure_emulator")
                opened[backend] = open_provider(emulator.vault_url, **emulator.provider_options())
        return opened[backend]

    yield {"get": get}
    for p in opened.values():
        p.close()


@pytest.fixture(scope="module")
def keys(providers: dict[str, Any]) -> dict[tuple[str, str], KeyHandle]:
    """One RSA-2048 and one EC-P-256 key per backend, made on first use."""

    class Keys(dict[tuple[str, str], KeyHandle]):
        def __missing__(self, key: tuple[str, str]) -> KeyHandle:
            backend, kind = key
            p = providers["get"](backend)
            spec = KeySpec.rsa(2048) if kind == "rsa" else KeySpec.ec("P-256")
            name = _name(kind)
            p.create_key(name, spec)
            self[key] = p.key(name)
            return self[key]

    return Keys()


@pytest.fixture
def sign_calls() -> Iterator[list[audit.AuditEvent]]:
    """Every provider operation audited while the test runs."""
    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)
    yield events
    audit.remove_sink(events.append)


def _ops(events: list[audit.AuditEvent], key: Any = None) -> list[str]:
    """The operations ``key``'s provider ran (the emulator's own in-process store audits too)."""
    scheme = None if key is None else key.handle.provider.scheme
    return [e.operation for e in events if scheme is None or e.provider == scheme]


def _name_of(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kb")])


def _self_signed(key: Any, cn: str, **sign_kwargs: Any) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = _name_of(cn)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256(), **sign_kwargs)
    )


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)


# ---- cryptography's view: the ABCs, the public half, signatures ---------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_rsa_key_is_an_rsa_private_key_with_the_backends_public_key(keys, backend: str) -> None:
    handle = keys[backend, "rsa"]
    key = handle.as_private_key()
    assert isinstance(key, rsa.RSAPrivateKey)
    assert not isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.key_size == 2048
    assert key.public_key().public_numbers() == handle.public_key.public_numbers()  # type: ignore[union-attr]
    assert repr(key).startswith(f"BackendRSAPrivateKey({handle.ref.uri or handle.ref}")
    assert "pin" not in repr(key).lower()
    assert copy.copy(key) is key
    assert copy.deepcopy(key) is key


@pytest.mark.parametrize("backend", BACKENDS)
def test_ec_key_is_an_ec_private_key_on_its_curve(keys, backend: str) -> None:
    handle = keys[backend, "ec"]
    key = handle.as_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert key.key_size == 256
    assert key.public_key().public_numbers() == handle.public_key.public_numbers()  # type: ignore[union-attr]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
def test_rsa_signatures_verify_with_cryptography_one_backend_call_each(keys, sign_calls, backend: str, h) -> None:
    key = keys[backend, "rsa"].as_private_key()
    pub = key.public_key()
    pss = padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.DIGEST_LENGTH)
    pss_int = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
    sign_calls.clear()
    for pad in (padding.PKCS1v15(), pss, pss_int):
        sig = key.sign(b"payload", pad, h)
        # Verifying PSS with the exact salt length proves the backend used the digest length.
        pub.verify(sig, b"payload", pss_int if isinstance(pad, padding.PSS) else pad, h)
        with pytest.raises(InvalidSignature):
            pub.verify(sig, b"payloaD", pss_int if isinstance(pad, padding.PSS) else pad, h)
    assert _ops(sign_calls, key) == ["sign"] * 3
    expected = [f"RS{h.digest_size * 8}", f"PS{h.digest_size * 8}", f"PS{h.digest_size * 8}"]
    assert [e.algorithm for e in sign_calls if e.provider == key.handle.provider.scheme] == expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("h", HASHES, ids=lambda h: h.name)
def test_ecdsa_signatures_are_der_and_verify_with_cryptography(keys, sign_calls, backend: str, h) -> None:
    """ECDSA with SHA-384/512 on P-256 uses the hash's leftmost 256 bits, as ECDSA defines."""
    key = keys[backend, "ec"].as_private_key()
    sign_calls.clear()
    sig = key.sign(b"payload", ec.ECDSA(h))
    assert sig[0] == 0x30  # DER SEQUENCE, like cryptography returns, not raw r||s
    key.public_key().verify(sig, b"payload", ec.ECDSA(h))
    with pytest.raises(InvalidSignature):
        key.public_key().verify(sig, b"other", ec.ECDSA(h))
    assert _ops(sign_calls, key) == ["sign"]
    assert {e.algorithm for e in sign_calls} == {"ES256"}


@pytest.mark.parametrize("backend", ["memory", "softhsm"])
def test_prehashed_digests_are_signed_as_given(keys, backend: str) -> None:
    rsa_key = keys[backend, "rsa"].as_private_key()
    ec_key = keys[backend, "ec"].as_private_key()
    digest = hashes.Hash(hashes.SHA384())
    digest.update(b"big file")
    d = digest.finalize()
    sig = rsa_key.sign(d, padding.PKCS1v15(), Prehashed(hashes.SHA384()))
    rsa_key.public_key().verify(sig, b"big file", padding.PKCS1v15(), hashes.SHA384())
    sig = ec_key.sign(d, ec.ECDSA(Prehashed(hashes.SHA384())))
    ec_key.public_key().verify(sig, b"big file", ec.ECDSA(hashes.SHA384()))


def test_p384_and_p521_keys_sign_with_their_own_es_algorithm(sign_calls) -> None:
    p = InMemoryProvider()
    for curve, alg in (("P-384", "ES384"), ("P-521", "ES512")):
        p.create_key(curve, KeySpec.ec(curve))
        key = p.key(curve).as_private_key()
        assert key.key_size == KeySpec.ec(curve).size
        for h in HASHES:
            sign_calls.clear()
            sig = key.sign(b"m", ec.ECDSA(h))
            key.public_key().verify(sig, b"m", ec.ECDSA(h))
            assert [e.algorithm for e in sign_calls if e.operation == "sign"] == [alg]


def test_a_key_object_keeps_signing_with_the_version_it_was_made_from() -> None:
    p = InMemoryProvider()
    p.create_key("rot", KeySpec.ec("P-256"))
    key = p.key("rot").as_private_key()
    p.rotate_key("rot")
    assert p.key("rot").public_key.public_numbers() != key.public_key().public_numbers()  # type: ignore[union-attr]
    key.public_key().verify(key.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m", ec.ECDSA(hashes.SHA256()))


# ---- what it refuses ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mem_keys() -> tuple[Any, Any]:
    p = InMemoryProvider()
    p.create_key("r", KeySpec.rsa(2048))
    p.create_key("e", KeySpec.ec("P-256"))
    return p.key("r").as_private_key(), p.key("e").as_private_key()


def test_the_private_half_cannot_be_exported(mem_keys) -> None:
    for key in mem_keys:
        with pytest.raises(OperationNotPermitted, match=r"lives in the memory backend"):
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        with pytest.raises(OperationNotPermitted, match=r"private_numbers\(\) is not available"):
            key.private_numbers()
    with pytest.raises(UnsupportedAlgorithm, match="ECDH"):
        mem_keys[1].exchange(ec.ECDH(), ec.generate_private_key(ec.SECP256R1()).public_key())


def test_pem_serialisation_of_the_key_is_refused_not_leaked(mem_keys) -> None:
    """Libraries that try to serialise the key get the typed error, and the repr names only the ref."""
    for key in mem_keys:
        assert "memory:" in repr(key)
        assert "BEGIN" not in repr(key)


@pytest.mark.parametrize(
    ("pad", "h", "error", "match"),
    [
        (padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256(), UnsupportedAlgorithm,
         "salt length must equal the digest length"),
        (padding.PSS(padding.MGF1(hashes.SHA256()), 20), hashes.SHA256(), UnsupportedAlgorithm, "salt length"),
        (padding.PSS(padding.MGF1(hashes.SHA1()), 32), hashes.SHA256(), UnsupportedAlgorithm, "MGF1"),
        (padding.PKCS1v15(), hashes.SHA1(), UnsupportedAlgorithm, "sha1 is not supported"),
        (padding.PKCS1v15(), hashes.SHA3_256(), UnsupportedAlgorithm, "sha3-256 is not supported"),
        (padding.PKCS1v15(), NoDigestInfo(), UnsupportedAlgorithm, "NoDigestInfo"),
        (padding.PKCS1v15(), Prehashed(hashes.SHA256()), InvalidArgument, "32 bytes, got 7"),
        (padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None), hashes.SHA256(), UnsupportedAlgorithm,
         "not supported for signing"),
    ],
)  # fmt: skip
def test_rsa_sign_refuses_what_the_backends_cannot_do(mem_keys, sign_calls, pad, h, error, match: str) -> None:
    sign_calls.clear()
    with pytest.raises(error, match=match):
        mem_keys[0].sign(b"payload", pad, h)
    assert "sign" not in _ops(sign_calls)


def test_data_that_is_not_bytes_is_a_typed_error(mem_keys) -> None:
    with pytest.raises(InvalidArgument, match="data to sign must be bytes, got str"):
        mem_keys[0].sign("text", padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(InvalidArgument, match="data to sign must be bytes, got int"):
        mem_keys[1].sign(7, ec.ECDSA(hashes.SHA256()))


def test_ecdsa_refuses_deterministic_and_unknown_hashes(mem_keys) -> None:
    with pytest.raises(UnsupportedAlgorithm, match="RFC 6979"):
        mem_keys[1].sign(b"m", ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    with pytest.raises(UnsupportedAlgorithm, match="sha224 is not supported"):
        mem_keys[1].sign(b"m", ec.ECDSA(hashes.SHA224()))


def test_an_aes_key_has_no_private_key_object() -> None:
    p = InMemoryProvider()
    p.create_key("aes", KeySpec.aes(256))
    with pytest.raises(UnsupportedAlgorithm, match="AES-256 key; as_private_key\\(\\) needs an RSA or EC key"):
        p.key("aes").as_private_key()


def test_a_key_without_sign_permission_is_refused_by_the_backend() -> None:
    p = InMemoryProvider()
    p.create_key("enc", KeySpec.rsa(2048), ops=["decrypt", "encrypt"])
    key = p.key("enc").as_private_key()
    with pytest.raises(OperationNotPermitted, match="does not allow sign"):
        key.sign(b"m", padding.PKCS1v15(), hashes.SHA256())


# ---- RSA decrypt maps onto the backend's RSA-OAEP / RSA1_5 -------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("alg", "pad"),
    [
        ("RSA-OAEP-256", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)),
        ("RSA-OAEP", padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None)),
        ("RSA1_5", padding.PKCS1v15()),
    ],
    ids=["RSA-OAEP-256", "RSA-OAEP", "RSA1_5"],
)
def test_rsa_decrypt_runs_in_the_backend(keys, sign_calls, backend: str, alg: str, pad) -> None:
    handle = keys[backend, "rsa"]
    key = handle.as_private_key()
    ciphertext = key.public_key().encrypt(b"a data key", pad)
    if alg not in handle.provider.algorithms:
        pytest.skip(f"the {backend} backend has no {alg}")
    sign_calls.clear()
    assert key.decrypt(ciphertext, pad) == b"a data key"
    assert _ops(sign_calls, key) == ["decrypt"]
    assert {e.algorithm for e in sign_calls if e.provider == handle.provider.scheme} == {alg}


def test_rsa_decrypt_refuses_oaep_with_a_label(mem_keys) -> None:
    pad = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"label")
    with pytest.raises(UnsupportedAlgorithm, match="no label"):
        mem_keys[0].decrypt(b"x" * 256, pad)
    pad = padding.OAEP(padding.MGF1(hashes.SHA512()), hashes.SHA512(), None)
    with pytest.raises(UnsupportedAlgorithm, match="sha512"):
        mem_keys[0].decrypt(b"x" * 256, pad)


# ---- x509: self-signed certificates and CSRs, checked by OpenSSL --------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_self_signed_certificate_verifies_with_openssl(
    keys, sign_calls, tmp_path: Path, backend: str, kind: str
) -> None:
    key = keys[backend, kind].as_private_key()
    sign_calls.clear()
    cert = _self_signed(key, f"{backend}-{kind}")
    assert _ops(sign_calls, key) == ["sign"]
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    r = _openssl("verify", "-CAfile", str(pem), str(pem))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"{pem}: OK"
    # A different key's certificate under the same name must not verify against this one.
    other = _self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), f"{backend}-{kind}")
    bad = tmp_path / "other.pem"
    bad.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    assert _openssl("verify", "-CAfile", str(pem), str(bad)).returncode != 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_rsa_pss_certificate_verifies_with_openssl(keys, tmp_path: Path, backend: str) -> None:
    key = keys[backend, "rsa"].as_private_key()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    cert = _self_signed(key, "pss", rsa_padding=pss)
    pem = tmp_path / "pss.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    text = _openssl("x509", "-in", str(pem), "-noout", "-text").stdout
    assert "rsassaPss" in text
    r = _openssl("verify", "-CAfile", str(pem), str(pem))
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_csr_verifies_with_openssl(keys, tmp_path: Path, backend: str, kind: str) -> None:
    key = keys[backend, kind].as_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name_of("csr.example"))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("csr.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "req.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    r = _openssl("req", "-verify", "-noout", "-in", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify OK" in r.stdout + r.stderr
    subject = _openssl("req", "-in", str(path), "-noout", "-subject", "-nameopt", "RFC2253").stdout
    assert subject.strip() == "subject=O=kb,CN=csr.example"


# ---- JWT: PyJWT signs with the backend key, joserfc verifies -----------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("kind", "alg"), [("rsa", "RS256"), ("rsa", "PS256"), ("ec", "ES256"), ("rsa", "RS512")])
def test_pyjwt_token_verifies_with_joserfc(keys, sign_calls, backend: str, kind: str, alg: str) -> None:
    key = keys[backend, kind].as_private_key()
    claims = {"sub": "svc", "iss": backend, "n": 7}
    sign_calls.clear()
    token = jwt.encode(claims, key=key, algorithm=alg, headers={"kid": "k1"})
    assert _ops(sign_calls, key) == ["sign"]
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    verifier = (RSAKey if kind == "rsa" else ECKey).import_key(pem)
    decoded = jose_jwt.decode(token, verifier, algorithms=[alg])
    assert decoded.header["alg"] == alg
    assert decoded.claims == claims
    # A flipped payload must fail joserfc's signature check.
    head, _, sig = token.split(".")
    forged = ".".join([head, jwt.utils.base64url_encode(b'{"sub":"root"}').decode(), sig])
    with pytest.raises(Exception, match="signature"):
        jose_jwt.decode(forged, verifier, algorithms=[alg])


def test_a_token_key_without_its_public_object_is_a_typed_error(softhsm_token) -> None:
    """Other tools may keep only the EC private key on the token; without the point there is no
    public key to put in a certificate, so as_private_key() says so."""
    pytest.importorskip("pkcs11")
    if shutil.which("pkcs11-tool") is None:
        pytest.skip("pkcs11-tool (OpenSC) is not installed")
    name = _name("nopub")
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        hsm.create_key(name, KeySpec.ec("P-256"))
    # pkcs11-tool, another process, removes the public key object as a third-party tool would.
    tool = [
        "pkcs11-tool", "--module", softhsm_token.module_path, "--token-label", softhsm_token.token_label,
        "--login", "--pin", softhsm_token.user_pin, "--delete-object", "--type", "pubkey", "--label", name,
    ]  # fmt: skip
    done = subprocess.run(tool, env=dict(softhsm_token.env), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        assert hsm.get_key(name).public_key is None
        with pytest.raises(UnsupportedAlgorithm, match="reports no public key for pkcs11:"):
            hsm.key(name).as_private_key()
