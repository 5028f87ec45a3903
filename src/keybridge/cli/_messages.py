"""Library messages in the command line's words, and what a message's recipients are.

Library errors are written for Python callers (``exportable=True``, ``expected_context``). At the
CLI boundary those hints are translated to the flags and environment variables a person can
actually use; this module imports no click, so ``main`` can use it even when click is missing.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from .._crypto import GCM_IV, GCM_TAG
from .._redact import redact_uri
from ..envelope import EncryptedDataKey, as_materials
from ..envelope._keyring import _KEY_WRAP
from ..errors import KeybridgeError

__all__ = ["MAX_LISTED", "RecipientWitness", "cli_message", "recipients"]

MAX_LISTED = 8
"""At most this many of a message's recipients are named in an error (a message may carry more)."""

# Whole library phrases first (they read wrong when only the parameter names change) ...
_PHRASES: tuple[tuple[str, str], ...] = (
    (
        r"pass user_pin=, pin_source='file:/path' \(or pin-source= in the URI\), or set the (\w+) environment"
        r" variable",
        r"add pin-source=file:/path to the key URI's query, or set \1",
    ),
    (
        r"Give the PIN as user_pin= or pin_source=, not inside another value",
        "give the PIN as pin-source=file:/path after the URI's '?', or in KEYBRIDGE_PKCS11_PIN",
    ),
    (r"create it with exportable=True", "create it with keybridge keys create --exportable"),
    (
        r"for a local emulator pass verify_challenge_resource=False",
        "for a local emulator set KEYBRIDGE_AZURE_VERIFY_CHALLENGE_RESOURCE=0",
    ),
    (
        r"a keystore needs a passphrase: pass passphrase=\.\.\.",
        "the keystore needs a passphrase: set KEYBRIDGE_PASSPHRASE",
    ),
    (r"open it with create=True \(the CLI does\) to make a new one", "create a key first (keybridge keys create)"),
    (r"more than max_encrypted_data_keys", "more than the limit (16 by default)"),
    # The CLI declares a regular file's size up front; a mismatch means the file changed meanwhile.
    (r"more plaintext than the declared plaintext_length=(\d+)", r"the input grew while it was read (it had \1 bytes)"),
    (r"declared plaintext_length=(\d+)", r"but the input had \1 bytes when encryption started (it changed meanwhile)"),
)
# ... then any parameter name left over becomes its flag.
_NAMES = {
    "expected_context": "--context",
    "frame_length": "--frame-length",
    "wrap_for": "--wrap-for",
    "unwrap_with": "--unwrap-with",
    "exportable=True": "--exportable",
}
_NAME_RE = re.compile(r"\b(" + "|".join(re.escape(n) for n in _NAMES) + r")(?![\w=])")


def cli_message(exc: BaseException) -> str:
    """``exc``'s message with Python parameter hints replaced by CLI flags and environment variables."""
    text = str(exc)
    for pattern, replacement in _PHRASES:
        text = re.sub(pattern, replacement, text)
    return _NAME_RE.sub(lambda m: _NAMES[m.group(1)], text)


# ---- who can open a message --------------------------------------------------------------------

_GCM_SUFFIX = struct.pack(">II", 8 * GCM_TAG, GCM_IV)  # ESDK raw AES keyring: tag bits, IV length, then the IV


def _edk_name(edk: EncryptedDataKey) -> str:
    """The key name an EDK records (ESDK raw-keyring layouts: the name, then layout fields)."""
    info = bytes(edk.provider_info)
    if len(info) > 20 and info[-20:-12] == _GCM_SUFFIX:
        info = info[:-20]
    else:
        for alg in _KEY_WRAP:
            tail = struct.pack(">II", 0, len(alg)) + alg.encode("ascii")
            if info.endswith(tail) and len(info) > len(tail):
                info = info[: -len(tail)]
                break
    name = info.decode("utf-8", errors="replace")
    printable = "".join(c if c.isprintable() else "?" for c in name)
    return redact_uri(printable[:200])


def recipients(edks: Sequence[EncryptedDataKey]) -> str:
    """``namespace:name`` of each distinct recipient, at most :data:`MAX_LISTED` of them."""
    seen: list[str] = []
    for edk in edks:
        namespace = bytes(edk.provider_id).decode("utf-8", errors="replace")[:60]
        entry = f"{_edk_name(edk)} ({namespace})"
        if entry not in seen:
            seen.append(entry)
    shown = ", ".join(seen[:MAX_LISTED])
    more = len(seen) - MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


class RecipientWitness:
    """The caller's decryption keys, plus one thing: when none of them opens the message, the
    error also names the keys the message was encrypted for, so the person knows which --key to
    pass. (The header is not authenticated at that point; the names are only a hint.)"""

    def __init__(self, keys: Any, *, flag: str = "--key") -> None:
        self._inner = as_materials(keys)
        self._flag = flag

    def encryption_materials(self, **kwargs: Any) -> Any:
        """Not used for decryption; delegates."""
        return self._inner.encryption_materials(**kwargs)

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        """Delegate; on failure re-raise the same error type with the recipients added."""
        try:
            return self._inner.decryption_materials(suite_id=suite_id, context=context, edks=edks)
        except KeybridgeError as exc:
            failures = getattr(exc, "failures", None)
            if failures is None or not edks:
                raise
            summary = str(exc).split("\n", 1)[0]
            hint = f"{summary}; the message was encrypted for {recipients(edks)}: pass one of them with {self._flag}"
            raise type(exc)(hint, failures) from exc
