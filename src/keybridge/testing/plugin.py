"""The pytest plugin: registers keybridge's fixtures for any project that installs keybridge."""

from __future__ import annotations

from ._azure import azure_emulator
from ._softhsm import nss_token, opencryptoki_test_token, pkcs11_token, softhsm_token, tpm2_test_token

__all__ = [
    "azure_emulator",
    "nss_token",
    "opencryptoki_test_token",
    "pkcs11_token",
    "softhsm_token",
    "tpm2_test_token",
]
