"""The PKCS#11 provider passes the provider conformance suite on every token in $KEYBRIDGE_TEST_TOKENS.

What a token lacks is skipped by the suite itself: it exercises only ``provider.algorithms``, which
comes from the token's mechanism list.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keybridge.testing import ProviderConformance
from keybridge.testing._softhsm import Pkcs11TestToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import Pkcs11Provider


class TestPkcs11Provider(ProviderConformance):
    """Everything but clear export: keys leave a PKCS#11 token only wrapped."""

    supports_export = False
    supports_import_byok = False  # a token imports .byok packages only through Azure, not itself

    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls, pkcs11_token: Pkcs11TestToken) -> Iterator[Pkcs11Provider]:
        with pkcs11_token.provider() as p:
            yield p

    @pytest.fixture
    def spare_provider(self, pkcs11_token: Pkcs11TestToken) -> Iterator[Pkcs11Provider]:
        with pkcs11_token.provider() as p:
            yield p

    @pytest.fixture(scope="class")
    @classmethod
    def known_secrets(cls, pkcs11_token: Pkcs11TestToken) -> list[str]:
        return [pkcs11_token.user_pin]
