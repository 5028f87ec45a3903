"""Test support for keybridge and for code built on it.

Installed as a pytest plugin (``pytest11`` entry point ``keybridge``), it provides the fixtures
``softhsm_token`` (an isolated SoftHSM2 token per test session), ``pkcs11_token`` (each token
kind named in ``$KEYBRIDGE_TEST_TOKENS``, default ``softhsm``) and ``azure_emulator`` (a local
Managed HSM emulator over HTTPS), and :class:`ProviderConformance`, the suite every provider must
pass: subclass it in a test module and give it a ``provider`` fixture.
"""

from __future__ import annotations

from .conformance import ProviderConformance

__all__ = ["ProviderConformance"]
