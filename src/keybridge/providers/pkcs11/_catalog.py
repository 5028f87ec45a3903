"""Which keys and versions the token holds, as KeyInfo: key objects plus keybridge's metadata record.

A key is the secret (AES) or private (RSA/EC) key objects whose CKA_LABEL is its name, one object
per version (CKA_ID; see :mod:`._objects`). What PKCS#11 has no attribute for (tags, validity
window, enabled flag, the operations to restore on enable) lives in one private CKO_DATA object per
name: CKA_LABEL = name, CKA_APPLICATION = "keybridge", CKA_VALUE = JSON
``{"versions": {id_hex: {...}}}``. Keys other tools made have no record and work all the same.

Tokens that refuse private data objects (NSS softokn takes no CKO_DATA at all) keep the record in
``CKA_SUBJECT`` of a private, usage-less EC public-key object instead: CKA_LABEL = name, CKA_ID =
:func:`meta_id` (name), a fresh P-256 point whose private key was never kept (it verifies
nothing). NSS keeps one public key per CKA_ID, so the id and point are unique per carrier. Which form
a token gets is probed once per provider with a session data object, so the probe writes nothing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from time import monotonic
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pkcs11 import Attribute as A
from pkcs11 import KeyType as KT
from pkcs11 import ObjectClass as OC
from pkcs11 import exceptions as px

from ...errors import InvalidKeySpec, KeybridgeError, KeyNotFound
from ...keys import KeyInfo, KeyOp, KeyRef
from . import _objects as obj
from ._session import PooledSession, SessionPool
from ._uri import redact, shown

APPLICATION = "keybridge"
_READ_ATTEMPTS = 5  # searches overlapping a logout from elsewhere; each retry needs another one
META_ID = b"keybridge-metadata:"  # CKA_ID prefix of metadata carriers (keybridge's version ids are b"kb" + time)
_P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")

VersionRecords = dict[str, dict[str, Any]]
T = TypeVar("T")


class Catalog:
    """Key versions by name, read through ``pool`` and cached for ``cache_seconds``.

    The cache is dropped for a name whenever this process changes it; changes other processes
    make show up once the cached entry is older than ``cache_seconds``.
    """

    def __init__(
        self, pool: SessionPool, token_label: str, make_ref: Callable[[str, str | None], KeyRef], cache_seconds: float
    ) -> None:
        self._pool = pool
        self._token = token_label
        self._make_ref = make_ref
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, list[KeyInfo]]] = {}
        self._changes = 0  # bumped by forget(): a read that overlapped a change is not cached
        self._in_data: bool | None = None  # records in data objects (else carriers); probed on first use
        self.lock = threading.Lock()  # one read-modify-write of a metadata object (or delete) at a time

    def versions(self, name: str, *, fresh: bool = False) -> list[KeyInfo]:
        """Every version of ``name``, oldest first (KeyNotFound if there is none)."""
        hit = self._cache.get(name)
        if hit is not None and not fresh and monotonic() < hit[0]:
            return hit[1]
        mark = self._changes
        infos = self._read(lambda e: self._describe(e, name), "reading key", shown(name))
        if not infos:
            self._cache.pop(name, None)
            raise KeyNotFound(f"no key named {shown(name)} on token {self._token!r}; list_keys() shows what there is")
        if self._changes == mark:  # else this process changed keys meanwhile: the read may be stale
            self._cache[name] = (monotonic() + self._cache_seconds, infos)
        return infos

    def get(self, name: str, version: str | None) -> KeyInfo:
        """One version of ``name`` (the newest when ``version`` is None)."""
        hit = self._cache.get(name)  # the hot path of every operation: one lookup, one clock read
        versions = hit[1] if hit is not None and monotonic() < hit[0] else self.versions(name)
        if version is None:
            return versions[-1]
        wanted = version.lower()
        for info in versions:
            if info.ref.version == wanted:
                return info
        known = ", ".join(str(i.ref.version) for i in versions)
        raise KeyNotFound(f"key {shown(name)} on token {self._token!r} has no version {version!r} (it has: {known})")

    def names(self) -> list[str]:
        """Labels of every secret and private key on the token, sorted."""

        def labels(e: PooledSession) -> set[str]:
            # TOKEN: other threads' short-lived session keys (wrap/unwrap) come and go meanwhile.
            # The search ends (list) before any attribute is read: an error while reading would
            # otherwise leave it open in the session.
            found = set()
            for cls in (OC.SECRET_KEY, OC.PRIVATE_KEY):
                found |= {str(o.label) for o in list(e.session.get_objects({A.CLASS: cls, A.TOKEN: True})) if o.label}
            return found

        return sorted(self._read(labels, "listing keys on token", repr(self._token)))

    def label_for_id(self, id_bytes: bytes, uri: str) -> str:
        """The label of the key whose CKA_ID is ``id_bytes`` (for URIs that give only ``id=``)."""

        def find(e: PooledSession) -> str:
            for o in list(e.session.get_objects({A.ID: id_bytes, A.TOKEN: True})):
                if obj.is_key(o) and o.label:
                    return str(o.label)
            return ""

        label = self._read(find, "looking up", redact(uri))
        if not label:
            raise KeyNotFound(f"no labelled key with the id in {redact(uri)!r} on token {self._token!r}")
        return label

    def update(
        self, name: str, change: Callable[[VersionRecords], None], also: Callable[[PooledSession], None] | None = None
    ) -> None:
        """Apply ``change`` to the version records of ``name`` and store them on the token.

        ``also(entry)`` runs first in the same exclusive call, so no reader sees one without the other.
        """

        def update(e: PooledSession) -> None:
            if also is not None:
                also(e)
            in_data = self.in_data_objects(e)
            old = find_meta(e.session, name, in_data)
            meta = load_meta(old)
            change(meta["versions"])
            store_meta(e.session, name, old, meta, in_data, self._pool.destroy)

        with self.lock:
            try:
                self._pool.run(update, "updating the metadata of key", repr(name), write=True)
            finally:
                self.forget(name)

    def _read(self, fn: Callable[[PooledSession], T], action: str, what: object) -> T:
        # A search while someone logged the process out misses private objects, with no error:
        # if that happened (logged out now, or logged in again meanwhile), look again. One that
        # found nothing at all asks the token too (a module may report a stale login state).
        lib, pool = self._pool.lib, self._pool
        for _ in range(_READ_ATTEMPTS):
            before = lib.relogins
            found = pool.run(fn, action, what)
            if pool.relogin_if_logged_out() or lib.relogins != before:
                continue
            if found or not pool.confirm_login():
                break
        return found

    def in_data_objects(self, e: PooledSession) -> bool:
        """Whether this token keeps records in private data objects (probed once, in ``e``'s session)."""
        if self._in_data is None:
            self._in_data = takes_private_data(e)
        return self._in_data

    def forget(self, name: str) -> None:
        """Drop the cached versions of ``name``."""
        self._changes += 1
        self._cache.pop(name, None)

    def _describe(self, e: PooledSession, name: str) -> list[KeyInfo]:
        objects = list(e.session.get_objects({A.LABEL: name}))
        records = load_meta(find_meta(e.session, name, self.in_data_objects(e)))["versions"]
        publics = {bytes(o[A.ID]): o for o in objects if obj.is_public(o)}  # the carrier's META_ID matches no key
        infos = []
        for o in objects:
            if not obj.is_key(o):
                continue
            attrs = o.get_attributes(obj.KEY_ATTRS)
            id_bytes = bytes(attrs.get(A.ID, b""))
            rec = records.get(id_bytes.hex())
            rec = rec if isinstance(rec, dict) else {}
            try:
                spec = obj.spec_of(o, attrs, rec)
            except InvalidKeySpec:
                continue  # another tool's key of a type keybridge does not handle
            pub = publics.get(id_bytes)
            try:
                ops = frozenset(KeyOp(x) for x in rec["ops"]) if "ops" in rec else obj.ops_of(o, attrs, pub)
                not_before, expires = _parse_time(rec.get("not_before")), _parse_time(rec.get("expires"))
                tags = {str(k): str(v) for k, v in (rec.get("tags") or {}).items()}
            except (AttributeError, TypeError, ValueError) as exc:
                raise KeybridgeError(
                    f"the keybridge metadata of key {name!r} version {id_bytes.hex()} on token {self._token!r} is"
                    f" malformed ({type(exc).__name__}); repair or delete its CKO_DATA object"
                ) from exc
            info = KeyInfo(
                ref=self._make_ref(name, id_bytes.hex() or None),
                spec=spec,
                ops=ops,
                enabled=bool(rec.get("enabled", True)),
                created=obj.created_at(id_bytes),
                not_before=not_before,
                expires=expires,
                tags=tags,
                hsm_protected=True,
                exportable=bool(attrs.get(A.EXTRACTABLE)),
                public_key=obj.public_key_of(spec, attrs, pub),
            )
            infos.append((obj.order(id_bytes), info))
        return [i for _, i in sorted(infos, key=lambda t: t[0])]


# ---- the metadata object -------------------------------------------------------------------------


def is_meta(o: Any) -> bool:
    """True for keybridge's metadata data objects (python-pkcs11 gives data objects no class)."""
    if obj.is_key(o) or obj.is_public(o):
        return False  # a carrier (public key) is destroyed with the key's public keys anyway
    attrs = o.get_attributes([A.CLASS, A.APPLICATION])
    return bool(attrs.get(A.CLASS) == OC.DATA and attrs.get(A.APPLICATION) == APPLICATION)


def takes_private_data(e: PooledSession) -> bool:
    """Whether the token accepts private CKO_DATA objects (tried with a session object)."""
    try:
        probe = e.session.create_object(
            {A.CLASS: OC.DATA, A.TOKEN: False, A.PRIVATE: True, A.APPLICATION: APPLICATION, A.VALUE: b"{}"}
        )
    except px.PKCS11Error:
        return False
    probe.destroy()
    return True


def find_meta(session: Any, name: str, in_data: bool = True) -> list[Any]:
    """The metadata objects of ``name`` (data objects or carriers): normally one, two after a
    replacement failed halfway."""
    if in_data:
        query = {A.CLASS: OC.DATA, A.LABEL: name, A.APPLICATION: APPLICATION}
    else:
        query = {A.CLASS: OC.PUBLIC_KEY, A.LABEL: name, A.ID: meta_id(name)}
    return list(session.get_objects(query))


def load_meta(objects: list[Any]) -> dict[str, Any]:
    """The newest JSON record among ``objects`` (highest ``seq``; empty when none is readable)."""
    best: dict[str, Any] = {"versions": {}}
    for o in objects:
        try:
            data = json.loads(bytes(o[A.SUBJECT if obj.is_public(o) else A.VALUE]).decode("utf-8"))
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("versions"), dict) and _seq(data) >= _seq(best):
            best = data
    return best


