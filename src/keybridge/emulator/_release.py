"""Secure key release: release policies, a local attestation authority, and the release answer.

A key created or imported ``exportable`` carries a release policy (``release_policy`` with
``contentType``, base64url ``data`` and ``immutable``). Its ``data`` is the policy grammar of the
service (learn.microsoft.com "secure key release policy grammar"): ``{"version": "1.0.0",
"anyOf": [{"authority": URL, "allOf" | "anyOf": [conditions]}]}``, a condition being a claim test
(``{"claim": NAME, OPERATOR: VALUE}``, or the older ``{"claim", "condition", "value"}`` form) or a
nested ``allOf``/``anyOf``.

``POST /keys/NAME[/VERSION]/release`` with ``{"target": JWT, "nonce", "enc"}`` verifies the JWT
against the authority that issued it. The real service fetches the authority's OpenID
configuration and JWKS; the emulator cannot reach Microsoft Azure Attestation, so it trusts one
local authority (:class:`AttestationIssuer`, RS256, by its URL) and refuses tokens from any other.
When an ``anyOf`` entry of that authority holds for the token's claims, the answer is a JWS whose
payload carries the key wrapped (RSA-OAEP + AES key wrap with padding, the hash chosen by
``enc``) for the RSA public key in the token's ``x-ms-runtime.keys``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .. import _crypto
from ._errors import ApiError, bad
from ._records import KeyRecord, Version, decode_b64, encode_b64
from ._wire import bundle, kid

if TYPE_CHECKING:
    from ._attest import Attestor
    from ._vault import Vault

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_AUTHORITY",
    "ENCRYPTIONS",
    "AttestationIssuer",
    "check_release_policy",
    "rsa_jwk",
    "release",
    "replaced_release_policy",
]

CONTENT_TYPE = "application/json; charset=utf-8"
# Never resolvable (RFC 6761 .invalid): the emulator trusts it by name and fetches nothing.
DEFAULT_AUTHORITY = "https://attestation.keybridge-emulator.invalid"
ENCRYPTIONS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "CKM_RSA_AES_KEY_WRAP": hashes.SHA1,
    "RSA_AES_KEY_WRAP_256": hashes.SHA256,
    "RSA_AES_KEY_WRAP_384": hashes.SHA384,
}
_DEFAULT_ENC = "CKM_RSA_AES_KEY_WRAP"
_OPERATORS = ("equals", "notEquals", "less", "lessOrEquals", "greater", "greaterOrEquals", "exists")
_MAX_DEPTH = 8
_MIN_RUNTIME_BITS = 2048
_MISSING = object()


# ---- the policy and its grammar -----------------------------------------------------------------


def _get(obj: Mapping[str, Any], name: str) -> Any:
    """A member by name, ignoring case: the grammar spells ``anyof``, its examples ``anyOf``."""
    for key, value in obj.items():
        if key.lower() == name.lower():
            return value
    return _MISSING


def _combinator(obj: Mapping[str, Any], where: str) -> tuple[str, list[Any]]:
    found = [(k, v) for k in ("allOf", "anyOf") if (v := _get(obj, k)) is not _MISSING]
    if len(found) != 1:
        raise bad(f"release policy: {where} must have exactly one of allOf or anyOf")
    kind, items = found[0]
    if not isinstance(items, list) or not items:
        raise bad(f"release policy: {where}.{kind} must be a non-empty array of conditions")
    return kind, items


def _check_condition(cond: object, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise bad(f"release policy: conditions nest deeper than {_MAX_DEPTH} levels at {where}")
    if not isinstance(cond, dict):
        raise bad(f"release policy: {where} must be an object")
    if _get(cond, "claim") is _MISSING:
        kind, items = _combinator(cond, where)
        for i, sub in enumerate(items):
            _check_condition(sub, f"{where}.{kind}[{i}]", depth + 1)
        return
    if not isinstance(_get(cond, "claim"), str) or not _get(cond, "claim"):
        raise bad(f"release policy: {where}.claim must be a claim name")
    op, value = _operator(cond, where)
    if op == "exists" and not isinstance(value, bool):
        raise bad(f"release policy: {where}.exists must be true or false")
    if isinstance(value, (dict, list)) or value is None:
        raise bad(f"release policy: {where}.{op} must be a string, a number, true or false")


def _operator(cond: Mapping[str, Any], where: str) -> tuple[str, Any]:
    """(operator, value) of a claim condition, in either of the two forms the service reads."""
    named = _get(cond, "condition")
    if named is not _MISSING:
        op = next((o for o in _OPERATORS if isinstance(named, str) and o.lower() == named.lower()), None)
        if op is None or _get(cond, "value") is _MISSING:
            raise bad(f"release policy: {where} needs condition (one of {', '.join(_OPERATORS)}) and value")
        return op, _get(cond, "value")
    found = [(o, v) for o in _OPERATORS if (v := _get(cond, o)) is not _MISSING]
    if len(found) != 1:
        raise bad(f"release policy: {where} must have exactly one operator ({', '.join(_OPERATORS)})")
    return found[0]


def _check_rules(rules: object) -> dict[str, Any]:
    if not isinstance(rules, dict):
        raise bad("release policy: data must be a JSON object")
    version = _get(rules, "version")
    if version is not _MISSING and version != "1.0.0":
        raise bad(f"release policy: version must be '1.0.0', got {version!r}")
    authorities = _get(rules, "anyOf")
    if not isinstance(authorities, list) or not authorities:
        raise bad("release policy: anyOf must be a non-empty array of authorities")
    for i, auth in enumerate(authorities):
        where = f"anyOf[{i}]"
        if not isinstance(auth, dict) or not isinstance(_get(auth, "authority"), str):
            raise bad(f"release policy: {where} must be an object with an authority URL")
        if not str(_get(auth, "authority")).lower().startswith("https://"):
            raise bad(f"release policy: {where}.authority must be an https URL")
        kind, items = _combinator(auth, where)
        for j, cond in enumerate(items):
            _check_condition(cond, f"{where}.{kind}[{j}]", 1)
    return rules


def _decode_rules(data: bytes) -> dict[str, Any]:
    try:
        rules = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # the decoder recurses per nesting level
        raise bad("release policy: data must be base64url of a UTF-8 JSON policy of modest depth") from None
    return _check_rules(rules)


def check_release_policy(value: object) -> dict[str, Any] | None:
    """The stored form of a request's ``release_policy`` (checked against the grammar), or None."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("release_policy must be an object with contentType, data and immutable")
    content_type = value.get("contentType") or CONTENT_TYPE
    if not isinstance(content_type, str) or content_type.replace(" ", "").lower() != "application/json;charset=utf-8":
        raise bad(f"release_policy.contentType must be {CONTENT_TYPE!r}")
    immutable = value.get("immutable")
    if immutable is not None and not isinstance(immutable, bool):
        raise bad("release_policy.immutable must be true or false")
    if value.get("data") is None:
        raise bad("release_policy.data is required: the policy JSON, base64url")
    data = decode_b64(value["data"], "release_policy.data")
    _decode_rules(data)
    return {"contentType": CONTENT_TYPE, "data": encode_b64(data), "immutable": bool(immutable)}


