"""JSON Web Keys on the wire: public JWKs out of :class:`KeyInfo`, key material out of imported JWKs.

This is encoding only (integers and points to base64url and back); every operation with the key
happens in the provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .._byok import b64url_decode, b64url_encode
from ..errors import InvalidArgument, InvalidPackage
from ..keys import CURVES, RSA_SIZES, KeyInfo, KeyType, PrivateKey

__all__ = ["KTY", "key_type", "material_from_jwk", "public_jwk"]

# Wire kty -> keybridge key family. "-HSM" only says where the key lives.
KTY: Mapping[str, KeyType] = {
    "RSA": KeyType.RSA,
    "RSA-HSM": KeyType.RSA,
    "EC": KeyType.EC,
    "EC-HSM": KeyType.EC,
    "oct": KeyType.OCT,
    "oct-HSM": KeyType.OCT,
}


def key_type(kty: object) -> KeyType:
    """The key family of a wire ``kty``; anything else is a bad parameter."""
    if not isinstance(kty, str) or kty not in KTY:
        raise InvalidArgument(f"kty {kty!r} is not supported; use one of {', '.join(KTY)}")
    return KTY[kty]


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def public_jwk(info: KeyInfo, kid: str, kty: str, key_ops: list[str]) -> dict[str, Any]:
    """The JWK the service returns: public parts only (no ``d``, no ``k``)."""
    jwk: dict[str, Any] = {"kid": kid, "kty": kty, "key_ops": list(key_ops)}
    pub = info.public_key
    if isinstance(pub, rsa.RSAPublicKey):
        nums = pub.public_numbers()
        jwk["n"] = _int_b64(nums.n)
        jwk["e"] = _int_b64(nums.e)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        point = pub.public_numbers()
        size = (pub.curve.key_size + 7) // 8
        jwk["crv"] = info.spec.curve
        jwk["x"] = _int_b64(point.x, size)
        jwk["y"] = _int_b64(point.y, size)
    return jwk


def _field(jwk: Mapping[str, Any], name: str, *, required: bool = True) -> bytes | None:
    value = jwk.get(name)
    if value is None:
        if required:
            raise InvalidArgument(f"the JWK has no {name!r}; an import needs the private key")
        return None
    try:
        return b64url_decode(value, f"JWK field {name!r}")
    except InvalidPackage as exc:
        raise InvalidArgument(str(exc)) from None


def _int(jwk: Mapping[str, Any], name: str) -> int:
    raw = _field(jwk, name)
    assert raw is not None
    return int.from_bytes(raw, "big")


def _rsa(jwk: Mapping[str, Any]) -> rsa.RSAPrivateKey:
    n, e, d = _int(jwk, "n"), _int(jwk, "e"), _int(jwk, "d")
    # Before any arithmetic: recovering p and q of a huge modulus takes the client's request hostage.
    if n.bit_length() not in RSA_SIZES:
        raise InvalidArgument(f"the RSA modulus is {n.bit_length()} bits; the service accepts {RSA_SIZES}")
    if jwk.get("p") is None or jwk.get("q") is None:
        p, q = rsa.rsa_recover_prime_factors(n, e, d)
    else:
        p, q = _int(jwk, "p"), _int(jwk, "q")
    dp = _int(jwk, "dp") if jwk.get("dp") else rsa.rsa_crt_dmp1(d, p)
    dq = _int(jwk, "dq") if jwk.get("dq") else rsa.rsa_crt_dmq1(d, q)
    qi = _int(jwk, "qi") if jwk.get("qi") else rsa.rsa_crt_iqmp(p, q)
    return rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n)).private_key()


def _ec(jwk: Mapping[str, Any]) -> ec.EllipticCurvePrivateKey:
    crv = jwk.get("crv")
    if crv not in CURVES:
        raise InvalidArgument(f"crv {crv!r} is not supported; use one of {', '.join(CURVES)}")
    curve = CURVES[str(crv)]
    public = ec.EllipticCurvePublicNumbers(_int(jwk, "x"), _int(jwk, "y"), curve)
    return ec.EllipticCurvePrivateNumbers(_int(jwk, "d"), public).private_key()


def material_from_jwk(jwk: Mapping[str, Any]) -> PrivateKey | bytes:
    """The private key (or AES bytes) in an imported JWK; malformed or inconsistent numbers are a
    bad parameter."""
    kind = key_type(jwk.get("kty"))
    if kind is KeyType.OCT:
        k = _field(jwk, "k")
        assert k is not None
        return k
    try:
        return _rsa(jwk) if kind is KeyType.RSA else _ec(jwk)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"the {jwk.get('kty')} JWK does not describe a valid private key") from None