def _seq(meta: Mapping[str, Any]) -> int:
    seq = meta.get("seq", 0)
    return seq if isinstance(seq, int) else 0


def store_meta(
    session: Any,
    name: str,
    old: list[Any],
    meta: dict[str, Any],
    in_data: bool = True,
    destroy: Callable[[Any], None] = lambda o: o.destroy(),
) -> None:
    """Replace the metadata objects ``old`` (SoftHSM makes CKA_VALUE of data objects read-only).

    A data object is made before the old ones go, so a failure halfway (e.g. a logout from
    elsewhere) leaves the old record or both, never none; ``seq`` tells the newer one apart. A
    carrier (tokens without private data objects) must go first: such tokens (NSS) keep one public
    key per CKA_ID, and every carrier of a name shares one.
    """
    if not in_data:
        for o in old:
            destroy(o)
        old = []
    if meta.get("versions"):
        meta["seq"] = _seq(meta) + 1
        value = json.dumps(meta, sort_keys=True).encode("utf-8")
        common = {A.TOKEN: True, A.PRIVATE: True, A.LABEL: name}
        if in_data:
            session.create_object({**common, A.CLASS: OC.DATA, A.APPLICATION: APPLICATION, A.VALUE: value})
        else:
            session.create_object(
                {
                    **common,
                    A.CLASS: OC.PUBLIC_KEY,
                    A.KEY_TYPE: KT.EC,
                    A.ID: meta_id(name),
                    A.EC_PARAMS: _P256_PARAMS,
                    A.EC_POINT: _carrier_point(),
                    A.SUBJECT: value,
                    **{flag: False for flag in (A.VERIFY, A.VERIFY_RECOVER, A.ENCRYPT, A.WRAP, A.DERIVE)},
                }
            )
    for o in old:
        destroy(o)


def meta_id(name: str) -> bytes:
    """CKA_ID of the metadata carrier of ``name``: ``META_ID`` + 12 bytes of SHA-256(name)."""
    return META_ID + hashlib.sha256(name.encode("utf-8")).digest()[:12]


def _carrier_point() -> bytes:
    # CKA_EC_POINT: DER OCTET STRING of the uncompressed point (65 bytes for P-256).
    point = (
        ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return b"\x04\x41" + point


def version_record(
    ops: Iterable[KeyOp],
    *,
    enabled: bool,
    tags: Mapping[str, str],
    not_before: _dt.datetime | None,
    expires: _dt.datetime | None,
    size: int | None = None,
) -> dict[str, Any]:
    """One version's entry in the metadata JSON."""
    return {
        "ops": sorted(op.value for op in ops),
        "enabled": enabled,
        "tags": dict(tags),
        "not_before": not_before.isoformat() if not_before else None,
        "expires": expires.isoformat() if expires else None,
        "size": size,
    }


def _parse_time(value: Any) -> _dt.datetime | None:
    return _dt.datetime.fromisoformat(value) if isinstance(value, str) else None
