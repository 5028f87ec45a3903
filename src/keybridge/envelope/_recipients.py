"""Recipients: several KEKs for one message, as materials sources that compose.

* :class:`AnyOf` — every member wraps the same data key; any one member decrypts (e.g. an Azure
  key plus an on-premises HSM key for disaster recovery). The ESDK multi-keyring semantics: one
  failing member fails the encryption; decryption tries members in order and reports every
  failure if none works.
* :class:`KOfN` — the data key is split into ``n`` Shamir shares over GF(256), share ``i`` wrapped by
  member ``i``; any ``k`` members decrypt, ``k - 1`` learn nothing (``KOfN(n, ...)`` is all-of).
  Its EDK layout is keybridge-only (see :mod:`keybridge.envelope._shamir` and the module docs below).

KOfN EDK layout: ``provider_id`` = ``keybridge-kofn`` (distinct from every keyring namespace, so
no plain keyring ever takes a share for a data key), ``provider_info`` = u8 version (1) || 8-byte
split id || u8 k || u8 n || u8 share index x (1..n) || u16 length || the member's own EDK
``provider_id`` || the member's own ``provider_info``; ``ciphertext`` = the member's ciphertext.
The split id (random per message and per KOfN) keeps shares of different splits apart.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from ..errors import InvalidArgument, KeybridgeError
from ..provider import KeyHandle
from . import _shamir
from ._keyring import FailureList, FreshDataKey, Keyring, NoMatchingEdk, no_data_key
from ._materials import EncryptedDataKey, MaterialsSource, edk_count

__all__ = ["AnyOf", "KOfN", "Keys", "as_materials"]

Keys: TypeAlias = KeyHandle | MaterialsSource | Sequence[KeyHandle | MaterialsSource]
"""What the envelope API accepts as ``keys``: a handle, a materials source, or a list of them (any-of)."""

KOFN_PROVIDER_ID = b"keybridge-kofn"
_KOFN_VERSION = 1
_SPLIT_ID = 8
_HEAD = struct.Struct(">B8sBBBH")


def as_materials(keys: Keys) -> MaterialsSource:
    """Turn what a caller passes as ``keys`` into one materials source.

    A :class:`KeyHandle` becomes a :class:`Keyring`; a materials source stays itself; a non-empty
    list becomes :class:`AnyOf` of its items.
    """
    if isinstance(keys, KeyHandle):
        return Keyring(keys)
    if _is_source(keys):
        return keys  # type: ignore[return-value]
    if isinstance(keys, Sequence) and not isinstance(keys, (str, bytes)):
        sources = [as_materials(k) for k in keys]
        if not sources:
            raise InvalidArgument("no keys given: pass at least one KeyHandle or keyring")
        return sources[0] if len(sources) == 1 else AnyOf(*sources)
    raise InvalidArgument(
        f"keys must be a KeyHandle, a keyring or a list of them, got {type(keys).__name__};"
        " open a key with keybridge.open_key(URI) or provider.key(NAME)"
    )


def _is_source(obj: object) -> bool:
    return callable(getattr(obj, "encryption_materials", None)) and callable(getattr(obj, "decryption_materials", None))


def _wrap(
    source: MaterialsSource, data_key: bytes, suite_id: int, context: Mapping[str, str]
) -> tuple[EncryptedDataKey, ...]:
    wrap = getattr(source, "wrap_existing", None)
    if wrap is None:
        raise InvalidArgument(f"{source!r} cannot wrap an existing data key (it has no wrap_existing)")
    edks: tuple[EncryptedDataKey, ...] = wrap(data_key, suite_id=suite_id, context=context)
    return edks


def _total(sources: Sequence[MaterialsSource]) -> int | None:
    counts = [edk_count(s) for s in sources]
    return None if None in counts else sum(c for c in counts if c is not None)


def _who(source: object) -> str:
    """How failures name a source: a keyring by its key reference, anything else by repr."""
    return str(source.handle.ref) if isinstance(source, Keyring) else repr(source)


def _failures(source: object, exc: KeybridgeError) -> list[tuple[str, KeybridgeError]]:
    if isinstance(exc, FailureList):
        return list(exc.failures)
    return [(_who(source), exc)]


class AnyOf(FreshDataKey):
    """Any one of several materials sources decrypts; all of them wrap the one data key (a failure
    of any member while encrypting fails the whole call)."""

    def __init__(self, *sources: MaterialsSource | KeyHandle) -> None:
        if not sources:
            raise InvalidArgument("AnyOf needs at least one key or keyring")
        self.sources: tuple[MaterialsSource, ...] = tuple(as_materials(s) for s in sources)

    def __repr__(self) -> str:
        return f"AnyOf({', '.join(map(repr, self.sources))})"

    def edk_count(self) -> int | None:
        """The members' EDKs together (None if a member cannot tell)."""
        return _total(self.sources)

    def wrap_existing(
        self, data_key: bytes, *, suite_id: int, context: Mapping[str, str]
    ) -> tuple[EncryptedDataKey, ...]:
        """The EDKs of every member for ``data_key``."""
        return tuple(edk for s in self.sources for edk in _wrap(s, data_key, suite_id, context))

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        """The data key from the first member that recovers it; else every member's failure."""
        failures: list[tuple[str, KeybridgeError]] = []
        for source in self.sources:
            try:
                return source.decryption_materials(suite_id=suite_id, context=context, edks=edks)
            except KeybridgeError as exc:
                failures += _failures(source, exc)
        raise no_data_key(f"none of {len(self.sources)} keys could recover the data key", failures)


