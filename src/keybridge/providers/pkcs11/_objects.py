"""How keybridge keys map onto PKCS#11 objects (see docs/pkcs11.md, "Names and versions").

* A key is the secret key (AES) or private key (RSA/EC) objects whose CKA_LABEL is the key name;
  each object is one version and CKA_ID is the version (printed as hex). The public key object
  carries the same label and id.
* keybridge makes ids of 16 bytes: ``b"kb"`` + creation time (µs since the epoch, 8 bytes big
  endian) + 6 random bytes, so versions sort by creation and ``created`` is known. Objects other
  tools made (any other id) sort before them, by id, and are used just the same.
* What PKCS#11 has no attribute for (tags, validity window, enabled flag) lives in a metadata
  object per name, see :mod:`._catalog`.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import DEFAULT
from pkcs11 import Attribute as A
from pkcs11 import KeyType as KT
from pkcs11 import ObjectClass as OC
from pkcs11 import PrivateKey as P11Private
from pkcs11 import PublicKey as P11Public
from pkcs11 import SecretKey as P11Secret
from pkcs11 import exceptions as px
from pkcs11.util.ec import encode_named_curve_parameters

from ...errors import InvalidKeySpec
from ...keys import CURVES, KeyOp, KeySpec, KeyType, PrivateKey

_MARK = b"kb"
_UTC = _dt.timezone.utc
_CURVE_OID = {"P-256": "secp256r1", "P-384": "secp384r1", "P-521": "secp521r1", "P-256K": "secp256k1"}
_PARAMS_CURVE = {encode_named_curve_parameters(oid): name for name, oid in _CURVE_OID.items()}

# Which CKA_ usage flag grants which operation, on the private/secret and on the public object.
PRIVATE_FLAGS: Mapping[KeyOp, Any] = {
    KeyOp.SIGN: A.SIGN,
    KeyOp.DECRYPT: A.DECRYPT,
    KeyOp.UNWRAP_KEY: A.UNWRAP,
}
SECRET_FLAGS: Mapping[KeyOp, Any] = {
    KeyOp.ENCRYPT: A.ENCRYPT,
    KeyOp.DECRYPT: A.DECRYPT,
    KeyOp.WRAP_KEY: A.WRAP,
    KeyOp.UNWRAP_KEY: A.UNWRAP,
}
# keybridge has no MAC or derivation operations: an AES key must not quietly allow them either
# (python-pkcs11 and tokens default CKA_SIGN/CKA_VERIFY to true for secret keys).
SECRET_OFF: Mapping[Any, bool] = {A.SIGN: False, A.VERIFY: False, A.DERIVE: False}
PUBLIC_FLAGS: Mapping[KeyOp, Any] = {KeyOp.VERIFY: A.VERIFY, KeyOp.ENCRYPT: A.ENCRYPT, KeyOp.WRAP_KEY: A.WRAP}
_PUBLIC_TWIN = {KeyOp.SIGN: KeyOp.VERIFY, KeyOp.DECRYPT: KeyOp.ENCRYPT, KeyOp.UNWRAP_KEY: KeyOp.WRAP_KEY}


# ---- ids and versions ----------------------------------------------------------------------------


def new_id() -> bytes:
    """A fresh keybridge CKA_ID: marker, creation time, randomness."""
    return _MARK + (time.time_ns() // 1000).to_bytes(8, "big") + os.urandom(6)


def created_at(id_bytes: bytes) -> _dt.datetime | None:
    """Creation time encoded in a keybridge id (None for ids other tools chose)."""
    if len(id_bytes) != 16 or not id_bytes.startswith(_MARK):
        return None
    return _dt.datetime.fromtimestamp(int.from_bytes(id_bytes[2:10], "big") / 1e6, _UTC)


def order(id_bytes: bytes) -> tuple[int, bytes]:
    """Sort key: foreign ids first (by value), then keybridge ids by creation time."""
    return (1, id_bytes[2:10]) if created_at(id_bytes) else (0, id_bytes)


# ---- reading objects -----------------------------------------------------------------------------


def flags_template(flags: Mapping[KeyOp, Any], ops: Iterable[KeyOp]) -> dict[Any, bool]:
    """CKA_ usage attributes for ``ops`` (every flag set explicitly, True or False)."""
    wanted = set(ops)
    return {attr: op in wanted for op, attr in flags.items()}


def public_flags(ops: Iterable[KeyOp]) -> dict[Any, bool]:
    """CKA_ usage attributes of a public key: ``ops`` plus the public twin of each private op.

    NSS checks a new key pair by using both halves (verify what the private key signed, decrypt
    what the public key encrypted) and refuses it with CKR_KEY_TYPE_INCONSISTENT when the public
    half may not. Granting the twins gives nothing away: anyone with the public key can verify or
    encrypt in software, and keybridge enforces the key's ops from its own record.
    """
    wanted = set(ops)
    return flags_template(PUBLIC_FLAGS, wanted | {_PUBLIC_TWIN[op] for op in wanted if op in _PUBLIC_TWIN})


def asked_only(flags: Mapping[Any, bool]) -> dict[Any, Any]:
    """``flags`` with each False one left to the token (``pkcs11.DEFAULT`` also drops python-pkcs11's).

    Some tokens derive usage from what the key is and refuse a template that contradicts it:
    tpm2-pkcs11 gives every RSA key all of sign/decrypt/unwrap and an EC key sign and decrypt, and
    answers an explicit False with CKR_GENERAL_ERROR ("User specified and TPM specified attr
    mismatch"). So a key is generated with only what was asked, then :func:`narrow` clears the rest.
    """
    return {attr: True if on else DEFAULT for attr, on in flags.items()}


def narrow(key: Any, flags: Mapping[Any, bool]) -> None:
    """Clear on ``key`` each flag that ``flags`` has False (the token may have turned it on)."""
    # Set without reading first: tpm2-pkcs11 sometimes answers a read of a flag it set itself
    # with CKR_ATTRIBUTE_TYPE_INVALID, while the write works.
    for attr, on in flags.items():
        if not on:
            key[attr] = False


def spec_of(obj: Any, attrs: Mapping[Any, Any], meta: Mapping[str, Any]) -> KeySpec:
    """The KeySpec of a secret or private key object (raises InvalidKeySpec for others)."""
    if isinstance(obj, P11Secret):
        length = attrs.get(A.VALUE_LEN) or int(meta.get("size") or 0) // 8  # SoftHSM 2.6: 0 after unwrap
        return KeySpec.aes(int(length) * 8)
    modulus = attrs.get(A.MODULUS)
    if modulus:
        return KeySpec.rsa(int.from_bytes(modulus, "big").bit_length())
    params = attrs.get(A.EC_PARAMS)
    if params in _PARAMS_CURVE:
        return KeySpec.ec(_PARAMS_CURVE[params])
    raise InvalidKeySpec(f"object labelled {obj.label!r} is a {obj.key_type!r} key keybridge cannot use")


def public_key_of(
    spec: KeySpec, priv_attrs: Mapping[Any, Any], pub: Any
) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey | None:
    """The public key as a cryptography object, from the public object or the RSA private one."""
    if spec.kty is KeyType.RSA:
        src = pub.get_attributes([A.MODULUS, A.PUBLIC_EXPONENT]) if pub is not None else priv_attrs
        n = int.from_bytes(src[A.MODULUS], "big")
        e = int.from_bytes(src[A.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if spec.kty is KeyType.EC and pub is not None:
        point = _der_octets(pub[A.EC_POINT])
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVES[spec.curve or ""], point)
    return None


def ops_of(obj: Any, attrs: Mapping[Any, Any], pub: Any) -> frozenset[KeyOp]:
    """Operations the token's usage flags grant (used for keys keybridge has no record of)."""
    if isinstance(obj, P11Secret):
        return frozenset(op for op, a in SECRET_FLAGS.items() if attrs.get(a))
    ops = {op for op, a in PRIVATE_FLAGS.items() if attrs.get(a)}
    if pub is None:
        return frozenset(ops | {_PUBLIC_TWIN[op] for op in ops})
    pub_attrs = pub.get_attributes(list(PUBLIC_FLAGS.values()))
    return frozenset(ops | {op for op, a in PUBLIC_FLAGS.items() if pub_attrs.get(a)})


KEY_ATTRS = [
    A.ID,
    A.EXTRACTABLE,
    A.VALUE_LEN,
    A.MODULUS,
    A.PUBLIC_EXPONENT,
    A.EC_PARAMS,
    *SECRET_FLAGS.values(),
    A.SIGN,
]


def is_key(obj: Any) -> bool:
    """Secret and private keys are key versions; public keys and data objects are not."""
    return isinstance(obj, (P11Secret, P11Private))


def is_secret(obj: Any) -> bool:
    """True for secret (AES) key objects."""
    return isinstance(obj, P11Secret)


def is_public(obj: Any) -> bool:
    """True for public key objects."""
    return isinstance(obj, P11Public)


# ---- templates for new objects ---------------------------------------------------------------------


def ec_params(spec: KeySpec) -> bytes:
    """DER ECParameters (named curve) for ``spec``."""
    return bytes(encode_named_curve_parameters(_CURVE_OID[spec.curve or ""]))


def import_templates(key: PrivateKey | bytes, spec: KeySpec) -> tuple[dict[Any, Any], dict[Any, Any] | None]:
    """(private-or-secret, public) attribute templates holding ``key``'s values."""
    if isinstance(key, bytes):
        return {A.CLASS: OC.SECRET_KEY, A.KEY_TYPE: KT.AES, A.VALUE: key}, None
    if isinstance(key, rsa.RSAPrivateKey):
        nums = key.private_numbers()
        pub = nums.public_numbers

        def b(i: int) -> bytes:
            return i.to_bytes((i.bit_length() + 7) // 8 or 1, "big")

        priv = {
            A.CLASS: OC.PRIVATE_KEY,
            A.KEY_TYPE: KT.RSA,
            A.MODULUS: b(pub.n),
            A.PUBLIC_EXPONENT: b(pub.e),
            A.PRIVATE_EXPONENT: b(nums.d),
            A.PRIME_1: b(nums.p),
            A.PRIME_2: b(nums.q),
            A.EXPONENT_1: b(nums.dmp1),
            A.EXPONENT_2: b(nums.dmq1),
            A.COEFFICIENT: b(nums.iqmp),
        }
        return priv, {A.CLASS: OC.PUBLIC_KEY, A.KEY_TYPE: KT.RSA, A.MODULUS: b(pub.n), A.PUBLIC_EXPONENT: b(pub.e)}
    size = (key.curve.key_size + 7) // 8
    scalar = key.private_numbers().private_value.to_bytes(size, "big")
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    params = ec_params(spec)
    return (
        {A.CLASS: OC.PRIVATE_KEY, A.KEY_TYPE: KT.EC, A.EC_PARAMS: params, A.VALUE: scalar},
        {A.CLASS: OC.PUBLIC_KEY, A.KEY_TYPE: KT.EC, A.EC_PARAMS: params, A.EC_POINT: _der_octet_string(point)},
    )


def _der_octet_string(data: bytes) -> bytes:
    n = len(data)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + n.to_bytes(2, "big")
    return b"\x04" + length + data


def _strict_octets(data: bytes) -> bytes | None:
    """The content of a DER OCTET STRING, or None if ``data`` is not one."""
    if len(data) < 2 or data[0] != 0x04:
        return None
    if data[1] < 0x80:
        head, n = 2, data[1]
    else:
        head = 2 + (data[1] & 0x7F)
        n = int.from_bytes(data[2:head], "big")
    return data[head:] if head + n == len(data) else None


def _der_octets(data: bytes) -> bytes:
    """The point inside a DER OCTET STRING (CKA_EC_POINT); a raw point (some tokens) passes through."""
    data = bytes(data)
    inside = _strict_octets(data)
    if inside is not None:
        return inside
    if len(data) > 2 and data[0] == 0x04 and data[1] == len(data) - 2:
        # tpm2-pkcs11 1.9 writes a length over 127 in one byte: P-521's 133-byte point gets
        # 04 85 (which DER reads as "5 length bytes follow").
        return data[2:]
    return data


def point_is_der(pub: Any) -> bool:
    """Whether the public object's CKA_EC_POINT is a DER OCTET STRING, as PKCS#11 asks."""
    return _strict_octets(bytes(pub[A.EC_POINT])) is not None


# What C_CreateObject answers when it will not take a template.
TEMPLATE_REFUSED = (px.AttributeValueInvalid, px.AttributeTypeInvalid, px.TemplateInconsistent, px.TemplateIncomplete)


def takes_bare_key(session: Any, values: Mapping[Any, Any]) -> bool:
    """Whether the token creates a session object from only a key's values (``import_templates``).

    After it refused a full import template: no means the token does not import keys of this kind
    at all (tpm2-pkcs11 creates only RSA public keys and data objects), yes that it refused our
    other attributes. The probe object is destroyed at once.
    """
    try:
        probe = session.create_object({**values, A.TOKEN: False})
    except TEMPLATE_REFUSED:
        return False
    probe.destroy()
    return True
