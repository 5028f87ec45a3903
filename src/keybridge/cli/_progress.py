"""Progress for long byte streams (encrypt, decrypt, rewrap): bytes so far, total, speed.

It goes to stderr only, never stdout (which may carry the data), and only when someone can see it:
stderr is a terminal, or ``keybridge --progress`` asked for it; ``--no-progress`` and ``--json``
turn it off. On a terminal one line is redrawn in place (at most 10 times a second, and only once
an operation has run for half a second, so quick commands print nothing) and erased at the end;
when forced onto a file or pipe, a line is written every second and a last one at the end.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from typing import IO, Any, cast

import click

__all__ = ["ProgressReader", "human_bytes", "progress_option", "progress_wanted", "reading_with_progress"]

progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Show progress of long commands on stderr (default: only when stderr is a terminal; never with --json).",
)
"""The group's flag; :func:`progress_wanted` reads it from the root context."""

_TTY_DELAY = 0.5  # seconds before a terminal shows anything
_TTY_EVERY = 0.1
_LOG_EVERY = 1.0


def human_bytes(n: float) -> str:
    """``n`` bytes as ``1.5 MiB`` (binary units, one decimal above bytes)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def progress_wanted() -> bool:
    """Whether the running command should show progress: the group's ``--progress/--no-progress``,
    else whether stderr is a terminal; never for a command run with ``--json``."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    if ctx.params.get("as_json"):
        return False
    forced = ctx.find_root().params.get("progress")
    return sys.stderr.isatty() if forced is None else bool(forced)


class ProgressReader(io.RawIOBase):
    """A binary stream wrapper that reports how much has been read from it."""

    def __init__(self, raw: IO[bytes], total: int | None, label: str, *, out: Any = None) -> None:
        super().__init__()
        self._raw, self._total, self._label = raw, total, label
        self._out = out if out is not None else sys.stderr
        self._tty = bool(getattr(self._out, "isatty", lambda: False)())
        self._start = self._last = time.monotonic()
        self._done = 0
        self._drawn = False

    def readinto(self, buf: Any) -> int:
        """Read into ``buf`` like the wrapped stream, counting the bytes."""
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            n = int(readinto(buf) or 0)
        else:
            data = self._raw.read(len(buf))
            n = len(data)
            memoryview(buf)[:n] = data
        self._advance(n)
        return n

    def readable(self) -> bool:
        """Always true: this is an input."""
        return True

    def _advance(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if self._tty:
            if now - self._start >= _TTY_DELAY and now - self._last >= _TTY_EVERY:
                self._write("\r" + self._line(now) + "\x1b[K")
                self._last = now
        elif now - self._last >= _LOG_EVERY:
            self._write(self._line(now) + "\n")
            self._last = now

    def _line(self, now: float) -> str:
        speed = self._done / max(now - self._start, 1e-6)
        done = human_bytes(self._done)
        if self._total:
            pct = min(100, self._done * 100 // self._total)
            done = f"{done} of {human_bytes(self._total)} ({pct}%)"
        return f"{self._label}: {done}, {human_bytes(speed)}/s"

    def _write(self, text: str) -> None:
        self._drawn = True
        self._out.write(text)
        self._out.flush()

    def finish(self, *, ok: bool = True) -> None:
        """Erase the terminal line; when logging to a file or pipe, write a last line on success."""
        if self._tty:
            if self._drawn:
                self._write("\r\x1b[K")
        elif ok:
            now = time.monotonic()
            self._write(f"{self._line(now)}, done in {now - self._start:.1f} s\n")


_LABELS = {"encrypt": "encrypting", "decrypt": "decrypting", "rewrap": "rewrapping"}


@contextlib.contextmanager
def reading_with_progress(raw: IO[bytes], total: int | None) -> Iterator[IO[bytes]]:
    """``raw``, wrapped to show progress when :func:`progress_wanted` (labelled by the command).
    ``total`` is the input's size when known (a regular file), else None (a pipe)."""
    if not progress_wanted():
        yield raw
        return
    name = click.get_current_context().info_name or "reading"
    reader = ProgressReader(raw, total, _LABELS.get(name, name))
    try:
        yield cast(IO[bytes], reader)
    except BaseException:
        reader.finish(ok=False)
        raise
    reader.finish()
