"""Encryption: one-shot :func:`encrypt` and the streaming :class:`EncryptingWriter`."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Any

from ..errors import InvalidArgument
from ._frames import (
    FINAL_OVERHEAD,
    MAX_SEQ,
    REGULAR_OVERHEAD,
    FrameCodec,
    check_frame_count,
    frame_count,
)
from ._header import (
    MAX_FRAME_LENGTH,
    MessageInfo,
    build_header,
    check_context,
    check_limit,
    header_tag,
    serialize_context,
)
from ._io import Buffer, OutputBuffer, check_stream, write_all
from ._materials import MaterialsSource, edk_count
from ._recipients import Keys, as_materials
from ._suites import DEFAULT_SUITE, KEY_LEN, MESSAGE_ID_LEN, PUBLIC_KEY_CONTEXT_KEY, Signer, Suite, derive_keys

__all__ = ["DEFAULT_FRAME_LENGTH", "EncryptingWriter", "encrypt", "open_encryptor"]

DEFAULT_FRAME_LENGTH = 65536
_SIG_FOOTER = 2 + 103


def resolve_keys(keys: Keys) -> MaterialsSource:
    """Turn what the caller passed as ``keys`` into a :class:`MaterialsSource`."""
    return as_materials(keys)


def _check_frame_length(frame_length: int) -> int:
    if isinstance(frame_length, bool) or not isinstance(frame_length, int) or not 0 < frame_length <= MAX_FRAME_LENGTH:
        raise InvalidArgument(f"frame_length must be an int from 1 to {MAX_FRAME_LENGTH}, got {frame_length!r}")
    return frame_length


def _start(
    keys: Keys,
    context: Mapping[str, str] | None,
    frame_length: int,
    suite: Suite | int,
    plaintext_length: int | None,
    max_edks: int | None,
) -> tuple[bytes, FrameCodec, Signer | None, MessageInfo]:
    """Materials, header and frame codec for a new message."""
    suite = Suite.of(suite)
    frame_length = _check_frame_length(frame_length)
    check_limit("max_encrypted_data_keys", max_edks, minimum=1)
    source = resolve_keys(keys)
    if max_edks is not None:
        # As the ESDK does, so that a recipient list longer than every reader accepts fails here.
        # Keyrings and recipients know their count: refused before any KEK is asked to wrap.
        _check_edk_count(edk_count(source), max_edks)
    ctx = check_context(context)
    signer = Signer() if suite.signed else None
    if signer is not None:
        # As the ESDK does, the verification key travels in the context, so keyrings bind it too.
        ctx[PUBLIC_KEY_CONTEXT_KEY] = signer.public_key_b64()
    context_bytes = serialize_context(ctx)  # size and encoding limits, before any key is used
    frozen = MappingProxyType(ctx)
    materials = source.encryption_materials(suite_id=int(suite), context=frozen, plaintext_length=plaintext_length)
    if max_edks is not None:
        _check_edk_count(len(materials.edks), max_edks)  # a source that could not tell beforehand
    if len(materials.data_key) != KEY_LEN or not materials.edks:
        raise InvalidArgument(
            f"the key source returned a {len(materials.data_key)}-byte data key and {len(materials.edks)} EDKs;"
            f" suite {suite.name} needs a {KEY_LEN}-byte key and at least one EDK"
        )
    message_id = os.urandom(MESSAGE_ID_LEN)
    enc_key, commit_key = derive_keys(suite, materials.data_key, message_id)
    body = build_header(suite, message_id, context_bytes, materials.edks, frame_length, commit_key)
    header = body + header_tag(enc_key, body)
    if signer is not None:
        signer.update(header)
    info = MessageInfo(suite, message_id, frozen, materials.edks, frame_length)
    return header, FrameCodec(enc_key, message_id, frame_length), signer, info


def _check_edk_count(count: int | None, max_edks: int) -> None:
    if count is not None and count > max_edks:
        raise InvalidArgument(
            f"the keys would write {count} encrypted data keys, more than max_encrypted_data_keys={max_edks};"
            " encrypt to fewer keys or raise the limit (readers apply their own, 16 by default)"
        )


def _plaintext_view(data: Buffer) -> memoryview:
    if isinstance(data, str):
        raise InvalidArgument("data must be bytes-like, got str; encode it first (e.g. data.encode())")
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise InvalidArgument(f"data must be bytes-like, got {type(data).__name__}") from None


def encrypt(
    data: Buffer,
    keys: Keys,
    *,
    context: Mapping[str, str] | None = None,
    frame_length: int = DEFAULT_FRAME_LENGTH,
    suite: Suite | int = DEFAULT_SUITE,
    max_encrypted_data_keys: int | None = None,
) -> bytes:
    """Encrypt ``data`` into one message in the AWS Encryption SDK format 2.0.

    ``keys`` is a key handle, keyring, recipient set or any :class:`MaterialsSource`; ``context``
    is the encryption context (non-secret, authenticated, stored in clear in the header).
    ``max_encrypted_data_keys``, when given, refuses keys that would write more EDKs with
    :class:`InvalidArgument`, before any KEK call for keyrings and recipients (a custom source is
    checked on what it returns).
    """
    pt = _plaintext_view(data)
    n = len(pt)
    frame_length = _check_frame_length(frame_length)
    frames = frame_count(n, frame_length)
    check_frame_count(frames, frame_length)
    header, codec, signer, _ = _start(keys, context, frame_length, suite, n, max_encrypted_data_keys)
    final_len = n - (frames - 1) * frame_length
    body_end = len(header) + (frames - 1) * (frame_length + REGULAR_OVERHEAD) + final_len + FINAL_OVERHEAD
    out = OutputBuffer(body_end + (_SIG_FOOTER if signer else 0))
    v = out.view
    v[: len(header)] = header
    pos = len(header)
    step = frame_length + REGULAR_OVERHEAD
    seal = codec.seal_regular
    for seq in range(1, frames):
        start = (seq - 1) * frame_length
        seal(seq, pt[start : start + frame_length], v[pos : pos + step])
        pos += step
    codec.seal_final(frames, pt[n - final_len :], v[pos:body_end])
    if signer is not None:
        signer.update(v[len(header) : body_end])  # the header went in already
        sig = signer.finalize()
        v[body_end : body_end + 2] = len(sig).to_bytes(2, "big")
        v[body_end + 2 :] = sig
    return out.finish()


_INITIAL_BUFFER = 1 << 20


class EncryptingWriter(io.RawIOBase):
    """A write-only binary stream that encrypts into ``dst`` frame by frame (see :func:`open_encryptor`).

    ``close()`` writes the final frame (and signature); leaving a ``with`` block by an exception,
    calling :meth:`abort`, or dropping the writer unclosed leaves a message without a final frame,
    which every reader rejects as truncated: partial input never becomes a valid message.
    """

    def __init__(
        self,
        dst: Any,
        keys: Keys,
        *,
        context: Mapping[str, str] | None = None,
        frame_length: int = DEFAULT_FRAME_LENGTH,
        suite: Suite | int = DEFAULT_SUITE,
        plaintext_length: int | None = None,
        max_encrypted_data_keys: int | None = None,
    ) -> None:
        super().__init__()
        check_stream(dst, readable=False, what="dst")
        if plaintext_length is not None and (not isinstance(plaintext_length, int) or plaintext_length < 0):
            raise InvalidArgument(f"plaintext_length must be a non-negative int or None, got {plaintext_length!r}")
        header, self._codec, self._signer, self.info = _start(
            keys, context, frame_length, suite, plaintext_length, max_encrypted_data_keys
        )
        self._dst = dst
        self._expected = plaintext_length
        f = self._codec.frame_length
        # Staging buffers start small and grow with the data (see _room), so a huge frame_length
        # costs memory only when that much plaintext actually arrives.
        start = min(f, _INITIAL_BUFFER if plaintext_length is None else plaintext_length)
        self._pt = memoryview(bytearray(start))
        self._pend = 0  # plaintext bytes waiting in _pt
        self._out = memoryview(bytearray(start + FINAL_OVERHEAD))
        self._seq = 1
        self._total = 0
        self._broken = False
        write_all(dst, header)

    def writable(self) -> bool:
        """Always True."""
        return True

    def write(self, b: Buffer) -> int:  # type: ignore[override]
        """Encrypt ``b``; full frames go out as soon as more data is known to follow."""
        if self.closed or self._broken:
            raise InvalidArgument("write to a closed or failed encryptor")
        mv = _plaintext_view(b)
        n = len(mv)
        if self._expected is not None and self._total + n > self._expected:
            self._broken = True
            raise InvalidArgument(f"more plaintext than the declared plaintext_length={self._expected}")
        self._total += n
        try:
            self._consume(mv, n)
        except BaseException:
            self._broken = True
            raise
        return n

    def flush(self) -> None:
        """Flush ``dst``; buffered plaintext (at most one frame) stays until a frame is full or close()."""
        if not self.closed:
            flush = getattr(self._dst, "flush", None)
            if flush is not None:
                flush()

    def _consume(self, mv: memoryview, n: int) -> None:
        f = self._codec.frame_length
        pos = 0
        if self._pend:
            take = min(f - self._pend, n)
            self._room(self._pend + take, 0)
            self._pt[self._pend : self._pend + take] = mv[:take]
            self._pend += take
            pos = take
            if self._pend < f or pos == n:
                return  # a full buffered frame waits: it may turn out to be the final one
            self._regular(self._pt)
            self._pend = 0
        # Whole frames straight from the caller's buffer, keeping the last (possibly full) piece back.
        while n - pos > f:
            self._regular(mv[pos : pos + f])
            pos += f
        rest = n - pos
        self._room(rest, 0)
        self._pt[:rest] = mv[pos:]
        self._pend = rest

    def _room(self, plaintext: int, output: int) -> None:
        """Grow the staging buffers (doubling, never past one frame) to hold ``plaintext`` pending
        bytes and ``output`` sealed bytes; the old plaintext buffer is wiped."""
        f = self._codec.frame_length
        if len(self._pt) < plaintext:
            grown = memoryview(bytearray(min(f, max(plaintext, 2 * len(self._pt)))))
            grown[: self._pend] = self._pt[: self._pend]
            self._pt[:] = bytes(len(self._pt))
            self._pt = grown
        if len(self._out) < output:
            self._out = memoryview(bytearray(min(f + FINAL_OVERHEAD, max(output, 2 * len(self._out)))))

    def _regular(self, plaintext: memoryview) -> None:
        if self._seq >= MAX_SEQ:
            raise InvalidArgument("too many frames for this frame_length; use a larger frame_length")
        self._room(0, self._codec.frame_length + REGULAR_OVERHEAD)
        out = self._out[: self._codec.frame_length + REGULAR_OVERHEAD]
        self._codec.seal_regular(self._seq, plaintext, out)
        if self._signer is not None:
            self._signer.update(out)
        write_all(self._dst, out)
        self._seq += 1

    def close(self) -> None:
        """Write the final frame and footer; does not close ``dst``."""
        if self.closed:
            return
        try:
            if self._broken:
                raise InvalidArgument("the encryptor failed earlier; its output is incomplete and not a valid message")
            if self._expected is not None and self._total != self._expected:
                raise InvalidArgument(
                    f"got {self._total} bytes of plaintext, declared plaintext_length={self._expected}"
                )
            self._room(0, self._pend + FINAL_OVERHEAD)
            out = self._out[: self._pend + FINAL_OVERHEAD]
            self._codec.seal_final(self._seq, self._pt[: self._pend], out)
            write_all(self._dst, out)
            if self._signer is not None:
                self._signer.update(out)
                sig = self._signer.finalize()
                write_all(self._dst, len(sig).to_bytes(2, "big") + sig)
            flush = getattr(self._dst, "flush", None)
            if flush is not None:
                flush()
        finally:
            self._release()

    def abort(self) -> None:
        """Stop without a final frame: what was written stays an invalid (truncated) message."""
        if not self.closed:
            self._broken = True
            self._release()

    def _release(self) -> None:
        self._pt[:] = bytes(len(self._pt))  # don't leave plaintext in a buffer we drop
        super().close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # io.IOBase would close() here, which would seal a truncated plaintext into a valid message.
        with contextlib.suppress(Exception):
            self.abort()


def open_encryptor(
    dst: Any,
    keys: Keys,
    *,
    context: Mapping[str, str] | None = None,
    frame_length: int = DEFAULT_FRAME_LENGTH,
    suite: Suite | int = DEFAULT_SUITE,
    plaintext_length: int | None = None,
    max_encrypted_data_keys: int | None = None,
) -> EncryptingWriter:
    """A writable binary stream that encrypts what is written to it into ``dst``.

    The header is written at once; frames follow as data arrives; ``close()`` (or the end of a
    ``with`` block) writes the final frame. ``plaintext_length``, when known, is checked and lets a
    data-key cache serve the message. ``max_encrypted_data_keys`` as for :func:`encrypt`.
    ``dst`` is not closed.
    """
    return EncryptingWriter(
        dst,
        keys,
        context=context,
        frame_length=frame_length,
        suite=suite,
        plaintext_length=plaintext_length,
        max_encrypted_data_keys=max_encrypted_data_keys,
    )
