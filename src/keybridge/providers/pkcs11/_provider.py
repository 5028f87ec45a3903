"""Pkcs11Provider: keybridge's protocol on a PKCS#11 token (BaseProvider hooks)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute as A
from pkcs11 import KeyType as KT
from pkcs11 import Mechanism as M
from pkcs11 import ObjectClass as OC
from pkcs11 import exceptions as px
from pkcs11.util.rsa import decode_rsa_public_key

from ... import _crypto
from ..._durations import seconds
from ..._redact import mentions_pin
from ...base import BaseProvider, check_options
from ...errors import (
    IntegrityError,
    InvalidArgument,
    InvalidKeyUri,
    KeyNotFound,
    OperationNotPermitted,
    UnsupportedAlgorithm,
    UnsupportedOperation,
)
from ...keys import AlgorithmSpec, KeyAttributes, KeyInfo, KeyOp, KeyRef, KeySpec, KeyType, PrivateKey
from . import _mechanisms as mech
from . import _objects as obj
from ._catalog import Catalog, is_meta, version_record
from ._errors import translated
from ._pin import resolve_pin
from ._quirks import quirks_of
from ._rejection import ImplicitRejection
from ._session import PooledSession, SessionPool
from ._sized import SizedCalls
from ._uri import key_uri, parse, redact

_GCM_IV = _crypto.GCM_IV
_NO_WRAPPED_EXPORT = (
    "the token lists neither CKM_RSA_AES_KEY_WRAP nor the mechanisms for its two steps (an RFC 5649"
    " wrap, CKM_AES_KEY_GEN and CKM_RSA_PKCS_OAEP, each with the wrap flag); generate the key for"
    " BYOK on a token that lists them"
)
MODULE_ENV = "KEYBRIDGE_PKCS11_MODULE"
_OPTIONS = ("module_path", "token_label", "user_pin", "pin_source", "cache_seconds", "init_args")
# from_uri takes the token from the URI, so not as an option.
_URI_OPTIONS = ("module_path", "user_pin", "pin_source", "cache_seconds", "init_args")
# The token wraps only objects: key bytes come in as a short-lived session object like this.
_TRANSIENT_SECRET = {
    A.CLASS: OC.SECRET_KEY,
    A.KEY_TYPE: KT.GENERIC_SECRET,
    A.TOKEN: False,
    A.EXTRACTABLE: True,
    A.SENSITIVE: True,
}
# An unwrapped data key is read back, so it must be readable: the first template asks for that
# explicitly. Some tokens refuse part of it with CKR_ATTRIBUTE_READ_ONLY (opencryptoki 3.8:
# CKA_SENSITIVE=FALSE and CKA_EXTRACTABLE=TRUE) and choose those flags themselves; the later ones
# ask for less, and the first whose key can be read is kept. Token defaults differ (SoftHSM makes
# an unwrapped key unextractable unless told), hence each is tried with a read.
_UNWRAP_TEMPLATES = (
    {A.TOKEN: False, A.SENSITIVE: False, A.EXTRACTABLE: True},
    {A.TOKEN: False, A.SENSITIVE: False},
    {A.TOKEN: False, A.EXTRACTABLE: True},
    {A.TOKEN: False},
)
_SENSITIVE_UNWRAP = (
    "the token makes every unwrapped key sensitive, so keybridge cannot return the unwrapped data key;"
    " use a key for decrypt (RSA-OAEP, AES-GCM) instead of unwrapKey on this token, or another token"
)


class Pkcs11Provider(BaseProvider):
    """Keys on a PKCS#11 token (tested on SoftHSM2), reached through python-pkcs11.

    ``module_path`` is the PKCS#11 module (``.so``), ``token_label`` the token's CKA_LABEL. The
    user PIN comes from ``user_pin``, else ``pin_source`` (``file:/path`` or a path), else the
    ``KEYBRIDGE_PKCS11_PIN`` environment variable. Keys are generated sensitive and
    non-extractable unless ``exportable=True`` (then still sensitive: they leave only wrapped).
    ``init_args`` is the init string for modules that need one in C_Initialize (NSS softokn:
    ``"configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db' flags="``).
    Safe to share between threads; see docs/pkcs11.md for the concurrency design.
    """

    scheme = "pkcs11"

    def __init__(
        self,
        module_path: str,
        token_label: str,
        user_pin: str | None = None,
        *,
        pin_source: str | None = None,
        cache_seconds: float = 1.0,
        init_args: str | None = None,
        **unknown: Any,
    ) -> None:
        # Taken only to be refused with the same InvalidArgument as every provider, not a TypeError.
        check_options(self.scheme, unknown, _OPTIONS)
        cache_seconds = seconds("cache_seconds", cache_seconds)
        if mentions_pin(token_label) or mentions_pin(module_path):
            raise InvalidArgument(
                "the token label or module path contains a PIN attribute (pin-value=/pin-source=): a URI"
                " with a wrong separator? Give the PIN as user_pin= or pin_source=, not inside another value"
            )
        self.token_label = token_label
        self.module_path = module_path
        self._refs: dict[tuple[str, str | None], KeyRef] = {}
        self._create_lock = threading.Lock()  # label check + object creation, one at a time
        self._rejection = ImplicitRejection()
        self._pool = SessionPool(module_path, token_label, resolve_pin(user_pin, pin_source, token_label), init_args)
        try:
            lib = self._pool.lib
            with lib.serialized(), translated("reading the mechanism list of token", repr(token_label)):
                mechanisms = mech.read_mechanisms(self._pool.token.slot)
            self.mechanisms: Mapping[int, int | None] = mechanisms
            self.quirks = quirks_of(self._pool.token)  # from CK_TOKEN_INFO, never the library's name
            if self.quirks.parallel_calls_crash:
                lib.serialize_calls()
            self.algorithms = mech.supported(mechanisms, self.quirks)
            self._kwp = mech.kwp_mechanism(mechanisms, self.quirks)
            self._native_export = mech.has_rsa_aes_key_wrap(mechanisms)
            self._two_step_export = mech.can_export_in_two_steps(mechanisms, self.quirks)
            if self.wrapped_export_mechanism is None:  # known at open, so capabilities say it up front
                self.unsupported = MappingProxyType({"export_wrapped": _NO_WRAPPED_EXPORT})
            self._sized = SizedCalls(self._pool.lib.path)  # for modules whose length queries under-report
            self._unwrap_from = 0  # index into _UNWRAP_TEMPLATES of the first this token takes
            self._catalog = Catalog(self._pool, token_label, self._make_ref, cache_seconds)
        except BaseException:
            self._pool.close()
            raise

    def __repr__(self) -> str:
        return f"<Pkcs11Provider token={self.token_label!r} module={self.module_path!r}>"

    # ---- references ---------------------------------------------------------------------------

    def _parse_uri(self, uri: str) -> tuple[str, str | None]:
        u = parse(uri)
        token = u.path.get("token")
        if token is not None and token != self.token_label:
            raise InvalidKeyUri(f"{redact(uri)!r} names token {token!r}; this provider uses {self.token_label!r}")
        version = u.id.hex() if u.id is not None else None
        name = u.path.get("object")
        if name is None and u.id is not None:
            name = self._catalog.label_for_id(u.id, uri)
        if not name:
            raise InvalidKeyUri(f"{redact(uri)!r} names no key; add object=NAME (the CKA_LABEL) or id=%XX")
        return name, version

    def _make_ref(self, name: str, version: str | None) -> KeyRef:
        ref = self._refs.get((name, version))
        if ref is None:  # every operation resolves its reference: building the URI once matters
            if len(self._refs) > 4096:
                self._refs.clear()
            ref = self._refs[(name, version)] = KeyRef(
                self.scheme, name, version, key_uri(self.token_label, name, _id(version))
            )
        return ref

    # ---- reading keys ---------------------------------------------------------------------------

    def _get_key(self, name: str, version: str | None) -> KeyInfo:
        return self._catalog.get(name, version)

    def _list_keys(self) -> Iterator[KeyInfo]:
        out = []
        for name in self._catalog.names():
            try:
                out.append(self._catalog.versions(name, fresh=True)[-1])
            except KeyNotFound:
                continue  # only objects keybridge cannot use, or deleted meanwhile
        return iter(out)

    def _list_versions(self, name: str) -> Iterator[KeyInfo]:
        return iter(self._catalog.versions(name, fresh=True))

    # ---- creating and changing keys ------------------------------------------------------------

    @contextlib.contextmanager
    def _new_label(self, name: str) -> Iterator[None]:
        """Refuse a label any object on the token has (not only keys keybridge can read), and keep
        other creates of this provider out until the new objects exist."""
        with self._create_lock:
            taken = self._pool.run(
                lambda e: bool(list(e.session.get_objects({A.LABEL: name}))), "looking up label", repr(name)
            )
            if taken:
                raise self._exists(name)
            yield

    def _create_key(self, name: str, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        with self._new_label(name):
            return self._generate(name, spec, attrs)

    def _generate(self, name: str, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        """A new version (objects with a fresh CKA_ID) under label ``name``."""
        ops, exportable = attrs.ops, attrs.exportable
        id_bytes = obj.new_id()
        common = {A.TOKEN: True, A.LABEL: name, A.ID: id_bytes}
        private = {**common, A.PRIVATE: True, A.SENSITIVE: True, A.EXTRACTABLE: exportable, A.DERIVE: False}

        def generate(e: PooledSession) -> None:
            s = e.session
            if spec.kty is KeyType.OCT:
                tpl = {**private, **obj.SECRET_OFF, **obj.flags_template(obj.SECRET_FLAGS, ops)}
                s.generate_key(KT.AES, spec.size, store=True, template=tpl)
                return
            pub_flags, priv_flags = obj.public_flags(ops), obj.flags_template(obj.PRIVATE_FLAGS, ops)
            pub_tpl = {**common, **obj.asked_only(pub_flags)}
            priv_tpl = {**private, **obj.asked_only(priv_flags)}
            if spec.kty is KeyType.RSA:
                pair = s.generate_keypair(
                    KT.RSA, spec.size, store=True, public_template=pub_tpl, private_template=priv_tpl
                )
            else:
                pub_tpl[A.EC_PARAMS] = obj.ec_params(spec)
                pair = s.generate_keypair(KT.EC, store=True, public_template=pub_tpl, private_template=priv_tpl)
            try:
                obj.narrow(pair[0], pub_flags)
                obj.narrow(pair[1], priv_flags)
                if spec.kty is KeyType.EC and not obj.point_is_der(pair[0]):
                    # tpm2-pkcs11 1.9 with P-521 then fails its own parse when signing (CKR_HOST_MEMORY,
                    # "d2i_ASN1_OCTET_STRING: too long"); after a failed sign the key cannot even be
                    # destroyed, so it is not tried: the pair goes now.
                    raise UnsupportedAlgorithm(
                        f"token {self.token_label!r} stored the public point of a new {spec} key as malformed"
                        " DER (CKA_EC_POINT), and such keys fail to sign on it; the key was not kept; use"
                        " another curve"
                    )
            except BaseException:
                for key in pair:  # a key with more usage than asked, or none it can use, must not stay
                    self._pool.destroy(key)
                raise

        self._pool.run(generate, "generating key", repr(name), write=True)
        return self._record(name, id_bytes, spec, attrs)

    def _import_key(self, name: str, key: PrivateKey | bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        with self._new_label(name):
            return self._import_objects(name, key, spec, attrs)

    def _import_objects(self, name: str, key: PrivateKey | bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        ops, exportable = attrs.ops, attrs.exportable
        id_bytes = obj.new_id()
        common = {A.TOKEN: True, A.LABEL: name, A.ID: id_bytes}
        priv_tpl, pub_tpl = obj.import_templates(key, spec)
        values = dict(priv_tpl)  # the key's values alone, for telling refusals apart (below)
        flags = obj.SECRET_FLAGS if pub_tpl is None else obj.PRIVATE_FLAGS
        priv_tpl.update({**common, A.PRIVATE: True, A.SENSITIVE: True, A.EXTRACTABLE: exportable})
        priv_tpl.update(obj.flags_template(flags, ops))
        if pub_tpl is None:
            priv_tpl.update(obj.SECRET_OFF)

        def create(e: PooledSession) -> None:
            try:
                priv = e.session.create_object(priv_tpl)
            except obj.TEMPLATE_REFUSED as refused:
                if obj.takes_bare_key(e.session, values):
                    raise  # our attributes, not the key: InvalidKeySpec names them
                raise UnsupportedOperation(
                    self.scheme,
                    "import_key",
                    f"token {self.token_label!r} takes no {spec} key material: C_CreateObject refused even a"
                    f" session object with only the key's values ({type(refused).__name__}); create the key"
                    " on the token with create_key instead",
                ) from refused
            if pub_tpl is None:
                return
            try:
                e.session.create_object({**pub_tpl, **common, **obj.public_flags(ops)})
            except BaseException:
                self._pool.destroy(priv)  # no half-imported key left behind
                raise

        self._pool.run(create, "importing key", repr(name), write=True)
        return self._record(name, id_bytes, spec, attrs)

    def _record(self, name: str, id_bytes: bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        size = spec.size if spec.kty is KeyType.OCT else None
        rec = version_record(
            attrs.ops, enabled=True, tags=attrs.tags, not_before=attrs.not_before, expires=attrs.expires, size=size
        )
        try:
            self._catalog.update(name, lambda versions: versions.__setitem__(id_bytes.hex(), rec))
        except BaseException:
            self._destroy_version(name, id_bytes)  # a key without its record would lose its ops and tags
            raise
        return self._catalog.get(name, id_bytes.hex())

    def _destroy_version(self, name: str, id_bytes: bytes) -> None:
        def destroy(e: PooledSession) -> None:
            for o in list(e.session.get_objects({A.LABEL: name, A.ID: id_bytes})):
                self._pool.destroy(o)

        try:
            self._pool.run(destroy, "rolling back the new version of key", repr(name), write=True)
        finally:
            self._pool.invalidate_handles()
            self._catalog.forget(name)

    def _rotate_key(self, name: str) -> KeyInfo:
        cur = self._catalog.versions(name, fresh=True)[-1]
        return self._generate(name, cur.spec, KeyAttributes.of(cur))

    def _set_enabled(self, info: KeyInfo, enabled: bool) -> KeyInfo:
        # Disabling also clears the usage flags on the token, so other tools cannot use the key
        # either; enabling restores the flags keybridge recorded.
        name, version = info.ref.name, info.ref.version or ""
        ops = info.ops if enabled else frozenset()

        def flags(e: PooledSession) -> None:
            for o in list(e.session.get_objects({A.LABEL: name, A.ID: _id(version) or b""})):
                if obj.is_secret(o):
                    template = obj.flags_template(obj.SECRET_FLAGS, ops)
                elif obj.is_public(o):
                    template = obj.public_flags(ops)
                elif obj.is_key(o):
                    template = obj.flags_template(obj.PRIVATE_FLAGS, ops)
                else:
                    continue
                for attr, value in template.items():
                    o[attr] = value

        def change(versions: dict[str, Any]) -> None:
            rec = versions.get(version) or version_record(
                info.ops, enabled=True, tags=info.tags, not_before=info.not_before, expires=info.expires
            )
            rec["ops"], rec["enabled"] = sorted(op.value for op in info.ops), enabled
            versions[version] = rec

        self._catalog.update(name, change, also=flags)  # one exclusive call: no reader sees half
        return self._catalog.get(name, info.ref.version)

    def _delete_key(self, name: str) -> None:
        self._catalog.versions(name, fresh=True)  # KeyNotFound if there is none

        def destroy(e: PooledSession) -> None:
            found = list(e.session.get_objects({A.LABEL: name}))
            # keys first, the record last: a failure halfway leaves the key listed with its record
            for o in [o for o in found if obj.is_key(o)] + [o for o in found if obj.is_public(o) or is_meta(o)]:
                self._pool.destroy(o)

        with self._catalog.lock:
            try:
                self._pool.run(destroy, "deleting key", repr(name), write=True)
            finally:  # also after a partial failure: some handles may point nowhere now
                self._pool.invalidate_handles()
                self._catalog.forget(name)

    # ---- key operations -----------------------------------------------------------------------
    # Hot path: each op is one pool.run of a small closure; the key's handle is cached per session.

    def _sign(self, info: KeyInfo, alg: AlgorithmSpec, digest: bytes) -> bytes:
        mechanism, param, data = mech.signature(alg, digest)
        return bytes(
            self._pool.run(
                lambda e: e.key(info).sign(data, mechanism=mechanism, mechanism_param=param),
                f"signing with {alg.name} and key",
                info.ref,
            )
        )

    def _encrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        iv = os.urandom(_GCM_IV)
        param = mech.gcm(iv, aad)
        ct = self._pool.run(
            lambda e: self._sized.crypt(e.session, e.key(info), data, M.AES_GCM, param),
            f"encrypting with {alg.name} and key",
            info.ref,
        )
        return iv + bytes(ct)

    def _decrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        if alg.kty is KeyType.OCT:
            mechanism, param, data = M.AES_GCM, mech.gcm(data[:_GCM_IV], aad), data[_GCM_IV:]
        else:
            mechanism, param = mech.rsa_decryption(alg)
        return self._rejecting(
            info,
            alg,
            data,
            lambda: bytes(
                self._pool.run(
                    lambda e: self._sized.crypt(e.session, e.key(info), data, mechanism, param, decrypt=True),
                    f"decrypting with {alg.name} and key",
                    info.ref,
                    bad_input=IntegrityError,
                )
            ),
        )

    def _rejecting(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, attempt: Callable[[], bytes]) -> bytes:
        """RSA1_5 with implicit rejection: the token's padding failure becomes synthetic bytes, as
        OpenSSL does, so that error-or-bytes is no padding oracle (see _rejection.py)."""
        if alg.name != "RSA1_5":
            return attempt()
        try:
            return attempt()
        except IntegrityError:
            k = (info.spec.size + 7) // 8
            if len(data) != k:
                raise  # not a ciphertext for this key at all, no padding was looked at
            return self._rejection.synthetic(str(info.ref), k, data)

    def _aes_wrap_mechanism(self, alg: AlgorithmSpec) -> Any:
        if alg.name == "CKM_AES_KEY_WRAP_PAD":
            return self._kwp
        return M.AES_KEY_WRAP

    def _wrap_key(self, info: KeyInfo, alg: AlgorithmSpec, key: bytes) -> bytes:
        mechanism = self._aes_wrap_mechanism(alg)
        if mechanism is M.AES_KEY_WRAP_PAD and self.quirks.kwp_pads_first and len(key) % 8:
            return self._wrap_padded_by_hand(info, alg, key)
        tpl = {**_TRANSIENT_SECRET, A.VALUE: key}

        def wrap(e: PooledSession) -> bytes:
            kek = e.key(info)
            tmp = e.session.create_object(tpl)
            try:
                return self._sized.wrap_key(e.session, kek, tmp, mechanism)
            finally:
                self._pool.destroy(tmp)

        return self._pool.run(wrap, f"wrapping with {alg.name} and key", info.ref)

    def _wrap_padded_by_hand(self, info: KeyInfo, alg: AlgorithmSpec, key: bytes) -> bytes:
        # SoftHSM < 2.7 zero-pads to 8 bytes before RFC 5649, so its output unwraps to the key
        # plus zeros. Drive the standard algorithm with the token's AES-ECB instead (docs/pkcs11.md).
        if KeyOp.ENCRYPT not in info.ops or int(M.AES_ECB) not in self.mechanisms:
            raise OperationNotPermitted(
                f"SoftHSM before 2.7 cannot {alg.name}-wrap a {len(key)}-byte key correctly and key {info.ref}"
                " does not allow encrypt (needed for the work-around); wrap keys of a multiple of 8 bytes"
            )

        def wrap(e: PooledSession) -> bytes:
            kek = e.key(info)
            return mech.rfc5649_wrap(lambda block: bytes(kek.encrypt(block, mechanism=M.AES_ECB)), key)

        return self._pool.run(wrap, f"wrapping with {alg.name} and key", info.ref)

    def _unwrap_key(self, info: KeyInfo, alg: AlgorithmSpec, wrapped: bytes) -> bytes:
        # The protocol returns the key bytes (envelope data keys), so unwrap into a session object
        # that is extractable and non-sensitive for this purpose only, read it, destroy it. C_Decrypt
        # would be one call less, but SoftHSM offers no decrypt for the key-wrap mechanisms and it
        # would bypass CKA_UNWRAP, the flag that expresses the unwrapKey permission.
        if alg.kty is KeyType.OCT:
            mechanism, param = self._aes_wrap_mechanism(alg), None
        else:
            mechanism, param = mech.rsa_decryption(alg)

        def unwrap(e: PooledSession) -> bytes:
            key = e.key(info)

            def attempt(tpl: dict[A, Any]) -> bytes:
                tmp = key.unwrap_key(
                    OC.SECRET_KEY, KT.GENERIC_SECRET, wrapped, mechanism=mechanism, mechanism_param=param, template=tpl
                )
                try:
                    return bytes(tmp[A.VALUE])
                finally:
                    self._pool.destroy(tmp)

            refused: px.PKCS11Error | None = None
            for i in range(self._unwrap_from, len(_UNWRAP_TEMPLATES)):
                try:
                    value = attempt(_UNWRAP_TEMPLATES[i])
                except (px.AttributeReadOnly, px.AttributeSensitive) as exc:
                    refused = exc
                    continue
                self._unwrap_from = i  # found once per provider, not per call
                return value
            if isinstance(refused, px.AttributeSensitive):
                detail = f"key {info.ref}: {_SENSITIVE_UNWRAP}"
                raise UnsupportedOperation(self.scheme, "unwrap_key", detail) from refused
            assert refused is not None  # the loop ran at least once
            raise refused

        return self._rejecting(
            info,
            alg,
            wrapped,
            lambda: self._pool.run(unwrap, f"unwrapping with {alg.name} and key", info.ref, bad_input=IntegrityError),
        )

    @property
    def wrapped_export_mechanism(self) -> str | None:
        """How ``export_wrapped`` wraps on this token, chosen once from its mechanism list.

        ``"CKM_RSA_AES_KEY_WRAP"`` where the token lists that mechanism with the wrap flag (one
        ``C_WrapKey``); else the two-step equivalent, e.g. ``"CKM_AES_KEY_WRAP_PAD+CKM_RSA_PKCS_OAEP"``;
        ``None`` if the token can do neither. Both give the same blob format (docs/pkcs11.md).
        """
        if self._native_export:
            return "CKM_RSA_AES_KEY_WRAP"
        if not self._two_step_export or self._kwp is None:
            return None
        return f"CKM_{self._kwp.name}+CKM_RSA_PKCS_OAEP"

    def _export_wrapped(self, info: KeyInfo, kek: rsa.RSAPublicKey) -> bytes:
        # CKM_RSA_AES_KEY_WRAP inside the token: natively where listed, else in two steps that the
        # Azure BYOK spec calls equivalent. The KEK public key enters as a session object.
        pkcs1 = kek.public_bytes(Encoding.DER, PublicFormat.PKCS1)
        kek_tpl = {**decode_rsa_public_key(pkcs1), A.TOKEN: False, A.WRAP: True, A.LABEL: "keybridge-byok-kek"}
        wrap = self._wrap_native if self._native_export else self._wrap_two_step

        def export(e: PooledSession) -> bytes:
            target = e.key(info)
            kek_obj = e.session.create_object(kek_tpl)
            try:
                return wrap(e, kek_obj, target)
            finally:
                self._pool.destroy(kek_obj)

        return self._pool.run(export, "exporting (wrapped) key", info.ref)

    @staticmethod
    def _wrap_native(e: PooledSession, kek: Any, target: Any) -> bytes:
        params = mech.RsaAesKeyWrapParams(256)  # referenced until wrap_key returns: raw points into it
        return bytes(kek.wrap_key(target, mechanism=mech.RSA_AES_KEY_WRAP, mechanism_param=params.raw))

    def _wrap_two_step(self, e: PooledSession, kek: Any, target: Any) -> bytes:
        # A fresh AES-256 session key wraps the target with RFC 5649, the KEK wraps that key with
        # RSA-OAEP SHA-1; the AES key is destroyed whatever happens.
        eph_tpl = {A.EXTRACTABLE: True, A.SENSITIVE: True, A.WRAP: True, A.TOKEN: False}
        eph = e.session.generate_key(KT.AES, 256, store=False, template=eph_tpl)
        try:
            w_target = self._sized.wrap_key(e.session, eph, target, self._kwp)
            w_eph = kek.wrap_key(eph, mechanism=M.RSA_PKCS_OAEP, mechanism_param=mech.OAEP_SHA1)
        finally:
            self._pool.destroy(eph)
        return bytes(w_eph) + bytes(w_target)

    def _close(self) -> None:
        self._pool.close()


def _id(version: str | None) -> bytes | None:
    if not version:
        return None
    try:
        return bytes.fromhex(version)
    except ValueError:
        raise InvalidArgument(f"PKCS#11 key version {version!r} is not hex (it is the CKA_ID in hex)") from None


def from_uri(uri: str, **options: Any) -> Pkcs11Provider:
    """A provider for an RFC 7512 URI (``pkcs11:token=T[;object=NAME]?module-path=...&pin-...``).

    ``options`` may give ``module_path``, ``user_pin`` and ``pin_source`` (they win over the URI)
    and ``cache_seconds``; ``init_args`` (the module's C_Initialize string) may also come from the
    query attribute ``x-init-args``. Without a module path in either, ``$KEYBRIDGE_PKCS11_MODULE`` is used.
    """
    u = parse(uri)
    check_options("pkcs11", options, _URI_OPTIONS)
    token = u.path.get("token")
    if not token:
        raise InvalidKeyUri(f"PKCS#11 URI {redact(uri)!r} names no token; add token=LABEL")
    module = options.get("module_path") or u.query.get("module-path") or os.environ.get(MODULE_ENV)
    if not module:
        raise InvalidKeyUri(
            f"PKCS#11 URI {redact(uri)!r} names no module; add ?module-path=/path/to/module.so or set {MODULE_ENV}"
        )
    pin = options.get("user_pin")
    source = options.get("pin_source")
    if pin is None and source is None:
        pin, source = u.query.get("pin-value"), u.query.get("pin-source")
    return Pkcs11Provider(
        module,
        token,
        pin,
        pin_source=source,
        cache_seconds=options.get("cache_seconds", 1.0),
        init_args=options.get("init_args") or u.query.get("x-init-args"),
    )
