"""``cryptography`` private-key objects whose private half stays in the backend.

Code that already signs with ``cryptography`` (x509 builders, PyJWT, anything that takes an
``RSAPrivateKey`` or ``EllipticCurvePrivateKey``) can be handed one of these instead of a key in
memory: the data is hashed here and only the digest goes to the backend, in one ``sign`` call per
signature. What cannot be done without the private key in clear (``private_bytes``,
``private_numbers``, ECDH) raises a typed keybridge error instead.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed, encode_dss_signature

from .errors import InvalidArgument, OperationNotPermitted, UnsupportedAlgorithm
from .keys import ES_CURVES, KeyInfo, KeyType
from .keys import algorithm as algorithm_spec
from .provider import KeyHandle

__all__ = ["BackendECPrivateKey", "BackendRSAPrivateKey", "as_private_key"]

_HASH_BITS: dict[str, int] = {"sha256": 256, "sha384": 384, "sha512": 512}
# The one ES* algorithm each curve signs with (ES512 is P-521 with SHA-512).
_EC_ALG: dict[str, str] = {curve: alg for alg, curve in ES_CURVES.items()}


def _hash_bits(h: hashes.HashAlgorithm) -> int:
    bits = _HASH_BITS.get(h.name)
    if bits is None:
        raise UnsupportedAlgorithm(
            f"hash {h.name} is not supported by keybridge backends; use SHA256, SHA384 or SHA512"
        )
    return bits


def _digest(data: bytes | bytearray | memoryview, algorithm: object) -> tuple[bytes, hashes.HashAlgorithm]:
    """The digest to send to the backend and the hash that made it (hashed here unless Prehashed)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgument(f"data to sign must be bytes, got {type(data).__name__}")
    if isinstance(algorithm, NoDigestInfo):
        raise UnsupportedAlgorithm("NoDigestInfo (raw PKCS#1 v1.5 without DigestInfo) is not supported by backends")
    if isinstance(algorithm, Prehashed):
        h: hashes.HashAlgorithm = algorithm._algorithm  # Prehashed has no public accessor for it
        _hash_bits(h)
        digest = bytes(data)
        if len(digest) != h.digest_size:
            raise InvalidArgument(
                f"a Prehashed({h.name}) digest is {h.digest_size} bytes, got {len(digest)}; pass the {h.name} digest"
            )
        return digest, h
    if isinstance(algorithm, hashes.HashAlgorithm):
        _hash_bits(algorithm)
        ctx = hashes.Hash(algorithm)
        ctx.update(data)
        return ctx.finalize(), algorithm
    raise UnsupportedAlgorithm(
        f"sign() needs a hash algorithm such as hashes.SHA256() or Prehashed(...), got {type(algorithm).__name__}"
    )


def _rsa_alg(pad: AsymmetricPadding, h: hashes.HashAlgorithm) -> str:
    """The JWA name for PKCS#1 v1.5 or PSS (MGF1 with the same hash, salt = digest length)."""
    bits = _hash_bits(h)
    if isinstance(pad, padding.PKCS1v15):
        return f"RS{bits}"
    if isinstance(pad, padding.PSS):
        mgf = pad.mgf  # MGF1 keeps its hash in _algorithm; cryptography has no public accessor
        if not isinstance(mgf, padding.MGF1) or mgf._algorithm.name != h.name:
            raise UnsupportedAlgorithm(f"PSS signatures in keybridge backends use MGF1({h.name}), the signing hash")
        salt = pad._salt_length
        if not (salt is padding.PSS.DIGEST_LENGTH or (isinstance(salt, int) and salt == h.digest_size)):
            raise UnsupportedAlgorithm(
                f"PSS salt length must equal the digest length ({h.digest_size} bytes for {h.name}), as the backends"
                " sign; use salt_length=padding.PSS.DIGEST_LENGTH"
            )
        return f"PS{bits}"
    raise UnsupportedAlgorithm(f"RSA padding {pad.name} is not supported for signing; use PKCS1v15 or PSS")


def _fit_ecdsa_digest(digest: bytes, alg: str) -> bytes:
    """Make a digest of any supported hash the length the curve's ES* algorithm takes.

    ECDSA uses the leftmost bits of a longer hash, and a shorter one as a number, so truncating or
    left-padding with zeros gives the same signature as ECDSA(that hash) on this curve would."""
    n = algorithm_spec(alg).digest_size()
    return digest[:n] if len(digest) >= n else bytes(n - len(digest)) + digest


def _no_export(info: KeyInfo, what: str) -> OperationNotPermitted:
    return OperationNotPermitted(
        f"{what} is not available: the private key of {info.ref} lives in the {info.ref.scheme} backend and never"
        " leaves it; sign with this object, or export an exportable key with provider.export_key()"
    )


class _BackendKey:
    """What both key classes share: the bound handle, the key's metadata, and the refusals."""

    _handle: KeyHandle
    _info: KeyInfo

    def _bind(self, handle: KeyHandle, info: KeyInfo) -> None:
        # Bind to the version whose public key we return, so a rotation cannot make signatures
        # stop matching public_key().
        self._handle = KeyHandle(handle.provider, info.ref) if info.ref.version else handle
        self._info = info

    @property
    def handle(self) -> KeyHandle:
        """The :class:`~keybridge.provider.KeyHandle` that signs."""
        return self._handle

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._info.ref}, {self._info.spec})"

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        """Always refused: the private key never leaves the backend."""
        raise _no_export(self._info, "private_bytes()")


