"""The seam between the message format and the keys: encrypted data keys and materials sources.

The message layer (header, frames, streams) never touches a key; it asks a
:class:`MaterialsSource` for a data key plus the EDKs to store (encrypt), or for the data key
behind stored EDKs (decrypt). Keyrings, any-of / k-of-n recipients and the data-key cache are
all materials sources, so they compose freely.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["EncryptedDataKey", "EncryptionMaterials", "MaterialsSource", "OpenedBy", "report_opened"]


def edk_count(source: object) -> int | None:
    """How many EDKs ``source`` will write for one message, if it can tell without a KEK call.

    Keyrings, recipients and the cache answer through an ``edk_count()`` method; other sources
    (None) are checked on what they return instead.
    """
    count = getattr(source, "edk_count", None)
    result = count() if callable(count) else None
    return result if isinstance(result, int) and not isinstance(result, bool) else None


@dataclass(frozen=True)
class EncryptedDataKey:
    """One EDK as the ESDK header stores it: key namespace (provider ID), key info, ciphertext."""

    provider_id: bytes
    provider_info: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return (
            f"EncryptedDataKey(provider_id={self.provider_id!r}, provider_info=<{len(self.provider_info)} bytes>,"
            f" ciphertext=<{len(self.ciphertext)} bytes>)"
        )


@dataclass(frozen=True)
class EncryptionMaterials:
    """A plaintext data key (the suite's key length) and the EDKs that protect it."""

    data_key: bytes
    edks: tuple[EncryptedDataKey, ...]

    def __repr__(self) -> str:
        return f"EncryptionMaterials(data_key=<redacted>, edks={self.edks!r})"


@dataclass(frozen=True)
class OpenedBy:
    """Which key recovered a message's data key (or, for k-of-n, one share of it). Nothing secret.

    ``key`` is the key's URI with the version that did it (``memory:kek/3f…``,
    ``https://v.vault.azure.net/keys/kek/<version>``), ``version`` that version (None where the
    provider has no versions), ``provider_id`` and ``key_name`` what the opened EDK records (the
    ESDK key namespace and key name).
    """

    key: str
    version: str | None
    provider_id: str
    key_name: str


_OPENED: ContextVar[list[OpenedBy] | None] = ContextVar("keybridge_envelope_opened", default=None)


def report_opened(who: OpenedBy) -> None:
    """Tell the decrypt call in progress (if any) that ``who`` recovered its data key.

    Keyrings call this on success; a custom :class:`MaterialsSource` may too, so that
    ``DecryptResult.opened_by`` names its key. The report travels in a context variable rather
    than through the protocol, which stays ``... -> bytes``.
    """
    sink = _OPENED.get()
    if sink is not None:
        sink.append(who)


@contextmanager
def recording_opened() -> Iterator[list[OpenedBy]]:
    """Collect the :func:`report_opened` calls made inside the block (nested blocks collect apart)."""
    sink: list[OpenedBy] = []
    token = _OPENED.set(sink)
    try:
        yield sink
    finally:
        _OPENED.reset(token)


@runtime_checkable
class MaterialsSource(Protocol):
    """What the message layer asks for data keys."""

    def encryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], plaintext_length: int | None
    ) -> EncryptionMaterials:
        """A data key of the suite's length and at least one EDK for it.

        ``plaintext_length`` is None for streams of unknown length (a cache must not serve those).
        """
        ...

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        """The data key behind one of ``edks``; raise a keybridge error naming every failure."""
        ...
