"""The picklable key spec and the pyarrow KMS client that wraps with it."""

from __future__ import annotations

import base64
import binascii
import os
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keybridge._redact import redact_uri
from keybridge.errors import InvalidArgument, KeyNotFound, MissingDependency
from keybridge.provider import KeyHandle, open_key

__all__ = ["VERSION_TAG", "WRAP_ALG", "ParquetKeys", "crypto_factory", "pe"]

WRAP_ALG = "A256KW"
"""Wrap algorithm for the KEKs/DEKs pyarrow hands over (AES key wrap, RFC 3394)."""

VERSION_TAG = "kb1"
"""Prefix of a wrapped key that names its master key version: ``kb1:<version>:<base64>``."""


def pe() -> Any:
    """``pyarrow.parquet.encryption``, or a typed error naming the extra to install."""
    try:
        import pyarrow.parquet.encryption as module
    except ImportError as exc:
        raise MissingDependency("keybridge.parquet", "parquet") from exc
    return module


@dataclass(frozen=True)
class ParquetKeys:
    """Picklable map of master key id -> key URI, plus per-URI provider options.

    Options (PINs, passphrases) are kept out of ``repr`` and URIs are shown redacted."""

    keys: Mapping[str, str]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # (pid, uri, version) -> handle: the pid keeps a forked child from using its parent's sessions,
    # and keeping the cache on the spec keeps two specs naming one URI with different options apart.
    _handles: dict[tuple[int, str, str | None], KeyHandle] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _factories: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    # Travels with every pickled copy, so all copies that reach one worker process share one set of
    # sessions and one CryptoFactory (its KEK cache), however many tasks carried them there.
    _ident: str = field(default_factory=lambda: uuid.uuid4().hex, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        shown = ", ".join(f"{mk!r}: {redact_uri(uri)!r}" for mk, uri in sorted(self.keys.items()))
        return f"ParquetKeys({{{shown}}})"

    def __reduce__(self) -> tuple[Any, tuple[str, dict[str, str], dict[str, dict[str, Any]]]]:
        # Open handles, factories and locks never travel to another process; it opens its own.
        return (_received, (self._ident, dict(self.keys), {uri: dict(opts) for uri, opts in self.options.items()}))

    def __dask_tokenize__(self) -> tuple[str, str]:
        """Dask's task key for the spec: its identity, never its options (which may hold secrets)."""
        return ("keybridge.parquet.ParquetKeys", self._ident)

    def handle(self, master_key_id: str, version: str | None = None) -> KeyHandle:
        """The key for ``master_key_id`` (pinned to ``version`` if given), opened once per process."""
        uri = self.keys.get(master_key_id)
        if uri is None:
            raise KeyNotFound(
                f"master key {master_key_id!r} is not in this reader's ParquetKeys"
                f" (known: {', '.join(sorted(self.keys)) or 'none'}); add its key URI to read it"
            )
        slot = (os.getpid(), uri, version)
        with self._lock:
            handle = self._handles.get(slot)
        if handle is not None:
            return handle
        if version is not None:
            # Other versions of a key share the session opened for its URI.
            base = self.handle(master_key_id)
            handle = base if base.ref.version == version else base.provider.key(base.ref, version)
            with self._lock:
                return self._handles.setdefault(slot, handle)
        # Opened outside the lock, since a remote provider may take a while; a thread that loses
        # the race closes the session it opened.
        handle = open_key(uri, **dict(self.options.get(uri, {})))
        with self._lock:
            kept = self._handles.setdefault(slot, handle)
        if kept is not handle:
            handle.provider.close()
        return kept

    def fresh(self) -> ParquetKeys:
        """A copy of this spec with none of its sessions or caches (a new identity, too)."""
        return ParquetKeys(dict(self.keys), {uri: dict(opts) for uri, opts in self.options.items()})

    def forget(self) -> list[Any]:
        """Drop this process's sessions and ``CryptoFactory`` for the spec, so the next use opens new
        ones; answers the dropped providers, left open for callers still using them."""
        pid = os.getpid()
        with self._lock:
            mine = [slot for slot in self._handles if slot[0] == pid]
            providers = {id(h.provider): h.provider for h in (self._handles.pop(slot) for slot in mine)}
            self._factories.pop(pid, None)
        return list(providers.values())

    def close(self) -> None:
        """Close the provider sessions this process opened for the spec; later use reopens them."""
        for provider in self.forget():
            provider.close()

    def crypto_factory(self) -> Any:
        """This process's ``CryptoFactory`` for the spec, built on first use (see :func:`crypto_factory`)."""
        pid = os.getpid()
        with self._lock:
            factory = self._factories.get(pid)
            if factory is None:
                factory = self._factories[pid] = new_crypto_factory(self)
        return factory


_received_specs: dict[str, ParquetKeys] = {}
_received_lock = threading.Lock()


def _received(ident: str, keys: dict[str, str], options: dict[str, dict[str, Any]]) -> ParquetKeys:
    """Unpickle a spec: the copy this process already holds under ``ident``, or a new one kept for
    the next task (the handle and factory caches inside it are per process id, so a fork is safe)."""
    with _received_lock:
        spec = _received_specs.get(ident)
        if spec is None:
            spec = ParquetKeys(keys, options)
            object.__setattr__(spec, "_ident", ident)
            _received_specs[ident] = spec
        return spec


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wrap(keys: ParquetKeys, master_key_id: str, key_bytes: bytes) -> str:
    """Wrap under the master key's current version and say which version that was, so the file
    still opens after the key rotates; a URI pinned to a version, or a provider that reports no
    version, gives the plain base64 form every pyarrow AES-key-wrap client reads."""
    handle = keys.handle(master_key_id)
    if handle.ref.version is not None:
        return _b64(handle.wrap_key(WRAP_ALG, key_bytes))
    current = handle.info().ref.version
    if current is None:
        return _b64(handle.wrap_key(WRAP_ALG, key_bytes))
    pinned = keys.handle(master_key_id, current)
    return f"{VERSION_TAG}:{current}:{_b64(pinned.wrap_key(WRAP_ALG, key_bytes))}"


def unwrap(keys: ParquetKeys, master_key_id: str, wrapped_key: str) -> bytes:
    """Inverse of :func:`wrap`; untagged keys (other writers) unwrap under the URI as given."""
    version: str | None = None
    blob_text = wrapped_key
    if wrapped_key.startswith(VERSION_TAG + ":"):
        _, version, blob_text = wrapped_key.split(":", 2)
        if not version:
            raise InvalidArgument("wrapped Parquet key names an empty key version; the file is corrupt")
    try:
        blob = base64.b64decode(blob_text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument("wrapped Parquet key is not base64; the file or its key material is corrupt") from exc
    return keys.handle(master_key_id, version).unwrap_key(WRAP_ALG, blob)


def new_crypto_factory(keys: ParquetKeys) -> Any:
    """A fresh ``CryptoFactory`` (own KEK caches) whose KMS client wraps with ``keys``."""
    module = pe()
    base: Any = module.KmsClient

    class _KmsClient(base):  # type: ignore[misc]
        def __init__(self, _config: Any) -> None:
            base.__init__(self)  # builds the C++ client; without it pyarrow has no KMS

        def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
            return wrap(keys, master_key_identifier, key_bytes)

        def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
            return unwrap(keys, master_key_identifier, wrapped_key)

    return module.CryptoFactory(_KmsClient)


def crypto_factory(keys: ParquetKeys) -> Any:
    """The ``pyarrow.parquet.encryption.CryptoFactory`` for ``keys`` in this process.

    One per spec and process, so its KEK caches (double wrapping) stay warm across files: a
    Dask worker makes one KMS call per master key, not one per file."""
    return keys.crypto_factory()