class BackendRSAPrivateKey(_BackendKey, rsa.RSAPrivateKey):
    """An ``rsa.RSAPrivateKey`` that signs (and decrypts) in the backend."""

    def __init__(self, handle: KeyHandle, info: KeyInfo) -> None:
        assert isinstance(info.public_key, rsa.RSAPublicKey)
        self._bind(handle, info)
        self._public = info.public_key

    @property
    def key_size(self) -> int:
        """The bit length of the modulus."""
        return self._public.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        """The real public key, from the backend's metadata."""
        return self._public

    def sign(
        self, data: bytes, padding: AsymmetricPadding, algorithm: Prehashed | hashes.HashAlgorithm | NoDigestInfo
    ) -> bytes:
        """Sign with PKCS1v15 or PSS (salt = digest length) and SHA-256/384/512: one backend call."""
        digest, h = _digest(data, algorithm)
        return self._handle.sign(_rsa_alg(padding, h), digest)

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        """Decrypt in the backend: OAEP with SHA-1 or SHA-256 (MGF1 the same, no label) or PKCS1v15."""
        return self._handle.decrypt(_rsa_decrypt_alg(padding), ciphertext)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        """Always refused: the private key never leaves the backend."""
        raise _no_export(self._info, "private_numbers()")

    def __copy__(self) -> BackendRSAPrivateKey:
        return self  # immutable: a reference to a key in the backend

    def __deepcopy__(self, memo: dict[int, object]) -> BackendRSAPrivateKey:
        return self


def _rsa_decrypt_alg(pad: AsymmetricPadding) -> str:
    if isinstance(pad, padding.PKCS1v15):
        return "RSA1_5"
    if isinstance(pad, padding.OAEP):
        h, mgf = pad.algorithm, pad.mgf
        if pad._label or not isinstance(mgf, padding.MGF1) or mgf._algorithm.name != h.name:
            raise UnsupportedAlgorithm("backends decrypt OAEP only with MGF1 of the same hash and no label")
        if h.name == "sha1":
            return "RSA-OAEP"
        if h.name == "sha256":
            return "RSA-OAEP-256"
        raise UnsupportedAlgorithm(f"OAEP with {h.name} is not supported; use SHA1 (RSA-OAEP) or SHA256 (RSA-OAEP-256)")
    raise UnsupportedAlgorithm(f"RSA padding {pad.name} is not supported for decryption; use OAEP or PKCS1v15")


class BackendECPrivateKey(_BackendKey, ec.EllipticCurvePrivateKey):
    """An ``ec.EllipticCurvePrivateKey`` that signs in the backend (ECDSA, DER signatures)."""

    def __init__(self, handle: KeyHandle, info: KeyInfo) -> None:
        assert isinstance(info.public_key, ec.EllipticCurvePublicKey)
        self._bind(handle, info)
        self._public = info.public_key
        assert info.spec.curve is not None
        self._alg = _EC_ALG[info.spec.curve]

    @property
    def curve(self) -> ec.EllipticCurve:
        """The key's curve."""
        return self._public.curve

    @property
    def key_size(self) -> int:
        """The bit length of the curve's order."""
        return self._public.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The real public key, from the backend's metadata."""
        return self._public

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        """ECDSA with SHA-256/384/512 (any of them on any curve): one backend call; DER like
        ``cryptography`` returns."""
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm(f"EC keys sign with ec.ECDSA(hash), got {type(signature_algorithm).__name__}")
        if signature_algorithm.deterministic_signing:
            raise UnsupportedAlgorithm("deterministic ECDSA (RFC 6979) is not offered by keybridge backends")
        digest, _ = _digest(data, signature_algorithm.algorithm)
        raw = self._handle.sign(self._alg, _fit_ecdsa_digest(digest, self._alg))
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """Always refused: keybridge backends do not offer ECDH."""
        raise UnsupportedAlgorithm(
            f"ECDH key agreement is not offered by keybridge backends; the private key of {self._info.ref} stays"
            " in its backend and signs only"
        )

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        """Always refused: the private key never leaves the backend."""
        raise _no_export(self._info, "private_numbers()")

    def __copy__(self) -> BackendECPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> BackendECPrivateKey:
        return self


def as_private_key(handle: KeyHandle) -> BackendRSAPrivateKey | BackendECPrivateKey:
    """See :meth:`keybridge.provider.KeyHandle.as_private_key`."""
    info = handle.info()
    if info.spec.kty is KeyType.RSA and isinstance(info.public_key, rsa.RSAPublicKey):
        return BackendRSAPrivateKey(handle, info)
    if info.spec.kty is KeyType.EC and isinstance(info.public_key, ec.EllipticCurvePublicKey):
        return BackendECPrivateKey(handle, info)
    if info.spec.kty is KeyType.OCT:
        raise UnsupportedAlgorithm(
            f"{info.ref} is an {info.spec} key; as_private_key() needs an RSA or EC key pair (AES keys have no"
            " public half; use encrypt/decrypt or wrap_key instead)"
        )
    # e.g. a PKCS#11 private key whose public key object another tool did not store
    raise UnsupportedAlgorithm(
        f"the {info.ref.scheme} backend reports no public key for {info.ref}; as_private_key() needs it to"
        " build certificates and verify signatures (store the public key object beside the private key)"
    )
