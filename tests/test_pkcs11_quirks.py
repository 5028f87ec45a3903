"""Token quirks come from CK_TOKEN_INFO (manufacturer, model, firmware), never from the library."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from keybridge.testing._softhsm import Pkcs11TestToken, SoftHsmToken

pytest.importorskip("pkcs11")

from pkcs11 import Mechanism as M

from keybridge.providers.pkcs11 import Pkcs11Provider
from keybridge.providers.pkcs11._mechanisms import kwp_mechanism, supported
from keybridge.providers.pkcs11._quirks import ModuleQuirks, TokenQuirks, module_quirks_of, quirks_of


@dataclass(frozen=True)
class Described:
    """A CK_TOKEN_INFO as python-pkcs11's Token presents it."""

    manufacturer_id: str
    model: str
    firmware_version: tuple[int, int]


SOFTHSM_26 = Described("SoftHSM project", "SoftHSM v2", (2, 6))
MECHS: dict[int, int | None] = {int(M.AES_KEY_WRAP_PAD): None, int(M.RSA_PKCS_OAEP): None, int(M.AES_GCM): None}


@pytest.fixture(scope="module")
def provider(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        yield p


def test_provider_quirks_follow_the_token_info(provider: Pkcs11Provider) -> None:
    token = provider._pool.token
    assert str(token.manufacturer_id).startswith("SoftHSM")
    assert provider.quirks == quirks_of(token)
    assert provider.quirks.kwp_pads_first is (tuple(token.firmware_version) < (2, 7))
    assert provider.quirks.oaep_sha1_only
    assert "RSA-OAEP-256" not in provider.algorithms
    assert "CKM_AES_KEY_WRAP_PAD" in provider.algorithms


def test_another_token_behind_any_library_gets_no_softhsm_quirks() -> None:
    # e.g. a p11-kit proxy or a vendor library named like SoftHSM: only the token's own info counts
    assert quirks_of(Described("Acme HSM Ltd", "SoftHSM v2", (2, 6))) == TokenQuirks()
    assert quirks_of(Described("SoftHSM project", "Acme X1", (2, 6))) == TokenQuirks()
    plain = quirks_of(Described("Acme HSM Ltd", "X1", (1, 0)))
    assert kwp_mechanism(MECHS, plain) is None  # 0x210A is not RFC 5649 by the standard
    assert {"RSA-OAEP", "RSA-OAEP-256"} <= supported(MECHS, plain)


def test_softhsm_firmware_decides_the_padding_quirk() -> None:
    assert quirks_of(SOFTHSM_26).kwp_pads_first
    fixed = quirks_of(Described("SoftHSM project", "SoftHSM v2", (2, 7)))
    assert not fixed.kwp_pads_first
    assert fixed.pad_is_rfc5649
    assert kwp_mechanism(MECHS, fixed) is M.AES_KEY_WRAP_PAD
    assert "RSA-OAEP-256" not in supported(MECHS, fixed)


def test_opencryptoki_soft_token_gets_serialised_calls_and_nothing_else() -> None:
    assert quirks_of(Described("IBM Corp.", "IBM SoftTok     ", (1, 0))) == TokenQuirks(parallel_calls_crash=True)
    # opencryptoki's other tokens (CCA, EP11, ICA) and other IBM devices were not seen to crash.
    assert quirks_of(Described("IBM Corp.", "IBM CCA Token", (1, 0))) == TokenQuirks()
    assert quirks_of(Described("Acme HSM Ltd", "IBM SoftTok", (1, 0))) == TokenQuirks()


def test_a_token_that_crashes_on_parallel_calls_serialises_its_module(pkcs11_token: Pkcs11TestToken) -> None:
    # Whatever the kind: the provider's call lock follows the quirk its token reports.
    with pkcs11_token.provider() as p:
        serial = p._pool.lib.call_lock is not None
        assert p.quirks.parallel_calls_crash <= serial  # the quirk always serialises
        if p.quirks.parallel_calls_crash:
            assert not p._pool.lib.os_locking


def test_module_quirks_follow_ck_info_and_only_tpm2_pkcs11_has_them(provider: Pkcs11Provider) -> None:
    tpm2 = ModuleQuirks(fork_unusable=True, leaks_until_reinitialised=True, reuses_handles_after_destroy=True)
    assert module_quirks_of("tpm2-software.github.io") == tpm2  # CK_INFO.manufacturerID
    assert module_quirks_of("tpm2-software.github.io        ") == tpm2  # blank-padded, as on the wire
    assert module_quirks_of("SoftHSM") == ModuleQuirks()
    assert module_quirks_of("Mozilla Foundation") == ModuleQuirks()
    lib = provider._pool.lib
    assert lib.quirks == module_quirks_of(lib.lib.manufacturer_id)
