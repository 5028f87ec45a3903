"""Token quirks, decided from what the *token* reports (CK_TOKEN_INFO and its mechanism list).

Never from the module's path or the library's manufacturer: one module can front tokens of several
kinds (p11-kit proxies, vendor multiplexers), and a renamed or rebuilt library says nothing about
the firmware behind it. The one exception is what the module's *own* code does with its process
state, such as surviving a ``fork``: that is decided from CK_INFO, which the module itself reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["ModuleQuirks", "TokenQuirks", "module_quirks_of", "quirks_of"]

_SOFTHSM = "SoftHSM"
_OCK_SOFT_MODEL = "IBM SoftTok"
_TPM2_PKCS11 = "tpm2-software.github.io"  # CK_INFO.manufacturerID of tpm2-pkcs11


class TokenDescription(Protocol):
    """What CK_TOKEN_INFO says (python-pkcs11's ``Token`` has these attributes)."""

    @property
    def manufacturer_id(self) -> str: ...

    @property
    def model(self) -> str: ...

    @property
    def firmware_version(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class TokenQuirks:
    """Known deviations of one token from PKCS#11, each with the reason it applies."""

    #: CKM_AES_KEY_WRAP_PAD (0x210A) is RFC 5649 (KWP) on this token, as on SoftHSM (SoftHSMv2#726).
    pad_is_rfc5649: bool = False
    #: RSA-OAEP takes only SHA-1/MGF1-SHA1 without a label (SoftHSM 2.6/2.7 MechParamCheckRSAPKCSOAEP).
    oaep_sha1_only: bool = False
    #: RFC 5649 wrap zero-pads the key to 8 bytes first, so unwrap returns trailing zeros (SoftHSM < 2.7).
    kwp_pads_first: bool = False
    #: Parallel calls from several threads crash the process (SIGSEGV in C_GetAttributeValue and
    #: C_FindObjects under 8 threads: opencryptoki 3.8's soft token), so keybridge serialises them.
    parallel_calls_crash: bool = False


def quirks_of(token: TokenDescription) -> TokenQuirks:
    """The quirks of ``token``, from its manufacturer, model and firmware version."""
    maker, model = str(token.manufacturer_id).strip(), str(token.model).strip()
    if maker.startswith("IBM") and model == _OCK_SOFT_MODEL:
        return TokenQuirks(parallel_calls_crash=True)
    if not (maker.startswith(_SOFTHSM) and model.startswith(_SOFTHSM)):
        return TokenQuirks()
    firmware = tuple(token.firmware_version)  # SoftHSM reports its release here, e.g. (2, 6)
    return TokenQuirks(pad_is_rfc5649=True, oaep_sha1_only=True, kwp_pads_first=firmware < (2, 7))


@dataclass(frozen=True)
class ModuleQuirks:
    """Known deviations of one PKCS#11 *module's* own code (from CK_INFO), not of a token."""

    #: A forked child must not touch the module its parent initialised. tpm2-pkcs11 1.9: the
    #: child's C_Finalize + C_Initialize, which the standard asks for, runs over the parent's
    #: tpm2-abrmd connection and flushes the parent's TPM objects (the parent's next sign fails);
    #: C_Initialize alone answers CKR_CRYPTOKI_ALREADY_INITIALIZED and the child then drives the
    #: parent's TPM sessions, whose nonces move on, so the parent's next command fails its HMAC check.
    fork_unusable: bool = False
    #: The module leaks per-process state that only C_Finalize + C_Initialize clears, so keybridge
    #: re-initialises it (once, then runs the call again) when a call fails the way the leak makes
    #: it fail. tpm2-pkcs11 1.9 leaks two things: (1) every key pair it generates stays loaded in
    #: the TPM, even after C_DestroyObject, so after about 50 the resource manager has no object
    #: slots left ("out of memory for object contexts", CKR_GENERAL_ERROR); (2) its per-object
    #: count of operations in progress, when an operation fails halfway (a logout from elsewhere
    #: during a signature, or a failed P-521 one), after which C_DestroyObject answers
    #: CKR_FUNCTION_FAILED.
    leaks_until_reinitialised: bool = False
    #: After C_DestroyObject of any but the newest object, the module hands the next object it
    #: creates a handle that an existing object already has: lookups of the new key then return
    #: the other key's objects (a signature with the wrong key), and attribute writes change it.
    #: keybridge re-initialises such a module before the next call that creates or changes
    #: objects, which makes it load every object again under fresh handles (tpm2-pkcs11 1.9: after
    #: create a, create b, delete a, the new a's objects answered with b's CKA_ID).
    reuses_handles_after_destroy: bool = False


def module_quirks_of(module_manufacturer: str) -> ModuleQuirks:
    """The quirks of a module, from CK_INFO.manufacturerID."""
    if str(module_manufacturer).strip() == _TPM2_PKCS11:
        return ModuleQuirks(fork_unusable=True, leaks_until_reinitialised=True, reuses_handles_after_destroy=True)
    return ModuleQuirks()