class KOfN(FreshDataKey):
    """Any ``k`` of ``n`` materials sources decrypt: the data key is split into Shamir shares."""

    def __init__(self, k: int, *sources: MaterialsSource | KeyHandle) -> None:
        n = len(sources)
        if not 1 <= n <= 255:
            raise InvalidArgument(f"KOfN takes 1 to 255 keys, got {n}")
        if not isinstance(k, int) or not 1 <= k <= n:
            raise InvalidArgument(f"KOfN threshold k must be between 1 and the number of keys ({n}), got {k!r}")
        self.k = k
        self.sources: tuple[MaterialsSource, ...] = tuple(as_materials(s) for s in sources)

    def __repr__(self) -> str:
        return f"KOfN({self.k}, {', '.join(map(repr, self.sources))})"

    def edk_count(self) -> int | None:
        """One share EDK per EDK each member writes (None if a member cannot tell)."""
        return _total(self.sources)

    def wrap_existing(
        self, data_key: bytes, *, suite_id: int, context: Mapping[str, str]
    ) -> tuple[EncryptedDataKey, ...]:
        """Split ``data_key`` afresh and wrap share ``x`` with member ``x``."""
        n = len(self.sources)
        split_id = os.urandom(_SPLIT_ID)
        out = []
        for x, (source, share) in enumerate(
            zip(self.sources, _shamir.split(data_key, self.k, n), strict=True), start=1
        ):
            for inner in _wrap(source, share, suite_id, context):
                head = _HEAD.pack(_KOFN_VERSION, split_id, self.k, n, x, len(inner.provider_id))
                info = head + inner.provider_id + inner.provider_info
                out.append(EncryptedDataKey(KOFN_PROVIDER_ID, info, inner.ciphertext))
        return tuple(out)

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        """Recover ``k`` shares of one split (each member gives at most one) and combine them."""
        failures: list[tuple[str, KeybridgeError]] = []
        splits: dict[bytes, list[tuple[int, EncryptedDataKey]]] = {}
        for edk in edks:
            parsed = _parse(edk)
            if parsed is not None:
                splits.setdefault(parsed[0], []).append(parsed[1:])
        best = 0
        for shares_edks in splits.values():
            shares = self._collect(shares_edks, suite_id, context, failures)
            if len(shares) >= self.k:
                return _shamir.combine(shares)
            best = max(best, len(shares))
        summary = (
            f"k-of-n: recovered {best} of the {self.k} shares needed"
            if splits
            else "k-of-n: the message has no k-of-n shares"
        )
        raise no_data_key(summary, failures)

    def _collect(
        self,
        shares_edks: list[tuple[int, EncryptedDataKey]],
        suite_id: int,
        context: Mapping[str, str],
        failures: list[tuple[str, KeybridgeError]],
    ) -> dict[int, bytes]:
        # Each share EDK is offered alone so that a success tells which share index it was.
        shares: dict[int, bytes] = {}
        for source in self.sources:
            if len(shares) >= self.k:
                break
            errors: list[tuple[str, KeybridgeError]] = []
            for x, edk in shares_edks:
                if x in shares:
                    continue
                try:
                    shares[x] = source.decryption_materials(suite_id=suite_id, context=context, edks=[edk])
                    break
                except KeybridgeError as exc:
                    errors += _failures(source, exc)
            else:
                real = [(who, err) for who, err in errors if not isinstance(err, NoMatchingEdk)]
                failures.extend(real or [(_who(source), NoMatchingEdk("no k-of-n share for this key"))])
        return shares


def _parse(edk: EncryptedDataKey) -> tuple[bytes, int, EncryptedDataKey] | None:
    """(split id, share index, member EDK) of a KOfN EDK; None for any other EDK."""
    if edk.provider_id != KOFN_PROVIDER_ID or len(edk.provider_info) < _HEAD.size:
        return None
    version, split_id, k, n, x, pid_len = _HEAD.unpack_from(edk.provider_info)
    rest = edk.provider_info[_HEAD.size :]
    if version != _KOFN_VERSION or not 1 <= x <= n or not 1 <= k <= n or pid_len > len(rest):
        return None
    return split_id, x, EncryptedDataKey(rest[:pid_len], rest[pid_len:], edk.ciphertext)