def replaced_release_policy(ver: Version, value: object) -> dict[str, Any] | None:
    """The policy a PATCH's ``release_policy`` puts on ``ver`` (None: keep the current one); 400
    if the current one is immutable."""
    new = check_release_policy(value)
    old = ver.release_policy
    if new is not None and old is not None and old.get("immutable") and new != old:
        raise bad("the key's release policy is immutable and cannot be changed")
    return new


# ---- evaluating a policy against claims --------------------------------------------------------


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path into nested claims (``x-ms-isolation-tee.x-ms-...``)."""
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _text(v: object) -> str:
    # Azure Policy compares strings without regard to case; true/false compare as their JSON text.
    return json.dumps(v).lower() if isinstance(v, bool) else str(v).lower()


def _holds(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return (actual is not _MISSING) is bool(expected)
    if actual is _MISSING or isinstance(actual, (dict, list)) or actual is None:
        return False
    if op in ("equals", "notEquals"):
        same = actual == expected if _number(actual) and _number(expected) else _text(actual) == _text(expected)
        return same if op == "equals" else not same
    if _number(actual) and _number(expected):
        a, b = float(actual), float(expected)
    elif isinstance(actual, str) and isinstance(expected, str):
        a, b = actual.lower(), expected.lower()  # type: ignore[assignment]
    else:
        return False
    return {"less": a < b, "lessOrEquals": a <= b, "greater": a > b, "greaterOrEquals": a >= b}[op]


def _satisfied(cond: Mapping[str, Any], claims: Mapping[str, Any]) -> bool:
    claim = _get(cond, "claim")
    if claim is _MISSING:
        kind, items = _combinator(cond, "condition")
        results = (_satisfied(c, claims) for c in items)
        return all(results) if kind == "allOf" else any(results)
    op, expected = _operator(cond, "condition")
    return _holds(op, _claim(claims, claim), expected)


def _same_authority(a: object, b: object) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a.rstrip("/").lower() == b.rstrip("/").lower()


def _allows(rules: Mapping[str, Any], claims: Mapping[str, Any], issuer: str) -> bool:
    return any(
        _same_authority(_get(auth, "authority"), issuer) and _satisfied(auth, claims) for auth in _get(rules, "anyOf")
    )


# ---- the local attestation authority -----------------------------------------------------------


def rsa_jwk(key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The public JWK (``kty``, ``n``, ``e``) of an RSA key."""
    nums = key.public_numbers()
    n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
    e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
    return {"kty": "RSA", "n": encode_b64(n), "e": encode_b64(e)}


