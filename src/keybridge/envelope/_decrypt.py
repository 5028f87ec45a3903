"""Decryption: one-shot :func:`decrypt` and the streaming :class:`DecryptingReader`.

Release rule: nothing from the header is used before the header tag verifies; a regular frame is
released once its tag verifies; the final frame is released only after the footer signature
(signed suites) verifies and the end of the message is confirmed. A non-framed body is one final
frame: it is buffered whole (up to ``max_nonframed_bytes``) and released by the same rule.

Errors: a malformed header, or a non-framed body longer than the reader holds, is
:class:`InvalidMessage`; everything after the header (failed authentication, wrong order,
truncation, trailing data, bad signature) is :class:`IntegrityError`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ..errors import IntegrityError, InvalidArgument, InvalidMessage, OperationNotPermitted
from ._encrypt import resolve_keys
from ._frames import FINAL_MARKER, FrameCodec
from ._header import Header, MessageInfo, authenticate, check_limit, parse_header
from ._io import Buffer, OutputBuffer, Source, StreamSource, Truncated, ViewSource, check_stream
from ._materials import OpenedBy, recording_opened
from ._recipients import Keys
from ._suites import IV_LEN, KEY_LEN, PUBLIC_KEY_CONTEXT_KEY, TAG_LEN, Verifier

# ESDK advice: legitimate messages name a handful of KEKs and every EDK may cost a KEK call, so a
# forged header with 65,535 of them is refused before any key is used. None lifts the cap.
MAX_ENCRYPTED_DATA_KEYS = 16
# A non-framed body has one tag at its end, so its plaintext can only be released once all of it is
# in memory; streams and files cap that buffer (the ESDK's max_body_length plays the same part).
MAX_NONFRAMED_BYTES = 64 * 2**20
# One AES-GCM call authenticates a non-framed body; cryptography takes at most 2**31 - 1 bytes.
_NONFRAMED_LIMIT = 2**31 - 1 - TAG_LEN

__all__ = ["DecryptInfo", "DecryptResult", "DecryptingReader", "decrypt", "open_decryptor"]


@dataclass(frozen=True, eq=False, repr=False)
class DecryptInfo(MessageInfo):
    """What the authenticated header of a decrypted message says, and which key opened it.

    ``opened_by`` lists every key that recovered the data key: one for a keyring or any-of, ``k``
    for k-of-n (one per share), none for a custom materials source that does not call
    :func:`~keybridge.envelope.report_opened`. A data-key cache hit names the key of the original
    unwrap.
    """

    opened_by: tuple[OpenedBy, ...] = ()

    @property
    def key(self) -> OpenedBy | None:
        """The (first) key that opened the message, or None if the source did not say."""
        return self.opened_by[0] if self.opened_by else None

    def _more(self) -> str:
        return f", opened_by={[o.key for o in self.opened_by]!r}"


@dataclass(frozen=True, eq=False, repr=False)
class DecryptResult(DecryptInfo):
    """The plaintext of a message, what its authenticated header says, and which key opened it."""

    plaintext: bytes = field(default=b"")

    def _more(self) -> str:
        return f"{super()._more()}, plaintext=<{len(self.plaintext)} bytes>"


def decrypt_info(header: MessageInfo, opened_by: tuple[OpenedBy, ...]) -> DecryptInfo:
    """The public header info plus the keys that opened it."""
    return DecryptInfo(
        header.suite, header.message_id, header.context, header.edks, header.frame_length, opened_by=opened_by
    )


def check_expected_context(context: Mapping[str, str], expected: Mapping[str, str] | None) -> None:
    """Every expected pair must be in the message's context with the same value."""
    if expected is None:
        return
    if not isinstance(expected, Mapping):
        raise InvalidArgument(f"expected_context must be a mapping of str to str, got {type(expected).__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in expected.items()):
        raise InvalidArgument("expected_context keys and values must be str")
    wrong = sorted(str(k) for k, v in expected.items() if context.get(k) != v)
    if wrong:
        raise IntegrityError(f"the message's encryption context does not match expected_context for key(s) {wrong}")


def read_header(source: Source, expected_context: Mapping[str, str] | None, max_edks: int | None) -> Header:
    """Parse a header and check it against the caller's expectations (nothing is authenticated yet)."""
    check_limit("max_encrypted_data_keys", max_edks, minimum=1)
    header = parse_header(source.take, max_edks=max_edks)
    check_expected_context(header.context, expected_context)
    return header


def unlock(header: Header, keys: Keys) -> tuple[bytes, bytes, tuple[OpenedBy, ...]]:
    """The data key behind the header's EDKs, the derived key, and the keys that reported opening
    it, after the header authenticates."""
    source = resolve_keys(keys)
    with recording_opened() as opened:
        data_key = source.decryption_materials(suite_id=int(header.suite), context=header.context, edks=header.edks)
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != KEY_LEN:
        kind = f"{len(data_key)} bytes" if isinstance(data_key, (bytes, bytearray)) else type(data_key).__name__
        raise InvalidArgument(
            f"{source!r} returned {kind} as the data key; suite {header.suite.name} needs {KEY_LEN} bytes"
        )
    return bytes(data_key), authenticate(header, bytes(data_key)), tuple(opened)


class _Body:
    """Reads the frames of an authenticated message, in order, checking sequence and lengths."""

    __slots__ = ("_codec", "_iv", "_max_single", "_sealed", "_source", "_verifier", "done", "final", "seq")

    def __init__(self, source: Source, header: Header, enc_key: bytes, max_single: int | None) -> None:
        self._source = source
        self._codec = FrameCodec(enc_key, header.message_id, header.frame_length)
        self._max_single = max_single
        self._verifier: Verifier | None = None
        if header.suite.signed:
            self._verifier = Verifier(header.context[PUBLIC_KEY_CONTEXT_KEY])
            self._verifier.update(header.body)
            self._verifier.update(header.tag)
        self.seq = 1
        self.done = False
        self.final = False
        self._iv: memoryview = memoryview(b"")
        self._sealed: memoryview = memoryview(b"")

    def next_frame(self) -> int:
        """Read the next frame (``.final`` says which kind); return its plaintext length.

        The whole frame is read here, before the caller sizes any buffer for its plaintext, so
        a length announced by a frame that never arrives costs no memory.
        """
        take = self._source.take
        if not self._codec.frame_length:
            return self._single_block(take)
        head = take(4)
        if self._verifier is not None:
            self._verifier.update(head)
        if int.from_bytes(head, "big") == FINAL_MARKER:
            rest = take(8 + IV_LEN)
            if self._verifier is not None:
                self._verifier.update(rest)
            seq = int.from_bytes(rest[:4], "big")
            iv = memoryview(bytes(rest[4 : 4 + IV_LEN]))  # copied: the next take may reuse the buffer
            length = int.from_bytes(rest[4 + IV_LEN :], "big")
            self.final = True
            if length > self._codec.frame_length:
                raise IntegrityError("the final frame is longer than the frame length: the message was modified")
        else:
            seq = int.from_bytes(head, "big")
            length = self._codec.frame_length
        if seq != self.seq:
            raise IntegrityError(f"frame {seq} found where frame {self.seq} was due: frames were reordered or lost")
        if self.final:
            self._iv, self._sealed = iv, take(length + TAG_LEN)
            blob = self._sealed
        else:
            blob = take(IV_LEN + length + TAG_LEN)
            self._iv, self._sealed = blob[:IV_LEN], blob[IV_LEN:]
        if self._verifier is not None:
            self._verifier.update(blob)
        return length

    def _single_block(self, take: Callable[[int], memoryview]) -> int:
        """Read a non-framed body (IV, u64 length, ciphertext, tag) as if it were one final frame."""
        rest = take(IV_LEN + 8)
        if self._verifier is not None:
            self._verifier.update(rest)
        iv = memoryview(bytes(rest[:IV_LEN]))
        length = int.from_bytes(rest[IV_LEN:], "big")
        cap = _NONFRAMED_LIMIT if self._max_single is None else min(self._max_single, _NONFRAMED_LIMIT)
        if length > cap:
            # Refused before reading the body: it would have to be held in memory whole.
            hint = "" if cap == _NONFRAMED_LIMIT else "; pass a larger max_nonframed_bytes (or None) to read it"
            raise InvalidMessage(
                f"the non-framed body is {length} bytes, more than the {cap} this reader buffers{hint}"
            )
        self.final = True
        self._iv, self._sealed = iv, take(length + TAG_LEN)
        if self._verifier is not None:
            self._verifier.update(self._sealed)
        return length

    def open_into(self, out: memoryview) -> None:
        """Authenticate and decrypt the frame read by :meth:`next_frame` into ``out`` (its length)."""
        if self._codec.frame_length:
            self._codec.open(self.seq, self.final, self._iv, self._sealed, out)
        else:
            self._codec.open_single(self._iv, self._sealed, out)
        self.seq += 1
        if self.final:
            self._finish(out)

    def _finish(self, held: memoryview) -> None:
        try:
            if self._verifier is not None:
                n = int.from_bytes(self._source.take(2), "big")
                self._verifier.verify(bytes(self._source.take(n)))
            if not self._source.at_end():
                raise IntegrityError("unexpected data after the end of the message")
        except BaseException:
            held[:] = bytes(len(held))
            raise
        self.done = True


class DecryptingReader(io.RawIOBase):
    """A read-only binary stream of a message's plaintext (see :func:`open_decryptor`).

    ``.info`` is the authenticated header (context, suite, EDKs). Once a read fails, every later
    read fails the same way.
    """

    info: DecryptInfo

    def __init__(
        self,
        src: Any,
        keys: Keys,
        *,
        expected_context: Mapping[str, str] | None = None,
        max_encrypted_data_keys: int | None = MAX_ENCRYPTED_DATA_KEYS,
        allow_signed: bool = True,
        max_nonframed_bytes: int | None = MAX_NONFRAMED_BYTES,
        _source: Source | None = None,
    ) -> None:
        super().__init__()
        # Set first: if the header fails below, IOBase.__del__ still calls close().
        self._stage = bytearray()
        self._held = memoryview(self._stage)  # staged plaintext not yet handed out
        self._hpos = 0
        self._error: BaseException | None = None
        check_limit("max_nonframed_bytes", max_nonframed_bytes, minimum=0)
        if _source is None:
            check_stream(src, readable=True, what="src")
            _source = StreamSource(src)
        header = read_header(_source, expected_context, max_encrypted_data_keys)
        if header.suite.signed and not allow_signed:
            # ESDK's "decrypt-unsigned" streaming mode: refuse before any key is used, so a caller
            # that cannot hold the final frame back never sees plaintext of a signed message.
            raise OperationNotPermitted(
                f"the message is signed (suite 0x{header.suite:04X}) and this decryptor was opened with"
                " allow_signed=False; decrypt it with decrypt() or decrypt_file(), which release nothing early"
            )
        _, enc_key, opened = unlock(header, keys)
        self.info = decrypt_info(header, opened)
        self._body = _Body(_source, header, enc_key, max_nonframed_bytes)

    def readable(self) -> bool:
        """Always True."""
        return True

    def readinto(self, b: Buffer) -> int:  # type: ignore[override]
        """Fill ``b`` with plaintext as far as the message goes; 0 at the end.

        Authenticated frames read before a failure are returned first; the failure is raised by
        the next call, and by every call after it.
        """
        if self.closed:
            raise InvalidArgument("read from a closed decryptor")
        if self._error is not None:
            raise self._error
        return self._fill(memoryview(b).cast("B"))

    def _fill(self, out: memoryview) -> int:
        body = self._body
        n = len(out)
        got = 0
        try:
            while got < n:
                if self._hpos < len(self._held):
                    k = min(n - got, len(self._held) - self._hpos)
                    out[got : got + k] = self._held[self._hpos : self._hpos + k]
                    self._hpos += k
                    got += k
                    continue
                if body.done:
                    break
                length = body.next_frame()
                if not body.final and length <= n - got:
                    body.open_into(out[got : got + length])  # straight into the caller's buffer
                    got += length
                    continue
                # Staged: the final frame waits for the end-of-message checks; a regular frame
                # that does not fit is kept for the next read.
                if len(self._stage) < length:
                    self._stage = bytearray(length)  # new, not resized: old views may be alive
                stage = memoryview(self._stage)[:length]
                body.open_into(stage)
                self._held = stage
                self._hpos = 0
        except Truncated:
            self._error = IntegrityError("the message is truncated")
        except BaseException as exc:
            self._error = exc
        else:
            return got
        if got:
            return got
        raise self._error

    def readall(self) -> bytes:
        """The rest of the plaintext."""
        chunks = bytearray()
        # Not sized by the frame length: memory follows the data that arrives (larger frames are
        # staged once they are read).
        buf = bytearray(1 << 20)
        while k := self.readinto(buf):
            chunks += memoryview(buf)[:k]
        return bytes(chunks)

    def close(self) -> None:
        """Drop buffered plaintext; does not close the source stream."""
        if not self.closed and len(self._held):
            self._held[:] = bytes(len(self._held))
        super().close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_decryptor(
    src: Any,
    keys: Keys,
    *,
    expected_context: Mapping[str, str] | None = None,
    max_encrypted_data_keys: int | None = MAX_ENCRYPTED_DATA_KEYS,
    allow_signed: bool = True,
    max_nonframed_bytes: int | None = MAX_NONFRAMED_BYTES,
) -> DecryptingReader:
    """A readable binary stream of the plaintext of the message read from ``src``.

    The header is read and authenticated at once (errors surface here). For the signed suite
    0x0578, regular frames are released as they authenticate and the final frame only after the
    signature verifies: treat output as provisional until the stream ends without error (or use
    :func:`decrypt_file`, which only renames its output into place on success), or pass
    ``allow_signed=False`` to refuse signed messages outright (the ESDK's "decrypt-unsigned" mode).
    A non-framed message (content type 01, as the ESDK writes with ``frame_length=0``) has one tag
    at its end, so its plaintext is held back until all of it verified: one whose body is longer
    than ``max_nonframed_bytes`` (default 64 MiB; None: up to 2 GiB) is refused with
    :class:`InvalidMessage` before its body is read. ``src`` is not closed.
    """
    return DecryptingReader(
        src,
        keys,
        expected_context=expected_context,
        max_encrypted_data_keys=max_encrypted_data_keys,
        allow_signed=allow_signed,
        max_nonframed_bytes=max_nonframed_bytes,
    )


def decrypt(
    message: Buffer,
    keys: Keys,
    *,
    expected_context: Mapping[str, str] | None = None,
    max_encrypted_data_keys: int | None = MAX_ENCRYPTED_DATA_KEYS,
) -> DecryptResult:
    """Decrypt one message; the plaintext is returned only when all of it is authenticated.

    ``expected_context``: each given pair must be in the message's context with the same value,
    else :class:`IntegrityError` (checked before any key is used). ``max_encrypted_data_keys``
    (default 16; None for no cap)
    rejects messages with more EDKs before any unwrap is tried. Non-framed messages (content type
    01) are read too, up to 2 GiB: the whole message is in memory already.
    """
    if isinstance(message, str):
        raise InvalidArgument("message must be bytes-like, got str")
    try:
        mv = memoryview(message).cast("B")
    except TypeError:
        raise InvalidArgument(f"message must be bytes-like, got {type(message).__name__}") from None
    reader = DecryptingReader(
        None,
        keys,
        expected_context=expected_context,
        max_encrypted_data_keys=max_encrypted_data_keys,
        max_nonframed_bytes=None,
        _source=ViewSource(mv),
    )
    out = OutputBuffer(len(mv))  # an upper bound; cut to size at the end
    try:
        n = reader.readinto(out.view)
        if reader._error is not None:
            raise reader._error  # frames before the failure were fine; the message is not
        if not reader._body.done:
            raise IntegrityError("the message is truncated")
    except BaseException:
        out.wipe()  # never hand out, or leave behind, plaintext of a message that failed
        raise
    finally:
        reader.close()
    info = reader.info
    return DecryptResult(
        info.suite,
        info.message_id,
        info.context,
        info.edks,
        info.frame_length,
        opened_by=info.opened_by,
        plaintext=out.finish(n),
    )
