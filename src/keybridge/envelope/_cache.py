"""A data-key cache: fewer calls to the KEKs (HSM round trips, Azure requests) for many messages.

:class:`DataKeyCache` wraps any materials source, as the ESDK caching CMM does:

* **Encryption** materials are reused per (suite, encryption context) until the entry is
  ``cache_seconds`` seconds old, has served ``max_messages`` messages, or would exceed ``max_bytes`` of
  plaintext. A request of unknown length (``plaintext_length=None``, a stream) is never served
  from nor stored in the cache, since its byte count cannot be charged; neither is one longer than
  ``max_bytes``, nor one for the signed suite 0x0578 (each such message has its own signing key
  in its context, so the entry could never be reused).
* **Decryption** materials are cached by (suite, context, EDKs) for ``cache_seconds`` seconds.

Trade-off to know: reusing a data key means several messages share one key (each still has its own
message ID and hence its own derived key), and a cached key keeps working for up to ``cache_seconds``
after its KEK was disabled or deleted. Keep ``cache_seconds`` short.

Entries hold the key in a ``bytearray`` that is overwritten with zeros when the entry leaves the
cache; copies already handed to callers are out of the cache's reach (Python gives no more).
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

from .._durations import renamed, seconds
from ..errors import InvalidArgument
from ._keyring import serialize_context
from ._materials import (
    EncryptedDataKey,
    EncryptionMaterials,
    MaterialsSource,
    OpenedBy,
    edk_count,
    recording_opened,
    report_opened,
)

__all__ = ["DataKeyCache"]

MAX_MESSAGES = 2**32
MAX_BYTES = 2**63 - 1
# A signed message carries its own verification key in the context, so an encrypt entry for it
# could never be served again; storing it would only keep a data key in memory for nothing.
_SIGNED_SUITES = frozenset({0x0578})


@dataclass
class _CachedKey:
    key: bytearray = field(repr=False)
    edks: tuple[EncryptedDataKey, ...]
    created: float
    messages: int = 0
    nbytes: int = 0
    opened_by: tuple[OpenedBy, ...] = ()  # replayed on a decrypt hit, so results still name the key

    def wipe(self) -> None:
        self.key[:] = bytes(len(self.key))


class DataKeyCache:
    """A materials source that caches another one's data keys within age, message and byte limits.

    ``cache_seconds`` (required, more than 0) is how long an entry may be used (``max_age`` is its
    deprecated old name). ``clock`` (seconds, monotonic) is injectable for tests; ``capacity`` bounds the number of
    entries (least recently used leave first).
    """

    def __init__(
        self,
        source: MaterialsSource,
        *,
        cache_seconds: float | None = None,
        max_messages: int = MAX_MESSAGES,
        max_bytes: int = MAX_BYTES,
        capacity: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        max_age: float | None = None,
    ) -> None:
        given = renamed("max_age", max_age, "cache_seconds", cache_seconds, None)
        if given is None:
            raise InvalidArgument("DataKeyCache needs cache_seconds: how many seconds a data key may be reused")
        self.cache_seconds = seconds("cache_seconds", given, positive=True)
        if not 1 <= max_messages <= MAX_MESSAGES:
            raise InvalidArgument(f"max_messages must be between 1 and 2**32, got {max_messages!r}")
        if not 0 <= max_bytes <= MAX_BYTES:
            raise InvalidArgument(f"max_bytes must be between 0 and 2**63 - 1, got {max_bytes!r}")
        if capacity < 1:
            raise InvalidArgument(f"capacity must be at least 1, got {capacity!r}")
        self.source = source
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.capacity = capacity
        self._clock = clock
        self._entries: OrderedDict[Hashable, _CachedKey] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def max_age(self) -> float:
        """Deprecated old name of :attr:`cache_seconds`."""
        warnings.warn("DataKeyCache.max_age is deprecated; use cache_seconds", DeprecationWarning, stacklevel=2)
        return self.cache_seconds

    def __repr__(self) -> str:
        return f"DataKeyCache({self.source!r}, cache_seconds={self.cache_seconds}, entries={len(self._entries)})"

    def edk_count(self) -> int | None:
        """As many as the cached source writes."""
        return edk_count(self.source)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget (and wipe) every cached key."""
        with self._lock:
            for entry in self._entries.values():
                entry.wipe()
            self._entries.clear()

    # ---- MaterialsSource -----------------------------------------------------------------------

    def encryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], plaintext_length: int | None
    ) -> EncryptionMaterials:
        """Cached materials while within the limits; fresh ones (then cached) otherwise."""
        if plaintext_length is None or plaintext_length > self.max_bytes or suite_id in _SIGNED_SUITES:
            return self.source.encryption_materials(
                suite_id=suite_id, context=context, plaintext_length=plaintext_length
            )
        slot = ("enc", suite_id, serialize_context(context))
        with self._lock:
            entry = self._live(slot)
            if entry is not None:
                hit = EncryptionMaterials(bytes(entry.key), entry.edks)  # copy: charging may wipe it
                if self._charge(slot, entry, plaintext_length):
                    return hit
        fresh = self.source.encryption_materials(suite_id=suite_id, context=context, plaintext_length=plaintext_length)
        with self._lock:
            entry = _CachedKey(bytearray(fresh.data_key), fresh.edks, self._clock())
            self._store(slot, entry)
            self._charge(slot, entry, plaintext_length)
        return fresh

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        """The cached data key for exactly these EDKs and context, else the source's (then cached)."""
        slot = ("dec", suite_id, serialize_context(context), tuple(edks))
        with self._lock:
            entry = self._live(slot)
            hit = (bytes(entry.key), entry.opened_by) if entry is not None else None
        if hit is not None:
            for who in hit[1]:
                report_opened(who)
            return hit[0]
        with recording_opened() as inner:
            data_key = self.source.decryption_materials(suite_id=suite_id, context=context, edks=edks)
        with self._lock:
            self._store(slot, _CachedKey(bytearray(data_key), (), self._clock(), opened_by=tuple(inner)))
        for who in inner:
            report_opened(who)
        return data_key

    def wrap_existing(
        self, data_key: bytes, *, suite_id: int, context: Mapping[str, str]
    ) -> tuple[EncryptedDataKey, ...]:
        """Passed straight to the wrapped source (never cached)."""
        wrap = getattr(self.source, "wrap_existing", None)
        if wrap is None:
            raise InvalidArgument(f"{self.source!r} cannot wrap an existing data key (it has no wrap_existing)")
        edks: tuple[EncryptedDataKey, ...] = wrap(data_key, suite_id=suite_id, context=context)
        return edks

    # ---- internals (caller holds the lock) -----------------------------------------------------

    def _live(self, slot: Hashable) -> _CachedKey | None:
        entry = self._entries.get(slot)
        if entry is None:
            return None
        if self._clock() - entry.created >= self.cache_seconds:
            self._evict(slot)
            return None
        self._entries.move_to_end(slot)
        return entry

    def _charge(self, slot: Hashable, entry: _CachedKey, nbytes: int) -> bool:
        """Count one more message of ``nbytes`` against the entry if the limits allow it; an entry
        that can serve no further message leaves the cache."""
        if entry.messages + 1 > self.max_messages or entry.nbytes + nbytes > self.max_bytes:
            self._evict(slot)
            return False
        entry.messages += 1
        entry.nbytes += nbytes
        if entry.messages >= self.max_messages or entry.nbytes >= self.max_bytes:
            self._evict(slot)
        return True

    def _store(self, slot: Hashable, entry: _CachedKey) -> None:
        self._evict(slot)
        self._entries[slot] = entry
        while len(self._entries) > self.capacity:
            _, oldest = self._entries.popitem(last=False)
            oldest.wipe()

    def _evict(self, slot: Hashable) -> None:
        entry = self._entries.pop(slot, None)
        if entry is not None:
            entry.wipe()
