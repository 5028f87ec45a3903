"""RSA1_5 on PKCS#11 uses implicit rejection, like OpenSSL: no padding oracle (issue #9, item 5).

On SoftHSM2 a ciphertext whose PKCS#1 v1.5 padding is bad gives deterministic synthetic bytes, not
an error; a good one (made by `cryptography` from the exported public key) still decrypts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keybridge import IntegrityError, KeyInfo, KeyOp, KeySpec
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import Pkcs11Provider

_OPS = [KeyOp.DECRYPT, KeyOp.UNWRAP_KEY]


def _open(token: SoftHsmToken) -> Pkcs11Provider:
    return Pkcs11Provider(token.module_path, token.token_label, token.user_pin)


@pytest.fixture(scope="module")
def hsm(softhsm_token: SoftHsmToken) -> Iterator[tuple[Pkcs11Provider, KeyInfo]]:
    with _open(softhsm_token) as p:
        name = f"rsa15-{uuid.uuid4().hex[:8]}"
        info = p.create_key(name, KeySpec.rsa(2048), ops=_OPS)
        yield p, info
        p.delete_key(name)


def _public(info: KeyInfo) -> rsa.RSAPublicKey:
    assert isinstance(info.public_key, rsa.RSAPublicKey)
    return info.public_key


def _badly_padded(pub: rsa.RSAPublicKey) -> bytes:
    """Raw RSA of a block that starts 00 01 (signature padding): never valid for decryption."""
    n, e = pub.public_numbers().n, pub.public_numbers().e
    k = (n.bit_length() + 7) // 8
    block = b"\x00\x01" + os.urandom(k - 2)
    return pow(int.from_bytes(block, "big"), e, n).to_bytes(k, "big")


def _tampered(good: bytes) -> bytes:
    return good[:-1] + bytes([good[-1] ^ 0x01])


@pytest.mark.parametrize("op", ["decrypt", "unwrap_key"])
def test_a_good_ciphertext_still_opens(hsm: tuple[Pkcs11Provider, KeyInfo], op: str) -> None:
    p, info = hsm
    secret = os.urandom(32)
    ct = _public(info).encrypt(secret, padding.PKCS1v15())  # independent implementation
    assert getattr(p, op)(info.ref, "RSA1_5", ct) == secret


@pytest.mark.parametrize("op", ["decrypt", "unwrap_key"])
def test_bad_padding_gives_the_same_synthetic_bytes_not_an_error(hsm: tuple[Pkcs11Provider, KeyInfo], op: str) -> None:
    p, info = hsm
    call = getattr(p, op)
    pub = _public(info)
    k = pub.key_size // 8
    secret = os.urandom(32)
    bad = [_badly_padded(pub), _badly_padded(pub), _tampered(pub.encrypt(secret, padding.PKCS1v15()))]
    outputs = []
    for ct in bad:
        first = call(info.ref, "RSA1_5", ct)
        assert isinstance(first, bytes)
        assert call(info.ref, "RSA1_5", ct) == first  # deterministic per provider
        assert len(first) <= k - 11
        assert first != secret
        outputs.append(first)
    assert len(set(outputs)) == len(outputs)  # depends on the ciphertext
    # The real padding check did run: OAEP on the same bytes is refused by the token.
    with pytest.raises(IntegrityError):
        call(info.ref, "RSA-OAEP", bad[0])


def test_synthetic_bytes_differ_between_provider_instances(
    softhsm_token: SoftHsmToken, hsm: tuple[Pkcs11Provider, KeyInfo]
) -> None:
    p, info = hsm
    ct = _badly_padded(_public(info))
    with _open(softhsm_token) as other:
        theirs = other.decrypt(info.ref, "RSA1_5", ct)
        assert theirs == other.decrypt(info.ref, "RSA1_5", ct)
    ours = p.decrypt(info.ref, "RSA1_5", ct)
    assert ours != theirs or len(ours) == 0  # a per-instance random secret, not a fixed one


def test_a_ciphertext_of_the_wrong_length_is_still_an_error(hsm: tuple[Pkcs11Provider, KeyInfo]) -> None:
    p, info = hsm
    with pytest.raises(IntegrityError) as err:
        p.unwrap_key(info.ref, "RSA1_5", os.urandom(100))
    assert "failed" in str(err.value)


def test_the_secret_is_not_in_the_repr(hsm: tuple[Pkcs11Provider, KeyInfo]) -> None:
    p, _ = hsm
    assert repr(p._rejection) == "<ImplicitRejection>"
    assert p._rejection._secret.hex() not in repr(p) + repr(p._rejection)
