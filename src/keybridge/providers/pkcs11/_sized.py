"""Single-part calls that honour CKR_BUFFER_TOO_SMALL, for modules whose length query under-reports.

python-pkcs11 asks for the output length (NULL buffer), allocates that, and raises on
CKR_BUFFER_TOO_SMALL. NSS softokn answers the length query for AES-GCM and the AES key wraps with
less than it then needs. The standard says a call that returns CKR_BUFFER_TOO_SMALL sets the
length it needs and, for C_Encrypt/C_Decrypt, leaves the operation active: so these helpers call
again with the size the module returned (a few times at most) instead of giving up. They are only
used after python-pkcs11 failed that way. Its call should have left the operation active, which
:meth:`SizedCalls.finish` completes; NSS ends it instead (CKR_OPERATION_NOT_INITIALIZED), so for
AES-GCM the operation is started again here, with the same parameters.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, ClassVar

from pkcs11 import exceptions as px

from ._errors import ckr_code
from ._library import _UL, LoginFunctionList

__all__ = ["BUFFER_TOO_SMALL", "SizedCalls", "error_for"]

BUFFER_TOO_SMALL = 0x150
_OPERATION_NOT_INITIALIZED = 0x91
_CKM_AES_GCM = 0x1087
_TRIES = 4
# The CK_FUNCTION_LIST entries after C_Logout up to C_WrapKey, in the standard's order.
_MORE = [
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
]
# CKR codes these calls return, as the python-pkcs11 exceptions keybridge's translation knows.
_ERRORS: dict[int, type[px.PKCS11Error]] = {
    0x05: px.GeneralError,
    0x06: px.FunctionFailed,
    0x07: px.ArgumentsBad,
    0x20: px.DataInvalid,
    0x21: px.DataLenRange,
    0x40: px.EncryptedDataInvalid,
    0x41: px.EncryptedDataLenRange,
    0x60: px.KeyHandleInvalid,
    0x63: px.KeyTypeInconsistent,
    0x67: px.KeyNotWrappable,
    0x6A: px.KeyUnextractable,
    0x70: px.MechanismInvalid,
    0x71: px.MechanismParamInvalid,
    0x90: px.OperationActive,
    0x91: px.OperationNotInitialized,
    0xB3: px.SessionHandleInvalid,
    0x101: px.UserNotLoggedIn,
    0x113: px.WrappingKeyHandleInvalid,
    0x115: px.WrappingKeyTypeInconsistent,
}


def error_for(rv: int) -> px.PKCS11Error:
    """The python-pkcs11 exception for CKR ``rv`` (its own "Unmapped error code" form if none)."""
    cls = _ERRORS.get(rv)
    return cls() if cls is not None else px.PKCS11Error(f"Unmapped error code 0x{rv:x}")


class _WrapFunctionList(LoginFunctionList):
    # A ctypes subclass appends its fields after the base's: CK_FUNCTION_LIST on to C_WrapKey.
    _fields_: ClassVar[list[tuple[str, Any]]] = [(n, ctypes.c_void_p) for n in _MORE]


class _Mechanism(ctypes.Structure):
    _fields_: ClassVar[list[tuple[str, Any]]] = [("mechanism", _UL), ("parameter", ctypes.c_void_p), ("length", _UL)]


class _GcmParams(ctypes.Structure):
    _fields_: ClassVar[list[tuple[str, Any]]] = [
        ("iv", ctypes.c_void_p),
        ("iv_len", _UL),
        ("iv_bits", _UL),
        ("aad", ctypes.c_void_p),
        ("aad_len", _UL),
        ("tag_bits", _UL),
    ]


_BUF = ctypes.POINTER(ctypes.c_ubyte)
_LEN = ctypes.POINTER(_UL)


def sized(call: Callable[[Any, Any], int], at_least: int = 0) -> bytes:
    """Run ``call(buffer, byref(length))`` until the module stops saying CKR_BUFFER_TOO_SMALL.

    The buffer is at least ``at_least`` bytes whatever the length query says: NSS ends the operation
    on a short buffer, so where the size is known it must be right the first time.
    """
    length = _UL(0)
    rv = call(None, ctypes.byref(length))
    if rv:
        raise error_for(rv)
    length.value = max(int(length.value), at_least)
    for _ in range(_TRIES):
        buf = (ctypes.c_ubyte * max(int(length.value), 1))()
        asked = int(length.value)
        rv = call(buf, ctypes.byref(length))
        if rv == 0:
            return bytes(buf[: int(length.value)])
        if rv != BUFFER_TOO_SMALL:
            raise error_for(rv)
        if int(length.value) <= asked:  # it did not say how much it needs: guess generously
            length.value = asked * 2 + 64
    raise error_for(BUFFER_TOO_SMALL)


class SizedCalls:
    """C_Encrypt / C_Decrypt / C_WrapKey of one module, through its function list (ctypes)."""

    def __init__(self, path: str) -> None:
        ptr = ctypes.POINTER(_WrapFunctionList)()
        rv = ctypes.CDLL(path).C_GetFunctionList(ctypes.byref(ptr))
        if rv:
            raise error_for(int(rv))
        fl = ptr.contents
        crypt = ctypes.CFUNCTYPE(_UL, _UL, _BUF, _UL, _BUF, _LEN)
        self._encrypt = crypt(fl.C_Encrypt)
        self._decrypt = crypt(fl.C_Decrypt)
        init = ctypes.CFUNCTYPE(_UL, _UL, ctypes.POINTER(_Mechanism), _UL)
        self._encrypt_init = init(fl.C_EncryptInit)
        self._decrypt_init = init(fl.C_DecryptInit)
        self._wrap = ctypes.CFUNCTYPE(_UL, _UL, ctypes.POINTER(_Mechanism), _UL, _UL, _BUF, _LEN)(fl.C_WrapKey)

    def finish(self, session: int, data: bytes, *, decrypt: bool = False, at_least: int = 0) -> bytes:
        """Complete the single-part encryption (decryption) of ``data`` left active in ``session``."""
        fn = self._decrypt if decrypt else self._encrypt
        src = (ctypes.c_ubyte * max(len(data), 1)).from_buffer_copy(data or b"\0")
        return sized(lambda buf, n: int(fn(session, src, len(data), buf, n)), at_least)

    def gcm(self, session: int, key: int, param: Any, data: bytes, *, decrypt: bool = False) -> bytes:
        """Single-part AES-GCM from C_EncryptInit (C_DecryptInit) on; ``param`` is python-pkcs11's GCMParams."""
        iv, aad = bytes(param.nonce), bytes(param.aad or b"")
        iv_buf, aad_buf = ctypes.create_string_buffer(iv, len(iv)), ctypes.create_string_buffer(aad, max(len(aad), 1))
        gcm = _GcmParams(
            ctypes.addressof(iv_buf), len(iv), len(iv) * 8, ctypes.addressof(aad_buf), len(aad), int(param.tag_bits)
        )
        mech = _Mechanism(_CKM_AES_GCM, ctypes.addressof(gcm), ctypes.sizeof(gcm))
        rv = int((self._decrypt_init if decrypt else self._encrypt_init)(session, ctypes.byref(mech), key))
        if rv:
            raise error_for(rv)
        bound = len(data) if decrypt else len(data) + int(param.tag_bits) // 8
        return self.finish(session, data, decrypt=decrypt, at_least=bound)  # the buffers live until here

    def wrap(self, session: int, mechanism: int, wrapping_key: int, key: int) -> bytes:
        """C_WrapKey with a parameterless ``mechanism`` (the AES key wraps)."""
        mech = _Mechanism(mechanism, None, 0)
        return sized(lambda buf, n: int(self._wrap(session, ctypes.byref(mech), wrapping_key, key, buf, n)))

    def crypt(self, session: Any, key: Any, data: bytes, mechanism: Any, param: Any, *, decrypt: bool = False) -> bytes:
        """``key.encrypt`` (``decrypt``) through python-pkcs11, finished here if it ran short of buffer."""
        try:
            if decrypt:
                return bytes(key.decrypt(data, mechanism=mechanism, mechanism_param=param))
            return bytes(key.encrypt(data, mechanism=mechanism, mechanism_param=param))
        except px.PKCS11Error as exc:
            if ckr_code(exc) != BUFFER_TOO_SMALL:
                raise
        try:
            return self.finish(session.handle, data, decrypt=decrypt)
        except px.OperationNotInitialized:
            if int(mechanism) != _CKM_AES_GCM:
                raise
        return self.gcm(session.handle, key.handle, param, data, decrypt=decrypt)

    def wrap_key(self, session: Any, kek: Any, key: Any, mechanism: Any) -> bytes:
        """``kek.wrap_key(key)`` (parameterless mechanism), repeated here if it ran short of buffer."""
        try:
            return bytes(kek.wrap_key(key, mechanism=mechanism))
        except px.PKCS11Error as exc:
            if ckr_code(exc) != BUFFER_TOO_SMALL:
                raise
            return self.wrap(session.handle, int(mechanism), kek.handle, key.handle)
