"""The in-memory provider: software keys with real versions, ops, enable and expiry rules."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ... import _crypto
from ..._byok import ByokPackage, is_kek, load_unwrapped
from ..._redact import redact_uri
from ...audit import audited
from ...base import BaseProvider, check_options
from ...errors import (
    InvalidArgument,
    InvalidKeyUri,
    InvalidPackage,
    KeyDisabled,
    KeyExpired,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)
from ...keys import (
    ALGORITHMS,
    CURVES,
    AlgorithmSpec,
    KeyAttributes,
    KeyInfo,
    KeyOp,
    KeyRef,
    KeySpec,
    KeyType,
    PrivateKey,
)
from . import _keystore
from ._keystore import Material, Sealer, StoredKey

__all__ = ["InMemoryProvider", "from_uri"]

SCHEME = "memory"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,127}")
_URI = re.compile(r"(?i:memory):(?P<name>[^/]+)(?:/(?P<version>[A-Za-z0-9]+))?")
_OPTIONS = ("keystore", "passphrase", "create", "add_versions")
_URI_FORM = "memory:NAME or memory:NAME/VERSION (NAME: letters, digits, '-', '_', '.')"
# CKM_RSA_AES_KEY_WRAP packages name their KEK by a Key Vault key id: https://HOST/keys/NAME[/VERSION].
_KID_PATH = re.compile(r"/keys/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?/?")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _generate(spec: KeySpec) -> Material:
    if spec.kty is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)
    if spec.kty is KeyType.EC:
        assert spec.curve is not None
        return ec.generate_private_key(CURVES[spec.curve])
    return os.urandom(spec.size // 8)


class InMemoryProvider(BaseProvider):
    """Keys in process memory, optionally persisted to a passphrase-encrypted keystore file.

    ``InMemoryProvider()`` is empty and ephemeral; :meth:`open` binds it to a keystore file and
    saves after every change. Creating a key under an existing name raises ``KeyExists`` (use
    ``rotate_key``); ``add_versions=True`` makes it add a version instead, as Key Vault does (the
    emulator stores its keys so). Key names use letters, digits, ``-``, ``_`` and ``.``; versions are random hex
    ids. All methods are thread-safe. Several processes may share a keystore file: every change
    (and :meth:`save`) re-reads it under an exclusive lock on ``<keystore>.lock`` first.
    """

    scheme = SCHEME
    algorithms = frozenset(ALGORITHMS)

    def __init__(self, *, add_versions: bool = False) -> None:
        if not isinstance(add_versions, bool):
            raise InvalidArgument(f"add_versions must be True or False, got {type(add_versions).__name__}")
        self._create_adds_version = add_versions
        self._lock = threading.RLock()
        self._keys: dict[str, list[StoredKey]] = {}
        self._path: Path | None = None
        self._sealer: Sealer | None = None
        self._closed = False

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], passphrase: str | bytes, *, create: bool = False, add_versions: bool = False
    ) -> InMemoryProvider:
        """Load the keystore at ``path`` (``create=True`` makes an empty one if it is missing) and
        save every later change to it. A wrong passphrase raises ``AuthenticationError``, a damaged
        or truncated file ``IntegrityError``, a missing one (without ``create``)
        ``ProviderUnavailable``. ``add_versions`` is as for the constructor."""
        if not isinstance(passphrase, (str, bytes)) or not passphrase:
            raise InvalidArgument("the keystore passphrase must be a non-empty str or bytes")
        self = cls(add_versions=add_versions)
        target = Path(path)
        if create and not target.exists():
            self._sealer = Sealer(passphrase)
            self._path = target
            self.save()
        else:
            self._sealer, self._keys = _keystore.read(target, passphrase, self._make_ref)
            self._path = target
        return self

    @property
    def keystore(self) -> Path | None:
        """The keystore file this provider saves to, if any."""
        return self._path

    def save(self, path: str | os.PathLike[str] | None = None, *, passphrase: str | bytes | None = None) -> None:
        """Write all keys to a keystore file atomically (mode 0600).

        Without arguments it saves to the file the provider was opened from, through the same
        locked re-read as every change, so it never writes back a copy another process has since
        outdated. With ``path`` it writes a copy of the keystore's current content there (under
        ``passphrase`` if given, else under the open keystore's passphrase); later changes still
        go only to the opened file."""
        with self._lock:
            sealer = Sealer(passphrase) if passphrase is not None else self._sealer
            target = Path(path) if path is not None else self._path
            if target is None or sealer is None:
                raise InvalidArgument("nothing to save to: pass a path and a passphrase, or use InMemoryProvider.open")
            if self._path is not None and sealer is self._sealer and target == self._path:
                with self._mutation():
                    return
            with self._mutation():
                pass  # refresh from the file under its lock, so the copy is current
            _keystore.write(target, sealer, self._keys)

    def __repr__(self) -> str:
        where = f" keystore={str(self._path)!r}" if self._path else ""
        return f"<InMemoryProvider keys={len(self._keys)}{where}>"

    # ---- references ----------------------------------------------------------------------------

    def _make_ref(self, name: str, version: str | None) -> KeyRef:
        uri = f"{SCHEME}:{name}" + (f"/{version}" if version else "")
        return KeyRef(SCHEME, name, version, uri)

    def _parse_uri(self, uri: str) -> tuple[str, str | None]:
        m = _URI.fullmatch(uri)
        if m is None or not _NAME.fullmatch(m["name"]):
            raise InvalidKeyUri(f"{redact_uri(uri)!r} is not an in-memory key URI; expected {_URI_FORM}")
        return m["name"], m["version"]

    def _check_name(self, name: str) -> None:
        super()._check_name(name)  # first: it refuses (without echo) a name holding a PIN
        if not _NAME.fullmatch(name):
            raise InvalidArgument(f"invalid key name {name!r}: use 1-127 letters, digits, '-', '_' or '.'")

    # ---- state ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[None]:
        """Hold the lock, then persist; if persisting fails, the change is rolled back."""
        with self._lock:
            self._check_open()
            if self._path is None or self._sealer is None:
                with self._rollback():
                    yield
                return
            # Another process may have saved since this one last read: re-read under the file
            # lock and apply the change to that, so no writer's keys are lost.
            with _keystore.locked(self._path):
                fresh = _keystore.reread(self._path, self._sealer, self._make_ref)
                if fresh is not None:
                    self._keys = fresh
                with self._rollback():
                    yield
                    _keystore.write(self._path, self._sealer, self._keys)

    @contextlib.contextmanager
    def _rollback(self) -> Iterator[None]:
        before = {name: list(versions) for name, versions in self._keys.items()}
        try:
            yield
        except BaseException:
            self._keys = before
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderUnavailable("this memory provider is closed; open a new one")

    def _close(self) -> None:
        # The keys stay in memory (a closed provider holds no file or socket), but refusing work
        # keeps close() meaning the same on every backend.
        self._closed = True

    def _versions(self, name: str) -> list[StoredKey]:
        self._check_open()
        try:
            return self._keys[name]
        except KeyError:
            # memory:NAME means NAME in whichever keystore the provider opened: say which one.
            where = (
                f"the keystore {str(self._path)!r}"
                if self._path is not None
                else "this in-memory provider (no keystore: pass keystore= and passphrase= for a keystore's keys)"
            )
            raise KeyNotFound(f"no key named {name!r} in {where}") from None

    def _stored(self, name: str, version: str | None) -> StoredKey:
        with self._lock:
            versions = self._versions(name)
            if version is None:
                return versions[-1]
            for s in versions:
                if s.info.ref.version == version:
                    return s
        raise KeyNotFound(f"key {name!r} has no version {version!r}")

    def _new_info(
        self, name: str, spec: KeySpec, material: Material, attrs: KeyAttributes, hsm_protected: bool
    ) -> KeyInfo:
        return KeyInfo(
            ref=self._make_ref(name, uuid.uuid4().hex),
            spec=spec,
            ops=attrs.ops,
            created=_now(),
            not_before=attrs.not_before,
            expires=attrs.expires,
            tags=dict(attrs.tags),
            hsm_protected=hsm_protected,
            exportable=attrs.exportable,
            public_key=None if isinstance(material, bytes) else material.public_key(),
        )

    def _add(
        self, name: str, spec: KeySpec, material: Material, attrs: KeyAttributes, *, hsm_protected: bool = False
    ) -> KeyInfo:
        info = self._new_info(name, spec, material, attrs, hsm_protected)
        with self._mutation():
            # Checked again here, after the locked re-read: another thread or process may have
            # created the name since BaseProvider looked it up.
            if name in self._keys and not self._create_adds_version:
                raise self._exists(name)
            self._keys.setdefault(name, []).append(StoredKey(info, material))
        return info

    # ---- management hooks ----------------------------------------------------------------------

    def _create_key(self, name: str, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        return self._add(name, spec, _generate(spec), attrs)

    def _import_key(self, name: str, key: PrivateKey | bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        return self._add(name, spec, key, attrs)

    def _get_key(self, name: str, version: str | None) -> KeyInfo:
        return self._stored(name, version).info

    def _list_keys(self) -> Iterator[KeyInfo]:
        self._check_open()
        with self._lock:
            current = [self._keys[name][-1].info for name in sorted(self._keys)]
        return iter(current)

    def _list_versions(self, name: str) -> Iterator[KeyInfo]:
        with self._lock:
            infos = [s.info for s in self._versions(name)]
        return iter(infos)

    def _rotate_key(self, name: str) -> KeyInfo:
        # Look the key up only inside the mutation, after the locked re-read: another process
        # may have created it (or a newer version) since this one last read the file.
        with self._mutation():
            cur = self._stored(name, None).info
            material = _generate(cur.spec)
            info = self._new_info(name, cur.spec, material, KeyAttributes.of(cur), cur.hsm_protected)
            self._keys[name].append(StoredKey(info, material))
        return info

    def _set_enabled(self, info: KeyInfo, enabled: bool) -> KeyInfo:
        name = info.ref.name
        with self._mutation():
            versions = self._versions(name)
            for i, s in enumerate(versions):
                if s.info.ref.version == info.ref.version:
                    versions[i] = StoredKey(replace(s.info, enabled=enabled), s.material)
                    self._keys[name] = versions
                    return versions[i].info
        raise KeyNotFound(f"key {name!r} has no version {info.ref.version!r}")

    def _delete_key(self, name: str) -> None:
        with self._mutation():
            self._versions(name)
            del self._keys[name]

    # ---- key operations ------------------------------------------------------------------------

    def _material(self, info: KeyInfo) -> Material:
        return self._stored(info.ref.name, info.ref.version).material

    def _secret(self, info: KeyInfo) -> bytes:
        m = self._material(info)
        assert isinstance(m, bytes)
        return m

    def _wrap_key(self, info: KeyInfo, alg: AlgorithmSpec, key: bytes) -> bytes:
        return _crypto.aes_wrap(alg, self._secret(info), key)

    def _unwrap_key(self, info: KeyInfo, alg: AlgorithmSpec, wrapped: bytes) -> bytes:
        m = self._material(info)
        if isinstance(m, rsa.RSAPrivateKey):
            return _crypto.private_decrypt(m, alg, wrapped)
        assert isinstance(m, bytes)
        return _crypto.aes_unwrap(alg, m, wrapped)

    def _encrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        return _crypto.gcm_encrypt(self._secret(info), data, aad)

    def _decrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        m = self._material(info)
        if isinstance(m, rsa.RSAPrivateKey):
            return _crypto.private_decrypt(m, alg, data)
        assert isinstance(m, bytes)
        return _crypto.gcm_decrypt(m, data, aad)

    def aes_cbc(self, ref: KeyRef | str, alg: str, iv: bytes, data: bytes, *, decrypt: bool = False) -> bytes:
        """AES-CBC with the caller's IV (Managed HSM's ``A128CBC`` ... ``A256CBCPAD``) under an AES
        key of the size the name gives. Outside the :class:`KeyProvider` protocol, whose encrypt
        has no IV: the Managed HSM emulator uses it. The key must allow the operation, be enabled
        and be inside its validity window, as for :meth:`encrypt`."""
        op = KeyOp.DECRYPT if decrypt else KeyOp.ENCRYPT
        with audited(op.value, self.scheme, ref, alg) as ev:
            if alg not in _crypto.CBC_ALGORITHMS:
                raise UnsupportedAlgorithm(
                    f"{alg!r} is not an AES-CBC algorithm; use one of {', '.join(_crypto.CBC_ALGORITHMS)}"
                )
            info = self._resolve(ref, ev)
            bits = _crypto.CBC_ALGORITHMS[alg][0]
            if info.spec != KeySpec.aes(bits):
                raise UnsupportedAlgorithm(f"{alg} needs an AES-{bits} key; {info.ref} is {info.spec}")
            if op not in info.ops:
                raise OperationNotPermitted(f"key {info.ref} does not allow {op.value}")
            if not info.enabled:
                raise KeyDisabled(f"key {info.ref} is disabled; enable it before use")
            if not info.is_valid_at():
                raise KeyExpired(f"key {info.ref} is outside its validity window (not before / expires)")
            return _crypto.aes_cbc(self._secret(info), alg, bytes(iv), bytes(data), decrypt=decrypt)

    def _sign(self, info: KeyInfo, alg: AlgorithmSpec, digest: bytes) -> bytes:
        m = self._material(info)
        assert not isinstance(m, bytes)
        return _crypto.sign(m, alg, digest)

    def _export_key(self, info: KeyInfo) -> PrivateKey | bytes:
        return self._material(info)

    def _export_wrapped(self, info: KeyInfo, kek: rsa.RSAPublicKey) -> bytes:
        # Azure BYOK plaintext: PKCS#8 DER for RSA/EC, raw bytes for AES.
        return _crypto.rsa_aes_key_wrap(kek, _crypto.key_bytes(self._material(info)))

    # ---- BYOK import ---------------------------------------------------------------------------

    def kek_id(self, info: KeyInfo) -> str:
        """The ``kid`` a BYOK package for this provider names the KEK ``info`` by. A package's
        kid is a Key Vault key id (``https://HOST/keys/NAME/VERSION``), which a ``memory:`` URI is
        not, so this provider names its KEKs under the reserved host ``memory.invalid``; it
        resolves a kid by the ``/keys/NAME/VERSION`` path alone (see :meth:`import_byok`), which
        also lets the emulator, serving this provider's keys under its own host, pass kids on."""
        ref = self.ref(super().kek_id(info))  # a memory: URI; refuses another provider's key
        if ref.version is None:
            raise InvalidArgument(f"a KEK id needs the KEK's version; {ref} has none (use get_key(kek))")
        return f"https://{SCHEME}.invalid/keys/{ref.name}/{ref.version}"

    def _kek_for(self, kid: str) -> rsa.RSAPrivateKey:
        """The key-exchange key a package names. Its ``kid`` is a Key Vault key id; only the
        ``/keys/NAME[/VERSION]`` path counts here (the host is whatever served the KEK, e.g. the
        emulator), and NAME[/VERSION] is looked up in this provider."""
        m = _KID_PATH.fullmatch(urlsplit(kid).path)
        if m is None:
            raise InvalidPackage(f"package kid {kid!r} has no /keys/NAME[/VERSION] path")
        stored = self._stored(m["name"], m["version"])
        info = stored.info
        if not (is_kek(info) and isinstance(stored.material, rsa.RSAPrivateKey)):
            ops = ", ".join(sorted(o.value for o in info.ops))
            raise OperationNotPermitted(
                f"key {info.ref} ({info.spec}, ops: {ops}) is not a key-exchange key; a KEK is RSA with ops=[import]"
            )
        if not info.enabled:
            raise KeyDisabled(f"key-exchange key {info.ref} is disabled; enable it before importing")
        if not info.is_valid_at():
            raise KeyExpired(f"key-exchange key {info.ref} is outside its validity window")
        return stored.material

    def _import_byok(self, name: str, package: bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        pkg = ByokPackage.from_json(package)
        plaintext = _crypto.rsa_aes_key_unwrap(self._kek_for(pkg.kid), pkg.ciphertext)
        material = load_unwrapped(plaintext, spec)
        return self._add(name, spec, material, attrs, hsm_protected=True)


def from_uri(uri: str, **options: Any) -> InMemoryProvider:
    """Registry factory for ``memory:`` URIs.

    Options: ``keystore=PATH`` and ``passphrase=...`` open a keystore file (``create=True`` makes
    it if missing); without ``keystore`` the provider is empty and lives only in this process.
    ``add_versions=True``: creating under an existing name adds a version (see the class)."""
    if not isinstance(uri, str) or not uri.lower().startswith(f"{SCHEME}:"):
        raise InvalidKeyUri(f"{redact_uri(uri)!r} is not an in-memory URI; expected {_URI_FORM}")
    check_options(SCHEME, options, _OPTIONS)
    keystore = options.get("keystore")
    add_versions = options.get("add_versions", False)
    if keystore is None:
        return InMemoryProvider(add_versions=add_versions)
    passphrase = options.get("passphrase")
    if passphrase is None:
        raise InvalidArgument("a keystore needs a passphrase: pass passphrase=...")
    create = bool(options.get("create", False))
    return InMemoryProvider.open(keystore, passphrase, create=create, add_versions=add_versions)
