"""``export_wrapped`` is in a token's capabilities only where the token lists what it needs.

The mechanism list decides it once, when the provider opens, so BYOK learns before it creates a
key that the source token cannot export it, instead of failing half-way through the export.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from keybridge import InvalidKeySpec, KeySpec, UnsupportedOperation
from keybridge.testing._softhsm import Pkcs11TestToken

pytest.importorskip("pkcs11")

from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Mechanism as M

from keybridge.providers.pkcs11 import _mechanisms as mech
from keybridge.providers.pkcs11._quirks import TokenQuirks

WRAP, ENCRYPT = 0x20000, 0x100 | 0x200
TWO_STEP = {int(M.AES_KEY_WRAP_KWP): WRAP, int(M.AES_KEY_GEN): 0x8000, int(M.RSA_PKCS_OAEP): WRAP | ENCRYPT}


def test_two_steps_need_rfc5649_wrap_aes_keygen_and_oaep_wrap() -> None:
    plain = TokenQuirks()
    assert mech.can_export_in_two_steps(TWO_STEP, plain)
    assert mech.can_export_in_two_steps({**TWO_STEP, int(M.AES_KEY_WRAP_KWP): None}, plain)  # flags unknown
    assert not mech.can_export_in_two_steps({**TWO_STEP, int(M.AES_KEY_WRAP_KWP): ENCRYPT}, plain)
    assert not mech.can_export_in_two_steps({**TWO_STEP, int(M.RSA_PKCS_OAEP): ENCRYPT}, plain)
    for missing in TWO_STEP:
        assert not mech.can_export_in_two_steps({m: f for m, f in TWO_STEP.items() if m != missing}, plain)


def test_capabilities_and_the_export_mechanism_agree_on_each_token(pkcs11_token: Pkcs11TestToken) -> None:
    with pkcs11_token.provider() as p:
        assert ("export_wrapped" in p.capabilities) is (p.wrapped_export_mechanism is not None)


def test_a_token_without_the_mechanisms_says_so_before_any_key_exists(
    pkcs11_token: Pkcs11TestToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one fault injected: the token's real mechanism list without the export mechanisms, as a
    # token that lacks them would report it; everything else is the real token.
    real = mech.read_mechanisms
    gone = {0x1054, int(M.AES_KEY_WRAP_PAD), int(M.AES_KEY_WRAP_KWP)}

    def without_export(slot: Any) -> Mapping[int, int | None]:
        return {m: f for m, f in real(slot).items() if m not in gone}

    monkeypatch.setattr(mech, "read_mechanisms", without_export)
    with pkcs11_token.provider() as p:
        assert p.wrapped_export_mechanism is None
        assert "export_wrapped" not in p.capabilities
        assert "create_key" in p.capabilities
        spec = KeySpec.ec("P-256") if "ES256" in p.algorithms else KeySpec.rsa(2048)
        try:
            p.create_key("no-export", spec, exportable=True)
        except InvalidKeySpec:  # tpm2-pkcs11 makes no key both extractable and sensitive
            p.create_key("no-export", spec)  # refused for the capability all the same, before the key
        try:
            kek = rsa.generate_private_key(65537, 2048).public_key()
            with pytest.raises(UnsupportedOperation, match="CKM_RSA_AES_KEY_WRAP") as err:
                p.export_wrapped("no-export", kek)
            assert "RFC 5649" in str(err.value)
        finally:
            p.delete_key("no-export")
