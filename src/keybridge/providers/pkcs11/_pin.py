"""Where the user PIN comes from: argument, pin-source file, or the environment."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from ...errors import AuthenticationError, InvalidArgument

PIN_ENV = "KEYBRIDGE_PKCS11_PIN"
# Far above any real PIN; bounds the read so a pin-source of /dev/zero or a huge file cannot exhaust memory.
_MAX_PIN_FILE_LINE = 4096


def read_pin_source(source: str) -> str:
    """The PIN in the file named by ``source`` (``file:/path``, ``file:///path`` or a plain path);
    only the first line counts, without its line ending."""
    path = source
    if source.lower().startswith("file:"):
        parts = urlsplit(source)
        path = unquote(parts.path or parts.netloc)
    elif ":" in source.split("/", 1)[0]:
        raise InvalidArgument(f"pin-source {source!r} is not supported; use file:/path/to/pin-file")
    try:
        with open(path, "rb") as fh:
            raw = fh.readline(_MAX_PIN_FILE_LINE + 1)
    except OSError as exc:
        raise AuthenticationError(f"cannot read the PIN file {path!r}: {exc.strerror}") from exc
    line = raw.rstrip(b"\r\n")
    if len(line) > _MAX_PIN_FILE_LINE:
        raise InvalidArgument(
            f"the PIN file {path!r} has a first line longer than {_MAX_PIN_FILE_LINE} bytes; put only the PIN"
            " on its first line"
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"the PIN file {path!r} is not UTF-8 text; put the PIN as text on its first line"
        ) from None
    if "\x00" in text:
        raise InvalidArgument(f"the PIN file {path!r} contains a NUL byte; put the PIN as text on its first line")
    return text


def resolve_pin(user_pin: str | None, pin_source: str | None, token_label: str) -> str:
    """The first PIN given: ``user_pin``, then ``pin_source``, then $KEYBRIDGE_PKCS11_PIN."""
    if user_pin is not None:
        return user_pin
    if pin_source is not None:
        return read_pin_source(pin_source)
    env = os.environ.get(PIN_ENV)
    if env is not None:
        return env
    raise AuthenticationError(
        f"no user PIN for token {token_label!r}: pass user_pin=, pin_source='file:/path' (or pin-source= in"
        f" the URI), or set the {PIN_ENV} environment variable"
    )