def _denied(message: str) -> ApiError:
    # The service's exact wording and inner code here are unverified (docs/emulator.md).
    return ApiError(
        403, "Forbidden", f"Target environment attestation statement cannot be verified: {message}.", "AccessDenied"
    )


class AttestationIssuer:
    """A stand-in for Microsoft Azure Attestation: it issues RS256 JWTs as ``authority`` and checks
    the ones a release presents. Its RSA key is made on first use and kept for its lifetime."""

    def __init__(self, authority: str = DEFAULT_AUTHORITY) -> None:
        self.authority = authority.rstrip("/")
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None

    def __repr__(self) -> str:
        return f"<AttestationIssuer {self.authority}>"

    def _signing_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    @property
    def kid(self) -> str:
        """The signing key's id: the base64url SHA-256 of its SubjectPublicKeyInfo."""
        spki = (
            self._signing_key()
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return encode_b64(hashlib.sha256(spki).digest())

    def jwks(self) -> dict[str, Any]:
        """The authority's JSON Web Key Set (what its ``jwks_uri`` would serve)."""
        jwk = rsa_jwk(self._signing_key().public_key())
        return {"keys": [{**jwk, "use": "sig", "alg": "RS256", "kid": self.kid}]}

    def token(self, claims: Mapping[str, Any], now: int, lifetime: int) -> str:
        """A signed attestation token: ``claims`` plus ``iss``, ``iat``, ``nbf`` and ``exp``."""
        body = {**claims, "iss": self.authority, "iat": now, "nbf": now, "exp": now + lifetime}
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid, "jku": f"{self.authority}/certs"}
        signing_input = ".".join(encode_b64(json.dumps(p).encode()) for p in (header, body))
        signature = self._signing_key().sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{encode_b64(signature)}"

    def verify(self, token: object, now: int) -> dict[str, Any]:
        """The claims of a token this authority signed that is valid at ``now``; else 400 (not a
        JWT at all) or 403 (wrong issuer, bad signature, expired)."""
        if not isinstance(token, str) or token.count(".") != 2:
            raise bad("target must be an attestation token: a JWT (header.payload.signature, base64url)")
        h, p, s = token.split(".")
        try:
            header, claims = json.loads(decode_b64(h, "target")), json.loads(decode_b64(p, "target"))
        except (ApiError, UnicodeDecodeError, ValueError, RecursionError):
            raise bad("target is not a JWT: its header and payload must be base64url JSON") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise bad("target is not a JWT: its header and payload must be JSON objects")
        issuer = claims.get("iss")
        if not _same_authority(issuer, self.authority):
            raise _denied(f"the token's issuer is not an authority this emulator trusts (only {self.authority})")
        if header.get("alg") != "RS256" or header.get("kid") not in (None, self.kid):
            raise _denied("the token is not signed (RS256) by the authority's signing key")
        try:
            self._signing_key().public_key().verify(
                decode_b64(s, "target"), f"{h}.{p}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise _denied("the token's signature does not verify") from None
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not _number(exp) or now >= exp:
            raise _denied("the token has expired (or has no exp)")
        if nbf is not None and (not _number(nbf) or now < nbf):
            raise _denied("the token is not valid yet (nbf)")
        return claims


# ---- the release ---------------------------------------------------------------------------------


def _runtime_key(claims: Mapping[str, Any]) -> tuple[rsa.RSAPublicKey, str | None]:
    """The RSA public key the token's runtime holds (``x-ms-runtime.keys``, also under
    ``x-ms-isolation-tee`` as confidential VM tokens carry it)."""
    for path in ("x-ms-runtime.keys", "x-ms-isolation-tee.x-ms-runtime.keys"):
        keys = _claim(claims, path)
        for jwk in keys if isinstance(keys, list) else []:
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "RSA-HSM"):
                continue
            n = int.from_bytes(decode_b64(jwk.get("n"), "x-ms-runtime.keys[].n"), "big")
            e = int.from_bytes(decode_b64(jwk.get("e"), "x-ms-runtime.keys[].e"), "big")
            if n.bit_length() < _MIN_RUNTIME_BITS or e < 3 or e % 2 == 0:
                raise bad(f"the runtime key in x-ms-runtime.keys must be RSA of at least {_MIN_RUNTIME_BITS} bits")
            kid = jwk.get("kid")
            return rsa.RSAPublicNumbers(e, n).public_key(), kid if isinstance(kid, str) else None
    raise bad("the attestation token has no RSA public key in x-ms-runtime.keys to wrap the released key for")


