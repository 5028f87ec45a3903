"""How every CLI command writes a file: atomically, never over an existing file without
``--force``, and never over its own input or the default keystore, even with ``--force``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import BinaryIO

import click

from .._files import atomic_output, check_output
from ._common import default_keystore

__all__ = ["FORCE_HINT", "cli_output", "cli_write", "early_check", "force_option"]

FORCE_HINT = "use --force to replace it"

force_option = click.option("--force", "-f", is_flag=True, help="Replace an existing output file.")
"""The ``--force`` flag; the command receives it as ``force``."""


def _protected(inputs: tuple[str, ...]) -> list[str]:
    """The files an output must never be: the inputs, the keystore, and what stdin reads from."""
    paths = [p for p in inputs if p != "-"]
    if "-" in inputs:
        paths.append("/dev/stdin")  # `keybridge encrypt -o f < f`: stdin is the file f
    paths.append(os.fspath(default_keystore()))
    return paths


@contextlib.contextmanager
def cli_output(path: str, *, force: bool, inputs: tuple[str, ...] = (), mode: int = 0o600) -> Iterator[BinaryIO]:
    """:func:`keybridge._files.atomic_output` with the CLI's rules and ``--force`` wording."""
    with atomic_output(path, mode=mode, overwrite=force, protect=_protected(inputs), exists_hint=FORCE_HINT) as f:
        yield f


def cli_write(path: str, data: bytes, *, force: bool, inputs: tuple[str, ...] = (), mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through :func:`cli_output`."""
    with cli_output(path, force=force, inputs=inputs, mode=mode) as f:
        f.write(data)


def early_check(path: str, *, force: bool, inputs: tuple[str, ...] = ()) -> None:
    """Refuse a taken or protected output before a command does work it cannot undo."""
    check_output(path, overwrite=force, protect=_protected(inputs), exists_hint=FORCE_HINT)
