"""The PKCS#11 backend: keys on an HSM or SoftHSM2 token, through python-pkcs11.

``Pkcs11Provider(module_path, token_label, user_pin)`` or, from an RFC 7512 URI,
``open_provider("pkcs11:token=T?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin")``.
See docs/pkcs11.md for the URI attributes, PIN sources, the mapping of names and versions onto
CKA_LABEL / CKA_ID, and the concurrency design.
"""

from __future__ import annotations

import os
from typing import Any

from ...base import check_options
from ...errors import InvalidKeyUri, MissingDependency

try:
    import pkcs11 as _pkcs11  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("the PKCS#11 provider", "pkcs11") from _exc

from ._library import THREADING_ENV
from ._pin import PIN_ENV
from ._provider import Pkcs11Provider
from ._uri import parse, redact

__all__ = ["MODULE_ENV", "PIN_ENV", "THREADING_ENV", "Pkcs11Provider", "from_uri"]

MODULE_ENV = "KEYBRIDGE_PKCS11_MODULE"
OPTIONS = ("module_path", "user_pin", "pin_source", "cache_seconds", "init_args")


def from_uri(uri: str, **options: Any) -> Pkcs11Provider:
    """A provider for an RFC 7512 URI (``pkcs11:token=T[;object=NAME]?module-path=...&pin-...``).

    ``options`` may give ``module_path``, ``user_pin`` and ``pin_source`` (they win over the URI)
    and ``cache_seconds``; ``init_args`` (the module's C_Initialize string) may also come from the
    query attribute ``x-init-args``. Without a module path in either, ``$KEYBRIDGE_PKCS11_MODULE`` is used.
    """
    u = parse(uri)
    check_options("pkcs11", options, OPTIONS)
    token = u.path.get("token")
    if not token:
        raise InvalidKeyUri(f"PKCS#11 URI {redact(uri)!r} names no token; add token=LABEL")
    module = options.get("module_path") or u.query.get("module-path") or os.environ.get(MODULE_ENV)
    if not module:
        raise InvalidKeyUri(
            f"PKCS#11 URI {redact(uri)!r} names no module; add ?module-path=/path/to/module.so or set {MODULE_ENV}"
        )
    pin = options.get("user_pin")
    source = options.get("pin_source")
    if pin is None and source is None:
        pin, source = u.query.get("pin-value"), u.query.get("pin-source")
    return Pkcs11Provider(
        module,
        token,
        pin,
        pin_source=source,
        cache_seconds=float(options.get("cache_seconds", 1.0)),
        init_args=options.get("init_args") or u.query.get("x-init-args"),
    )
