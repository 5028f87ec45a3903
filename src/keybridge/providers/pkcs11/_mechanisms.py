"""Which JWA algorithms a token can really do, and the PKCS#11 mechanism behind each one."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pkcs11 import MGF, GCMParams
from pkcs11 import Mechanism as M

from ...keys import AlgorithmSpec
from ._compat import forge_mechanism
from ._quirks import TokenQuirks

# CKF_* bits a CK_MECHANISM_INFO may carry. SoftHSM 2.6 ORs into an uninitialised value for
# AES-GCM, so bits outside this set mean "garbage": then only the mechanism's presence counts.
_KNOWN_FLAGS = 0x1 | 0x3FFFF00 | 0x80000000
_CKF_ENCRYPT, _CKF_DECRYPT, _CKF_SIGN, _CKF_WRAP, _CKF_UNWRAP = 0x100, 0x200, 0x800, 0x20000, 0x40000

_PREFIX = {  # DER DigestInfo headers for RSASSA-PKCS1-v1_5 over a precomputed digest (RFC 8017 §9.2)
    "SHA256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "SHA384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "SHA512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_HASH_MECH = {"SHA256": (M.SHA256, MGF.SHA256), "SHA384": (M.SHA384, MGF.SHA384), "SHA512": (M.SHA512, MGF.SHA512)}
OAEP_SHA1 = (M.SHA_1, MGF.SHA1, None)
_CKM_RSA_AES_KEY_WRAP = 0x1054
_CKZ_DATA_SPECIFIED = 1


RSA_AES_KEY_WRAP = forge_mechanism(_CKM_RSA_AES_KEY_WRAP, "RSA_AES_KEY_WRAP")  # python-pkcs11 0.10 lacks it


def _flags_ok(info_flags: int | None, needed: int) -> bool:
    if info_flags is None or info_flags & ~_KNOWN_FLAGS:
        return True  # unknown or garbage flags: trust the mechanism list alone
    return info_flags & needed == needed


def read_mechanisms(slot: Any) -> dict[int, int | None]:
    """The slot's mechanisms with their CKF_* flags (None where the token reported garbage)."""
    out: dict[int, int | None] = {}
    for mech in slot.get_mechanisms():
        try:
            flags: int | None = int(slot.get_mechanism_info(mech).flags)
        except Exception:  # a mechanism whose info cannot be read is still listed
            flags = None
        if flags is not None and flags & ~_KNOWN_FLAGS:
            flags = None
        out[int(mech)] = flags
    return out


def kwp_mechanism(mechs: Mapping[int, int | None], quirks: TokenQuirks) -> M | None:
    """The mechanism that does RFC 5649 on this token, if any.

    RFC 5649 is CKM_AES_KEY_WRAP_KWP (0x210B) in PKCS#11 3.x; SoftHSM implements it under 0x210A.
    """
    if int(M.AES_KEY_WRAP_KWP) in mechs:
        return M.AES_KEY_WRAP_KWP
    if int(M.AES_KEY_WRAP_PAD) in mechs and quirks.pad_is_rfc5649:
        return M.AES_KEY_WRAP_PAD
    return None


def has_rsa_aes_key_wrap(mechs: Mapping[int, int | None]) -> bool:
    """Whether the token lists CKM_RSA_AES_KEY_WRAP for wrapping (garbage flags: presence counts)."""
    return _CKM_RSA_AES_KEY_WRAP in mechs and _flags_ok(mechs[_CKM_RSA_AES_KEY_WRAP], _CKF_WRAP)


def can_export_in_two_steps(mechs: Mapping[int, int | None], quirks: TokenQuirks) -> bool:
    """Whether the token can do CKM_RSA_AES_KEY_WRAP's two steps itself: make an AES key, wrap
    the target with RFC 5649 and wrap the AES key with RSA-OAEP. A token that lists RFC 5649
    for encryption only (or has no OAEP wrap) would fail half-way, so all three are checked."""
    kwp = kwp_mechanism(mechs, quirks)
    return (
        kwp is not None
        and _flags_ok(mechs[int(kwp)], _CKF_WRAP)
        and int(M.AES_KEY_GEN) in mechs
        and int(M.RSA_PKCS_OAEP) in mechs
        and _flags_ok(mechs[int(M.RSA_PKCS_OAEP)], _CKF_WRAP)
    )


def supported(mechs: Mapping[int, int | None], quirks: TokenQuirks) -> frozenset[str]:
    """JWA names whose private/secret half the token performs correctly."""

    def has(mech: M, needed: int) -> bool:
        return int(mech) in mechs and _flags_ok(mechs[int(mech)], needed)

    algs: set[str] = set()
    if has(M.AES_GCM, _CKF_ENCRYPT | _CKF_DECRYPT):
        algs |= {"A128GCM", "A192GCM", "A256GCM"}
    if has(M.AES_KEY_WRAP, _CKF_WRAP | _CKF_UNWRAP):
        algs |= {"A128KW", "A192KW", "A256KW", "CKM_AES_KEY_WRAP"}
    if kwp_mechanism(mechs, quirks) is not None:
        algs.add("CKM_AES_KEY_WRAP_PAD")
    # RSA-OAEP and RSA1_5 name both decrypt and unwrapKey: claim them only where the token does
    # both (tpm2-pkcs11 lists CKM_RSA_PKCS_OAEP and CKM_RSA_PKCS for decrypt only, and C_UnwrapKey
    # then answers CKR_FUNCTION_NOT_SUPPORTED).
    if has(M.RSA_PKCS_OAEP, _CKF_DECRYPT | _CKF_UNWRAP):
        algs.add("RSA-OAEP")
        if not quirks.oaep_sha1_only:
            algs.add("RSA-OAEP-256")
            # SHA-384/512 OAEP where the token also lists the digest: its MGF1 needs the same hash.
            algs |= {f"RSA-OAEP-{h[3:]}" for h in ("SHA384", "SHA512") if int(_HASH_MECH[h][0]) in mechs}
    if has(M.RSA_PKCS, _CKF_SIGN):
        algs |= {"RS256", "RS384", "RS512"}
    if has(M.RSA_PKCS, _CKF_DECRYPT | _CKF_UNWRAP):
        algs.add("RSA1_5")
    if has(M.RSA_PKCS_PSS, _CKF_SIGN):
        algs |= {"PS256", "PS384", "PS512"}
    if has(M.ECDSA, _CKF_SIGN):
        algs |= {"ES256", "ES384", "ES512"}
    return frozenset(algs)