def _plaintext(material: object) -> bytes:
    """What the service wraps, as in BYOK: PKCS#8 DER for RSA/EC, the raw bytes of an AES key."""
    return _crypto.key_bytes(material)  # type: ignore[arg-type]


def release(
    vault: Vault,
    issuer: AttestationIssuer,
    attestor: Attestor,
    base: str,
    entry: KeyRecord,
    ver: Version,
    body: Mapping[str, Any],
    api_version: str,
) -> str:
    """The JWS a release answers in ``value``, after every check the service makes."""
    info = vault.info(entry, ver)
    key_id = kid(base, entry, ver)
    if not ver.exportable or ver.release_policy is None:
        raise ApiError(
            403,
            "Forbidden",
            f"Operation release is not permitted on {key_id}: the key is not exportable.",
            "KeyOperationForbidden",
        )
    if not info.enabled or not ver.in_window(vault.now()):
        raise ApiError(
            403,
            "Forbidden",
            f"Operation release is not permitted on {key_id}: it is disabled or outside its not-before/expiry window.",
            "KeyOperationForbidden",
        )
    enc = body.get("enc") or _DEFAULT_ENC
    if enc not in ENCRYPTIONS:
        raise bad(f"enc must be one of {', '.join(ENCRYPTIONS)}")
    nonce = body.get("nonce")
    if nonce is not None and not isinstance(nonce, str):
        raise bad("nonce must be a string")
    if body.get("target") is None:
        raise bad("target (the attestation token of the release's target) is required")
    claims = issuer.verify(body["target"], vault.now())
    rules = _decode_rules(decode_b64(ver.release_policy.get("data"), "release_policy.data"))
    if not _allows(rules, claims, issuer.authority):
        raise _denied("the token's claims do not satisfy the key's release policy")
    wrapping_key, wrapping_kid = _runtime_key(claims)
    hash_alg = ENCRYPTIONS[str(enc)]()
    oaep = padding.OAEP(mgf=padding.MGF1(hash_alg), algorithm=hash_alg, label=None)
    material = vault.call(vault.provider.export_key, vault.ref(entry, ver))
    ciphertext = _crypto.rsa_aes_key_wrap(wrapping_key, _plaintext(material), oaep=oaep)
    package = {
        "schema_version": "1.0",
        "header": {"kid": wrapping_kid or key_id, "alg": "dir", "enc": enc},
        "ciphertext": encode_b64(ciphertext),
    }
    released = bundle(base, entry, ver, info)
    released["key"]["key_hsm"] = encode_b64(json.dumps(package).encode())
    request = {"api-version": api_version, "enc": enc, "kid": key_id, **({"nonce": nonce} if nonce else {})}
    return attestor.sign({"request": request, "response": {"key": released}})
