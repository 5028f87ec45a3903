"""The ``keybridge`` command line. It uses only the public API, and turns every keybridge error
into one clear line on stderr and a non-zero exit code, never a traceback.

SIGTERM and SIGHUP are handled like Ctrl-C: they become an exception that unwinds through every
open output (so no partial file is left), then one line on stderr and exit code 128 + the signal
number (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP). SIGPIPE stays ignored, as Python sets
it, because sockets (Azure, the emulator) raise it on any closed connection, which their code
handles as an error; when the reader of the data on stdout goes away (``| head``), the write's
BrokenPipeError is turned into :class:`Signalled` (SIGPIPE) and ends the same way, exit code 141."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, NoReturn

from ..errors import KeybridgeError, MissingDependency

__all__ = ["main"]

EXIT_ERROR = 1
_CAUGHT = (signal.SIGTERM, signal.SIGHUP)


class Signalled(KeyboardInterrupt):
    """A termination signal turned into an exception; a KeyboardInterrupt, so everything that
    cleans up after Ctrl-C cleans up after it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Signalled(signum)


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    previous: dict[int, Any] = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave signals as they are
        for signum in _CAUGHT:
            previous[signum] = signal.signal(signum, _raise)
    try:
        yield
    finally:
        for caught, handler in previous.items():
            signal.signal(caught, handler)


def _interrupted(exc: BaseException) -> NoReturn:
    signum: int = getattr(exc, "signum", int(signal.SIGINT))
    if signum == signal.SIGPIPE:
        _quiet_stdout()
    how = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
    print(f"keybridge: interrupted{how}", file=sys.stderr)
    sys.exit(128 + signum)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader is gone, and the flush at exit would fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _cli() -> Any:
    try:
        import click  # noqa: F401
        import rich  # noqa: F401
    except ImportError as exc:
        raise MissingDependency("the keybridge command line", "cli") from exc
    from ._app import app

    return app


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the ``keybridge`` console script."""
    try:
        with _signals_as_exceptions():
            app = _cli()
            # Not standalone, so click returns (instead of exiting with) a command's ctx.exit(code).
            code = app.main(args=argv, prog_name="keybridge", standalone_mode=False)
    except KeybridgeError as exc:
        from ._messages import cli_message  # library hints name Python parameters; say flags instead

        print(f"keybridge: error: {cli_message(exc)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # click's own usage errors and aborts
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            # click turns Ctrl-C at a prompt into Abort; keep the conventional exit code for it.
            if isinstance(exc.__context__, KeyboardInterrupt):
                _interrupted(exc.__context__)
            print("keybridge: aborted", file=sys.stderr)
            sys.exit(EXIT_ERROR)
        if isinstance(exc, OSError):
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"keybridge: error: {where}{exc.strerror or exc}", file=sys.stderr)
            sys.exit(EXIT_ERROR)
        if isinstance(exc, MemoryError):
            print("keybridge: error: out of memory; use a smaller --frame-length or stream the data", file=sys.stderr)
            sys.exit(EXIT_ERROR)
        raise
    sys.exit(code if isinstance(code, int) else 0)
