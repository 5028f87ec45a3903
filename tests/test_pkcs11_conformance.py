"""The PKCS#11 provider passes the provider conformance suite on a real SoftHSM2 token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keybridge.testing import ProviderConformance
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import Pkcs11Provider


class TestPkcs11Provider(ProviderConformance):
    """Everything but clear export: keys leave a PKCS#11 token only wrapped."""

    supports_export = False

    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls, softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
        with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
            yield p
