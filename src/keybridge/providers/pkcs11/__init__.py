"""The PKCS#11 backend: keys on an HSM or SoftHSM2 token, through python-pkcs11.

``Pkcs11Provider(module_path, token_label, user_pin)`` or, from an RFC 7512 URI,
``open_provider("pkcs11:token=T?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin")``.
See docs/pkcs11.md for the URI attributes, PIN sources, the mapping of names and versions onto
CKA_LABEL / CKA_ID, and the concurrency design.
"""

from __future__ import annotations

from ...errors import MissingDependency

try:
    import pkcs11 as _pkcs11  # noqa: F401
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency("the PKCS#11 provider", "pkcs11") from _exc

from ._library import THREADING_ENV
from ._pin import PIN_ENV
from ._provider import MODULE_ENV, Pkcs11Provider, from_uri

__all__ = ["MODULE_ENV", "PIN_ENV", "THREADING_ENV", "Pkcs11Provider", "from_uri"]
