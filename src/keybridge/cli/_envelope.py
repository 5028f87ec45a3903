"""``keybridge encrypt`` / ``decrypt`` / ``rewrap``: envelope encryption of files and pipes.

IN and OUT are paths or ``-`` (stdin / stdout). A file OUT is written atomically: an unnamed file
in the same directory, given the name OUT only once the whole message (or the whole authenticated
plaintext) is there, so a failure, a signal or a kill never leaves a partial file. An existing OUT
needs ``--force``; OUT is never IN or the keystore, even with ``--force``. Decrypting to stdout
streams frames as they authenticate, so a later failure can leave part of the plaintext written:
the exit code is then non-zero and the output must be discarded. A KEY is a key URI or a bare NAME (``memory:NAME``
in the default keystore); repeating ``--key`` / ``--wrap-for`` means any one of them decrypts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from ..errors import InvalidArgument
from ..provider import KeyHandle, KeyProvider
from . import Signalled
from ._common import cli_uri, emit, json_option, open_cli_provider
from ._messages import RecipientWitness
from ._outputs import cli_output, force_option
from ._progress import reading_with_progress

__all__ = ["decrypt", "encrypt", "rewrap"]

_CHUNK = 1 << 20
_SUITES = {False: 0x0478, True: 0x0578}


def _context(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--context")
        if key in out:
            raise click.BadParameter(f"{key!r} is given twice", param_hint="--context")
        out[key] = value
    return out


def _keys(uris: tuple[str, ...]) -> KeyHandle | list[KeyHandle]:
    # All memory: keys share one opened keystore (one passphrase derivation, not one per key).
    opened: dict[str, KeyProvider] = {}
    handles = []
    for uri in uris:
        full = cli_uri(uri)
        slot = "memory" if full.lower().startswith("memory:") else full
        if slot not in opened:
            opened[slot] = open_cli_provider(full)
        handles.append(opened[slot].key(full))
    return handles[0] if len(handles) == 1 else handles


@contextlib.contextmanager
def _input(path: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """The input stream and its size when it is a regular file (None for pipes)."""
    if path == "-":
        with reading_with_progress(sys.stdin.buffer, None) as src:
            yield src, None
        return
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size if stat.S_ISREG(st.st_mode) else None
        with reading_with_progress(f, size) as src:
            yield src, size


@contextlib.contextmanager
def _output(path: str | None, *, force: bool, input_path: str) -> Iterator[IO[bytes]]:
    """stdout, or an atomic, exclusive (unless ``force``) file at ``path`` that is never ``input_path``."""
    if path is None or path == "-":
        out = sys.stdout.buffer
        if out.isatty():
            raise InvalidArgument("refusing to write binary output to a terminal; use -o FILE or a pipe")
        try:
            yield out
            out.flush()
        except BrokenPipeError:  # the reader went away (`| head`): end as a SIGPIPE would
            raise Signalled(signal.SIGPIPE) from None
        return
    with cli_output(path, force=force, inputs=(input_path,)) as f:
        yield f


def _copy(src: Any, dst: Any) -> int:
    """Copy in 1 MiB chunks (constant memory); progress is shown by the input (see _input)."""
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    done = 0
    readinto = getattr(src, "readinto", None)
    while True:
        if readinto is not None:
            n = readinto(buf)
            chunk = view[:n] if n else b""
        else:
            chunk = src.read(_CHUNK)
            n = len(chunk)
        if not n:
            break
        dst.write(chunk)
        done += n
    view.release()
    return done


def _summary(action: str, info: Any, nbytes_in: int, nbytes_out: int) -> dict[str, Any]:
    return {
        "action": action,
        "suite": f"0x{int(info.suite):04X}",
        "suite_name": getattr(info.suite, "name", str(info.suite)),
        "context": dict(info.context),
        "edks": len(info.edks),
        "frame_length": info.frame_length,
        "bytes_in": nbytes_in,
        "bytes_out": nbytes_out,
        # decrypt and rewrap: which key (URI with version) opened the message; encrypt has none
        **({"opened_by": [o.key for o in info.opened_by]} if hasattr(info, "opened_by") else {}),
    }


def _report(summary: dict[str, Any], human: str, *, as_json: bool, output: str | None) -> None:
    """Print the summary; when the data itself went to stdout, keep stdout clean: the JSON summary
    goes to stderr and the human one is left out (quiet in pipelines)."""
    if output is not None and output != "-":
        emit(summary, human, as_json=as_json)
    elif as_json:
        with contextlib.redirect_stdout(sys.stderr):
            emit(summary, human, as_json=True)


class _Counter:
    """A write-through wrapper that counts bytes (for the summary of what went to OUT)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.n = f, 0

    def write(self, data: Any) -> int:
        self.f.write(data)
        n = memoryview(data).nbytes
        self.n += n
        return n

    def flush(self) -> None:
        self.f.flush()


