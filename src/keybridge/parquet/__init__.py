"""Parquet modular encryption under keys keybridge opens (``pip install "keybridge-sdk[parquet]"``).

Master key identifiers in a pyarrow ``EncryptionConfiguration`` are names in a
:class:`ParquetKeys` spec, each bound to a key URI; the footer and column keys may live in
different providers. The spec pickles (for Dask or multiprocessing workers) and opens provider
sessions lazily, once per process, so no session crosses a fork.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from keybridge.errors import InvalidArgument, KeyNotFound, MissingDependency
from keybridge.provider import KeyHandle, open_key

__all__ = ["WRAP_ALG", "ParquetKeys", "crypto_factory"]

WRAP_ALG = "A256KW"
"""Wrap algorithm for the KEKs/DEKs pyarrow hands over (AES key wrap, RFC 3394)."""


def _pe() -> Any:
    try:
        import pyarrow.parquet.encryption as pe
    except ImportError as exc:
        raise MissingDependency("keybridge.parquet", "parquet") from exc
    return pe


@dataclass(frozen=True)
class ParquetKeys:
    """Picklable map of master key id -> key URI, plus per-URI provider options.

    Options (PINs, passphrases) are kept out of ``repr``."""

    keys: Mapping[str, str]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    # (pid, uri) -> handle: the pid keeps a forked child from using its parent's sessions, and
    # keeping the cache on the spec keeps two specs naming one URI with different options apart.
    _handles: dict[tuple[int, str], KeyHandle] = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __reduce__(self) -> tuple[type[ParquetKeys], tuple[dict[str, str], dict[str, dict[str, Any]]]]:
        # Open handles and locks never travel to another process; the receiver opens its own.
        return (ParquetKeys, (dict(self.keys), {uri: dict(opts) for uri, opts in self.options.items()}))

    def handle(self, master_key_id: str) -> KeyHandle:
        """The key for ``master_key_id``, opened once per process."""
        uri = self.keys.get(master_key_id)
        if uri is None:
            raise KeyNotFound(
                f"master key {master_key_id!r} is not in this reader's ParquetKeys"
                f" (known: {', '.join(sorted(self.keys)) or 'none'}); add its key URI to read it"
            )
        slot = (os.getpid(), uri)
        with self._lock:
            handle = self._handles.get(slot)
            if handle is None:
                handle = open_key(uri, **dict(self.options.get(uri, {})))
                self._handles[slot] = handle
        return handle


def crypto_factory(keys: ParquetKeys) -> Any:
    """A ``pyarrow.parquet.encryption.CryptoFactory`` whose KMS client wraps with ``keys``."""
    pe = _pe()
    base: Any = pe.KmsClient

    class _KmsClient(base):  # type: ignore[misc]
        def __init__(self, _config: Any) -> None:
            base.__init__(self)

        def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
            wrapped = keys.handle(master_key_identifier).wrap_key(WRAP_ALG, key_bytes)
            return base64.b64encode(wrapped).decode("ascii")

        def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
            try:
                blob = base64.b64decode(wrapped_key, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidArgument("wrapped Parquet key is not base64; the file is corrupt") from exc
            return keys.handle(master_key_identifier).unwrap_key(WRAP_ALG, blob)

    return pe.CryptoFactory(_KmsClient)
