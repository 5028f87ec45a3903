"""Rewrap: give a message new encrypted data keys without touching its body.

Only the header binds the EDKs (through the header tag under the derived data key); the frames
are bound to the message ID, sequence numbers and lengths. So with the data key in hand, a new
header with new EDKs and a fresh header tag makes a valid message with the *same* body bytes and
the same data key. Key commitment is unchanged, since it depends only on the data key and message
ID. This is the sops ``updatekeys`` operation, not key rotation: the data key stays the same, so
anyone who could unwrap it before can still decrypt copies of the old message. To cut off a
compromised key, re-encrypt instead.

The signed suite 0x0578 cannot be rewrapped: its footer signature covers the header, and the
signing key was ephemeral and discarded after encryption.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from .._files import atomic_output
from ..errors import InvalidArgument, UnsupportedAlgorithm
from ._decrypt import MAX_ENCRYPTED_DATA_KEYS, DecryptInfo, read_header, unlock
from ._files import CHUNK, PathArg, check_path
from ._header import build_header, header_tag, serialize_context
from ._io import StreamSource, check_stream, write_all
from ._materials import EncryptedDataKey
from ._recipients import Keys, as_materials

__all__ = ["rewrap", "rewrap_file"]


def _new_edks(
    wrap_for: Keys, data_key: bytes, suite_id: int, context: Mapping[str, str]
) -> tuple[EncryptedDataKey, ...]:
    source = as_materials(wrap_for)
    wrap = getattr(source, "wrap_existing", None)
    if not callable(wrap):
        raise InvalidArgument(f"wrap_for={source!r} cannot wrap an existing data key (it has no wrap_existing)")
    edks: tuple[EncryptedDataKey, ...] = tuple(wrap(data_key, suite_id=suite_id, context=context))
    return edks


def rewrap(
    src: Any,
    dst: Any,
    *,
    unwrap_with: Keys,
    wrap_for: Keys,
    expected_context: Mapping[str, str] | None = None,
    max_encrypted_data_keys: int | None = MAX_ENCRYPTED_DATA_KEYS,
) -> DecryptInfo:
    """Copy the message from stream ``src`` to stream ``dst`` with its EDKs replaced by ``wrap_for``'s.

    ``unwrap_with`` recovers the data key (the header is authenticated before anything is
    written); ``wrap_for`` wraps it anew, so to add a key pass the old keys and the new one. The
    body is copied byte for byte and not decrypted: a damaged body stays damaged and fails at
    decrypt. Returns the new header's info, with ``opened_by`` naming the key that unwrapped the old one.
    """
    check_stream(src, readable=True, what="src")
    check_stream(dst, readable=False, what="dst")
    source = StreamSource(src, 1024)
    header = read_header(source, expected_context, max_encrypted_data_keys)
    if header.suite.signed:
        raise UnsupportedAlgorithm(
            f"rewrap cannot keep a {header.suite.name} message valid: its signature covers the header and"
            " the signing key was discarded at encryption; decrypt and re-encrypt it instead"
        )
    data_key, enc_key, opened = unlock(header, unwrap_with)
    edks = _new_edks(wrap_for, data_key, int(header.suite), header.context)
    body = build_header(
        header.suite, header.message_id, serialize_context(header.context), edks, header.frame_length, header.commitment
    )
    write_all(dst, body + header_tag(enc_key, body))
    # StreamSource reads exactly what it is asked for, so src now sits at the first frame.
    shutil.copyfileobj(src, dst, CHUNK)
    return DecryptInfo(header.suite, header.message_id, header.context, edks, header.frame_length, opened_by=opened)


def rewrap_file(
    src_path: PathArg,
    dst_path: PathArg,
    *,
    unwrap_with: Keys,
    wrap_for: Keys,
    expected_context: Mapping[str, str] | None = None,
    max_encrypted_data_keys: int | None = MAX_ENCRYPTED_DATA_KEYS,
    overwrite: bool = False,
) -> DecryptInfo:
    """:func:`rewrap` between files, atomically. An existing ``dst_path`` (``src_path`` too, to
    rewrap in place) needs ``overwrite=True``."""
    src_p, dst_p = check_path(src_path, "src_path"), check_path(dst_path, "dst_path")
    with open(src_p, "rb", buffering=0) as src, atomic_output(dst_p, overwrite=overwrite) as dst:
        return rewrap(
            src,
            dst,
            unwrap_with=unwrap_with,
            wrap_for=wrap_for,
            expected_context=expected_context,
            max_encrypted_data_keys=max_encrypted_data_keys,
        )