def _signature_table() -> dict[str, tuple[M, Any, bytes]]:
    table: dict[str, tuple[M, Any, bytes]] = {}
    for h, (hash_mech, mgf) in _HASH_MECH.items():
        bits = h[3:]
        table[f"ES{bits}"] = (M.ECDSA, None, b"")  # raw ECDSA over the digest: output is already r||s
        table[f"PS{bits}"] = (M.RSA_PKCS_PSS, (hash_mech, mgf, int(bits) // 8), b"")  # salt = hash length
        table[f"RS{bits}"] = (M.RSA_PKCS, None, _PREFIX[h])
    return table


_SIGNATURE = _signature_table()


def signature(alg: AlgorithmSpec, digest: bytes) -> tuple[M, Any, bytes]:
    """(mechanism, parameter, data) to sign a precomputed ``digest`` with ``alg``."""
    mechanism, param, prefix = _SIGNATURE[alg.name]
    return mechanism, param, prefix + digest


def rsa_decryption(alg: AlgorithmSpec) -> tuple[M, Any]:
    """(mechanism, parameter) for RSA decrypt/unwrap with ``alg``."""
    if alg.hash is None:
        return M.RSA_PKCS, None
    if alg.hash.name == "sha1":
        return M.RSA_PKCS_OAEP, OAEP_SHA1
    hash_mech, mgf = _HASH_MECH[alg.hash.name.upper().replace("-", "")]  # "sha384" -> SHA384
    return M.RSA_PKCS_OAEP, (hash_mech, mgf, None)


class _OaepParams(ctypes.Structure):
    """CK_RSA_PKCS_OAEP_PARAMS."""

    if sys.platform == "win32":
        _pack_ = 1  # Cryptoki structures are byte-packed on Windows
    _fields_ = (
        ("hashAlg", ctypes.c_ulong),
        ("mgf", ctypes.c_ulong),
        ("source", ctypes.c_ulong),
        ("pSourceData", ctypes.c_void_p),
        ("ulSourceDataLen", ctypes.c_ulong),
    )


class _RsaAesKeyWrapParams(ctypes.Structure):
    """CK_RSA_AES_KEY_WRAP_PARAMS."""

    if sys.platform == "win32":
        _pack_ = 1
    _fields_ = (("ulAESKeyBits", ctypes.c_ulong), ("pOAEPParams", ctypes.POINTER(_OaepParams)))


class RsaAesKeyWrapParams:
    """CK_RSA_AES_KEY_WRAP_PARAMS for Azure BYOK (AES-256, OAEP SHA-1 / MGF1-SHA-1, no label).

    python-pkcs11 has no encoder for it, so ``raw`` is the structure's bytes, passed as the
    ``mechanism_param`` escape hatch. Those bytes hold a pointer into the OAEP structure this
    object owns: keep the object referenced until the PKCS#11 call has returned. ctypes owns both
    buffers, so nothing is freed by hand.
    """

    __slots__ = ("_oaep", "_params", "raw")

    def __init__(self, aes_bits: int = 256) -> None:
        self._oaep = _OaepParams(int(M.SHA_1), int(MGF.SHA1), _CKZ_DATA_SPECIFIED, None, 0)
        self._params = _RsaAesKeyWrapParams(aes_bits, ctypes.pointer(self._oaep))
        self.raw = ctypes.string_at(ctypes.addressof(self._params), ctypes.sizeof(self._params))


def gcm(iv: bytes, aad: bytes | None) -> GCMParams:
    """GCM parameters: 96-bit IV, 128-bit tag."""
    return GCMParams(iv, aad or b"", 128)


def rfc5649_wrap(encrypt_block: Callable[[bytes], bytes], data: bytes) -> bytes:
    """RFC 5649 key wrap with padding, built on a one-block AES encryption the token performs.

    Used only where the token's own mechanism is wrong (SoftHSM < 2.7 pads before wrapping, so
    the length indicator counts the zero bytes): the key never leaves the token, only the AES
    block function is driven from here (RFC 3394 §2.2.1, with RFC 5649's alternative IV).
    """
    aiv = bytes.fromhex("A65959A6") + len(data).to_bytes(4, "big")
    padded = data + bytes(-len(data) % 8)
    if len(padded) == 8:
        return encrypt_block(aiv + padded)
    a, r = aiv, [padded[i : i + 8] for i in range(0, len(padded), 8)]
    n = len(r)
    for j in range(6):
        for i in range(n):
            b = encrypt_block(a + r[i])
            t = (n * j + i + 1).to_bytes(8, "big")
            a, r[i] = bytes(x ^ y for x, y in zip(b[:8], t, strict=False)), b[8:]
    return a + b"".join(r)
