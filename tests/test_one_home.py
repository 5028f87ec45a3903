"""Each of these is defined once and used everywhere (issue #15): base64url without padding, key
material as bytes, the key-exchange-key test and the AES-GCM IV length. The checks compare with
the standard library and ``cryptography``, and the source scan keeps second copies from returning."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybridge import InMemoryProvider, _b64url, _crypto
from keybridge._byok import is_kek
from keybridge.keys import KeyOp, KeySpec

SRC = Path(__file__).resolve().parent.parent / "src" / "keybridge"


@pytest.mark.parametrize("n", range(0, 7))
def test_b64url_round_trips_without_padding_like_the_standard_library(n: int) -> None:
    data = os.urandom(n) + b"\xfb\xff"  # bytes that need '-' and '_'
    text = _b64url.encode(data)
    assert text == base64.urlsafe_b64encode(data).decode().rstrip("=")
    assert "=" not in text
    assert _b64url.decode(text) == data
    assert _b64url.decode(base64.urlsafe_b64encode(data).decode()) == data  # padded is read too


@pytest.mark.parametrize("bad", ["+/8", "ab cd", "a", "€"])
def test_b64url_refuses_other_alphabets_and_lengths(bad: str) -> None:
    with pytest.raises(ValueError):
        _b64url.decode(bad)


def test_key_bytes_is_pkcs8_der_for_rsa_and_ec_and_raw_for_aes() -> None:
    for key in (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP256R1()),
    ):
        der = _crypto.key_bytes(key)
        assert der == key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        assert serialization.load_der_private_key(der, None).private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    secret = os.urandom(32)
    assert _crypto.key_bytes(bytearray(secret)) == secret


def test_is_kek_means_rsa_with_import_only() -> None:
    with InMemoryProvider() as p:
        assert is_kek(p.create_key("kek", KeySpec.rsa(2048), ops=[KeyOp.IMPORT]))
        assert not is_kek(p.create_key("rsa", KeySpec.rsa(2048)))
        assert not is_kek(p.create_key("rsa-wrap", KeySpec.rsa(2048), ops=[KeyOp.UNWRAP_KEY]))
        assert not is_kek(p.create_key("aes", KeySpec.aes(256)))


def test_gcm_iv_is_the_96_bits_the_provider_output_starts_with() -> None:
    key = os.urandom(32)
    out = _crypto.gcm_encrypt(key, b"data", b"aad")
    assert _crypto.GCM_IV == 12
    assert AESGCM(key).decrypt(out[: _crypto.GCM_IV], out[_crypto.GCM_IV :], b"aad") == b"data"


@pytest.mark.parametrize(
    ("pattern", "home"),
    [
        (r"urlsafe_b64encode|altchars=b\"-_\"", "_b64url.py"),
        (r"PrivateFormat\.PKCS8", "_crypto.py"),
        (r"ops [!=]= \{KeyOp\.IMPORT\}", "_byok.py"),
        (r"^_?(GCM_IV|_GCM_IV|IV_LEN|_NONCE) = 12\b", "_crypto.py"),
    ],
)
def test_defined_in_one_place(pattern: str, home: str) -> None:
    """The suite (keybridge/testing) keeps its own copies on purpose: it must be independent; the
    emulator's TLS files (server, and EKM client identity) are PEM certificates' keys, not key material."""
    skip = ("testing", "emulator/_tls.py", "emulator/_external.py")
    found = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if not str(path.relative_to(SRC)).startswith(skip) and re.search(pattern, path.read_text(), re.MULTILINE)
    )
    assert found == [home]
