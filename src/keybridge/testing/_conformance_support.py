"""Building blocks of the conformance suite: the algorithm matrix, key caches, ready-made calls,
and *independent* reference computations.

The reference side talks to ``cryptography`` directly and carries its own table of what each JWA
name means, instead of reusing ``keybridge._crypto``: a bug shared by the provider and the suite
would otherwise pass unnoticed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from ..errors import InvalidKeySpec, KeybridgeError, UnsupportedAlgorithm, UnsupportedOperation
from ..keys import ALGORITHMS, KeyInfo, KeyOp, KeyRef, KeySpec, KeyType, PrivateKey, PublicKey
from ..provider import KeyProvider

Ref = KeyRef | str

# ---- what the JWA names mean (RFC 7518, written out here on purpose) ------------------------------

_SHA: dict[str, hashes.HashAlgorithm] = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_ES_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "P-256K"}
OPS_IN_ORDER = (KeyOp.SIGN, KeyOp.VERIFY, KeyOp.ENCRYPT, KeyOp.DECRYPT, KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY)
AUDIT_NAME = {
    KeyOp.SIGN: "sign",
    KeyOp.VERIFY: "verify",
    KeyOp.ENCRYPT: "encrypt",
    KeyOp.DECRYPT: "decrypt",
    KeyOp.WRAP_KEY: "wrap_key",
    KeyOp.UNWRAP_KEY: "unwrap_key",
}


def sig_hash(alg: str) -> hashes.HashAlgorithm:
    """The hash of RS*/PS*/ES* (the digest ``sign`` takes)."""
    return _SHA[alg[2:5]]  # ES256K hashes with SHA-256 too


def oaep_or_pkcs1(alg: str) -> padding.AsymmetricPadding:
    """RSA-OAEP: SHA-1 + MGF1-SHA1; RSA-OAEP-256/384/512: that SHA-2 + MGF1 with it; RSA1_5: PKCS#1 v1.5."""
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    h = {"RSA-OAEP-256": hashes.SHA256(), "RSA-OAEP-384": hashes.SHA384(), "RSA-OAEP-512": hashes.SHA512()}.get(
        alg, hashes.SHA1()
    )
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def fits(alg: str, spec: KeySpec) -> bool:
    """True if ``alg`` is meant for a key of ``spec`` (A128KW only on AES-128, ES384 only on P-384 ...)."""
    a = ALGORITHMS.get(alg)
    if a is None:
        return False
    if a.kty is not spec.kty or (a.key_bits is not None and a.key_bits != spec.size):
        return False
    return alg not in _ES_CURVE or _ES_CURVE[alg] == spec.curve


def algs_for(spec: KeySpec, op: KeyOp) -> list[str]:
    """Every keybridge algorithm usable for ``op`` on a key of ``spec``."""
    return [name for name, a in ALGORITHMS.items() if op in a.ops and fits(name, spec)]


def verify_outside(public_key: PublicKey | None, alg: str, digest: bytes, signature: bytes) -> bool:
    """Check a provider signature with ``cryptography`` alone: raw r||s for ES*, PSS salt = hash length."""
    h = sig_hash(alg)
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if alg.startswith("PS"):
                pad = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
            public_key.verify(signature, digest, pad, Prehashed(h))
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            n = (public_key.curve.key_size + 7) // 8
            assert len(signature) == 2 * n, f"{alg} signature is {len(signature)} bytes, raw r||s must be {2 * n}"
            r, s = int.from_bytes(signature[:n], "big"), int.from_bytes(signature[n:], "big")
            public_key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(h)))
        else:
            raise AssertionError(f"{alg} key has no usable public key: {public_key!r}")
    except InvalidSignature:
        return False
    return True


