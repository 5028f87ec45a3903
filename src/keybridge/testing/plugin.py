"""The pytest plugin: registers keybridge's fixtures for any project that installs keybridge."""

from __future__ import annotations

from ._azure import azure_emulator
from ._softhsm import pkcs11_token, softhsm_token

__all__ = ["azure_emulator", "pkcs11_token", "softhsm_token"]
