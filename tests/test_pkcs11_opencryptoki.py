"""Fixes for what opencryptoki's soft token (the ``opencryptoki`` kind) exposed; each runs on every kind.

opencryptoki 3.8 refuses CKA_SENSITIVE and CKA_EXTRACTABLE in any C_UnwrapKey template
(CKR_ATTRIBUTE_READ_ONLY) and sets them itself. On that token the first unwrap meets the refusal
for real; on the others the refusal is provoked by adding CKA_LOCAL (an attribute no template may
set) to the provider's first template, so that the same token-side path runs everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keybridge import KeyOp, KeySpec, OperationNotPermitted, UnsupportedOperation
from keybridge.testing._softhsm import Pkcs11TestToken

pytest.importorskip("pkcs11")

from pkcs11 import Attribute as A
from pkcs11 import exceptions as px

from keybridge.providers.pkcs11 import Pkcs11Provider, _provider

OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


@pytest.fixture
def provider(pkcs11_token: Pkcs11TestToken) -> Iterator[Pkcs11Provider]:
    with pkcs11_token.provider() as p:
        if "RSA-OAEP" not in p.algorithms:
            pytest.skip(f"{pkcs11_token.kind} does not claim RSA-OAEP unwrap")
        yield p


@pytest.fixture
def rsa_kek(provider: Pkcs11Provider) -> Iterator[str]:
    name = f"ock-kek-{os.getpid()}"
    provider.create_key(name, KeySpec.rsa(2048), ops={KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY})
    yield name
    provider.delete_key(name)


def _wrapped_by_cryptography(provider: Pkcs11Provider, name: str, key: bytes) -> bytes:
    public = provider.get_key(name).public_key
    assert isinstance(public, rsa.RSAPublicKey)
    return public.encrypt(key, OAEP_SHA1)


def _refused_first(monkeypatch: pytest.MonkeyPatch, *later: dict[A, bool]) -> None:
    """The provider's first template gets CKA_LOCAL, which the token should refuse as read-only;
    ``later`` replaces the fallbacks if given."""
    templates = _provider._UNWRAP_TEMPLATES
    first = {**templates[0], A.LOCAL: True}
    monkeypatch.setattr(_provider, "_UNWRAP_TEMPLATES", (first, *(later or templates[1:])))


def test_unwrap_falls_back_to_the_template_the_token_accepts(
    provider: Pkcs11Provider, rsa_kek: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    _refused_first(monkeypatch)
    assert provider.unwrap_key(rsa_kek, "RSA-OAEP", _wrapped_by_cryptography(provider, rsa_kek, key)) == key
    found = provider._unwrap_from
    if found == 0:
        pytest.skip("this token accepts CKA_LOCAL in an unwrap template; the refusal cannot be provoked")
    # Remembered: the next unwrap starts with the template that worked, and still works.
    again = os.urandom(16)
    assert provider.unwrap_key(rsa_kek, "RSA-OAEP", _wrapped_by_cryptography(provider, rsa_kek, again)) == again
    assert provider._unwrap_from == found


def test_a_token_that_makes_unwrapped_keys_sensitive_gets_a_typed_error(
    provider: Pkcs11Provider, rsa_kek: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a token would that forces CKA_SENSITIVE=TRUE: the only fallback asks for it here.
    _refused_first(monkeypatch, {A.TOKEN: False, A.SENSITIVE: True})
    wrapped = _wrapped_by_cryptography(provider, rsa_kek, os.urandom(32))
    try:
        provider.unwrap_key(rsa_kek, "RSA-OAEP", wrapped)
    except (UnsupportedOperation, OperationNotPermitted) as caught:
        exc = caught
    else:
        # Bytes came back, so the token did not make the key sensitive: keybridge cannot read the
        # value of one that is. opencryptoki 3.8 takes CKA_SENSITIVE=TRUE here and ignores it.
        pytest.skip("this token ignores CKA_SENSITIVE=TRUE in unwrap templates, or accepts CKA_LOCAL")
    if not isinstance(exc, UnsupportedOperation):
        if not isinstance(exc.__cause__, px.AttributeReadOnly):
            raise exc
        pytest.skip("this token refuses CKA_SENSITIVE in any unwrap template; the case cannot be provoked")
    assert exc.operation == "unwrap_key"
    assert "sensitive" in str(exc)
    assert "decrypt" in str(exc)
    assert isinstance(exc.__cause__, px.AttributeSensitive)  # what the token said, kept
