"""Software cryptography shared by the base provider, the in-memory backend and BYOK.

Everything here is a thin, checked mapping from JWA names onto ``cryptography`` primitives, so the
in-memory provider, local public-key operations and the BYOK format cannot drift apart.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sympadding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap,
    aes_key_wrap_with_padding,
)

from .errors import IntegrityError, InvalidArgument
from .keys import AlgorithmSpec, KeySpec, KeyType, PrivateKey, PublicKey

GCM_IV = 12
GCM_TAG = 16
CBC_IV = 16
# Managed HSM's AES-CBC names -> (key bits, PKCS#7 padding). They take the caller's IV, which the
# KeyProvider protocol's encrypt() has no room for, so they are not in keys.ALGORITHMS.
CBC_ALGORITHMS = {f"A{bits}CBC{pad}": (bits, pad == "PAD") for bits in (128, 192, 256) for pad in ("", "PAD")}
OAEP_SHA1 = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def key_bytes(material: PrivateKey | bytes) -> bytes:
    """Key material as bytes: PKCS#8 DER (unencrypted) for RSA/EC, the raw bytes for AES. What Azure
    BYOK wraps and what the keystore stores; one encoder, so the two cannot disagree."""
    if isinstance(material, (bytes, bytearray, memoryview)):
        return bytes(material)
    return material.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def rsa_encryption_padding(alg: AlgorithmSpec) -> padding.AsymmetricPadding:
    """RSA-OAEP (SHA-1), RSA-OAEP-256, or PKCS#1 v1.5 for RSA1_5; MGF1 uses the OAEP hash (JWA)."""
    if alg.hash is None:
        return padding.PKCS1v15()
    return padding.OAEP(mgf=padding.MGF1(alg.hash), algorithm=alg.hash, label=None)


def rsa_signature_padding(alg: AlgorithmSpec) -> padding.AsymmetricPadding:
    """PKCS#1 v1.5 for RS*, PSS with salt = digest length for PS* (JWA)."""
    assert alg.hash is not None
    if alg.pss:
        return padding.PSS(mgf=padding.MGF1(alg.hash), salt_length=alg.hash.digest_size)
    return padding.PKCS1v15()


def max_rsa_plaintext(spec: KeySpec, alg: AlgorithmSpec) -> int:
    """Longest input RSA encryption with ``alg`` accepts for a key of ``spec``."""
    k = spec.size // 8
    return k - 11 if alg.hash is None else k - 2 * alg.hash.digest_size - 2


def check_input(alg: AlgorithmSpec, spec: KeySpec, op: str, data: bytes) -> None:
    """Reject inputs of the wrong length before any backend sees them."""
    n = len(data)
    if op in ("sign", "verify"):
        if n != alg.digest_size():
            raise InvalidArgument(
                f"{alg.name} signs a {alg.digest_size()}-byte digest, got {n} bytes; hash the message first"
            )
    elif alg.kty is KeyType.RSA and op in ("encrypt", "wrap_key"):
        limit = max_rsa_plaintext(spec, alg)
        if n > limit:
            raise InvalidArgument(f"{alg.name} with {spec} takes at most {limit} bytes, got {n}")
    elif op == "wrap_key" and alg.name != "CKM_AES_KEY_WRAP_PAD":
        if n < 16 or n % 8:
            raise InvalidArgument(
                f"{alg.name} wraps keys of 16 bytes or more in multiples of 8, got {n} bytes;"
                " use CKM_AES_KEY_WRAP_PAD for other lengths"
            )
    elif op == "wrap_key" and n == 0:
        raise InvalidArgument("nothing to wrap: the key is empty")
    elif op == "decrypt" and alg.kty is KeyType.OCT and n < GCM_IV + GCM_TAG:
        raise IntegrityError(f"{alg.name} ciphertext is {n} bytes, shorter than IV + tag; it is truncated")


def public_encrypt(public_key: rsa.RSAPublicKey, alg: AlgorithmSpec, data: bytes) -> bytes:
    """RSA encryption (also key wrap) from the public key alone."""
    return public_key.encrypt(data, rsa_encryption_padding(alg))


def private_decrypt(private_key: rsa.RSAPrivateKey, alg: AlgorithmSpec, data: bytes) -> bytes:
    """RSA decryption (also key unwrap); any failure is an :class:`IntegrityError`."""
    try:
        return private_key.decrypt(data, rsa_encryption_padding(alg))
    except ValueError as exc:
        raise IntegrityError(f"{alg.name} decryption failed: wrong key or damaged ciphertext") from exc


def sign(private_key: PrivateKey, alg: AlgorithmSpec, digest: bytes) -> bytes:
    """Sign a digest; ECDSA signatures come out as raw r||s (JWA / Key Vault form)."""
    assert alg.hash is not None
    prehashed = Prehashed(alg.hash)
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(digest, rsa_signature_padding(alg), prehashed)
    der = private_key.sign(digest, ec.ECDSA(prehashed))
    return ecdsa_der_to_raw(der, private_key.curve.key_size)


def verify(public_key: PublicKey, alg: AlgorithmSpec, digest: bytes, signature: bytes) -> bool:
    """Check a signature over a digest with the public key; False on any mismatch."""
    assert alg.hash is not None
    prehashed = Prehashed(alg.hash)
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, rsa_signature_padding(alg), prehashed)
        else:
            der = ecdsa_raw_to_der(signature, public_key.curve.key_size)
            public_key.verify(der, digest, ec.ECDSA(prehashed))
    except (InvalidSignature, ValueError):
        return False
    return True


