"""Managed HSM external keys: keys whose wrapKey/unwrapKey the emulator sends to an EKM proxy.

As on the service, the connection is data-plane state: ``GET /ekm/certificate`` gives the client
certificate's root CA and subject CN (the emulator's own, made per run) to configure the proxy
with; ``POST /ekm/create`` names the proxy host, its root CA and an optional path prefix;
``POST /ekm/check`` calls its ``/info``; ``GET``/``PATCH``/``DELETE /ekm`` read, change and remove
the connection. ``POST /keys/{name}/create`` with ``{"attributes": {"external_key": {"id": ID}}}``
(no ``kty``) then asks the proxy for the key's metadata and keeps only that: the key material
never exists in the emulator, and every wrap and unwrap on the key is a call to the proxy over
mutual TLS (:class:`keybridge.ekm.Client`). Other operations are refused, as in the preview.

Unlike the service, the host may carry a port (the preview allows only 443). Neither the
connection nor external keys are kept in a ``state_dir``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import re
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..ekm import Client, EkmError
from ..ekm._wire import unb64u
from ..errors import (
    InvalidArgument,
    KeybridgeError,
    KeyDisabled,
    KeyExists,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)
from ..keys import KeyInfo, KeyOp, KeyRef, KeySpec, KeyType
from ..provider import KeyProvider
from ._errors import ApiError, bad
from ._records import KeyRecord, check_tags
from ._vault import Vault

__all__ = ["CLIENT_CN", "EkmRoutes", "EkmState", "ExternalProvider", "state"]

CLIENT_CN = "emulator.managedhsmclient.azure.net"
_KEY_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_PREFIX = re.compile(r"(/[A-Za-z0-9-]+)*")
# Key Vault wrap algorithm names -> the EKM API's (AES key wrap travels as A256KW / A256KWP there).
_EKM_ALG = {
    "A256KW": "A256KW",
    "CKM_AES_KEY_WRAP": "A256KW",
    "CKM_AES_KEY_WRAP_PAD": "A256KWP",
    "RSA-OAEP": "RSA-OAEP",
    "RSA-OAEP-256": "RSA-OAEP-256",
}
_T = TypeVar("_T")


@dataclass(frozen=True)
class _External:
    key_id: str
    info: KeyInfo


class ExternalProvider:
    """The vault's provider once an EKM connection exists: external key names are answered from
    their cached metadata and the proxy; every other name goes to the emulator's own provider."""

    def __init__(self, inner: KeyProvider, ekm: EkmState) -> None:
        self.inner, self.ekm = inner, ekm
        self.scheme, self.algorithms = inner.scheme, inner.algorithms
        self._keys: dict[str, dict[str, _External]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # list_keys, key, close, ...: the emulator's own keys

    def is_external(self, name: str) -> bool:
        """True if ``name`` is an external key."""
        return name in self._keys

    def register(
        self, name: str, key_id: str, spec: KeySpec, ops: list[str], public: rsa.RSAPublicKey | None
    ) -> KeyInfo:
        """A new version of external key ``name``, backed by proxy key ``key_id``."""
        version = secrets.token_hex(16)
        info = KeyInfo(
            ref=self.inner.ref(name, version),
            spec=spec,
            ops=frozenset(KeyOp(o) for o in ops),
            created=_dt.datetime.now(_dt.timezone.utc),
            hsm_protected=True,
            public_key=public,
        )
        self._keys.setdefault(name, {})[version] = _External(key_id, info)
        return info

    def _external(self, ref: KeyRef | str, version: str | None = None) -> _External | None:
        r = self.inner.ref(ref, version)
        versions = self._keys.get(r.name)
        if versions is None:
            return None
        if not r.version:
            return list(versions.values())[-1]
        if r.version not in versions:
            raise KeyNotFound(f"external key {r.name} has no version {r.version}")
        return versions[r.version]

    def _refuse_new(self, name: str) -> None:
        if name in self._keys:
            raise KeyExists(f"{name} is an external key: create it again with attributes.external_key")

    # ---- metadata ------------------------------------------------------------------------------

    def get_key(self, ref: KeyRef | str, version: str | None = None) -> KeyInfo:
        ext = self._external(ref, version)
        return ext.info if ext else self.inner.get_key(ref, version)

    def list_versions(self, name: str) -> Iterator[KeyInfo]:
        if name in self._keys:
            return iter([e.info for e in self._keys[name].values()])
        return self.inner.list_versions(name)

    def set_enabled(self, ref: KeyRef | str, enabled: bool) -> KeyInfo:
        ext = self._external(ref)
        if ext is None:
            return self.inner.set_enabled(ref, enabled)
        info = replace(ext.info, enabled=enabled)
        self._keys[info.ref.name][info.ref.version or ""] = _External(ext.key_id, info)
        return info

    def rotate_key(self, name: str) -> KeyInfo:
        if name in self._keys:
            raise OperationNotPermitted(
                f"{name} is an external key: rotate it by creating a new version with a new external key id"
            )
        return self.inner.rotate_key(name)

    def delete_key(self, name: str) -> None:
        if self._keys.pop(name, None) is None:
            self.inner.delete_key(name)

    def create_key(self, name: str, spec: KeySpec, **kwargs: Any) -> KeyInfo:
        self._refuse_new(name)
        return self.inner.create_key(name, spec, **kwargs)

    def import_key(self, name: str, key: Any, **kwargs: Any) -> KeyInfo:
        self._refuse_new(name)
        return self.inner.import_key(name, key, **kwargs)

    def import_byok(self, name: str, package: bytes, spec: KeySpec, **kwargs: Any) -> KeyInfo:
        self._refuse_new(name)
        return self.inner.import_byok(name, package, spec, **kwargs)

    # ---- operations ----------------------------------------------------------------------------

    def _proxied(self, ext: _External, alg: str, op: str, data: bytes) -> bytes:
        if not ext.info.enabled:
            raise KeyDisabled(f"key {ext.info.ref.name} is disabled")
        if KeyOp(op) not in ext.info.ops:
            raise OperationNotPermitted(f"the EKM proxy does not allow {op} on {ext.key_id}")
        ekm_alg = _EKM_ALG.get(alg)
        if ekm_alg is None or (ekm_alg.startswith("RSA") != (ext.info.spec.kty is KeyType.RSA)):
            raise UnsupportedAlgorithm(f"{alg} is not an external {ext.info.spec.kty.value} key algorithm")
        if op == "wrapKey":
            return self.ekm.call(lambda c: c.wrap_key(ext.key_id, ekm_alg, data))
        return self.ekm.call(lambda c: c.unwrap_key(ext.key_id, ekm_alg, data))

    def wrap_key(self, ref: KeyRef | str, alg: str, key: bytes) -> bytes:
        ext = self._external(ref)
        return self._proxied(ext, alg, "wrapKey", key) if ext else self.inner.wrap_key(ref, alg, key)

    def unwrap_key(self, ref: KeyRef | str, alg: str, wrapped: bytes) -> bytes:
        ext = self._external(ref)
        return self._proxied(ext, alg, "unwrapKey", wrapped) if ext else self.inner.unwrap_key(ref, alg, wrapped)

    def _local(self, ref: KeyRef | str, fn: Callable[[], _T]) -> _T:
        if self._external(ref) is not None:
            raise OperationNotPermitted("external keys allow only wrapKey and unwrapKey (Managed HSM EKM preview)")
        return fn()

    def encrypt(self, ref: KeyRef | str, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        return self._local(ref, lambda: self.inner.encrypt(ref, alg, data, aad=aad))

    def decrypt(self, ref: KeyRef | str, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        return self._local(ref, lambda: self.inner.decrypt(ref, alg, data, aad=aad))

    def sign(self, ref: KeyRef | str, alg: str, digest: bytes) -> bytes:
        return self._local(ref, lambda: self.inner.sign(ref, alg, digest))

    def verify(self, ref: KeyRef | str, alg: str, digest: bytes, signature: bytes) -> bool:
        return self._local(ref, lambda: self.inner.verify(ref, alg, digest, signature))

    def export_key(self, ref: KeyRef | str) -> Any:
        return self._local(ref, lambda: self.inner.export_key(ref))

    def export_wrapped(self, ref: KeyRef | str, kek: rsa.RSAPublicKey) -> bytes:
        return self._local(ref, lambda: self.inner.export_wrapped(ref, kek))


class EkmState:
    """One emulator's EKM connection and its client identity (made on first use)."""

    def __init__(self) -> None:
        self.connection: dict[str, Any] | None = None
        self._client: Client | None = None
        self._identity: tuple[bytes, bytes, bytes] | None = None  # CA cert DER, leaf PEM, leaf key PEM
        self._lock = threading.Lock()

    def certificate(self) -> dict[str, Any]:
        """``GET /ekm/certificate``: the root CA and subject CN the proxy must allow."""
        ca_der = self._ident()[0]
        return {"ca_certificates": [base64.b64encode(ca_der).decode("ascii")], "subject_common_name": CLIENT_CN}

    def _ident(self) -> tuple[bytes, bytes, bytes]:
        with self._lock:
            if self._identity is None:
                self._identity = _client_identity()
            return self._identity

    def connect(self, body: dict[str, Any], *, update: bool = False) -> dict[str, Any]:
        """``POST /ekm/create`` (or ``PATCH /ekm`` with ``update``): check the fields and build
        the mTLS client that key operations use."""
        if update:
            if self.connection is None:
                raise ApiError(404, "NotFound", "there is no EKM connection; create one with POST /ekm/create")
            body = {**self.connection, **{k: v for k, v in body.items() if v is not None}}
        elif self.connection is not None:
            raise ApiError(409, "Conflict", "this pool already has an EKM connection; update or delete it")
        host, prefix = body.get("host"), body.get("path_prefix") or ""
        cas = body.get("server_ca_certificates")
        if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?", host):
            raise bad("host must be the proxy's host name (the emulator also accepts host:port)")
        if not isinstance(prefix, str) or len(prefix) > 64 or not _PREFIX.fullmatch(prefix.rstrip("/")):
            raise bad("path_prefix must be up to 64 characters of /-separated letters, digits and '-'")
        if not isinstance(cas, list) or not cas:
            raise bad("server_ca_certificates must list the proxy's root CA (base64 DER)")
        pem = b"".join(_ca_pem(c) for c in cas)
        _ca_der, leaf, key = self._ident()
        with tempfile.TemporaryDirectory(prefix="keybridge-ekm-") as tmp:
            # ssl reads certificates only from files; the client loads them now and the files go.
            files = {"ca": pem, "crt": leaf, "key": key}
            for name, data in files.items():
                Path(tmp, name).write_bytes(data)
            client = Client(
                f"https://{host}{prefix.rstrip('/')}",
                ca_file=f"{tmp}/ca",
                cert_file=f"{tmp}/crt",
                key_file=f"{tmp}/key",
                pool_name="emulator",
                timeout=0.25 * 4,  # Managed HSM waits 250 ms per call; a little more for a loaded CI
            )
        with self._lock:
            old, self._client = self._client, client
            self.connection = {
                "host": host,
                "server_ca_certificates": list(cas),
                "path_prefix": prefix,
                "connectivity_mode": body.get("connectivity_mode") or "Public",
                **(
                    {"server_subject_common_name": body["server_subject_common_name"]}
                    if body.get("server_subject_common_name")
                    else {}
                ),
            }
        if old is not None:
            old.close()
        return dict(self.connection)

    def delete(self) -> dict[str, Any]:
        """``DELETE /ekm``."""
        with self._lock:
            if self.connection is None:
                raise ApiError(404, "NotFound", "there is no EKM connection")
            conn, client, self.connection, self._client = self.connection, self._client, None, None
        if client is not None:
            client.close()
        return conn

    def call(self, fn: Callable[[Client], _T]) -> _T:
        """Call the proxy; its answers become keybridge errors, an unreachable one a 502."""
        client = self._client
        if client is None:
            raise ApiError(400, "BadParameter", "this pool has no EKM connection; create one with POST /ekm/create")
        try:
            return fn(client)
        except EkmError as exc:
            if exc.status == 404:
                raise KeyNotFound(f"the EKM proxy has no such key: {exc}") from None
            if exc.status == 403:
                raise OperationNotPermitted(str(exc)) from None
            if exc.status == 400:
                raise InvalidArgument(str(exc)) from None
            raise ApiError(502, "BadGateway", f"EKM proxy error: {exc}") from None
        except ProviderUnavailable as exc:
            raise ApiError(502, "BadGateway", str(exc)) from None


def state(vault: Vault) -> EkmState:
    """The vault's EKM state; the first call puts an :class:`ExternalProvider` in front of its provider."""
    with vault.lock:
        if not isinstance(vault.provider, ExternalProvider):
            vault.provider = cast(KeyProvider, ExternalProvider(vault.provider, EkmState()))
        return cast(ExternalProvider, vault.provider).ekm


def external_metadata(
    ekm: EkmState, key_id: object
) -> tuple[KeyType, str, KeySpec, list[str], rsa.RSAPublicKey | None]:
    """Ask the proxy about ``key_id``: (family, wire kty, spec, key_ops, RSA public key)."""
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise bad("attributes.external_key.id must be 1-64 letters, digits and '-'")
    md = ekm.call(lambda c: c.metadata(key_id))
    ops = [o for o in md.get("key_ops") or () if o in ("wrapKey", "unwrapKey")]
    try:
        if md.get("key_type") == "oct" and md.get("key_size") == 256:
            return KeyType.OCT, "oct-HSM", KeySpec.aes(256), ops, None
        if md.get("key_type") == "RSA":
            n = int.from_bytes(unb64u(md.get("n"), "n"), "big")
            e = int.from_bytes(unb64u(md.get("e"), "e"), "big")
            public = rsa.RSAPublicNumbers(e, n).public_key()
            if public.key_size != md.get("key_size"):
                raise InvalidArgument("n does not match key_size")
            return KeyType.RSA, "RSA-HSM", KeySpec.rsa(public.key_size), ops, public
    except (KeybridgeError, ValueError) as exc:
        raise ApiError(502, "BadGateway", f"the EKM proxy's metadata for {key_id} is invalid: {exc}") from None
    raise ApiError(
        502, "BadGateway", f"the EKM proxy reports an unsupported key type for {key_id}: {md.get('key_type')}"
    )


def _ca_pem(text: object) -> bytes:
    try:
        der = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    except (binascii.Error, ValueError):
        raise bad("each server_ca_certificates entry must be a base64 DER certificate") from None


def _client_identity() -> tuple[bytes, bytes, bytes]:
    """A throwaway root and a client certificate with :data:`CLIENT_CN`: (CA DER, leaf PEM, key PEM)."""
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keybridge emulator EKM client CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_CN)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _dt.timedelta(days=7))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(serialization.Encoding.DER), leaf.public_bytes(serialization.Encoding.PEM), key_pem


class EkmRoutes:
    """The ``/ekm`` routes and external-key creation, mixed into the emulator's router."""

    vault: Vault

    def _bundle(self, base: str, entry: KeyRecord, vid: str | None = None) -> tuple[int, dict[str, Any] | None]:
        raise NotImplementedError  # the router's

    def ekm_table(self, parts: list[str]) -> dict[str, Callable[..., tuple[int, dict[str, Any] | None]]]:
        """Handlers by method for an ``/ekm`` path (empty: no such route)."""
        if len(parts) == 1:
            return {"GET": self.ekm_get, "PATCH": self.ekm_update, "DELETE": self.ekm_delete}
        if len(parts) == 2:
            return {
                "create": {"POST": self.ekm_create},
                "check": {"POST": self.ekm_check},
                "certificate": {"GET": self.ekm_certificate},
            }.get(parts[1], {})
        return {}

    def ekm_certificate(self, parts: list[str], query: Any, body: dict[str, Any], base: str) -> tuple[int, Any]:
        """GET /ekm/certificate."""
        return 200, state(self.vault).certificate()

    def ekm_create(self, parts: list[str], query: Any, body: dict[str, Any], base: str) -> tuple[int, Any]:
        """POST /ekm/create."""
        return 200, state(self.vault).connect(body)

    def ekm_update(self, parts: list[str], query: Any, body: dict[str, Any], base: str) -> tuple[int, Any]:
        """PATCH /ekm."""
        return 200, state(self.vault).connect(body, update=True)

    def ekm_get(self, parts: list[str], query: Any, body: dict[str, Any], base: str) -> tuple[int, Any]:
        """GET /ekm."""
        conn = state(self.vault).connection
        if conn is None:
            raise ApiError(404, "NotFound", "there is no EKM connection; create one with POST /ekm/create")
        return 200, dict(conn)

    def ekm_delete(self, parts: list[str], query: Any, body: dict[str, Any], base: str) -> tuple[int, Any]:
        """DELETE /ekm."""
        return 200, state(self.vault).delete()

    def ekm_check(self, parts: list[str], query: Any, body: dict[str, Any], base: str) -> tuple[int, Any]:
        """POST /ekm/check: the proxy's ``/info``."""
        return 200, state(self.vault).call(lambda c: c.info())

    def create_external(self, parts: list[str], query: Any, body: dict[str, Any], base: str) -> tuple[int, Any]:
        """POST /keys/{name}/create with ``attributes.external_key.id``: the type comes from the proxy."""
        if any(body.get(k) is not None for k in ("kty", "key_size", "crv", "key_ops", "release_policy")):
            raise bad("an external key takes no kty, key_size, crv, key_ops or release_policy: the EKM proxy sets them")
        attributes = body["attributes"]
        ekm = state(self.vault)
        provider = cast(ExternalProvider, self.vault.provider)
        name = parts[1]
        existing = self.vault.entries.get(name)
        if existing is not None and existing.deleted is None and not provider.is_external(existing.pname):
            raise ApiError(409, "Conflict", f"key {name} exists and is not an external key")
        key_id = attributes["external_key"].get("id")
        kind, kty, spec, ops, public = external_metadata(ekm, key_id)
        entry, ver = self.vault.add(
            name,
            kind,
            kty,
            ops,
            lambda pname, _ops: provider.register(pname, str(key_id), spec, ops, public),
            attributes={k: v for k, v in attributes.items() if k != "external_key"},
            tags=check_tags(body.get("tags") or {}),
        )
        return self._bundle(base, entry, ver.id)
