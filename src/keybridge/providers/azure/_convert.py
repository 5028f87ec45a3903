"""Conversions between Key Vault's JSON Web Keys and keybridge's types.

Key Vault reports RSA and EC keys as public JWKs, which say everything (size, curve, public key).
It does not report the size of an AES (``oct-HSM``) key, so keybridge records it in a reserved tag
(:data:`SIZE_TAG`) when it creates or imports one, and hides that tag from :attr:`KeyInfo.tags`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from azure.keyvault.keys import JsonWebKey, KeyVaultKey
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ...errors import InvalidKeySpec
from ...keys import CURVES, KeyInfo, KeyOp, KeyRef, KeySpec, KeyType, PrivateKey, PublicKey

SIZE_TAG = "keybridge-aes-bits"
"""Reserved tag holding an AES key's size in bits (Key Vault does not report it)."""

_KTY = {"RSA": KeyType.RSA, "RSA-HSM": KeyType.RSA, "EC": KeyType.EC, "EC-HSM": KeyType.EC}
_KTY.update({"oct": KeyType.OCT, "oct-HSM": KeyType.OCT})
_KNOWN_OPS = {op.value: op for op in KeyOp}


def _text(value: object) -> str:
    """The wire string of an SDK enum member (``str()`` of one gives its Python name) or a plain str."""
    return str(getattr(value, "value", value))


def azure_kty(spec: KeySpec, hsm: bool) -> str:
    """The JWK ``kty`` Key Vault uses for ``spec``; AES keys are always ``oct-HSM``."""
    if spec.kty is KeyType.OCT:
        return "oct-HSM"
    return f"{spec.kty.value}-HSM" if hsm else spec.kty.value


def _int(b: bytes | None, what: str) -> int:
    if not b:
        raise InvalidKeySpec(f"the service returned a key without its {what}")
    return int.from_bytes(b, "big")


def _spec_and_public(jwk: JsonWebKey, tags: Mapping[str, str]) -> tuple[KeySpec, PublicKey | None]:
    try:
        return _parse_jwk(jwk, tags)
    except ValueError as exc:  # cryptography refuses a point off the curve or an impossible RSA modulus
        if isinstance(exc, InvalidKeySpec):
            raise
        raise InvalidKeySpec(f"the service returned a public key that is not valid: {exc}") from exc


def _parse_jwk(jwk: JsonWebKey, tags: Mapping[str, str]) -> tuple[KeySpec, PublicKey | None]:
    kty = _KTY.get(_text(jwk.kty))  # type: ignore[attr-defined]
    if kty is KeyType.RSA:
        pub = rsa.RSAPublicNumbers(_int(jwk.e, "e"), _int(jwk.n, "n")).public_key()  # type: ignore[attr-defined]
        return KeySpec.rsa(pub.key_size), pub
    if kty is KeyType.EC:
        crv = _text(jwk.crv)  # type: ignore[attr-defined]
        if crv not in CURVES:
            raise InvalidKeySpec(f"EC curve {crv!r} is not supported by keybridge; use one of {sorted(CURVES)}")
        numbers = ec.EllipticCurvePublicNumbers(_int(jwk.x, "x"), _int(jwk.y, "y"), CURVES[crv])  # type: ignore[attr-defined]
        return KeySpec.ec(crv), numbers.public_key()
    if kty is KeyType.OCT:
        bits = tags.get(SIZE_TAG, "256")
        if not bits.isdigit():
            raise InvalidKeySpec(f"tag {SIZE_TAG}={bits!r} is not a key size in bits (128, 192 or 256)")
        return KeySpec.aes(int(bits)), None
    raise InvalidKeySpec(f"key type {_text(jwk.kty)!r} is not supported by keybridge")  # type: ignore[attr-defined]


def user_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """Tags as the user sees them: without keybridge's reserved tag."""
    return {k: v for k, v in (tags or {}).items() if k != SIZE_TAG}


def stored_tags(spec: KeySpec, tags: Mapping[str, str]) -> dict[str, str]:
    """Tags as stored in Key Vault: the user's, plus the size tag for AES keys."""
    if SIZE_TAG in tags:
        raise InvalidKeySpec(f"tag {SIZE_TAG!r} is reserved by keybridge")
    out = dict(tags)
    if spec.kty is KeyType.OCT:
        out[SIZE_TAG] = str(spec.size)
    return out


def key_ops(names: Iterable[object] | None) -> frozenset[KeyOp]:
    """Key Vault ``key_ops`` -> :class:`KeyOp`; operations keybridge has no name for are left out."""
    return frozenset(_KNOWN_OPS[_text(n)] for n in names or () if _text(n) in _KNOWN_OPS)


def key_info(key: KeyVaultKey, make_ref: Callable[[str, str | None], KeyRef]) -> KeyInfo:
    """A :class:`KeyInfo` for a key the service returned."""
    props = key.properties
    tags = dict(props.tags or {})
    spec, public = _spec_and_public(key.key, tags)
    return KeyInfo(
        ref=make_ref(props.name, props.version),
        spec=spec,
        ops=key_ops(key.key_operations),
        enabled=bool(props.enabled) if props.enabled is not None else True,
        created=props.created_on,
        not_before=props.not_before,
        expires=props.expires_on,
        tags=user_tags(tags),
        hsm_protected=_text(key.key_type).endswith("-HSM"),
        exportable=bool(props.exportable),
        public_key=public,
    )


def _b(n: int, size: int | None = None) -> bytes:
    return n.to_bytes(size or max(1, (n.bit_length() + 7) // 8), "big")


def private_jwk(key: PrivateKey | bytes, kty: str, ops: Iterable[KeyOp]) -> JsonWebKey:
    """A JWK with the private material of ``key``, for :meth:`KeyClient.import_key`."""
    key_ops_ = sorted(op.value for op in ops)
    if isinstance(key, bytes):
        return JsonWebKey(kty=kty, k=key, key_ops=key_ops_)
    if isinstance(key, rsa.RSAPrivateKey):
        p = key.private_numbers()
        pub = p.public_numbers
        return JsonWebKey(
            kty=kty, key_ops=key_ops_, n=_b(pub.n), e=_b(pub.e), d=_b(p.d),
            p=_b(p.p), q=_b(p.q), dp=_b(p.dmp1), dq=_b(p.dmq1), qi=_b(p.iqmp),
        )  # fmt: skip
    n = (key.curve.key_size + 7) // 8
    priv = key.private_numbers()
    crv = KeySpec.of(key).curve
    return JsonWebKey(
        kty=kty, key_ops=key_ops_, crv=crv, d=_b(priv.private_value, n),
        x=_b(priv.public_numbers.x, n), y=_b(priv.public_numbers.y, n),
    )  # fmt: skip
