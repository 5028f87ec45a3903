"""The cut between keybridge and the places keys live.

Everything above this module (BYOK, envelope encryption, the CLI, the emulator) talks to keys only
through :class:`KeyProvider` and :class:`KeyHandle`; everything below it is a backend. Cutting here
keeps backend quirks (PKCS#11 sessions and mechanisms, Azure REST and retries) out of the features,
and lets one conformance suite prove every backend behaves the same.

A backend must:

* run every private- and secret-key operation inside the backend, never by exporting key material;
* never put a PIN, token, passphrase or key byte into a message, repr or log line;
* translate its own errors into :mod:`keybridge.errors`, keeping the original as ``__cause__``.

Backends normally subclass :class:`keybridge.base.BaseProvider`, which does the checks and the
auditing once for all of them.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from importlib.metadata import entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import rsa
from typing_extensions import Self

from ._redact import redact_uri
from .errors import InvalidKeyUri
from .keys import KeyInfo, KeyOp, KeyRef, KeySpec, PrivateKey, PublicKey

if TYPE_CHECKING:
    from ._asymmetric import BackendECPrivateKey, BackendRSAPrivateKey

__all__ = [
    "OPERATIONS",
    "KeyHandle",
    "KeyProvider",
    "open_key",
    "open_provider",
    "register_provider",
]

Ops = Collection["KeyOp | str"]

OPERATIONS: tuple[str, ...] = (
    "create_key",
    "import_key",
    "import_byok",
    "get_key",
    "list_keys",
    "list_versions",
    "rotate_key",
    "set_enabled",
    "delete_key",
    "wrap_key",
    "unwrap_key",
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "export_key",
    "export_wrapped",
)
"""Every operation a provider may support, by :class:`KeyProvider` method name: the vocabulary
of :attr:`KeyProvider.capabilities` and of :class:`~keybridge.errors.UnsupportedOperation`."""


@runtime_checkable
class KeyProvider(Protocol):
    """A place keys live. Names are the provider's key names; ``ref`` arguments take a
    :class:`KeyRef`, a key name, or a key URI of this provider (an unversioned one means the
    current version)."""

    scheme: str
    algorithms: frozenset[str]

    @property
    def capabilities(self) -> frozenset[str]:
        """The operations (names from :data:`OPERATIONS`) this provider can do; calling another
        raises :class:`~keybridge.errors.UnsupportedOperation`."""
        ...

    def kek_id(self, info: KeyInfo) -> str:
        """The ``kid`` a BYOK package for this provider names its key-exchange key ``info`` by;
        :meth:`import_byok` resolves it back to that KEK."""
        ...

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
        """Generate a new key; a name in use raises ``KeyExists`` (``rotate_key`` makes a new version)."""
        ...

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
        """Store an existing RSA/EC private key or AES key bytes under ``name`` (a new name)."""
        ...

    def import_byok(
        self,
        name: str,
        package: bytes,
        spec: KeySpec,
        *,
        ops: Ops | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> KeyInfo:
        """Import a key from a BYOK package (.byok JSON bytes) wrapped under one of this
        provider's key-exchange keys."""
        ...

    def get_key(self, ref: KeyRef | str, version: str | None = None) -> KeyInfo:
        """Metadata of one key version (the current one unless ``version`` is given)."""
        ...

    def list_keys(self) -> Iterator[KeyInfo]:
        """An iterator over the current version of every key, read when called (a snapshot:
        keys made while iterating are not in it). Wrap it in ``list()`` to iterate twice."""
        ...

    def list_versions(self, name: str) -> Iterator[KeyInfo]:
        """An iterator over every version of one key, oldest first, read when called."""
        ...

    def rotate_key(self, name: str) -> KeyInfo:
        """Make a new version with the same spec and operations; old versions stay usable."""
        ...

    def set_enabled(self, ref: KeyRef | str, enabled: bool) -> KeyInfo:
        """Enable or disable a key version (the current one for a bare name)."""
        ...

    def delete_key(self, name: str) -> None:
        """Delete a key and all its versions."""
        ...

    def wrap_key(self, ref: KeyRef | str, alg: str, key: bytes) -> bytes:
        """Wrap (encrypt) key material under the key."""
        ...

    def unwrap_key(self, ref: KeyRef | str, alg: str, wrapped: bytes) -> bytes:
        """Unwrap key material; an integrity failure raises ``IntegrityError``."""
        ...

    def encrypt(self, ref: KeyRef | str, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        """Encrypt; A*GCM output is IV(12) || ciphertext || tag(16)."""
        ...

    def decrypt(self, ref: KeyRef | str, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        """Decrypt; an authentication failure raises ``IntegrityError``."""
        ...

    def sign(self, ref: KeyRef | str, alg: str, digest: bytes) -> bytes:
        """Sign a digest made with the algorithm's hash; ES* signatures are raw r||s."""
        ...

    def verify(self, ref: KeyRef | str, alg: str, digest: bytes, signature: bytes) -> bool:
        """True if ``signature`` is valid for ``digest``."""
        ...

    def export_key(self, ref: KeyRef | str) -> PrivateKey | bytes:
        """Key material in clear, only for keys created exportable and backends that allow it."""
        ...

    def export_wrapped(self, ref: KeyRef | str, kek: rsa.RSAPublicKey) -> bytes:
        """The key wrapped with CKM_RSA_AES_KEY_WRAP under ``kek`` (Azure BYOK), done inside the
        backend; the key is never in clear outside it."""
        ...

    def key(self, ref: KeyRef | str, version: str | None = None) -> KeyHandle:
        """A handle bound to one key of this provider."""
        ...

    def ref(self, ref: KeyRef | str, version: str | None = None) -> KeyRef:
        """Parse a name or key URI of this provider into a :class:`KeyRef`."""
        ...

    def close(self) -> None:
        """Release sessions, sockets and files. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class KeyHandle:
    """One key of one provider, bound: what the envelope keyrings and BYOK hold on to.

    A handle from :func:`open_key` owns the provider it opened: ``close()`` (or leaving a
    ``with`` block) closes that provider too. A handle from :meth:`KeyProvider.key` borrows its
    provider, and ``close()`` leaves it open for the code that made it."""

    __slots__ = ("_owns_provider", "provider", "ref")

    def __init__(self, provider: KeyProvider, ref: KeyRef, *, owns_provider: bool = False) -> None:
        self.provider = provider
        self.ref = ref
        self._owns_provider = owns_provider

    def __repr__(self) -> str:
        return f"KeyHandle({self.ref})"

    def close(self) -> None:
        """Close the provider if this handle owns it (see the class); idempotent."""
        if self._owns_provider:
            self.provider.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def info(self) -> KeyInfo:
        """Current metadata of the key."""
        return self.provider.get_key(self.ref)

    @property
    def public_key(self) -> PublicKey | None:
        """The public key as a ``cryptography`` object (None for AES keys)."""
        return self.info().public_key

    def wrap_key(self, alg: str, key: bytes) -> bytes:
        """See :meth:`KeyProvider.wrap_key`."""
        return self.provider.wrap_key(self.ref, alg, key)

    def unwrap_key(self, alg: str, wrapped: bytes) -> bytes:
        """See :meth:`KeyProvider.unwrap_key`."""
        return self.provider.unwrap_key(self.ref, alg, wrapped)

    def encrypt(self, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        """See :meth:`KeyProvider.encrypt`."""
        return self.provider.encrypt(self.ref, alg, data, aad=aad)

    def decrypt(self, alg: str, data: bytes, *, aad: bytes | None = None) -> bytes:
        """See :meth:`KeyProvider.decrypt`."""
        return self.provider.decrypt(self.ref, alg, data, aad=aad)

    def sign(self, alg: str, digest: bytes) -> bytes:
        """See :meth:`KeyProvider.sign`."""
        return self.provider.sign(self.ref, alg, digest)

    def verify(self, alg: str, digest: bytes, signature: bytes) -> bool:
        """See :meth:`KeyProvider.verify`."""
        return self.provider.verify(self.ref, alg, digest, signature)

    def as_private_key(self) -> BackendRSAPrivateKey | BackendECPrivateKey:
        """This RSA or EC key as a ``cryptography`` ``RSAPrivateKey`` / ``EllipticCurvePrivateKey``
        whose private half stays in the backend, for code that already signs with ``cryptography``
        (x509 builders, PyJWT). ``sign()`` hashes locally and makes one backend call; exporting
        the private key raises :class:`~keybridge.errors.OperationNotPermitted`; an AES key raises
        :class:`~keybridge.errors.UnsupportedAlgorithm`. See docs/signing.md."""
        from ._asymmetric import as_private_key

        return as_private_key(self)


# ---- registry ----------------------------------------------------------------------------------

ProviderFactory = Callable[..., KeyProvider]
"""``factory(uri, **options) -> KeyProvider`` for one URI scheme."""

_BUILTIN: dict[str, str] = {
    "memory": "keybridge.providers.memory:from_uri",
    "pkcs11": "keybridge.providers.pkcs11:from_uri",
    "https": "keybridge.providers.azure:from_uri",
}
_registry: dict[str, ProviderFactory] = {}
_registry_lock = threading.Lock()


def register_provider(scheme: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Route key URIs of ``scheme`` to ``factory``. Third-party packages can instead declare an
    entry point in the ``keybridge.providers`` group named after the scheme."""
    scheme = scheme.lower()
    with _registry_lock:
        if scheme in _registry and not replace:
            raise InvalidKeyUri(f"a provider for {scheme!r} is already registered; pass replace=True")
        _registry[scheme] = factory


def _factory(scheme: str) -> ProviderFactory:
    with _registry_lock:
        if scheme in _registry:
            return _registry[scheme]
    if scheme in _BUILTIN:
        module, _, attr = _BUILTIN[scheme].partition(":")
        factory: ProviderFactory = getattr(importlib.import_module(module), attr)
        return factory
    for ep in entry_points(group="keybridge.providers"):
        if ep.name.lower() == scheme:
            loaded: ProviderFactory = ep.load()
            return loaded
    known = sorted(set(_BUILTIN) | set(_registry))
    raise InvalidKeyUri(f"no provider handles {scheme!r} URIs; known schemes: {', '.join(known)}")


def _scheme(uri: str) -> str:
    if not isinstance(uri, str) or ":" not in uri:
        raise InvalidKeyUri(
            f"{redact_uri(uri)!r} is not a key URI; expected e.g. 'memory:NAME', 'pkcs11:token=T;object=NAME'"
            " or 'https://VAULT.vault.azure.net/keys/NAME'"
        )
    return uri.split(":", 1)[0].lower()


def open_provider(uri: str, **options: Any) -> KeyProvider:
    """The provider for a key or provider URI (``memory:``, ``pkcs11:…``, ``https://…``)."""
    return _factory(_scheme(uri))(uri, **options)


def open_key(uri: str, **options: Any) -> KeyHandle:
    """A :class:`KeyHandle` for a full key URI, opening its provider with ``options``. The
    handle owns that provider: use it as ``with keybridge.open_key(uri) as key:`` (or call
    ``key.close()``) so that sessions and sockets are released."""
    provider = open_provider(uri, **options)
    try:
        ref = provider.ref(uri)
    except BaseException:
        provider.close()  # a bad URI path must not leak the session the provider just opened
        raise
    return KeyHandle(provider, ref, owns_provider=True)
