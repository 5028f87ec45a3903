"""Translate python-pkcs11 exceptions into keybridge's tree, keeping the original as ``__cause__``."""

from __future__ import annotations

from types import TracebackType

from pkcs11 import exceptions as px

from ...errors import (
    AuthenticationError,
    IntegrityError,
    InvalidArgument,
    KeybridgeError,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)

_AUTH = (px.PinIncorrect, px.PinInvalid, px.PinLenRange, px.PinLocked, px.PinExpired, px.UserNotLoggedIn)
_ABSENT = (px.NoSuchToken, px.TokenNotPresent, px.DeviceRemoved, px.DeviceError, px.SlotIDInvalid)
_MECH = (px.MechanismInvalid, px.MechanismParamInvalid, px.KeyTypeInconsistent)
_DENIED = (px.KeyUnextractable, px.KeyNotWrappable, px.AttributeSensitive, px.SessionReadOnly, px.AttributeReadOnly)
# What SoftHSM raises for a bad GCM tag (2.6: GeneralError, 2.7: EncryptedDataInvalid), garbage
# wrapped keys and bad OAEP ciphertext: the input did not authenticate.
_INTEGRITY = (
    px.GeneralError,
    px.EncryptedDataInvalid,
    px.EncryptedDataLenRange,
    px.WrappedKeyInvalid,
    px.WrappedKeyLenRange,
    px.FunctionFailed,
)
_CKR_KEY_FUNCTION_NOT_PERMITTED = "0x68"  # unmapped by python-pkcs11 0.10: "Unmapped error code 0x68"


class translated:
    """Map PKCS#11 errors raised while doing ``action`` (on key ``what``) to keybridge errors.

    With ``integrity`` (decrypt/unwrap), errors that mean "this ciphertext does not authenticate"
    become :class:`IntegrityError`. Messages name the action and key only, never a PIN or bytes.
    """

    __slots__ = ("action", "integrity", "what")

    def __init__(self, action: str, what: object = None, *, integrity: bool = False) -> None:
        self.action, self.what, self.integrity = action, what, integrity

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, KeybridgeError) or not isinstance(exc, px.PKCS11Error):
            return
        raise translate(self.action, self.what, self.integrity, exc) from exc


def translate(action: str, what: object, integrity: bool, exc: px.PKCS11Error) -> KeybridgeError:
    """The keybridge error for ``exc`` raised while doing ``action`` (on ``what``); raise it ``from exc``."""
    on = f" {what}" if what is not None else ""
    name = type(exc).__name__
    if isinstance(exc, _AUTH):
        return AuthenticationError(f"{action}{on}: the token refused the login ({name})")
    if isinstance(exc, px.NoSuchKey):
        return KeyNotFound(f"{action}: no key{on} on the token")
    if isinstance(exc, _ABSENT):
        return ProviderUnavailable(f"{action}{on}: the token is not available ({name})")
    if isinstance(exc, _MECH):
        return UnsupportedAlgorithm(f"{action}{on}: the token does not support this mechanism or key type ({name})")
    if isinstance(exc, px.KeySizeRange):  # e.g. a wrapped-export KEK too small for OAEP of an AES-256 key
        return InvalidArgument(f"{action}{on}: the token does not accept a key of this size (KeySizeRange)")
    if isinstance(exc, _DENIED):
        return OperationNotPermitted(f"{action}{on}: the token does not permit it ({name})")
    if isinstance(exc, _INTEGRITY):
        if integrity:
            return IntegrityError(f"{action}{on} failed: wrong key, wrong aad or damaged input")
        return KeybridgeError(f"{action}{on}: the token reported {name}")
    if isinstance(exc, (px.DataLenRange, px.DataInvalid, px.ArgumentsBad)):
        if integrity:
            return IntegrityError(f"{action}{on} failed: the input is malformed for this key")
        return InvalidArgument(f"{action}{on}: the token rejected the input ({name})")
    if _CKR_KEY_FUNCTION_NOT_PERMITTED in str(exc):
        return OperationNotPermitted(f"{action}{on}: the key's attributes do not permit it")
    return KeybridgeError(f"{action}{on}: the token reported {name}: {exc}")
