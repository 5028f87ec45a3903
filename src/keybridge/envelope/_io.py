"""Byte plumbing for the message codec: zero-copy sources, complete writes, in-place output.

The codec reads through a :class:`Source`, which hands out views instead of fresh ``bytes``: over
an in-memory message the views are slices of the caller's buffer (no copy at all); over a stream
they point into one reused buffer filled with ``readinto``. That keeps the per-frame cost at the
AES-GCM kernel plus one copy, which is where the speed comes from.
"""

from __future__ import annotations

import io
import os
from typing import Any, Protocol

from ..errors import InvalidArgument

__all__: list[str] = []

Buffer = bytes | bytearray | memoryview
_SMALL = 1 << 16


class Truncated(Exception):
    """The source ended inside a structure; callers translate it into the error their layer owes."""


class Source(Protocol):
    """Sequential reads of exact lengths."""

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes, valid until the next call; raise :class:`Truncated` if fewer remain."""
        ...

    def at_end(self) -> bool:
        """True when nothing follows."""
        ...


class ViewSource:
    """A source over an in-memory message: every view is a slice of it."""

    __slots__ = ("_mv", "_pos")

    def __init__(self, data: Buffer) -> None:
        self._mv = memoryview(data).cast("B")
        self._pos = 0

    def take(self, n: int) -> memoryview:
        """See :meth:`Source.take`."""
        start = self._pos
        end = start + n
        if end > len(self._mv):
            raise Truncated
        self._pos = end
        return self._mv[start:end]

    def at_end(self) -> bool:
        """See :meth:`Source.at_end`."""
        return self._pos == len(self._mv)


class StreamSource:
    """A source over a binary stream, read with ``readinto`` into one reused buffer."""

    __slots__ = ("_buf", "_f", "_mv", "_readinto")

    def __init__(self, f: Any, size: int = 65536) -> None:
        self._f = f
        self._readinto = getattr(f, "readinto", None)
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)

    def take(self, n: int) -> memoryview:
        """See :meth:`Source.take`."""
        got = 0
        while got < n:
            if got == len(self._buf):
                self._grow(min(n, 2 * got))
            k = self._read(self._mv[got : min(n, len(self._buf))])
            if not k:
                raise Truncated
            got += k
        return self._mv[:n]

    def _grow(self, size: int) -> None:
        # The buffer grows with the bytes that actually arrived, never straight to the length a
        # message announces, so a huge length that is never delivered costs no memory. It is a
        # new buffer rather than a resize: views handed out earlier may still be alive.
        buf = bytearray(size)
        buf[: len(self._buf)] = self._buf
        self._buf, self._mv = buf, memoryview(buf)

    def _read(self, view: memoryview) -> int:
        if self._readinto is not None:
            return int(self._readinto(view) or 0)
        chunk = self._f.read(len(view)) or b""
        view[: len(chunk)] = chunk
        return len(chunk)

    def at_end(self) -> bool:
        """See :meth:`Source.at_end` (reads one byte ahead)."""
        return not self._f.read(1)


def write_all(dst: Any, data: Buffer) -> None:
    """``dst.write`` until everything is written (raw files may write less than asked)."""
    n = dst.write(data)
    if n is not None and n < len(data):
        view = memoryview(data)
        while n < len(view):
            k = dst.write(view[n:])
            if not k:
                raise OSError("the destination stream stopped accepting data")
            n += k


class OutputBuffer:
    """A fresh ``bytes`` object of a known size, written in place.

    ``io.BytesIO`` returns its internal bytes object from ``getvalue()`` without copying when the
    contents fill it exactly, and ``getbuffer()`` exposes that object writably before then. So a
    64 MiB result is touched once instead of being built in a ``bytearray`` and copied. Small
    results take a plain ``bytearray`` and one copy, which costs less than the BytesIO set-up.
    """

    __slots__ = ("_bio", "_small", "view")

    def __init__(self, size: int) -> None:
        self._bio: io.BytesIO | None = None
        self._small: bytearray | None = None
        if size <= _SMALL:
            self._small = bytearray(size)
            self.view = memoryview(self._small)
        else:
            self._bio = io.BytesIO()
            self._bio.seek(size - 1)
            self._bio.write(b"\0")
            self.view = self._bio.getbuffer()

    def wipe(self) -> None:
        """Zero the buffer (after a failure, so no unauthenticated plaintext lingers)."""
        self.view[:] = bytes(len(self.view))

    def finish(self, size: int | None = None) -> bytes:
        """The bytes, cut to ``size`` if given; the buffer is unusable afterwards."""
        self.view.release()
        if self._small is not None:
            return bytes(self._small if size is None else memoryview(self._small)[:size])
        assert self._bio is not None
        if size is not None:
            self._bio.truncate(size)
        return self._bio.getvalue()


def check_stream(obj: object, *, readable: bool, what: str) -> None:
    """Reject paths and text where a binary stream is expected (a path would otherwise be read as data)."""
    if isinstance(obj, (str, bytes, bytearray, memoryview, os.PathLike)):
        fn = "encrypt_file / decrypt_file / rewrap_file" if isinstance(obj, (str, os.PathLike)) else "the bytes API"
        raise InvalidArgument(f"{what} must be a binary stream, got {type(obj).__name__}; for this use {fn}")
    method = "read" if readable else "write"
    if not callable(getattr(obj, method, None)):
        raise InvalidArgument(f"{what} must be a binary stream with .{method}(), got {type(obj).__name__}")
    if isinstance(obj, io.TextIOBase):
        raise InvalidArgument(f"{what} is a text stream; open it in binary mode ('rb' / 'wb')")
