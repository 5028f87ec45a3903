"""Translate python-pkcs11 exceptions into keybridge's tree, keeping the original as ``__cause__``.

Every CKR code ends as a *typed* keybridge error (never a bare :class:`KeybridgeError`): the tables
below map each python-pkcs11 exception class, and each code python-pkcs11 0.10 leaves unmapped
(``PKCS11Error("Unmapped error code 0x..")``), to the closest type and a hint saying what to do.
"""

from __future__ import annotations

import re
from types import TracebackType

from pkcs11 import exceptions as px

from ...errors import (
    AuthenticationError,
    InvalidArgument,
    InvalidKeySpec,
    KeybridgeError,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)

_Rule = tuple[tuple[type[px.PKCS11Error], ...], type[KeybridgeError], str]

_UNAVAILABLE = "the token is not available; check that it is present and the module is working"
_FAILED = "the token failed internally; retry, and if it persists check the token's state and the module's logs"
_UNSUPPORTED = "the token does not support this mechanism, its parameters or this key type"
_TEMPLATE = "the token rejected the key's attributes; this key spec or set of operations is not possible on it"
_DENIED = "the token does not permit it"

# What SoftHSM raises for a bad GCM tag (2.6: GeneralError, 2.7: EncryptedDataInvalid), garbage
# wrapped keys and bad OAEP ciphertext: on decrypt/unwrap, the input did not authenticate.
_INTEGRITY = (
    px.GeneralError,
    px.EncryptedDataInvalid,
    px.EncryptedDataLenRange,
    px.WrappedKeyInvalid,
    px.WrappedKeyLenRange,
    px.FunctionFailed,
)
_BAD_INPUT = (px.DataLenRange, px.DataInvalid, px.ArgumentsBad)

# First match wins: the order puts the specific before the general.
TABLE: tuple[_Rule, ...] = (
    (
        (px.PinIncorrect, px.PinInvalid, px.PinLenRange, px.PinLocked, px.PinExpired, px.UserNotLoggedIn),
        AuthenticationError,
        "the token refused the login",
    ),
    ((px.UserPinNotInitialized,), AuthenticationError, "the token's user PIN is not initialised; set it first"),
    (
        (
            px.NoSuchToken,
            px.TokenNotPresent,
            px.TokenNotRecognised,
            px.DeviceRemoved,
            px.DeviceError,
            px.DeviceMemory,
            px.SlotIDInvalid,
            px.SessionCount,
            px.HostMemory,
        ),
        ProviderUnavailable,
        _UNAVAILABLE,
    ),
    (
        (px.MechanismInvalid, px.MechanismParamInvalid, px.KeyTypeInconsistent),
        UnsupportedAlgorithm,
        _UNSUPPORTED,
    ),
    (
        (px.WrappingKeyTypeInconsistent, px.UnwrappingKeyTypeInconsistent),
        UnsupportedAlgorithm,
        "the key's type does not fit this wrapping mechanism",
    ),
    ((px.FunctionNotSupported,), UnsupportedAlgorithm, "the token does not implement this function"),
    (
        (
            px.KeySizeRange,
            px.WrappingKeySizeRange,
            px.UnwrappingKeySizeRange,
        ),
        InvalidKeySpec,
        "the token does not accept a key of this size",
    ),
    (
        (
            px.TemplateInconsistent,
            px.TemplateIncomplete,
            px.AttributeValueInvalid,
            px.AttributeTypeInvalid,
            px.DomainParamsInvalid,
        ),
        InvalidKeySpec,
        _TEMPLATE,
    ),
    (
        (
            px.KeyUnextractable,
            px.KeyNotWrappable,
            px.AttributeSensitive,
            px.AttributeReadOnly,
            px.SessionReadOnly,
            px.TokenWriteProtected,
            px.FunctionRejected,
        ),
        OperationNotPermitted,
        _DENIED,
    ),
    ((px.RandomNoRNG, px.FunctionCancelled, px.OperationActive), ProviderUnavailable, _FAILED),
)

