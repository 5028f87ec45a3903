"""CKM_RSA_AES_KEY_WRAP in software: build a .byok package from a key in hand, and open one.

The wire format itself (:class:`~keybridge._byok.ByokPackage`) and the two-step wrap
(:func:`~keybridge._crypto.rsa_aes_key_wrap`) live below the provider layer because backends speak
them too; this module adds what a *user* of BYOK needs on top: key encoding per the Azure
specification, KEK checks, and tolerant decoding of what real HSMs emit.
"""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm as _CryptoUnsupported
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .. import __version__
from .._byok import ByokPackage, is_full_key_id, load_unwrapped, strip_der_padding
from .._crypto import key_bytes, rsa_aes_key_unwrap, rsa_aes_key_wrap
from ..errors import InvalidArgument, InvalidKeySpec, InvalidPackage
from ..keys import RSA_SIZES, KeySpec, PrivateKey

__all__ = ["check_kek_id", "implied_specs", "load_kek_public_key", "load_unwrapped", "unwrap", "wrap_for_azure"]

DEFAULT_GENERATOR = f"keybridge {__version__}"
# Plaintext lengths (min, max) of targets whose size shows through the ciphertext length. RSA PKCS#8
# varies by a few bytes with leading zeros; EC PKCS#8 lengths of different curves overlap (optional
# parameters and public key), so EC is left out.
_TARGET_LENGTHS = (
    (KeySpec.aes(128), 16, 16),
    (KeySpec.aes(192), 24, 24),
    (KeySpec.aes(256), 32, 32),
    (KeySpec.rsa(2048), 1200, 1232),
    (KeySpec.rsa(3072), 1776, 1808),
    (KeySpec.rsa(4096), 2360, 2392),
)


def load_kek_public_key(kek: rsa.RSAPublicKey | bytes | str) -> rsa.RSAPublicKey:
    """The key-exchange key as an RSA public key: a ``cryptography`` object, or PEM / DER
    (SubjectPublicKeyInfo, as ``az keyvault key download`` writes it). It must be RSA 2048, 3072
    or 4096 bits, the sizes Azure allows for a KEK."""
    if isinstance(kek, str):
        kek = kek.encode("ascii", "replace")
    if isinstance(kek, (bytes, bytearray)):
        data = bytes(kek)
        try:
            loaded = (
                serialization.load_pem_public_key(data)
                if data.lstrip().startswith(b"-----")
                else serialization.load_der_public_key(data)
            )
        except (ValueError, TypeError, _CryptoUnsupported) as exc:
            raise InvalidArgument(
                "the KEK is not a readable public key; pass the PEM that `az keyvault key download` writes"
            ) from exc
        kek = loaded  # type: ignore[assignment]
    if not isinstance(kek, rsa.RSAPublicKey):
        raise InvalidKeySpec(f"the KEK must be an RSA public key, got {type(kek).__name__}")
    if kek.key_size not in RSA_SIZES:
        raise InvalidKeySpec(f"the KEK is RSA-{kek.key_size}; Azure BYOK needs an RSA KEK of {RSA_SIZES} bits")
    return kek


def check_kek_id(kek_id: str) -> str:
    """Refuse a KEK id that Azure could not resolve: it must be the full key id with version."""
    if not is_full_key_id(kek_id):
        raise InvalidArgument(
            f"KEK id {kek_id!r} is not a full key id; expected https://NAME.managedhsm.azure.net/keys/KEK/VERSION"
            " (`az keyvault key show ... --query key.kid`)"
        )
    return kek_id


def encode_target(key: PrivateKey | bytes) -> bytes:
    """The plaintext Azure expects: PKCS#8 DER for RSA and EC, the raw bytes for AES."""
    KeySpec.of(key)  # refuses sizes and curves Azure does not take
    return key_bytes(key)


def make_package(kek_id: str, ciphertext: bytes, generator: str | None) -> ByokPackage:
    """A package for ``kek_id``, checked to parse back exactly as written."""
    pkg = ByokPackage(kid=check_kek_id(kek_id), ciphertext=ciphertext, generator=generator or DEFAULT_GENERATOR)
    return ByokPackage.from_json(pkg.to_json())


def wrap_for_azure(
    key: PrivateKey | bytes,
    kek_public_key: rsa.RSAPublicKey | bytes | str,
    kek_id: str,
    *,
    generator: str | None = None,
) -> ByokPackage:
    """Wrap a key you hold in software for import into Azure (CKM_RSA_AES_KEY_WRAP, done here).

    ``key`` is a ``cryptography`` RSA or EC private key or AES key bytes; ``kek_public_key`` the
    target's key-exchange key (object or PEM); ``kek_id`` its full key id with version. Prefer
    :func:`keybridge.byok.export` when the key lives in an HSM: then it never leaves in clear.
    """
    kek = load_kek_public_key(kek_public_key)
    check_kek_id(kek_id)
    return make_package(kek_id, rsa_aes_key_wrap(kek, encode_target(key)), generator)


def unwrap(package: ByokPackage, kek_private_key: rsa.RSAPrivateKey) -> bytes:
    """The key material inside ``package``: PKCS#8 DER (RSA, EC) or raw AES bytes.

    Tolerates the SoftHSM 2.6.1 defect that zero-pads the DER to a multiple of 8 before RFC 5649
    wrapping: the padding is removed, and anything but zeros after the DER is refused.
    A wrong KEK or a damaged package raises :class:`~keybridge.IntegrityError`.
    """
    if not isinstance(kek_private_key, rsa.RSAPrivateKey):
        raise InvalidArgument(f"the KEK private key must be an RSA private key, got {type(kek_private_key).__name__}")
    k = kek_private_key.key_size // 8
    if len(package.ciphertext) < k + 16:
        raise InvalidPackage(
            f"ciphertext is {len(package.ciphertext)} bytes; under an RSA-{kek_private_key.key_size} KEK it must"
            f" hold {k} bytes of wrapped AES key plus a wrapped target key"
        )
    return strip_der_padding(rsa_aes_key_unwrap(kek_private_key, package.ciphertext))


def implied_specs(package: ByokPackage) -> list[tuple[int, KeySpec]]:
    """(KEK modulus bits, target key spec) pairs that the ciphertext length fits, for packages of
    RSA and AES keys (an EC key's curve does not show in the length). Needs no key: it only reads
    sizes, so it is what ``keybridge byok inspect`` reports."""
    found = []
    for bits in RSA_SIZES:
        wrapped = len(package.ciphertext) - bits // 8
        if wrapped < 24 or wrapped % 8:
            continue
        low, high = wrapped - 15, wrapped - 8  # RFC 5649 output is ceil8(len) + 8 bytes
        found += [(bits, spec) for spec, a, b in _TARGET_LENGTHS if a <= high and low <= b]
    return found
