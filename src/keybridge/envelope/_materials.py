"""The seam between the message format and the keys: encrypted data keys and materials sources.

The message layer (header, frames, streams) never touches a key; it asks a
:class:`MaterialsSource` for a data key plus the EDKs to store (encrypt), or for the data key
behind stored EDKs (decrypt). Keyrings, any-of / k-of-n recipients and the data-key cache are
all materials sources, so they compose freely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["EncryptedDataKey", "EncryptionMaterials", "MaterialsSource"]


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
