"""PKCS#11 error translation: the table, and real CKR codes from SoftHSM2."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keybridge import (
    IntegrityError,
    InvalidArgument,
    InvalidKeySpec,
    InvalidPackage,
    KeybridgeError,
    KeySpec,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from pkcs11 import Attribute as A
from pkcs11 import KeyType as KT
from pkcs11 import Mechanism as M
from pkcs11 import ObjectClass as OC
from pkcs11 import exceptions as px

from keybridge.providers.pkcs11 import Pkcs11Provider
from keybridge.providers.pkcs11._errors import translate
from keybridge.providers.pkcs11._session import PooledSession

ALL = sorted(
    (c for c in vars(px).values() if isinstance(c, type) and issubclass(c, px.PKCS11Error) and c is not px.PKCS11Error),
    key=lambda c: c.__name__,
)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad_input", [InvalidArgument, IntegrityError])
def test_no_python_pkcs11_exception_ends_as_a_bare_keybridge_error(
    cls: type[px.PKCS11Error], bad_input: type[KeybridgeError]
) -> None:
    err = translate("signing with key", "K", cls(), bad_input=bad_input)
    assert type(err) is not KeybridgeError
    assert isinstance(err, KeybridgeError)
    assert str(err).startswith("signing with key")


@pytest.mark.parametrize(
    ("exc", "expected", "words"),
    [
        (px.GeneralError(), ProviderUnavailable, "failed internally"),
        (px.FunctionFailed(), ProviderUnavailable, "failed internally"),
        (px.FunctionNotSupported(), UnsupportedAlgorithm, "does not implement"),
        (px.MechanismInvalid(), UnsupportedAlgorithm, "does not support this mechanism"),
        (px.MechanismParamInvalid(), UnsupportedAlgorithm, "does not support this mechanism"),
        (px.TemplateInconsistent(), InvalidKeySpec, "rejected the key's attributes"),
        (px.TemplateIncomplete(), InvalidKeySpec, "rejected the key's attributes"),
        (px.AttributeValueInvalid(), InvalidKeySpec, "rejected the key's attributes"),
        (px.KeySizeRange(), InvalidKeySpec, "size"),
        (px.AttributeReadOnly(), OperationNotPermitted, "does not permit"),
        (px.TokenWriteProtected(), OperationNotPermitted, "does not permit"),
        (px.WrappingKeyTypeInconsistent(), UnsupportedAlgorithm, "wrapping mechanism"),
        (px.DeviceMemory(), ProviderUnavailable, "not available"),
        (px.ArgumentsBad(), InvalidArgument, "rejected the input"),
        # python-pkcs11 0.10 raises these as plain PKCS11Error
        (px.PKCS11Error("Buffer was too small. Should never see this."), ProviderUnavailable, "CKR_BUFFER_TOO_SMALL"),
        (
            px.PKCS11Error("Initialisation error (not initialized). Should never see this."),
            ProviderUnavailable,
            "finalised",
        ),
        (px.PKCS11Error("Unmapped error code 0x68"), OperationNotPermitted, "CKR_KEY_FUNCTION_NOT_PERMITTED"),
        (px.PKCS11Error("Unmapped error code 0x140"), UnsupportedAlgorithm, "elliptic curve"),
        (px.PKCS11Error("Unmapped error code 0x4242"), ProviderUnavailable, "CKR 0x4242"),
        (px.PKCS11Error("Unmapped error code 0x80000007"), ProviderUnavailable, "vendor-defined code 0x80000007"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_translator_table(exc: px.PKCS11Error, expected: type[KeybridgeError], words: str) -> None:
    err = translate("doing it", "on K", exc)
    assert type(err) is expected
    assert words in str(err)
    assert str(err).startswith("doing it on K: ")


@pytest.mark.parametrize(
    "exc", [px.GeneralError(), px.EncryptedDataInvalid(), px.WrappedKeyInvalid(), px.DataLenRange()]
)
def test_decrypt_failures_are_integrity_errors(exc: px.PKCS11Error) -> None:
    assert type(translate("decrypting with key", "K", exc, bad_input=IntegrityError)) is IntegrityError


@pytest.mark.parametrize("exc", [px.GeneralError(), px.DataLenRange()])
def test_a_refused_input_can_be_reported_as_the_callers_error(exc: px.PKCS11Error) -> None:
    # What a BYOK import wants for a package the token will not unwrap, as the Azure backend does.
    err = translate("importing", "K", exc, bad_input=InvalidPackage)
    assert type(err) is InvalidPackage
    assert str(err).startswith("importing K failed: ")


def test_an_error_from_outside_python_pkcs11_is_still_typed() -> None:
    err = translate("reading", "K", OSError("module gone"))
    assert type(err) is ProviderUnavailable
    assert str(err) == "reading K: OSError from the PKCS#11 layer"


# ---- real CKR codes from SoftHSM2, through the provider's pool (the path every operation takes) ----


@pytest.fixture(scope="module")
def provider(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        p.create_key("errors-aes", KeySpec.aes(256))
        yield p
        p.delete_key("errors-aes")


def run(p: Pkcs11Provider, fn: Callable[[PooledSession], Any]) -> None:
    p._pool.run(fn, "trying", "on errors-aes")


def test_unlisted_mechanism_is_unsupported_algorithm(provider: Pkcs11Provider) -> None:
    assert int(M.AES_KEY_WRAP_KWP) not in provider.mechanisms  # 0x210B: SoftHSM 2.6/2.7 list 0x210A only
    info = provider.get_key("errors-aes")
    tpl = {A.CLASS: OC.SECRET_KEY, A.KEY_TYPE: KT.GENERIC_SECRET, A.TOKEN: False, A.EXTRACTABLE: True}

    def wrap(e: PooledSession) -> None:
        e.key(info).wrap_key(e.session.create_object({**tpl, A.VALUE: bytes(32)}), mechanism=M.AES_KEY_WRAP_KWP)

    with pytest.raises(UnsupportedAlgorithm, match="does not support this mechanism") as caught:
        run(provider, wrap)
    assert isinstance(caught.value.__cause__, px.MechanismInvalid)


def test_read_only_attribute_is_operation_not_permitted(provider: Pkcs11Provider) -> None:
    info = provider.get_key("errors-aes")
    with pytest.raises(OperationNotPermitted, match="does not permit") as caught:
        run(provider, lambda e: e.key(info).__setitem__(A.TRUSTED, True))  # only the SO may set it
    assert isinstance(caught.value.__cause__, px.AttributeReadOnly)


def test_inconsistent_template_is_invalid_key_spec(provider: Pkcs11Provider) -> None:
    with pytest.raises(InvalidKeySpec, match="rejected the key's attributes") as caught:
        run(provider, lambda e: e.session.generate_key(KT.AES, 256, store=False, template={A.CLASS: OC.PRIVATE_KEY}))
    assert isinstance(caught.value.__cause__, px.AttributeValueInvalid)


def test_general_error_is_provider_unavailable(provider: Pkcs11Provider) -> None:
    ed25519_oid = bytes.fromhex("06032b6570")  # SoftHSM answers CKR_GENERAL_ERROR for it under CKK_EC
    tpl = {A.EC_PARAMS: ed25519_oid}
    with pytest.raises(ProviderUnavailable, match="failed internally") as caught:
        run(provider, lambda e: e.session.generate_keypair(KT.EC, store=False, public_template=tpl))
    assert isinstance(caught.value.__cause__, px.GeneralError)


def test_key_function_not_permitted_is_operation_not_permitted(provider: Pkcs11Provider) -> None:
    provider.create_key("errors-noenc", KeySpec.aes(128))
    info = provider.get_key("errors-noenc")
    run(provider, lambda e: e.key(info).__setitem__(A.ENCRYPT, False))  # behind keybridge's back
    try:
        with pytest.raises(OperationNotPermitted, match="CKR_KEY_FUNCTION_NOT_PERMITTED"):
            provider.encrypt("errors-noenc", "A128GCM", b"data")
    finally:
        provider.delete_key("errors-noenc")
