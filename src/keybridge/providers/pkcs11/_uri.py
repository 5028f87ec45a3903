"""RFC 7512 ``pkcs11:`` URIs: parse strictly, print canonically, never echo a PIN."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import quote, unquote, unquote_to_bytes

from ..._redact import mentions_pin, redact_uri
from ...errors import InvalidKeyUri

_PATH_ATTRS = frozenset(
    [
        "token",
        "manufacturer",
        "serial",
        "model",
        "library-manufacturer",
        "library-description",
        "library-version",
        "object",
        "type",
        "id",
        "slot-description",
        "slot-manufacturer",
        "slot-id",
    ]
)
_QUERY_ATTRS = frozenset({"pin-source", "pin-value", "module-name", "module-path"})
_TYPES = frozenset({"private", "secret-key", "public", "cert", "data"})
_EXAMPLE = "pkcs11:token=TOKEN;object=NAME?module-path=/path/to/module.so&pin-source=file:/path/pin"
_PCT_OK = re.compile(r"^(?:[^%]|%[0-9A-Fa-f]{2})*$")
# ``token=t&pin-value=S`` or ``module-path=/x.so;pin-value=S``: the other part's separator inside a
# value means an attribute (often the PIN) was glued onto the previous value.
_GLUED = re.compile(r"[&;]\s*[A-Za-z][A-Za-z0-9-]*\s*=")
_SEPARATORS = (
    "path attributes (token, object, id, ...) are separated by ';', then '?' starts the query"
    " (pin-value, pin-source, module-path, ...) whose attributes are separated by '&';"
    " percent-encode a literal '&' as %26 and ';' as %3B"
)


def shown(text: str) -> str:
    """``text`` quoted for a message, unless it contains a PIN attribute (then only a placeholder)."""
    return repr(text) if not mentions_pin(text) else "(a value hidden because it contains a PIN attribute)"


def redact(uri: object) -> str:
    """``uri`` as text safe to put in a message: path attributes that mention a PIN are masked; in
    the query only ``module-path`` keeps its value, known attributes keep their names, and anything
    else (a misspelt ``pin`` attribute may hold the PIN in its name) is masked whole."""
    path, sep, query = str(uri).partition("?")
    if not sep:
        return redact_uri(path)
    items = []
    for item in query.split("&"):
        name = item.partition("=")[0]
        if name.lower() == "module-path" and "pin" not in item.lower():
            items.append(item)
        else:
            items.append(f"{name}=***" if name.lower() in _QUERY_ATTRS else "***")
    return redact_uri(path) + "?" + "&".join(items)


@dataclass(frozen=True)
class Pkcs11Uri:
    """A parsed ``pkcs11:`` URI. ``id`` is bytes; every other value is text."""

    path: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    id: bytes | None = None

    def __repr__(self) -> str:  # the query may hold a pin-value
        return f"Pkcs11Uri(path={dict(self.path)!r}, id={self.id!r}, query_keys={sorted(self.query)!r})"


def _shown(name: str) -> str:
    """An attribute name as it may appear in a message: a misspelt PIN attribute can carry the PIN
    in its "name" (``pin-value%3D1234``), so such names are not echoed."""
    known = name.lower() in _PATH_ATTRS or name.lower() in _QUERY_ATTRS
    return repr(name) if known or "pin" not in unquote(name).lower() else "(one that mentions a PIN)"


def _fail(uri: str, problem: str) -> InvalidKeyUri:
    return InvalidKeyUri(f"invalid PKCS#11 URI {redact(uri)!r}: {problem}; expected e.g. {_EXAMPLE!r}")


def _decode(uri: str, name: str, raw: str) -> bytes:
    if not _PCT_OK.match(raw):
        raise _fail(uri, f"attribute {_shown(name)} has a malformed percent-encoding")
    return unquote_to_bytes(raw)


def _split(uri: str, part: str, sep: str, allowed: frozenset[str]) -> tuple[dict[str, str], bytes | None]:
    out: dict[str, str] = {}
    id_bytes = None
    for item in part.split(sep) if part else ():
        name, eq, raw = item.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise _fail(uri, f"attribute {_shown(item.split('=')[0])} has no value (write name=value)")
        if name not in allowed and not name.startswith("x-"):
            raise _fail(uri, f"unknown attribute {_shown(name)} (known: {', '.join(sorted(allowed))})")
        if name in out or (name == "id" and id_bytes is not None):
            raise _fail(uri, f"attribute {name!r} appears twice")
        if _GLUED.search(raw):
            raise _fail(uri, f"attribute {name!r} has another attribute glued to its value: {_SEPARATORS}")
        value = _decode(uri, name, raw)
        if name == "id":
            id_bytes = value
            continue
        try:
            out[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(uri, f"attribute {name!r} is not UTF-8 text after percent-decoding") from None
    return out, id_bytes


def parse(uri: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI; any unknown or malformed attribute raises :class:`InvalidKeyUri`."""
    if not isinstance(uri, str) or not uri.lower().startswith("pkcs11:"):
        raise _fail(str(uri), "it does not start with 'pkcs11:'")
    body = uri[len("pkcs11:") :]
    path_part, _, query_part = body.partition("?")
    path, id_bytes = _split(uri, path_part, ";", _PATH_ATTRS)
    query, _ = _split(uri, query_part, "&", _QUERY_ATTRS)
    if "type" in path and path["type"] not in _TYPES:
        raise _fail(uri, f"attribute 'type' must be one of {', '.join(sorted(_TYPES))}")
    if "pin-value" in query and "pin-source" in query:
        raise _fail(uri, "give either pin-value or pin-source, not both")
    return Pkcs11Uri(MappingProxyType(path), MappingProxyType(query), id_bytes)


def key_uri(token: str, name: str, id_bytes: bytes | None) -> str:
    """The canonical key URI: token, object label and (for a version) the CKA_ID; never a PIN."""
    uri = f"pkcs11:token={quote(token, safe='')};object={quote(name, safe='')}"
    if id_bytes is not None:
        uri += ";id=" + "".join(f"%{b:02X}" for b in id_bytes)
    return uri
