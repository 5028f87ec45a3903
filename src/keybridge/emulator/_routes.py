"""The keys REST API: routes, request validation and answers, over :class:`Vault`.

Paths follow what azure-keyvault-keys sends, including its quirks: versionless get/update end in
a slash (``/keys/k/``) and versionless crypto operations have an empty version (``/keys/k//sign``).
Any ``api-version`` is accepted.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from .. import _crypto
from ..errors import KeybridgeError
from ..keys import AES_SIZES, CURVES, RSA_SIZES, KeyInfo, KeyOp, KeySpec, KeyType, algorithm
from ..providers.memory import InMemoryProvider
from . import _byok_import, _release, _wire
from ._admin import Admin
from ._attest import Attestor
from ._errors import ApiError, bad, from_keybridge
from ._external import EkmRoutes
from ._jwk import key_type, material_from_jwk
from ._records import KeyRecord, check_tags, decode_b64, encode_b64
from ._release import AttestationIssuer
from ._vault import Vault

__all__ = ["Router"]

Answer = tuple[int, "dict[str, Any] | None"]
Reply = Answer | tuple[int, "dict[str, Any] | None", dict[str, str]]  # some answers add headers
_CRYPTO = {
    "encrypt": KeyOp.ENCRYPT,
    "decrypt": KeyOp.DECRYPT,
    "sign": KeyOp.SIGN,
    "verify": KeyOp.VERIFY,
    "wrapkey": KeyOp.WRAP_KEY,
    "unwrapkey": KeyOp.UNWRAP_KEY,
}
_KEY_EXTRAS: dict[str, Callable[[Router], dict[str, Callable[..., Answer]]]] = {
    "release": lambda r: {"POST": r.release},
    "attestation": lambda r: {"GET": r.attestation},
}
_PAGE = 25  # the service's largest page
_MAX_RANDOM = 128


def _obj(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{key} must be an object")
    return value


def _exportable(body: Mapping[str, Any]) -> bool:
    # The provider holds the flag too, so that only exportable keys can leave it (by release).
    return _obj(body, "attributes").get("exportable") is True


class Router(EkmRoutes):
    """Maps (method, path segments) to handlers; each returns (status, JSON body or None)."""

    def __init__(self, vault: Vault, issuer: AttestationIssuer | None = None, admin: Admin | None = None) -> None:
        self.vault = vault
        self.admin = admin  # settings and backup/restore jobs (see :mod:`._admin`)
        self.issuer = issuer or AttestationIssuer()
        self._attestor: Attestor | None = None  # made on first use: most runs never attest

    @property
    def attestor(self) -> Attestor:
        """The emulator's attestation CA and signer (key attestation, release answers)."""
        if self._attestor is None:
            self._attestor = Attestor()
        return self._attestor

    def handle(self, method: str, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Reply:
        """Route one request; unknown paths are 404, known paths with another method 405."""
        handler = self._route(method, parts)
        with self.vault.lock:
            try:
                self.vault.tick()
                try:
                    return handler(parts, query, body, base)
                except KeybridgeError as exc:
                    raise from_keybridge(exc) from exc
            except ApiError as exc:
                exc.message = self.vault.public_message(exc.message, base)
                raise

    def _route(self, method: str, parts: list[str]) -> Callable[..., Reply]:
        n = len(parts)
        head = parts[0] if parts else ""
        table: Mapping[str, Callable[..., Reply]] = {}
        if self.admin is not None and self.admin.routes(parts):
            table = self.admin.table(parts)
        elif head == "keys" and n == 1:
            table = {"GET": self.list_keys}
        elif head == "keys" and n == 2 and parts[1] == "restore":
            table = {"POST": self.restore}
        elif head == "keys" and n == 2:
            table = {"PUT": self.import_key, "DELETE": self.delete, "GET": self.get, "PATCH": self.update}
        elif head == "keys" and n == 3 and parts[2] not in _KEY_EXTRAS:
            table = {
                "create": {"POST": self.create},
                "versions": {"GET": self.list_versions},
                "backup": {"POST": self.backup},
                "rotate": {"POST": self.rotate},
                "rotationpolicy": {"GET": self.get_policy, "PUT": self.set_policy},
            }.get(parts[2], {"GET": self.get, "PATCH": self.update})
        elif head == "keys" and n == 4 and parts[3] in _CRYPTO:
            table = {"POST": self.crypto}
        elif head == "keys" and n in (3, 4) and parts[-1] in _KEY_EXTRAS:
            # versioned, versionless with the SDK's empty version (//release), or without it
            table = _KEY_EXTRAS[parts[-1]](self)
        elif head == "deletedkeys" and n == 1:
            table = {"GET": self.list_deleted}
        elif head == "deletedkeys" and n == 2:
            table = {"GET": self.get_deleted, "DELETE": self.purge}
        elif head == "deletedkeys" and n == 3 and parts[2] == "recover":
            table = {"POST": self.recover}
        elif head == "rng" and n == 1:
            table = {"POST": self.rng}
        elif head == "ekm":
            table = self.ekm_table(parts)
        if not table:
            raise ApiError(404, "NotFound", f"no such operation: /{'/'.join(parts)}")
        if method not in table:
            allow = ", ".join(sorted(table))
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"{method} is not allowed on /{'/'.join(parts)}; use {allow}",
                headers={"Allow": allow},
            )
        return table[method]

    # ---- helpers -------------------------------------------------------------------------------

    def _bundle(self, base: str, entry: KeyRecord, vid: str | None = None) -> Answer:
        ver = self.vault.version(entry, vid)
        return 200, _wire.bundle(base, entry, ver, self.vault.info(entry, ver))

    def _page(self, items: list[Any], query: Mapping[str, str], base: str, path: str) -> dict[str, Any]:
        try:
            size = int(query.get("maxresults") or _PAGE)
            start = int(query.get("$skiptoken") or 0)
        except ValueError:
            raise bad("maxresults and $skiptoken must be integers") from None
        if not 1 <= size <= _PAGE or start < 0:
            raise bad(f"maxresults must be between 1 and {_PAGE}")
        out: dict[str, Any] = {"value": items[start : start + size], "nextLink": None}
        if start + size < len(items):
            params = {"api-version": query.get("api-version", "7.6"), "$skiptoken": start + size, "maxresults": size}
            out["nextLink"] = f"{base}{path}?{urlencode(params)}"
        return out

    # ---- key management ------------------------------------------------------------------------

    def create(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /keys/{name}/create."""
        if isinstance(_obj(body, "attributes").get("external_key"), dict):
            return self.create_external(parts, query, body, base)
        kty = body.get("kty")
        kind = key_type(kty) if kty is not None else None
        if kind is None:
            raise bad("kty is required")
        exponent = body.get("public_exponent")
        if exponent not in (None, 65537):
            raise bad("public_exponent must be 65537")
        spec = self._spec(kind, body.get("key_size"), body.get("crv"))
        export = _exportable(body)
        entry, ver = self.vault.add(
            parts[1],
            kind,
            str(kty),
            body.get("key_ops"),
            lambda pname, ops: self.vault.provider.create_key(pname, spec, ops=ops, exportable=export),
            attributes=_obj(body, "attributes"),
            tags=check_tags(body.get("tags") or {}),
            release_policy=body.get("release_policy"),
        )
        return self._bundle(base, entry, ver.id)

    @staticmethod
    def _spec(kind: KeyType, size: object, crv: object) -> KeySpec:
        try:
            if kind is KeyType.EC:
                return KeySpec.ec(str(crv) if crv is not None else "P-256")
            default = 2048 if kind is KeyType.RSA else 256
            if size is not None and not isinstance(size, int):
                raise bad("key_size must be an integer")
            bits = size if isinstance(size, int) else default
            return KeySpec.rsa(bits) if kind is KeyType.RSA else KeySpec.aes(bits)
        except KeybridgeError as exc:
            raise bad(f"{exc} (RSA {RSA_SIZES}, EC {tuple(CURVES)}, oct {AES_SIZES})") from None

    def import_key(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """PUT /keys/{name}: a JWK with private parts, or a BYOK package in ``key_hsm``."""
        jwk = _obj(body, "key")
        kty = jwk.get("kty")
        kind = key_type(kty)
        hsm = body.get("Hsm", body.get("hsm"))
        wire_kty = str(kty) if str(kty).endswith("-HSM") or not (hsm or "key_hsm" in jwk) else f"{kty}-HSM"
        make: Callable[[str, list[str] | None], KeyInfo]
        export = _exportable(body)
        if "key_hsm" in jwk and export:
            raise bad("the emulator cannot release BYOK-imported keys: import them with exportable false")
        if "key_hsm" in jwk:
            make = _byok_import.importer(self.vault, decode_b64(jwk["key_hsm"], "key.key_hsm"), kind, jwk.get("crv"))
        else:
            material = material_from_jwk(jwk)
            make = lambda pname, ops: self.vault.provider.import_key(pname, material, ops=ops, exportable=export)  # noqa: E731
        entry, ver = self.vault.add(
            parts[1],
            kind,
            wire_kty,
            jwk.get("key_ops"),
            make,
            attributes=_obj(body, "attributes"),
            tags=check_tags(body.get("tags") or {}),
            release_policy=body.get("release_policy"),
        )
        return self._bundle(base, entry, ver.id)

    def get(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """GET /keys/{name}[/{version}] (also with a trailing slash)."""
        return self._bundle(base, self.vault.active(parts[1]), parts[2] if len(parts) > 2 else None)

    def update(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """PATCH /keys/{name}/{version}."""
        entry, ver = self.vault.update(parts[1], parts[2] if len(parts) > 2 else None, body)
        return self._bundle(base, entry, ver.id)

    def list_keys(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """GET /keys: current versions of live keys, paged."""
        items = []
        for name in sorted(self.vault.entries):
            entry = self.vault.entries[name]
            if entry.deleted is None:
                ver = entry.current
                items.append(_wire.item(base, entry, ver, self.vault.info(entry, ver), versioned=False))
        return 200, self._page(items, query, base, "/keys")

    def list_versions(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """GET /keys/{name}/versions."""
        entry = self.vault.active(parts[1])
        items = [_wire.item(base, entry, v, self.vault.info(entry, v), versioned=True) for v in entry.versions.values()]
        return 200, self._page(items, query, base, f"/keys/{entry.name}/versions")

    def delete(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """DELETE /keys/{name}: soft delete, answering a DeletedKeyBundle."""
        entry = self.vault.delete(parts[1])
        ver = entry.current
        return 200, _wire.deleted_bundle(base, entry, ver, self.vault.info(entry, ver))

    def list_deleted(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """GET /deletedkeys."""
        items = []
        for name in sorted(self.vault.entries):
            entry = self.vault.entries[name]
            if entry.deleted is not None:
                items.append(_wire.deleted_item(base, entry, entry.current, self.vault.info(entry, entry.current)))
        return 200, self._page(items, query, base, "/deletedkeys")

    def get_deleted(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """GET /deletedkeys/{name}."""
        entry = self.vault.deleted(parts[1])
        return 200, _wire.deleted_bundle(base, entry, entry.current, self.vault.info(entry, entry.current))

    def recover(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /deletedkeys/{name}/recover."""
        return self._bundle(base, self.vault.recover(parts[1]))

    def purge(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """DELETE /deletedkeys/{name}: 204."""
        self.vault.purge(parts[1])
        return 204, None

    def backup(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /keys/{name}/backup."""
        return 200, {"value": encode_b64(self.vault.backup(parts[1]))}

    def restore(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /keys/restore."""
        if "value" not in body:
            raise bad("value (the backup blob) is required")
        return self._bundle(base, self.vault.restore(decode_b64(body["value"], "value")))

    def rotate(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /keys/{name}/rotate."""
        entry, ver = self.vault.rotate(parts[1])
        return self._bundle(base, entry, ver.id)

    def get_policy(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """GET /keys/{name}/rotationpolicy (the default policy if none was set)."""
        return 200, _wire.policy(base, self.vault.active(parts[1]))

    def set_policy(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """PUT /keys/{name}/rotationpolicy."""
        return 200, _wire.policy(base, self.vault.set_policy(parts[1], body))

    def rng(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /rng: up to 128 random bytes."""
        count = body.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= _MAX_RANDOM:
            raise bad(f"count must be an integer from 1 to {_MAX_RANDOM}")
        return 200, {"value": encode_b64(secrets.token_bytes(count))}

    def _extra_target(self, parts: list[str]) -> tuple[KeyRecord, str]:
        """The key version a release/attestation path names (current one when versionless)."""
        entry = self.vault.active(parts[1])
        ver = self.vault.version(entry, parts[2] if len(parts) == 4 else None)
        return entry, ver.id

    def release(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /keys/{name}[/{version}]/release: secure key release (see :mod:`._release`)."""
        entry, vid = self._extra_target(parts)
        api = query.get("api-version", "7.6")
        value = _release.release(self.vault, self.issuer, self.attestor, base, entry, entry.versions[vid], body, api)
        return 200, {"value": value}

    def attestation(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """GET /keys/{name}[/{version}]/attestation: the KeyBundle with ``attributes.attestation``,
        statements signed under this emulator's attestation CA (see :mod:`._attest`)."""
        entry, vid = self._extra_target(parts)
        ver = entry.versions[vid]
        info = self.vault.info(entry, ver)
        answer = _wire.bundle(base, entry, ver, info)
        kid = _wire.kid(base, entry, ver)
        answer["attributes"]["attestation"] = self.attestor.attestation(kid, ver, info, self.vault.now())
        return 200, answer

    # ---- key operations ------------------------------------------------------------------------

    def crypto(self, parts: list[str], query: Mapping[str, str], body: dict[str, Any], base: str) -> Answer:
        """POST /keys/{name}/{version}/{encrypt|decrypt|sign|verify|wrapkey|unwrapkey}."""
        op = _CRYPTO[parts[3]]
        name = body.get("alg")
        if isinstance(name, str) and name in _crypto.CBC_ALGORITHMS:
            return self._cbc(parts, op, name, body, base)
        try:
            alg = algorithm(name)  # type: ignore[arg-type]
        except KeybridgeError as exc:
            raise bad(f"{exc}") from None
        if alg.name in ("RSA-OAEP-384", "RSA-OAEP-512"):  # keybridge names (for the ESDK) Key Vault lacks
            raise bad(f"{alg.name} is not a Key Vault algorithm")
        if op not in alg.ops:
            raise bad(f"{alg.name} is not an algorithm for {op.value}")
        value = decode_b64(body.get("digest" if op is KeyOp.VERIFY else "value"), "value")
        aad = decode_b64(body["aad"], "aad") if body.get("aad") is not None else None
        entry, ver, ref = self.vault.usable(parts[1], parts[2] or None, op)
        p = self.vault.provider
        out: dict[str, Any] = {"kid": _wire.kid(base, entry, ver)}
        gcm = alg.name.endswith("GCM")
        if op is KeyOp.ENCRYPT and gcm:
            if body.get("iv") is not None:
                raise bad(f"{alg.name} encryption takes no iv: the HSM generates it")
            sealed: bytes = self.vault.call(p.encrypt, ref, alg.name, value, aad=aad)
            iv, tag = sealed[: _crypto.GCM_IV], sealed[-_crypto.GCM_TAG :]
            out.update(
                value=encode_b64(sealed[_crypto.GCM_IV : -_crypto.GCM_TAG]), iv=encode_b64(iv), tag=encode_b64(tag)
            )
            if aad is not None:
                out["aad"] = encode_b64(aad)
        elif op is KeyOp.DECRYPT and gcm:
            if body.get("iv") is None or body.get("tag") is None:
                raise bad(f"{alg.name} decryption needs iv and tag")
            iv, tag = decode_b64(body["iv"], "iv"), decode_b64(body["tag"], "tag")
            if len(iv) != _crypto.GCM_IV or len(tag) != _crypto.GCM_TAG:
                raise bad(f"{alg.name} needs a {_crypto.GCM_IV}-byte iv and a {_crypto.GCM_TAG}-byte tag")
            out["value"] = encode_b64(self.vault.call(p.decrypt, ref, alg.name, iv + value + tag, aad=aad))
        elif op is KeyOp.VERIFY:
            signature = decode_b64(body.get("value"), "value")
            out = {"value": bool(self.vault.call(p.verify, ref, alg.name, value, signature))}
        else:
            fn = {
                KeyOp.ENCRYPT: lambda: p.encrypt(ref, alg.name, value, aad=aad),
                KeyOp.DECRYPT: lambda: p.decrypt(ref, alg.name, value, aad=aad),
                KeyOp.SIGN: lambda: p.sign(ref, alg.name, value),
                KeyOp.WRAP_KEY: lambda: p.wrap_key(ref, alg.name, value),
                KeyOp.UNWRAP_KEY: lambda: p.unwrap_key(ref, alg.name, value),
            }[op]
            out["value"] = encode_b64(self.vault.call(fn))
        return 200, out

    def _cbc(self, parts: list[str], op: KeyOp, alg: str, body: dict[str, Any], base: str) -> Answer:
        """A*CBC / A*CBCPAD encrypt or decrypt with the caller's iv (required both ways)."""
        if op not in (KeyOp.ENCRYPT, KeyOp.DECRYPT):
            raise bad(f"{alg} is not an algorithm for {op.value}")
        if body.get("iv") is None:
            raise bad(f"{alg} needs an iv: {_crypto.CBC_IV} random bytes, base64url")
        if body.get("aad") is not None:
            raise bad(f"{alg} takes no aad: AES-CBC authenticates nothing")
        iv, value = decode_b64(body["iv"], "iv"), decode_b64(body.get("value"), "value")
        entry, ver, ref = self.vault.usable(parts[1], parts[2] or None, op)
        provider = self.vault.provider
        assert isinstance(provider, InMemoryProvider)  # the emulator always opens one
        out = self.vault.call(provider.aes_cbc, ref, alg, iv, value, decrypt=op is KeyOp.DECRYPT)
        answer: dict[str, Any] = {"kid": _wire.kid(base, entry, ver), "value": encode_b64(out)}
        if op is KeyOp.ENCRYPT:
            answer["iv"] = encode_b64(iv)
        return 200, answer