def ecdsa_der_to_raw(der: bytes, curve_bits: int) -> bytes:
    """DER ECDSA signature -> fixed-width r||s."""
    r, s = decode_dss_signature(der)
    n = (curve_bits + 7) // 8
    return r.to_bytes(n, "big") + s.to_bytes(n, "big")


def ecdsa_raw_to_der(raw: bytes, curve_bits: int) -> bytes:
    """Fixed-width r||s -> DER; a wrong length raises ValueError (treated as a bad signature)."""
    n = (curve_bits + 7) // 8
    if len(raw) != 2 * n:
        raise ValueError("signature has the wrong length for this curve")
    return encode_dss_signature(int.from_bytes(raw[:n], "big"), int.from_bytes(raw[n:], "big"))


def aes_wrap(alg: AlgorithmSpec, kek: bytes, key: bytes) -> bytes:
    """RFC 3394 (A*KW, CKM_AES_KEY_WRAP) or RFC 5649 (CKM_AES_KEY_WRAP_PAD)."""
    if alg.name == "CKM_AES_KEY_WRAP_PAD":
        return aes_key_wrap_with_padding(kek, key)
    return aes_key_wrap(kek, key)


def aes_unwrap(alg: AlgorithmSpec, kek: bytes, wrapped: bytes) -> bytes:
    """Inverse of :func:`aes_wrap`; a failed integrity check is an :class:`IntegrityError`."""
    try:
        if alg.name == "CKM_AES_KEY_WRAP_PAD":
            return aes_key_unwrap_with_padding(kek, wrapped)
        return aes_key_unwrap(kek, wrapped)
    except (InvalidUnwrap, ValueError) as exc:
        raise IntegrityError(f"{alg.name} unwrap failed: wrong key or damaged wrapped key") from exc


def gcm_encrypt(key: bytes, data: bytes, aad: bytes | None) -> bytes:
    """AES-GCM with a fresh random 96-bit IV; output is IV || ciphertext || tag."""
    iv = os.urandom(GCM_IV)
    return iv + AESGCM(key).encrypt(iv, data, aad)


def gcm_decrypt(key: bytes, data: bytes, aad: bytes | None) -> bytes:
    """Inverse of :func:`gcm_encrypt`; a bad tag is an :class:`IntegrityError`."""
    try:
        return AESGCM(key).decrypt(data[:GCM_IV], data[GCM_IV:], aad)
    except InvalidTag as exc:
        raise IntegrityError("AES-GCM authentication failed: wrong key, wrong aad or damaged ciphertext") from exc


def rsa_aes_key_wrap(kek: rsa.RSAPublicKey, plaintext: bytes, *, oaep: padding.OAEP = OAEP_SHA1) -> bytes:
    """CKM_RSA_AES_KEY_WRAP: fresh AES-256 key under RSA-OAEP-SHA1, then RFC 5649 over ``plaintext``.
    Managed HSM's release also wraps with SHA-256/384 OAEP (``RSA_AES_KEY_WRAP_256/384``): ``oaep``."""
    eph = os.urandom(32)
    return kek.encrypt(eph, oaep) + aes_key_wrap_with_padding(eph, plaintext)


def rsa_aes_key_unwrap(kek: rsa.RSAPrivateKey, blob: bytes) -> bytes:
    """Inverse of :func:`rsa_aes_key_wrap`; any failure is an :class:`IntegrityError`."""
    k = kek.key_size // 8
    if len(blob) < k + 16:
        raise IntegrityError(f"wrapped blob is {len(blob)} bytes; it must be longer than the {k}-byte KEK modulus")
    try:
        eph = kek.decrypt(blob[:k], OAEP_SHA1)
        return aes_key_unwrap_with_padding(eph, blob[k:])
    except (InvalidUnwrap, ValueError) as exc:
        raise IntegrityError("CKM_RSA_AES_KEY_WRAP unwrap failed: wrong KEK or damaged package") from exc


def aes_cbc(key: bytes, alg: str, iv: bytes, data: bytes, *, decrypt: bool) -> bytes:
    """AES-CBC as Managed HSM names it: ``A*CBC`` takes whole blocks only, ``A*CBCPAD`` adds and
    removes PKCS#7 padding. A wrong length is an :class:`InvalidArgument`, bad padding after
    decryption an :class:`IntegrityError`."""
    _bits, pad = CBC_ALGORITHMS[alg]
    if len(iv) != CBC_IV:
        raise InvalidArgument(f"{alg} needs a {CBC_IV}-byte iv, got {len(iv)} bytes")
    if (not pad or decrypt) and len(data) % 16:
        what = "ciphertext" if decrypt else f"plaintext for {alg} (no padding; use {alg}PAD)"
        raise InvalidArgument(f"the {what} must be a multiple of 16 bytes, got {len(data)}")
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    if not decrypt:
        if pad:
            padder = sympadding.PKCS7(128).padder()
            data = padder.update(data) + padder.finalize()
        enc = cipher.encryptor()
        return enc.update(data) + enc.finalize()
    dec = cipher.decryptor()
    plain = dec.update(data) + dec.finalize()
    if not pad:
        return plain
    unpadder = sympadding.PKCS7(128).unpadder()
    try:
        return unpadder.update(plain) + unpadder.finalize()
    except ValueError as exc:
        raise IntegrityError(f"{alg} decryption failed: wrong key, wrong iv or damaged ciphertext") from exc