# CKR codes python-pkcs11 0.10 raises as a plain PKCS11Error: "Unmapped error code 0x..", or a
# fixed sentence for three codes it believes cannot happen (_SENTENCES).
UNMAPPED: dict[int, tuple[str, type[KeybridgeError], str]] = {
    0x0A: (
        "CKR_CANT_LOCK",
        ProviderUnavailable,
        "the module cannot lock for threads; set KEYBRIDGE_PKCS11_THREADING=lock",
    ),
    0x1B: ("CKR_ACTION_PROHIBITED", OperationNotPermitted, _DENIED),
    0x68: ("CKR_KEY_FUNCTION_NOT_PERMITTED", OperationNotPermitted, "the key's attributes do not permit it"),
    0x140: ("CKR_CURVE_NOT_SUPPORTED", UnsupportedAlgorithm, "the token does not support this elliptic curve"),
    0x150: (
        "CKR_BUFFER_TOO_SMALL",
        ProviderUnavailable,
        "the module answered a correctly sized request with 'buffer too small' (a module bug);"
        " report it to the token vendor",
    ),
    0x190: ("CKR_CRYPTOKI_NOT_INITIALIZED", ProviderUnavailable, "the module was finalised; open a new provider"),
    0x191: (
        "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        ProviderUnavailable,
        "the module was initialised twice in this process; open providers through keybridge only",
    ),
    0x1A0: ("CKR_MUTEX_BAD", ProviderUnavailable, _FAILED),
    0x1A1: ("CKR_MUTEX_NOT_LOCKED", ProviderUnavailable, _FAILED),
}
_SENTENCES = {"Buffer was too small": 0x150, "(not initialized)": 0x190, "(already initialized)": 0x191}
_UNMAPPED_RE = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")
_CKR_VENDOR_DEFINED = 0x80000000


class translated:
    """Map PKCS#11 errors raised while doing ``action`` (on key ``what``) to keybridge errors.

    ``bad_input`` is as in :func:`translate`. Messages name the action and key only, never a PIN
    or bytes.
    """

    __slots__ = ("action", "bad_input", "what")

    def __init__(self, action: str, what: object = None, *, bad_input: type[KeybridgeError] = InvalidArgument) -> None:
        self.action, self.what, self.bad_input = action, what, bad_input

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, KeybridgeError) or not isinstance(exc, px.PKCS11Error):
            return
        raise translate(self.action, self.what, exc, bad_input=self.bad_input) from exc


def ckr_code(exc: px.PKCS11Error) -> int | None:
    """The CKR code of an exception python-pkcs11 left unmapped (None for mapped ones)."""
    text = str(exc)
    found = _UNMAPPED_RE.search(text)
    if found:
        return int(found.group(1), 16)
    return next((code for sentence, code in _SENTENCES.items() if sentence in text), None)


def translate(
    action: str, what: object, exc: BaseException, *, bad_input: type[KeybridgeError] = InvalidArgument
) -> KeybridgeError:
    """The keybridge error for ``exc`` raised while doing ``action`` (on ``what``); raise it ``from exc``.

    ``bad_input`` is the error for input the token refused. Any type but the default (IntegrityError
    on decrypt/unwrap) also claims the failures that there mean "does not authenticate": SoftHSM
    reports a bad GCM tag as CKR_GENERAL_ERROR, for instance.
    """
    on = f" {what}" if what is not None else ""
    name = type(exc).__name__
    untrusted = bad_input is not InvalidArgument
    if isinstance(exc, px.NoSuchKey):
        return KeyNotFound(f"{action}: no key{on} on the token")
    if isinstance(exc, _INTEGRITY) and untrusted:
        return bad_input(f"{action}{on} failed: wrong key, wrong aad or damaged input")
    if isinstance(exc, _BAD_INPUT):
        if untrusted:
            return bad_input(f"{action}{on} failed: the input is malformed for this key")
        return InvalidArgument(f"{action}{on}: the token rejected the input ({name})")
    if not isinstance(exc, px.PKCS11Error):
        return ProviderUnavailable(f"{action}{on}: {name} from the PKCS#11 layer")
    for classes, error, hint in TABLE:
        if isinstance(exc, classes):
            return error(f"{action}{on}: {hint} ({name})")
    if isinstance(exc, _INTEGRITY):
        return ProviderUnavailable(f"{action}{on}: {_FAILED} ({name})")
    code = ckr_code(exc)
    if code is not None and code in UNMAPPED:
        ckr, error, hint = UNMAPPED[code]
        return error(f"{action}{on}: {hint} ({ckr})")
    if code is not None and code >= _CKR_VENDOR_DEFINED:
        return ProviderUnavailable(
            f"{action}{on}: the token failed with vendor-defined code 0x{code:x}; see the token vendor's documentation"
        )
    shown = f"CKR 0x{code:x}" if code is not None else name
    return ProviderUnavailable(f"{action}{on}: the token failed with an error keybridge does not know ({shown})")
