"""Make a caller-supplied key URI safe to print: in logs, audit events and error messages.

PKCS#11 URIs may carry a PIN (``?pin-value=``, or misspelt anywhere), HTTPS URLs may carry
credentials (``https://user:secret@host``). Parsed :class:`~keybridge.keys.KeyRef` values are
already canonical and safe; this is for text that could not be parsed, or not yet.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["mentions_pin", "redact_uri"]

# Through the last "@": a mistyped password may hold an unencoded "@", "/", "?" or "#", so the
# end of the userinfo cannot be trusted; hiding a little too much beats showing a secret.
_USERINFO = re.compile(r"//.*@", re.DOTALL)
_PIN_ATTR = re.compile(r"pin[-_ ]?(?:value|source)", re.IGNORECASE)


def mentions_pin(text: str) -> bool:
    """Whether ``text`` (a label, key name or path) contains what looks like a PIN attribute, also
    percent-encoded: such a value may hold the PIN itself and is never echoed."""
    return bool(_PIN_ATTR.search(unquote(text)))


def redact_uri(text: object) -> str:
    """``text`` with any query replaced by ``?…``, any fragment by ``#…`` (SAS-style signatures and
    tokens travel in both), URL userinfo by ``***@``, and every ``;``-separated attribute that
    mentions a PIN (even misspelt or percent-encoded) by ``***``."""
    s = _USERINFO.sub("//***@", str(text))
    cut = min((i for i in (s.find("?"), s.find("#")) if i >= 0), default=len(s))
    path, rest = s[:cut], s[cut:]
    parts = ["***" if "pin" in unquote(p).lower() else p for p in path.split(";")]
    return ";".join(parts) + (rest[0] + "…" if rest else "")
