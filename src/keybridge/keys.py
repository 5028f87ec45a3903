"""Value types shared by every provider: key specs, operations, references, metadata, algorithms.

Operation names are the JWK ``key_ops`` names and algorithm names are the JWA names that Azure Key
Vault uses, so the same strings work against every backend and on the wire.
"""

from __future__ import annotations

import datetime as _dt
import enum
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import InvalidKeySpec, UnsupportedAlgorithm

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AlgorithmSpec",
    "KeyAttributes",
    "KeyInfo",
    "KeyOp",
    "KeyRef",
    "KeySpec",
    "KeyType",
    "PrivateKey",
    "PublicKey",
    "algorithm",
    "parse_ops",
]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

RSA_SIZES = (2048, 3072, 4096)
AES_SIZES = (128, 192, 256)
CURVES: Mapping[str, ec.EllipticCurve] = MappingProxyType(
    {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1(), "P-256K": ec.SECP256K1()}
)


class KeyType(str, enum.Enum):
    """Key families, named as JWK ``kty``."""

    RSA = "RSA"
    EC = "EC"
    OCT = "oct"

    def __str__(self) -> str:
        return self.value


class KeyOp(str, enum.Enum):
    """Operations a key may be used for (JWK ``key_ops`` names)."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SIGN = "sign"
    VERIFY = "verify"
    WRAP_KEY = "wrapKey"
    UNWRAP_KEY = "unwrapKey"
    IMPORT = "import"

    def __str__(self) -> str:
        return self.value


class Algorithm(str, enum.Enum):
    """Every algorithm name keybridge knows (the keys of :data:`ALGORITHMS`), as constants.

    A member *is* its name as a ``str``, so it goes wherever an algorithm name does
    (``key.sign(Algorithm.PS256, digest)``) and a typo (``Algorithm.PS265``) is an error for mypy
    and at import time, where a misspelt string is found only when the call runs."""

    RSA_OAEP = "RSA-OAEP"
    RSA_OAEP_256 = "RSA-OAEP-256"
    RSA_OAEP_384 = "RSA-OAEP-384"
    RSA_OAEP_512 = "RSA-OAEP-512"
    RSA1_5 = "RSA1_5"
    CKM_AES_KEY_WRAP = "CKM_AES_KEY_WRAP"
    CKM_AES_KEY_WRAP_PAD = "CKM_AES_KEY_WRAP_PAD"
    A128KW = "A128KW"
    A128GCM = "A128GCM"
    A192KW = "A192KW"
    A192GCM = "A192GCM"
    A256KW = "A256KW"
    A256GCM = "A256GCM"
    RS256 = "RS256"
    PS256 = "PS256"
    ES256 = "ES256"
    RS384 = "RS384"
    PS384 = "PS384"
    ES384 = "ES384"
    RS512 = "RS512"
    PS512 = "PS512"
    ES512 = "ES512"
    ES256K = "ES256K"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        # Python 3.10 formats a str mixin by value, 3.12 by member name: pin it for messages.
        return format(self.value, spec)


_DEFAULT_OPS: Mapping[KeyType, frozenset[KeyOp]] = MappingProxyType(
    {
        KeyType.RSA: frozenset(
            {KeyOp.ENCRYPT, KeyOp.DECRYPT, KeyOp.SIGN, KeyOp.VERIFY, KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY}
        ),
        KeyType.EC: frozenset({KeyOp.SIGN, KeyOp.VERIFY}),
        KeyType.OCT: frozenset({KeyOp.ENCRYPT, KeyOp.DECRYPT, KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY}),
    }
)
_ALLOWED_OPS: Mapping[KeyType, frozenset[KeyOp]] = MappingProxyType(
    {
        KeyType.RSA: _DEFAULT_OPS[KeyType.RSA] | {KeyOp.IMPORT},
        KeyType.EC: _DEFAULT_OPS[KeyType.EC],
        KeyType.OCT: _DEFAULT_OPS[KeyType.OCT],
    }
)


@dataclass(frozen=True)
class KeySpec:
    """What kind of key: ``KeySpec.rsa(2048)``, ``KeySpec.ec("P-256")``, ``KeySpec.aes(256)``."""

    kty: KeyType
    size: int
    curve: str | None = None

    def __post_init__(self) -> None:
        if self.kty is KeyType.RSA and self.size not in RSA_SIZES:
            raise InvalidKeySpec(f"RSA key size {self.size} is not supported; use one of {RSA_SIZES}")
        if self.kty is KeyType.OCT and self.size not in AES_SIZES:
            raise InvalidKeySpec(f"AES key size {self.size} is not supported; use one of {AES_SIZES}")
        if self.kty is KeyType.EC and self.curve not in CURVES:
            raise InvalidKeySpec(f"EC curve {self.curve!r} is not supported; use one of {sorted(CURVES)}")

    @classmethod
    def rsa(cls, bits: int = 2048) -> KeySpec:
        """An RSA key of ``bits`` (2048, 3072 or 4096)."""
        return cls(KeyType.RSA, bits)

    @classmethod
    def ec(cls, curve: str = "P-256") -> KeySpec:
        """An EC key on a NIST curve (``"P-256"``, ``"P-384"``, ``"P-521"``) or on secp256k1
        (``"P-256K"``, Azure's name; signs with ES256K)."""
        if curve not in CURVES:
            raise InvalidKeySpec(f"EC curve {curve!r} is not supported; use one of {sorted(CURVES)}")
        return cls(KeyType.EC, CURVES[curve].key_size, curve)

    @classmethod
    def aes(cls, bits: int = 256) -> KeySpec:
        """An AES key of ``bits`` (128, 192 or 256)."""
        return cls(KeyType.OCT, bits)

    @classmethod
    def of(cls, key: PrivateKey | PublicKey | bytes) -> KeySpec:
        """The spec of an existing ``cryptography`` key object or raw AES key bytes."""
        if isinstance(key, (bytes, bytearray, memoryview)):
            return cls.aes(len(key) * 8)
        if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            return cls.rsa(key.key_size)
        if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
            for name, curve in CURVES.items():
                if curve.name == key.curve.name:
                    return cls.ec(name)
            raise InvalidKeySpec(f"EC curve {key.curve.name} is not supported; use one of {sorted(CURVES)}")
        raise InvalidKeySpec(f"unsupported key object {type(key).__name__}; pass an RSA/EC key or AES bytes")

    @property
    def default_ops(self) -> frozenset[KeyOp]:
        """The operations a new key of this spec gets when none are asked for."""
        return _DEFAULT_OPS[self.kty]

    def check_ops(self, ops: Collection[KeyOp | str] | None) -> frozenset[KeyOp]:
        """Validate ``ops`` for this key type (``None`` means the defaults)."""
        if ops is None:
            return self.default_ops
        if isinstance(ops, (str, bytes)) or not isinstance(ops, Collection):
            raise InvalidKeySpec(f"ops must be a collection of operation names such as ['sign', 'verify'], got {ops!r}")
        parsed = parse_ops(ops)
        bad = parsed - _ALLOWED_OPS[self.kty]
        if bad:
            names = ", ".join(sorted(op.value for op in bad))
            raise InvalidKeySpec(f"operations {names} are not possible with an {self} key")
        if KeyOp.IMPORT in parsed and parsed != {KeyOp.IMPORT}:
            raise InvalidKeySpec("'import' is exclusive: a key-exchange key may have no other operation")
        return parsed

    def __str__(self) -> str:
        if self.kty is KeyType.EC:
            return f"EC-{self.curve}"
        return f"{'AES' if self.kty is KeyType.OCT else 'RSA'}-{self.size}"


def parse_ops(ops: Collection[KeyOp | str]) -> frozenset[KeyOp]:
    """Turn JWK operation names into :class:`KeyOp` values, with a clear error for unknown ones."""
    out = set()
    for op in ops:
        try:
            out.add(KeyOp(op))
        except ValueError:
            valid = ", ".join(o.value for o in KeyOp)
            raise InvalidKeySpec(f"unknown key operation {op!r}; valid: {valid}") from None
    return frozenset(out)


@dataclass(frozen=True)
class KeyRef:
    """Where a key lives: the URI scheme of its provider, key name, optional version, and its URI.

    ``scheme`` is the provider's :attr:`~keybridge.provider.KeyProvider.scheme` (``"memory"``,
    ``"pkcs11"``, ``"https"``). ``uri`` is the canonical key URI (``memory:NAME``,
    ``pkcs11:token=T;object=NAME``, ``https://X.vault.azure.net/keys/NAME/VERSION``) and is what
    ``str(ref)`` prints.
    """

    scheme: str
    name: str
    version: str | None = None
    uri: str = ""

    @property
    def provider(self) -> str:
        """Deprecated alias of :attr:`scheme` (it never was a provider object); removed in 1.0."""
        warnings.warn("KeyRef.provider is deprecated; use KeyRef.scheme", DeprecationWarning, stacklevel=2)
        return self.scheme

    def __str__(self) -> str:
        return self.uri or f"{self.scheme}:{self.name}" + (f"/{self.version}" if self.version else "")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class KeyInfo:
    """Metadata of one key version, as the provider reports it. Never holds secret material."""

    ref: KeyRef
    spec: KeySpec
    ops: frozenset[KeyOp]
    enabled: bool = True
    created: _dt.datetime | None = None
    not_before: _dt.datetime | None = None
    expires: _dt.datetime | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    hsm_protected: bool = False
    exportable: bool = False
    public_key: PublicKey | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        """The key's name in its provider (``info.ref.name``)."""
        return self.ref.name

    def is_valid_at(self, when: _dt.datetime | None = None) -> bool:
        """True if ``when`` (default now) lies inside the not-before / expires window."""
        if self.not_before is None and self.expires is None:
            return True
        when = when or _now()
        if self.not_before is not None and when < self.not_before:
            return False
        return not (self.expires is not None and when >= self.expires)


@dataclass(frozen=True)
class KeyAttributes:
    """What a new key or version is allowed and labelled with, besides its material: what
    ``create_key`` / ``import_key`` hand to a backend, already validated."""

    ops: frozenset[KeyOp]
    exportable: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    not_before: _dt.datetime | None = None
    expires: _dt.datetime | None = None

    @classmethod
    def of(cls, info: KeyInfo) -> KeyAttributes:
        """The attributes a rotation carries over from the current version (no validity window)."""
        return cls(info.ops, exportable=info.exportable, tags=dict(info.tags))


@dataclass(frozen=True)
class AlgorithmSpec:
    """What a JWA algorithm name means: which key it needs, which op, which hash or padding."""

    name: str
    kty: KeyType
    ops: frozenset[KeyOp]
    hash: hashes.HashAlgorithm | None = field(default=None, compare=False)
    key_bits: int | None = None  # required AES key size, None = any
    pss: bool = False

    @cached_property
    def is_public_op(self) -> bool:
        """True for operations that need only a public key (verify, RSA encrypt and wrap)."""
        return self.kty is not KeyType.OCT and bool(self.ops & {KeyOp.VERIFY, KeyOp.ENCRYPT, KeyOp.WRAP_KEY})

    def digest_size(self) -> int:
        """Length in bytes of the digest a sign/verify algorithm takes."""
        assert self.hash is not None
        return self.hash.digest_size


_ENC = frozenset({KeyOp.ENCRYPT, KeyOp.DECRYPT})
_WRAP = frozenset({KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY})
_RSA_ENC = _ENC | _WRAP
_SIG = frozenset({KeyOp.SIGN, KeyOp.VERIFY})


def _table() -> dict[str, AlgorithmSpec]:
    t: list[AlgorithmSpec] = [
        AlgorithmSpec("RSA-OAEP", KeyType.RSA, _RSA_ENC, hashes.SHA1()),
        AlgorithmSpec("RSA-OAEP-256", KeyType.RSA, _RSA_ENC, hashes.SHA256()),
        # Not JWA names: the OAEP hashes (MGF1 with the same hash) the AWS Encryption SDK's raw RSA
        # keyring defines; Azure Key Vault has neither.
        AlgorithmSpec("RSA-OAEP-384", KeyType.RSA, _RSA_ENC, hashes.SHA384()),
        AlgorithmSpec("RSA-OAEP-512", KeyType.RSA, _RSA_ENC, hashes.SHA512()),
        AlgorithmSpec("RSA1_5", KeyType.RSA, _RSA_ENC),
        AlgorithmSpec("CKM_AES_KEY_WRAP", KeyType.OCT, _WRAP),
        AlgorithmSpec("CKM_AES_KEY_WRAP_PAD", KeyType.OCT, _WRAP),
    ]
    for bits in AES_SIZES:
        t.append(AlgorithmSpec(f"A{bits}KW", KeyType.OCT, _WRAP, key_bits=bits))
        t.append(AlgorithmSpec(f"A{bits}GCM", KeyType.OCT, _ENC, key_bits=bits))
    for bits, h in ((256, hashes.SHA256()), (384, hashes.SHA384()), (512, hashes.SHA512())):
        t.append(AlgorithmSpec(f"RS{bits}", KeyType.RSA, _SIG, h))
        t.append(AlgorithmSpec(f"PS{bits}", KeyType.RSA, _SIG, h, pss=True))
        t.append(AlgorithmSpec(f"ES{bits}", KeyType.EC, _SIG, h))
    t.append(AlgorithmSpec("ES256K", KeyType.EC, _SIG, hashes.SHA256()))
    return {a.name: a for a in t}


ALGORITHMS: Mapping[str, AlgorithmSpec] = MappingProxyType(_table())
"""Every algorithm keybridge knows, by JWA name. A provider supports a subset."""

# ES512 is ECDSA on P-521 with SHA-512 (JWA); the other ES* pair one curve with one hash too.
ES_CURVES: Mapping[str, str] = MappingProxyType(
    {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "P-256K"}
)


def algorithm(name: Algorithm | str) -> AlgorithmSpec:
    """Look up an algorithm by JWA name (a str or an :class:`Algorithm`); an unknown name raises
    :class:`UnsupportedAlgorithm`."""
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        raise UnsupportedAlgorithm(f"unknown algorithm {name!r}; keybridge knows {', '.join(ALGORITHMS)}") from None
