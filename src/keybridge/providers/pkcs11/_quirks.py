"""Token quirks, decided from what the *token* reports (CK_TOKEN_INFO and its mechanism list).

Never from the module's path or the library's manufacturer: one module can front tokens of several
kinds (p11-kit proxies, vendor multiplexers), and a renamed or rebuilt library says nothing about
the firmware behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["TokenQuirks", "quirks_of"]

_SOFTHSM = "SoftHSM"
_OCK_SOFT_MODEL = "IBM SoftTok"


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
