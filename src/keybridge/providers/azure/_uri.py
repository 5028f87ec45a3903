"""Key Vault / Managed HSM URLs and key identifiers.

A key id is ``https://HOST[:PORT]/keys/NAME[/VERSION]``; a vault URL is the same without the path.
Real vaults live under ``*.vault.azure.net`` (and the sovereign clouds) or ``*.managedhsm.azure.net``;
any other https host is accepted too, because that is how a local emulator is reached.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..._redact import redact_uri
from ...errors import InvalidKeyUri

EXPECTED = (
    "https://VAULT.vault.azure.net[/keys/NAME[/VERSION]], https://HSM.managedhsm.azure.net[/keys/NAME[/VERSION]]"
    " or https://HOST[:PORT][/keys/NAME[/VERSION]]"
)
# Key Vault object names and versions: 1-127 letters, digits and dashes.
NAME_RE = re.compile(r"[0-9A-Za-z-]{1,127}")
_KEY_VAULT_SUFFIXES = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".vault.microsoftazure.de",
)


def _shown(uri: object) -> str:
    """``uri`` cut to scheme, host, port and path: userinfo, query and fragment become markers
    (see :func:`redact_uri`), and so does a port that is not a number, which may be a password
    typed without a user name."""
    text = redact_uri(uri)
    scheme, sep, rest = text.partition("://")
    authority, slash, path = rest.partition("/")
    host, colon, port = authority.rpartition(":")
    if not (sep and colon and port) or "]" in port or (port.isascii() and port.isdigit()):
        return text
    return f"{scheme}://{host}:…{slash}{path}"


def _bad(uri: object, why: str) -> InvalidKeyUri:
    return InvalidKeyUri(f"{_shown(uri)!r} is not an Azure Key Vault URL or key id ({why}); expected {EXPECTED}")


def split_key_id(uri: str) -> tuple[str, str | None, str | None]:
    """``uri`` -> (vault URL, key name or None, version or None). The vault URL is normalised:
    lower-case host, no default port, no trailing slash."""
    if not isinstance(uri, str):
        raise _bad(uri, "not a string")
    try:
        parts = urlsplit(uri.strip())
        port = parts.port
    except ValueError:
        # urlsplit's own message quotes parts of the input (the port text, say): keep it out
        raise _bad(uri, "the host or port is malformed") from None
    if parts.scheme.lower() != "https":
        raise _bad(uri, "the scheme must be https")
    host = (parts.hostname or "").lower()
    if not host or parts.username or parts.password:
        raise _bad(uri, "no host name, or credentials in the URL")
    if parts.query or parts.fragment:
        raise _bad(uri, "a query or fragment is not allowed")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != 443:
        netloc += f":{port}"
    vault_url = f"https://{netloc}"
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        return vault_url, None, None
    if segments[0] != "keys" or len(segments) not in (2, 3):
        raise _bad(uri, "the path must be /keys/NAME or /keys/NAME/VERSION")
    for seg in segments[1:]:
        if not NAME_RE.fullmatch(seg):
            raise _bad(uri, f"{seg!r} is not a valid key name or version (letters, digits and dashes)")
    return vault_url, segments[1], segments[2] if len(segments) == 3 else None


def is_key_vault_host(vault_url: str) -> bool:
    """True for a (non-HSM) Azure Key Vault: no AES keys, no symmetric algorithms."""
    host = urlsplit(vault_url).hostname or ""
    return host.endswith(_KEY_VAULT_SUFFIXES)
