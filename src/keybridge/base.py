"""What backends subclass: the checks and auditing every provider needs, done once.

:class:`BaseProvider` implements the public :class:`~keybridge.provider.KeyProvider` methods and
does, for every backend alike: resolving a reference to a key version, checking the algorithm
against the key type and the provider's list, checking the key's allowed operations, enabled
state and validity window *before* the backend is touched, checking input lengths, running
public-key operations (verify, RSA encrypt and wrap) locally from the public key, and emitting one
audit event per operation. A backend implements only the ``_``-prefixed hooks.

What a backend can do is explicit: :attr:`BaseProvider.capabilities` holds the name of every
public operation (see :data:`~keybridge.provider.OPERATIONS`) whose hook the backend overrides,
minus those it declares in :attr:`BaseProvider.unsupported` (operation -> why not). Calling an
operation outside ``capabilities`` raises :class:`~keybridge.errors.UnsupportedOperation` naming
the provider and the operation, before the backend is touched; a hook left out raises the same
if reached another way. (RSA ``wrap_key`` / ``encrypt`` and every ``verify`` run locally from the
public key, so they work without the backend's hook.)
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from typing_extensions import Self

from . import _crypto
from ._redact import mentions_pin, redact_uri
from .audit import audited
from .errors import (
    InvalidArgument,
    InvalidKeyUri,
    KeyDisabled,
    KeyExists,
    KeyExpired,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
    UnsupportedOperation,
)
from .keys import (
    ES_CURVES,
    AlgorithmSpec,
    KeyAttributes,
    KeyInfo,
    KeyOp,
    KeyRef,
    KeySpec,
    KeyType,
    PrivateKey,
    algorithm,
)
from .provider import OPERATIONS, KeyHandle, Ops

__all__ = ["BaseProvider", "check_options"]

_PUBLIC_OPS = frozenset({KeyOp.VERIFY, KeyOp.ENCRYPT, KeyOp.WRAP_KEY})

# The hook that does each public operation; verify needs only the key's metadata (public key).
_HOOKS: Mapping[str, str] = MappingProxyType({op: "_get_key" if op == "verify" else f"_{op}" for op in OPERATIONS})


class BaseProvider:
    """Shared machinery for backends; see the module docstring for what it does for them."""

    scheme: str = ""
    algorithms: frozenset[str] = frozenset()
    # Key Vault semantics, for a backend that stores another service's keys (the emulator's
    # in-memory store): creating under an existing name adds a version instead of refusing.
    _create_adds_version: bool = False
    _base_closed: bool = False  # set by close(); backends may keep their own flag as well
    unsupported: Mapping[str, str] = MappingProxyType({})
    """Operations this backend declares it cannot do, each with the reason shown in
    :class:`~keybridge.errors.UnsupportedOperation`. Subtracted from :attr:`capabilities`: for an
    inherited hook this only adds the reason; an overridden one (say, a class that inherits a
    backend and must not offer one of its operations) is taken out. A class attribute, or set on
    the instance when it depends on configuration (a token without a wrap mechanism)."""

    # ---- backend hooks -------------------------------------------------------------------------

    def _create_key(self, name: str, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        raise self._unsupported("create_key")

    def _import_key(self, name: str, key: PrivateKey | bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        raise self._unsupported("import_key")

    def _import_byok(self, name: str, package: bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        raise self._unsupported("import_byok")

    def _check_spec(self, spec: KeySpec) -> None:
        """Refuse a spec the backend can never hold, before the name lookup reaches the backend."""

    def _get_key(self, name: str, version: str | None) -> KeyInfo:
        raise self._unsupported("get_key")

    def _list_keys(self) -> Iterator[KeyInfo]:
        raise self._unsupported("list_keys")

    def _list_versions(self, name: str) -> Iterator[KeyInfo]:
        raise self._unsupported("list_versions")

    def _rotate_key(self, name: str) -> KeyInfo:
        raise self._unsupported("rotate_key")

    def _set_enabled(self, info: KeyInfo, enabled: bool) -> KeyInfo:
        raise self._unsupported("set_enabled")

    def _delete_key(self, name: str) -> None:
        raise self._unsupported("delete_key")

    def _parse_uri(self, uri: str) -> tuple[str, str | None]:
        """Split a key URI of this provider into (name, version)."""
        raise InvalidKeyUri(f"{redact_uri(uri)!r} is not a {self.scheme} key URI")

    def _make_ref(self, name: str, version: str | None) -> KeyRef:
        return KeyRef(self.scheme, name, version)

    # Secret/private-key operations; ``info`` is always a concrete, checked version.
    def _wrap_key(self, info: KeyInfo, alg: AlgorithmSpec, key: bytes) -> bytes:
        raise self._unsupported("wrap_key")

    def _unwrap_key(self, info: KeyInfo, alg: AlgorithmSpec, wrapped: bytes) -> bytes:
        raise self._unsupported("unwrap_key")

    def _encrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        raise self._unsupported("encrypt")

    def _decrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        raise self._unsupported("decrypt")

    def _sign(self, info: KeyInfo, alg: AlgorithmSpec, digest: bytes) -> bytes:
        raise self._unsupported("sign")

    def _export_key(self, info: KeyInfo) -> PrivateKey | bytes:
        raise self._unsupported("export_key", "exporting key material in clear")

    def _export_wrapped(self, info: KeyInfo, kek: rsa.RSAPublicKey) -> bytes:
        raise self._unsupported("export_wrapped", "CKM_RSA_AES_KEY_WRAP")

    def _close(self) -> None:
        pass

    # ---- public API ----------------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[str]:
        """The operations (names from :data:`~keybridge.provider.OPERATIONS`) this provider can
        do: those whose hook the backend overrides, minus those it declares :attr:`unsupported`.
        Anything else raises :class:`~keybridge.errors.UnsupportedOperation` when called."""
        return _overridden(type(self)) - set(self.unsupported)

    def kek_id(self, info: KeyInfo) -> str:
        """The id a BYOK package names this provider's key-exchange key ``info`` by (the
        package's ``kid``), which :meth:`import_byok` of this provider resolves back to the
        KEK. The default is the key's URI, as for Key Vault (``https://…/keys/NAME/VERSION``);
        a backend whose key URIs are not Key Vault key ids overrides it."""
        if not isinstance(info, KeyInfo):
            raise InvalidArgument(f"kek_id takes the KEK's KeyInfo (provider.get_key(kek)), got {type(info).__name__}")
        return str(info.ref)

    def ref(self, ref: KeyRef | str, version: str | None = None) -> KeyRef:
        """Parse a name or key URI of this provider into a :class:`KeyRef`."""
        if isinstance(ref, KeyRef):
            _refuse_pin(ref.name)
            if ref.scheme != self.scheme:
                raise InvalidKeyUri(f"{ref} belongs to a {ref.scheme} provider, not {self.scheme}")
            return ref if version is None else self._make_ref(ref.name, version)
        if not isinstance(ref, str) or not ref:
            raise InvalidKeyUri(f"expected a key name or {self.scheme} key URI, got {ref!r}")
        if ":" in ref:
            name, uri_version = self._parse_uri(ref)
            # A PIN that ended up in the name (a wrong separator, percent-encoded) must not travel
            # on in the KeyRef: into audit events, KeyNotFound messages and reprs.
            _refuse_pin(name)
            return self._make_ref(name, version or uri_version)
        _refuse_pin(ref)
        return self._make_ref(ref, version)

    def key(self, ref: KeyRef | str, version: str | None = None) -> KeyHandle:
        """A :class:`KeyHandle` bound to one key of this provider."""
        return KeyHandle(self, self.ref(ref, version))

    def create_key(
        self,
        name: str,
        spec: KeySpec,
        *,
        ops: Ops | None = None,
        exportable: bool = False,
        tags: Mapping[str, str] | None = None,
        not_before: _dt.datetime | None = None,
        expires: _dt.datetime | None = None,
    ) -> KeyInfo:
        """Generate a key inside the backend. Keys are non-exportable unless asked. A name that
        is in use raises :class:`~keybridge.errors.KeyExists`: use :meth:`rotate_key` for a new version."""
        with audited("create_key", self.scheme, name, None) as ev:
            self._require("create_key")
            if not isinstance(spec, KeySpec):
                raise InvalidArgument(f"spec must be a KeySpec (e.g. KeySpec.rsa(2048)), got {type(spec).__name__}")
            attrs = self._attributes(name, spec, ops, exportable, tags, not_before, expires)
            self._refuse_existing(name, spec)
            info = self._create_key(name, spec, attrs)
            ev.key = info.ref
            return info

    def import_key(
        self,
        name: str,
        key: PrivateKey | bytes,
        *,
        ops: Ops | None = None,
        exportable: bool = False,
        tags: Mapping[str, str] | None = None,
        not_before: _dt.datetime | None = None,
        expires: _dt.datetime | None = None,
    ) -> KeyInfo:
        """Store an existing RSA/EC private key or AES key bytes."""
        with audited("import_key", self.scheme, name, None) as ev:
            self._require("import_key")
            if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, bytes, bytearray, memoryview)):
                raise InvalidArgument(
                    f"import_key takes an RSA or EC private key or AES key bytes, got {type(key).__name__}"
                )
            spec = KeySpec.of(key)
            attrs = self._attributes(name, spec, ops, exportable, tags, not_before, expires)
            material = bytes(key) if isinstance(key, (bytearray, memoryview)) else key
            self._refuse_existing(name, spec)
            info = self._import_key(name, material, spec, attrs)
            ev.key = info.ref
            return info

    def import_byok(
        self,
        name: str,
        package: bytes,
        spec: KeySpec,
        *,
        ops: Ops | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> KeyInfo:
        """Import a key from a .byok package wrapped under one of this provider's KEKs."""
        with audited("import_byok", self.scheme, name, "CKM_RSA_AES_KEY_WRAP") as ev:
            self._require("import_byok")
            if not isinstance(spec, KeySpec):
                raise InvalidArgument(f"spec must be a KeySpec (e.g. KeySpec.rsa(2048)), got {type(spec).__name__}")
            attrs = self._attributes(name, spec, ops, False, tags, None, None)
            self._refuse_existing(name, spec)
            info = self._import_byok(name, _bytes(package, "package"), spec, attrs)
            ev.key = info.ref
            return info

    def get_key(self, ref: KeyRef | str, version: str | None = None) -> KeyInfo:
        """Metadata of one key version (the current one unless a version is given)."""
        r = self.ref(ref, version)
        with audited("get_key", self.scheme, r, None):
            self._require("get_key")
            return self._get_key(r.name, r.version)

    def list_keys(self) -> Iterator[KeyInfo]:
        """An iterator over the current version of every key. The backend is read (and the
        audit event written) when this is called, not while iterating: a snapshot."""
        with audited("list_keys", self.scheme, None, None):
            self._require("list_keys")
            keys = list(self._list_keys())
        return iter(keys)

    def list_versions(self, name: str) -> Iterator[KeyInfo]:
        """An iterator over every version of one key, oldest first (a snapshot, as list_keys)."""
        with audited("list_versions", self.scheme, name, None):
            self._require("list_versions")
            versions = list(self._list_versions(self.ref(name).name))
        return iter(versions)

    def rotate_key(self, name: str) -> KeyInfo:
        """A new version with the same spec and operations (``create_key`` refuses a name in use)."""
        with audited("rotate_key", self.scheme, name, None) as ev:
            self._require("rotate_key")
            info = self._rotate_key(self.ref(name).name)
            ev.key = info.ref
            return info

    def set_enabled(self, ref: KeyRef | str, enabled: bool) -> KeyInfo:
        """Enable or disable a key version."""
        if not isinstance(enabled, bool):
            raise InvalidArgument(f"enabled must be True or False, got {enabled!r}")
        r = self.ref(ref)
        with audited("enable_key" if enabled else "disable_key", self.scheme, r, None):
            self._require("set_enabled")
            return self._set_enabled(self._get_key(r.name, r.version), enabled)

    def delete_key(self, name: str) -> None:
        """Delete a key and all its versions."""
        r = self.ref(name)
        with audited("delete_key", self.scheme, r, None):
            self._require("delete_key")
            self._delete_key(r.name)

    def wrap_key(self, ref: KeyRef | str, alg: str, key: bytes) -> bytes:
        """Wrap key material under the key (RSA wraps run locally from the public key)."""
        with audited("wrap_key", self.scheme, ref, alg) as ev:
            self._refuse_closed()
            key = _bytes(key, "key")
            info, a = self._usable(ref, KeyOp.WRAP_KEY, alg, ev)
            _crypto.check_input(a, info.spec, "wrap_key", key)
            if a.is_public_op and isinstance(info.public_key, rsa.RSAPublicKey):
                return _crypto.public_encrypt(info.public_key, a, key)
            return self._wrap_key(info, a, key)

    def unwrap_key(self, ref: KeyRef | str, alg: str, wrapped: bytes) -> bytes:
        """Unwrap key material inside the backend."""
        with audited("unwrap_key", self.scheme, ref, alg) as ev:
            self._require("unwrap_key")
            wrapped = _bytes(wrapped, "wrapped")
            info, a = self._usable(ref, KeyOp.UNWRAP_KEY, alg, ev)
            return self._unwrap_key(info, a, wrapped)

    def encrypt(self, ref: KeyRef | str, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        """Encrypt (RSA encryption runs locally from the public key)."""
        with audited("encrypt", self.scheme, ref, alg) as ev:
            self._refuse_closed()
            data, aad = _bytes(data, "data"), _optional_bytes(aad)
            info, a = self._usable(ref, KeyOp.ENCRYPT, alg, ev)
            self._check_aad(a, aad)
            _crypto.check_input(a, info.spec, "encrypt", data)
            if a.is_public_op and isinstance(info.public_key, rsa.RSAPublicKey):
                return _crypto.public_encrypt(info.public_key, a, data)
            return self._encrypt(info, a, data, aad)

    def decrypt(self, ref: KeyRef | str, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        """Decrypt inside the backend."""
        with audited("decrypt", self.scheme, ref, alg) as ev:
            self._require("decrypt")
            data, aad = _bytes(data, "data"), _optional_bytes(aad)
            info, a = self._usable(ref, KeyOp.DECRYPT, alg, ev)
            self._check_aad(a, aad)
            _crypto.check_input(a, info.spec, "decrypt", data)
            return self._decrypt(info, a, data, aad)

    def sign(self, ref: KeyRef | str, alg: str, digest: bytes) -> bytes:
        """Sign a digest inside the backend."""
        with audited("sign", self.scheme, ref, alg) as ev:
            self._require("sign")
            digest = _bytes(digest, "digest")
            info, a = self._usable(ref, KeyOp.SIGN, alg, ev)
            _crypto.check_input(a, info.spec, "sign", digest)
            return self._sign(info, a, digest)

    def verify(self, ref: KeyRef | str, alg: str, digest: bytes, signature: bytes) -> bool:
        """Verify a signature locally from the public key."""
        with audited("verify", self.scheme, ref, alg) as ev:
            digest, signature = _bytes(digest, "digest"), _bytes(signature, "signature")
            info, a = self._usable(ref, KeyOp.VERIFY, alg, ev)
            _crypto.check_input(a, info.spec, "verify", digest)
            assert info.public_key is not None
            return _crypto.verify(info.public_key, a, digest, signature)

    def export_key(self, ref: KeyRef | str) -> PrivateKey | bytes:
        """Key material in clear; only for keys created with ``exportable=True``."""
        with audited("export_key", self.scheme, ref, None) as ev:
            self._require("export_key")
            info = self._resolve(ref, ev)
            self._check_exportable(info)
            return self._export_key(info)

    def export_wrapped(self, ref: KeyRef | str, kek: rsa.RSAPublicKey) -> bytes:
        """The key wrapped under ``kek`` with CKM_RSA_AES_KEY_WRAP, done inside the backend."""
        with audited("export_wrapped", self.scheme, ref, "CKM_RSA_AES_KEY_WRAP") as ev:
            self._require("export_wrapped")
            info = self._resolve(ref, ev)
            self._check_exportable(info)
            if not isinstance(kek, rsa.RSAPublicKey):
                raise UnsupportedAlgorithm("CKM_RSA_AES_KEY_WRAP needs an RSA public key as the KEK")
            return self._export_wrapped(info, kek)

    def close(self) -> None:
        """Release what the backend holds. Idempotent. Afterwards every operation raises
        :class:`~keybridge.errors.ProviderUnavailable` saying the provider is closed (also where
        the backend could still answer, from a cache or a public key), so that closing means the
        same on every backend."""
        self._base_closed = True
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} scheme={self.scheme!r}>"

    # ---- shared checks -------------------------------------------------------------------------

    def _unsupported(self, operation: str, detail: str | None = None) -> UnsupportedOperation:
        """The error for an operation this backend cannot do; ``operation`` is a public method
        name (or, for a backend's own extras, what was asked), ``detail`` why not."""
        detail = self.unsupported.get(operation) or detail  # the backend knows best why not
        if detail is None and operation in OPERATIONS:
            detail = f"it can do: {', '.join(sorted(self.capabilities)) or 'nothing'}"
        return UnsupportedOperation(self.scheme, operation, detail)

    def _refuse_closed(self) -> None:
        if self._base_closed:
            raise ProviderUnavailable(
                f"this {self.scheme} provider is closed; open a new one (keybridge.open_provider)"
            )

    def _require(self, operation: str) -> None:
        # Checked first so that nothing reaches a backend that cannot finish the operation.
        self._refuse_closed()
        if operation not in self.capabilities:
            raise self._unsupported(operation)

    def _attributes(
        self,
        name: str,
        spec: KeySpec,
        ops: Ops | None,
        exportable: bool,
        tags: Mapping[str, str] | None,
        not_before: _dt.datetime | None,
        expires: _dt.datetime | None,
    ) -> KeyAttributes:
        """Validate what create/import were given, before any backend call."""
        self._check_name(name)
        if not isinstance(exportable, bool):
            raise InvalidArgument(f"exportable must be True or False, got {exportable!r}")
        if tags is not None and not (
            isinstance(tags, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
        ):
            raise InvalidArgument("tags must be a mapping of str to str")
        for what, when in (("not_before", not_before), ("expires", expires)):
            if when is not None and not (isinstance(when, _dt.datetime) and when.utcoffset() is not None):
                raise InvalidArgument(
                    f"{what} must be a timezone-aware datetime (e.g. datetime.now(timezone.utc)), got {when!r}"
                )
        return KeyAttributes(spec.check_ops(ops), exportable, dict(tags or {}), not_before, expires)

    def _refuse_existing(self, name: str, spec: KeySpec) -> None:
        """Creating is never rotating: a name in use is refused before the backend makes anything
        (after the spec, which needs no round trip). Backends that can also check atomically (under
        a lock, or by label) raise the same error."""
        self._check_spec(spec)
        if self._create_adds_version:
            return
        try:
            self._get_key(name, None)
        except KeyNotFound:
            return
        except OperationNotPermitted:
            # A caller allowed to create but not to read (a narrow RBAC role) cannot look first;
            # the backend's own answer to the create is then the truthful one.
            return
        raise self._exists(name)

    def _exists(self, name: str) -> KeyExists:
        return KeyExists(
            f"a key named {name!r} already exists in this {self.scheme} provider; use rotate_key({name!r})"
            " (CLI: keybridge keys create --new-version) for a new version of it, or choose another name"
        )

    def _check_name(self, name: str) -> None:
        if isinstance(name, str):
            _refuse_pin(name)
        if not isinstance(name, str) or not name or name != name.strip():
            raise InvalidArgument(
                f"invalid key name {redact_uri(name)!r}: use a non-empty name without surrounding spaces"
            )
        if ":" in name:
            # A URI here would become part of the key's name (and may carry a PIN): refuse it.
            raise InvalidArgument(
                f"{redact_uri(name)!r} looks like a key URI; pass the key name alone (provider.ref(uri).name)"
            )

    def _check_exportable(self, info: KeyInfo) -> None:
        if not info.exportable:
            raise OperationNotPermitted(
                f"key {info.ref} was not created exportable; create it with exportable=True to let it leave"
            )

    def _check_aad(self, a: AlgorithmSpec, aad: bytes | None) -> None:
        if aad is not None and a.kty is not KeyType.OCT:
            raise UnsupportedAlgorithm(f"{a.name} does not take additional authenticated data (aad)")

    def _resolve(self, ref: KeyRef | str, ev: Any) -> KeyInfo:
        r = self.ref(ref)
        info = self._get_key(r.name, r.version)
        ev.key = info.ref
        return info

    def _usable(self, ref: KeyRef | str, op: KeyOp, alg: str, ev: Any) -> tuple[KeyInfo, AlgorithmSpec]:
        """Resolve the key and refuse, before the backend is touched, anything not allowed."""
        a = algorithm(alg)
        # Public-key operations run locally (see wrap_key/encrypt/verify), so a backend that lacks
        # e.g. RSA-OAEP-256 itself still wraps with it; only its private half is refused.
        local = a.is_public_op and op in _PUBLIC_OPS
        if a.name not in self.algorithms and not local:
            raise UnsupportedAlgorithm(f"the {self.scheme} provider does not support {a.name}")
        if op not in a.ops:
            raise UnsupportedAlgorithm(f"{a.name} is not an algorithm for {op.value}")
        info = self._resolve(ref, ev)
        spec = info.spec
        if a.kty is not spec.kty or (a.key_bits is not None and a.key_bits != spec.size):
            needed = f"AES-{a.key_bits}" if a.key_bits else str(a.kty)
            raise UnsupportedAlgorithm(f"{a.name} needs an {needed} key; {info.ref} is {spec}")
        if a.name.startswith("ES") and ES_CURVES[a.name] != spec.curve:
            raise UnsupportedAlgorithm(f"{a.name} needs a {ES_CURVES[a.name]} key; {info.ref} is {spec}")
        if op not in info.ops:
            allowed = ", ".join(sorted(o.value for o in info.ops)) or "none"
            raise OperationNotPermitted(f"key {info.ref} does not allow {op.value} (allowed: {allowed})")
        if not info.enabled:
            raise KeyDisabled(f"key {info.ref} is disabled; enable it before use")
        if not info.is_valid_at():
            raise KeyExpired(f"key {info.ref} is outside its validity window (not before / expires)")
        return info, a


_OVERRIDDEN: dict[type[BaseProvider], frozenset[str]] = {}


def _overridden(cls: type[BaseProvider]) -> frozenset[str]:
    # Per class: which hooks a class overrides cannot change at run time (``unsupported`` can be
    # set per instance, for what depends on the backend's configuration, so it is not cached).
    ops = _OVERRIDDEN.get(cls)
    if ops is None:
        found = {op for op, hook in _HOOKS.items() if getattr(cls, hook) is not getattr(BaseProvider, hook)}
        ops = _OVERRIDDEN[cls] = frozenset(found)
    return ops


def _refuse_pin(name: str) -> None:
    if mentions_pin(name):
        raise InvalidArgument(
            "a key name (not shown) contains a PIN attribute (pin-value=/pin-source=): give the PIN to the"
            " provider (for PKCS#11: a pin-source URI attribute or $KEYBRIDGE_PKCS11_PIN), never inside a key"
            " name or URI path"
        )


def check_options(scheme: str, given: Iterable[str], allowed: Iterable[str]) -> None:
    """Refuse provider options that are not in ``allowed`` with one message shape for every
    backend: the unknown names and the allowed ones (never a value: it may be a PIN)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        # An option name typed by mistake can hold the secret itself (``pin_S3cret=``).
        shown = ", ".join(repr(n) if "pin" not in n.lower() else "(a name that mentions a PIN)" for n in unknown)
        raise InvalidArgument(
            f"unknown option(s) for the {scheme} provider: {shown}; allowed: {', '.join(sorted(allowed))}"
        )


def _bytes(value: object, what: str) -> bytes:
    """Bytes-like input as ``bytes``; anything else is the caller's mistake, named."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise InvalidArgument(f"{what} must be bytes, got {type(value).__name__}")


def _optional_bytes(value: object) -> bytes | None:
    return None if value is None else _bytes(value, "aad")
