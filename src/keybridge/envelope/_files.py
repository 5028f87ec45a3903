"""Whole files: constant memory, and atomic output (temp file in the target directory, then rename).

On any failure nothing new is left under any name and the destination is left as it was; the
destination only ever holds a complete result. Outputs are created with mode 0600. An existing
destination raises :class:`~keybridge.errors.OutputExists` unless ``overwrite=True``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._files import atomic_output
from ..errors import InvalidArgument
from ._decrypt import MAX_ENCRYPTED_DATA_KEYS, MAX_NONFRAMED_BYTES, DecryptInfo, DecryptingReader
from ._encrypt import DEFAULT_FRAME_LENGTH, EncryptingWriter
from ._header import MessageInfo
from ._recipients import Keys
from ._suites import DEFAULT_SUITE, Suite

__all__ = ["decrypt_file", "encrypt_file"]

CHUNK = 1 << 20
PathArg = str | os.PathLike[str]


def check_path(p: object, what: str) -> Path:
    """Paths only: a stream or bytes here is a caller mix-up worth naming."""
    if not isinstance(p, (str, os.PathLike)):
        raise InvalidArgument(
            f"{what} must be a file path, got {type(p).__name__}; for streams use open_encryptor/open_decryptor"
        )
    return Path(p)


def copy_through(read_into: Any, write: Any) -> None:
    """Move everything from ``read_into`` to ``write`` through one reused buffer."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while n := read_into.readinto(buf):
        write.write(view[:n])


def encrypt_file(
    src_path: PathArg,
    dst_path: PathArg,
    keys: Keys,
    *,
    context: Mapping[str, str] | None = None,
    frame_length: int = DEFAULT_FRAME_LENGTH,
    suite: Suite | int = DEFAULT_SUITE,
    max_encrypted_data_keys: int | None = None,
    overwrite: bool = False,
) -> MessageInfo:
    """Encrypt the file at ``src_path`` into ``dst_path`` in constant memory.
    ``max_encrypted_data_keys`` as for :func:`encrypt`. An existing ``dst_path`` (the same path too,
    to encrypt in place) needs ``overwrite=True``."""
    src_p, dst_p = check_path(src_path, "src_path"), check_path(dst_path, "dst_path")
    with open(src_p, "rb", buffering=0) as src, atomic_output(dst_p, overwrite=overwrite) as dst:
        st = os.fstat(src.fileno())
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        with EncryptingWriter(
            dst,
            keys,
            context=context,
            frame_length=frame_length,
            suite=suite,
            plaintext_length=size,
            max_encrypted_data_keys=max_encrypted_data_keys,
        ) as writer:
            copy_through(src, writer)
        return writer.info


def decrypt_file(
    src_path: PathArg,
    dst_path: PathArg,
    keys: Keys,
    *,
    expected_context: Mapping[str, str] | None = None,
    max_encrypted_data_keys: int | None = MAX_ENCRYPTED_DATA_KEYS,
    max_nonframed_bytes: int | None = MAX_NONFRAMED_BYTES,
    overwrite: bool = False,
) -> DecryptInfo:
    """Decrypt the message at ``src_path`` into ``dst_path``; the plaintext file appears only once
    the whole message (signature included) has been authenticated. ``max_nonframed_bytes`` caps
    the memory a non-framed message may take (see :func:`open_decryptor`). The result's
    ``opened_by`` names the key that opened it. An existing ``dst_path`` needs ``overwrite=True``."""
    src_p, dst_p = check_path(src_path, "src_path"), check_path(dst_path, "dst_path")
    with open(src_p, "rb") as src, atomic_output(dst_p, overwrite=overwrite) as dst:
        with DecryptingReader(
            src,
            keys,
            expected_context=expected_context,
            max_encrypted_data_keys=max_encrypted_data_keys,
            max_nonframed_bytes=max_nonframed_bytes,
        ) as reader:
            copy_through(reader, dst)
        return reader.info