def same_public_key(a: PublicKey | PrivateKey | None, b: PublicKey | PrivateKey | None) -> bool:
    """Equal public numbers (private keys are reduced to their public half)."""

    def numbers(k: PublicKey | PrivateKey | None) -> object:
        if isinstance(k, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            k = k.public_key()
        if k is None:
            return None
        return k.public_numbers()

    return numbers(a) is not None and numbers(a) == numbers(b)


def check_public_key(info: KeyInfo) -> None:
    """KeyInfo.public_key has the type, size and curve of the key's spec (None for AES)."""
    pub = info.public_key
    if info.spec.kty is KeyType.OCT:
        assert pub is None, f"{info.ref}: an AES key must not report a public key"
    elif info.spec.kty is KeyType.RSA:
        assert isinstance(pub, rsa.RSAPublicKey), f"{info.ref}: expected an RSA public key, got {pub!r}"
        assert pub.key_size == info.spec.size
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey), f"{info.ref}: expected an EC public key, got {pub!r}"
        assert pub.curve.key_size == info.spec.size


def unwrap_rsa_aes(kek: rsa.RSAPrivateKey, blob: bytes) -> bytes:
    """CKM_RSA_AES_KEY_WRAP by hand: OAEP-SHA1 over the first modulus-length bytes, then RFC 5649."""
    k = kek.key_size // 8
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return aes_key_unwrap_with_padding(kek.decrypt(blob[:k], oaep), blob[k:])


def der_prefix(data: bytes) -> bytes:
    """The DER SEQUENCE at the start of ``data``; what follows must be 0-7 zero bytes (SoftHSM 2.6.1 pads
    the wrapped PKCS#8 to a multiple of 8 before RFC 5649)."""
    assert data[:1] == b"\x30", "unwrapped key is not a DER SEQUENCE (PKCS#8)"
    assert len(data) >= 2, "unwrapped key is truncated"
    if data[1] < 0x80:
        end = 2 + data[1]
    else:
        n = data[1] & 0x7F
        end = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    rest = data[end:]
    assert len(rest) <= 7, f"{len(rest)} bytes follow the PKCS#8 DER; at most 7 zero bytes of padding are allowed"
    assert rest == bytes(len(rest)), "non-zero bytes follow the PKCS#8 DER"
    return data[:end]


def load_pkcs8(data: bytes) -> PrivateKey:
    """An RSA/EC private key from (possibly zero-padded) PKCS#8 DER."""
    key = serialization.load_der_private_key(der_prefix(data), password=None)
    assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)), f"unexpected key {type(key)}"
    return key


