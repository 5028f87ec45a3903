"""The ``keybridge`` command line. It uses only the public API, and turns every keybridge error
into one clear line on stderr and a non-zero exit code, never a traceback."""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from ..errors import KeybridgeError, MissingDependency

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


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
        app = _cli()
        # Not standalone, so click returns (instead of exiting with) a command's ctx.exit(code).
        code = app.main(args=argv, prog_name="keybridge", standalone_mode=False)
    except KeybridgeError as exc:
        from ._messages import cli_message  # library hints name Python parameters; say flags instead

        print(f"keybridge: error: {cli_message(exc)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print("keybridge: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # click's own usage errors and aborts
        import click

        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            # click turns Ctrl-C at a prompt into Abort; keep the conventional exit code for it.
            interrupted = isinstance(exc.__context__, KeyboardInterrupt)
            print("keybridge: interrupted" if interrupted else "keybridge: aborted", file=sys.stderr)
            sys.exit(130 if interrupted else EXIT_ERROR)
        if isinstance(exc, OSError):
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"keybridge: error: {where}{exc.strerror or exc}", file=sys.stderr)
            sys.exit(EXIT_ERROR)
        if isinstance(exc, MemoryError):
            print("keybridge: error: out of memory; use a smaller --frame-length or stream the data", file=sys.stderr)
            sys.exit(EXIT_ERROR)
        raise
    sys.exit(code if isinstance(code, int) else 0)