_key_option = click.option(
    "--key",
    "-k",
    "keys",
    multiple=True,
    required=True,
    metavar="KEY",
    help="Key URI or NAME; repeat for several recipients (any one of them decrypts).",
)
_context_option = click.option("--context", "-c", "context", multiple=True, metavar="K=V", help="Encryption context.")
_out_option = click.option("-o", "--output", "output", metavar="OUT", help="Output file, or - for stdout (default).")
_max_edks_option = click.option(
    "--max-encrypted-data-keys",
    "max_edks",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Refuse a message with more than N encrypted data keys (default: the library's cap, 16).",
)


def _edk_limit(max_edks: int | None) -> int:
    """--max-encrypted-data-keys, or the library's default cap when it is not given."""
    from ..envelope._decrypt import MAX_ENCRYPTED_DATA_KEYS

    return MAX_ENCRYPTED_DATA_KEYS if max_edks is None else max_edks


@click.command()
@click.argument("input_path", metavar="[IN]", default="-")
@_out_option
@_key_option
@_context_option
@click.option("--frame-length", type=click.IntRange(1, 2**31 - 1), default=65536, show_default=True)
@click.option("--signed", is_flag=True, help="Use suite 0x0578 (adds an ECDSA P-384 signature).")
@force_option
@json_option
def encrypt(
    input_path: str,
    output: str | None,
    keys: tuple[str, ...],
    context: tuple[str, ...],
    frame_length: int,
    signed: bool,
    force: bool,
    as_json: bool,
) -> None:
    """Encrypt IN (a file or - for stdin) into an AWS Encryption SDK message."""
    from .. import envelope

    ctx = _context(context)
    recipients = _keys(keys)
    with _input(input_path) as (src, size), _output(output, force=force, input_path=input_path) as raw:
        dst = _Counter(raw)
        with envelope.open_encryptor(
            dst, recipients, context=ctx, frame_length=frame_length, suite=_SUITES[signed], plaintext_length=size
        ) as enc:
            n = _copy(src, enc)
        info = enc.info
    summary = _summary("encrypt", info, n, dst.n)
    _report(summary, f"encrypted {n} bytes for {len(info.edks)} key(s) -> {output}", as_json=as_json, output=output)


@click.command()
@click.argument("input_path", metavar="[IN]", default="-")
@_out_option
@_key_option
@click.option("--context", "-c", "context", multiple=True, metavar="K=V", help="Expected encryption context.")
@_max_edks_option
@force_option
@json_option
def decrypt(
    input_path: str,
    output: str | None,
    keys: tuple[str, ...],
    context: tuple[str, ...],
    max_edks: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Decrypt a message from IN (a file or - for stdin); --context pairs must all be in it."""
    from .. import envelope

    expected = _context(context) or None
    recipients = RecipientWitness(_keys(keys), flag="--key")
    with (
        _input(input_path) as (src, size),
        _output(output, force=force, input_path=input_path) as dst,
        envelope.open_decryptor(
            src, recipients, expected_context=expected, max_encrypted_data_keys=_edk_limit(max_edks)
        ) as dec,
    ):
        n = _copy(dec, dst)
        info = dec.info
    summary = _summary("decrypt", info, size if size is not None else -1, n)
    _report(summary, f"decrypted {n} bytes -> {output}", as_json=as_json, output=output)


@click.command()
@click.argument("input_path", metavar="IN")
@click.option("-o", "--output", "output", required=True, metavar="OUT", help="Output file, or - for stdout.")
@click.option("--unwrap-with", "unwrap_with", multiple=True, required=True, metavar="KEY", help="Key that opens IN.")
@click.option(
    "--wrap-for", "wrap_for", multiple=True, required=True, metavar="KEY", help="Recipient of OUT; repeatable."
)
@_max_edks_option
@force_option
@json_option
def rewrap(
    input_path: str,
    output: str,
    unwrap_with: tuple[str, ...],
    wrap_for: tuple[str, ...],
    max_edks: int | None,
    force: bool,
    as_json: bool,
) -> None:
    """Replace the recipients of a message without re-encrypting its body (the body is copied)."""
    from .. import envelope

    old, new = RecipientWitness(_keys(unwrap_with), flag="--unwrap-with"), _keys(wrap_for)
    with _input(input_path) as (src, size), _output(output, force=force, input_path=input_path) as raw:
        dst = _Counter(raw)
        info = envelope.rewrap(src, dst, unwrap_with=old, wrap_for=new, max_encrypted_data_keys=_edk_limit(max_edks))
    summary = _summary("rewrap", info, size if size is not None else -1, dst.n)
    _report(summary, f"rewrapped for {len(info.edks)} key(s) -> {output}", as_json=as_json, output=output)