def material_for(spec: KeySpec) -> PrivateKey | bytes:
    """Fresh key material of ``spec`` made outside the provider, for import."""
    if spec.kty is KeyType.OCT:
        return os.urandom(spec.size // 8)
    if spec.kty is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    assert spec.curve is not None
    return ec.generate_private_key(curves[spec.curve])


def flipped(data: bytes, i: int) -> bytes:
    """``data`` with one bit of byte ``i`` inverted."""
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def unique_name() -> str:
    """A key name no other test (or run) uses, valid for every backend (letters, digits, dashes)."""
    return f"kbconf-{uuid.uuid4().hex[:20]}"


# ---- keys the tests share or own --------------------------------------------------------------


class Keys:
    """Creates keys on demand, remembers them, and deletes them all on :meth:`close`.

    Used class-scoped (one key per spec and flavour, shared by every read-only test: RSA keygen is
    slow on HSMs) and function-scoped (keys a test changes: disables, rotates, deletes).
    """

    def __init__(self, provider: KeyProvider, *, can_import: bool) -> None:
        self.provider = provider
        self.can_import = can_import
        self._made: dict[object, tuple[KeyInfo, PrivateKey | bytes | None]] = {}
        self._cannot: dict[KeySpec, str] = {}
        self._names: list[str] = []

    def create(
        self,
        spec: KeySpec,
        *,
        ops: Iterable[KeyOp] | None = None,
        exportable: bool = False,
        tags: Mapping[str, str] | None = None,
        not_before: dt.datetime | None = None,
        expires: dt.datetime | None = None,
    ) -> KeyInfo:
        """A new key of ``spec``. If the provider cannot make keys of ``spec`` at all, the test is
        skipped with the reason; if only the extra arguments are refused, the error propagates."""
        if spec in self._cannot:
            pytest.skip(self._cannot[spec])
        name = unique_name()
        try:
            info = self.provider.create_key(
                name,
                spec,
                ops=None if ops is None else frozenset(ops),
                exportable=exportable,
                tags=tags,
                not_before=not_before,
                expires=expires,
            )
        except (InvalidKeySpec, UnsupportedAlgorithm) as exc:
            plain = ops is None and not exportable and not tags and not_before is None and expires is None
            if not plain and self._can_create(spec):
                raise
            self._cannot[spec] = f"{self.provider.scheme} provider cannot create {spec} keys: {exc}"
            pytest.skip(self._cannot[spec])
        self._names.append(name)
        return info

    def _can_create(self, spec: KeySpec) -> bool:
        name = unique_name()
        try:
            self.provider.create_key(name, spec)
        except (InvalidKeySpec, UnsupportedAlgorithm):
            return False
        self._names.append(name)
        return True

    def import_(self, material: PrivateKey | bytes) -> KeyInfo:
        """Import ``material`` under a new name; skips if the class says the provider cannot import,
        or if the provider says, with a typed :class:`UnsupportedOperation`, that it cannot import
        keys of this kind (tpm2-pkcs11 imports none)."""
        self._check_import()
        name = unique_name()
        try:
            info = self.provider.import_key(name, material)
        except UnsupportedOperation as exc:
            if exc.operation != "import_key":
                raise
            pytest.skip(f"{self.provider.scheme} provider cannot import this key: {exc}")
        self._names.append(name)
        return info

    def shared(self, spec: KeySpec, *, exportable: bool = False) -> KeyInfo:
        """One generated key per (spec, exportable), made on first use."""
        key = (spec, exportable)
        if key not in self._made:
            self._made[key] = (self.create(spec, exportable=exportable), None)
        return self._made[key][0]

    def imported(self, spec: KeySpec) -> tuple[KeyInfo, PrivateKey | bytes]:
        """One imported key per spec, with the material it was made from."""
        key = ("imported", spec)
        if key not in self._made:
            self._check_import()
            fresh = material_for(spec)
            self._made[key] = (self.import_(fresh), fresh)
        info, material = self._made[key]
        assert material is not None
        return info, material

    def _check_import(self) -> None:
        if not self.can_import:
            pytest.skip(f"{self.provider.scheme} provider does not import keys (supports_import = False)")

    def own(self, name: str) -> None:
        """Delete ``name`` on :meth:`close` too (a key the test made some other way, e.g. import_byok)."""
        self._names.append(name)

    def close(self) -> None:
        """Delete every key made here; a key a test already deleted is fine."""
        for name in self._names:
            # Already deleted by the test is fine; and cleanup must never hide the test's own outcome.
            with contextlib.suppress(KeybridgeError):
                self.provider.delete_key(name)
        self._names.clear()
        self._made.clear()


# ---- ready-made calls of every operation -------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One operation with inputs prepared in advance; ``run(ref)`` performs it and checks the result."""

    op: KeyOp
    alg: str
    run: Callable[[Ref], None]

    def __str__(self) -> str:
        return f"{self.op.value}({self.alg})"


def _synthetic(op: KeyOp, alg: str, spec: KeySpec) -> bytes:
    """Random input of a length that suits ``alg`` (so that only the algorithm or key can be wrong)."""
    a = ALGORITHMS.get(alg)
    if op in (KeyOp.SIGN, KeyOp.VERIFY):
        return os.urandom(sig_hash(alg).digest_size if a is not None and KeyOp.SIGN in a.ops else 32)
    if op in (KeyOp.DECRYPT, KeyOp.UNWRAP_KEY) and a is not None and a.kty is KeyType.RSA:
        return os.urandom(spec.size // 8 if spec.kty is KeyType.RSA else 256)
    return os.urandom(44 if op is KeyOp.DECRYPT else 40 if op is KeyOp.UNWRAP_KEY else 32)


def make_call(provider: KeyProvider, info: KeyInfo, op: KeyOp, alg: str, *, real: bool = True) -> Call:
    """A call of ``op`` with ``alg`` on ``info``'s key.

    Inputs are real where they can be made now (a signature to verify, a ciphertext to decrypt, made
    by the provider while the key is usable or outside with the public key), so that ``run``
    succeeding proves the operation works; otherwise (``real=False``, a refused or mismatched
    operation) they are random bytes of a plausible length and ``run`` is only expected to raise.
    """
    spec, ref = info.spec, info.ref
    usable = real and fits(alg, spec) and alg in provider.algorithms
    pub = info.public_key
    if op is KeyOp.SIGN:
        digest = _synthetic(op, alg, spec)

        def sign(r: Ref) -> None:
            sig = provider.sign(r, alg, digest)
            assert verify_outside(pub, alg, digest, sig), f"{alg} signature does not verify with the public key"

        return Call(op, alg, sign)
    if op is KeyOp.VERIFY:
        digest = _synthetic(op, alg, spec)
        real = usable and KeyOp.SIGN in info.ops
        sig = provider.sign(ref, alg, digest) if real else os.urandom(64)
        # Checked outside too, so a verify that agrees with a broken sign cannot pass for both.
        assert not real or verify_outside(pub, alg, digest, sig), f"{alg} signature fails outside the provider"

        def verify(r: Ref) -> None:
            assert provider.verify(r, alg, digest, sig) is real

        return Call(op, alg, verify)
    data = os.urandom(32)
    if op in (KeyOp.ENCRYPT, KeyOp.WRAP_KEY):
        forward = provider.encrypt if op is KeyOp.ENCRYPT else provider.wrap_key

        def seal(r: Ref) -> None:
            out = forward(r, alg, data)
            assert isinstance(out, bytes)
            assert data not in out

        return Call(op, alg, seal)
    # DECRYPT / UNWRAP_KEY: a sealed input from outside (RSA public key) or from the provider.
    sealer = KeyOp.ENCRYPT if op is KeyOp.DECRYPT else KeyOp.WRAP_KEY
    if usable and isinstance(pub, rsa.RSAPublicKey):
        sealed = pub.encrypt(data, oaep_or_pkcs1(alg))
    elif usable and sealer in info.ops:
        sealed = (provider.encrypt if op is KeyOp.DECRYPT else provider.wrap_key)(ref, alg, data)
    else:
        sealed = _synthetic(op, alg, spec)
    backward = provider.decrypt if op is KeyOp.DECRYPT else provider.unwrap_key

    def open_(r: Ref) -> None:
        assert backward(r, alg, sealed) == data

    return Call(op, alg, open_)


def claimed_calls(provider: KeyProvider, info: KeyInfo, ops: Iterable[KeyOp] | None = None) -> list[Call]:
    """One call per operation in ``ops`` (default: the key's own), with the first fitting algorithm the
    provider claims. Inputs are made now, so build the calls while the key is usable."""
    wanted = set(info.ops if ops is None else ops)
    return [
        make_call(provider, info, op, algs[0])
        for op in OPS_IN_ORDER
        if op in wanted and (algs := claimed_algs(provider, info.spec, op))
    ]


def claimed_algs(provider: KeyProvider, spec: KeySpec, op: KeyOp) -> list[str]:
    """The algorithms the provider claims for ``op`` on a key of ``spec``."""
    return [a for a in algs_for(spec, op) if a in provider.algorithms]
