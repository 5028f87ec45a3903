"""A PIN typed with the wrong URI separator (``;`` vs ``&``) never leaks into reprs, messages or audit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keybridge import InvalidKeyUri, KeybridgeError, KeySpec, audit, open_key, open_provider
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import Pkcs11Provider

PIN = "Wr0ngSep-PIN-7731"


@pytest.fixture
def events() -> Iterator[list[audit.AuditEvent]]:
    got: list[audit.AuditEvent] = []
    audit.add_sink(got.append)
    yield got
    audit.remove_sink(got.append)


@pytest.fixture(scope="module")
def provider(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11Provider]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        p.create_key("sep-key", KeySpec.aes(128))
        yield p
        p.delete_key("sep-key")


def _misspelt(t: SoftHsmToken) -> list[str]:
    module = t.module_path
    return [
        f"pkcs11:token={t.token_label}&pin-value={PIN}?module-path={module}",
        f"pkcs11:token={t.token_label};object=sep-key&pin-value={PIN}?module-path={module}",
        f"pkcs11:token={t.token_label}?module-path={module};pin-value={PIN}",
        f"pkcs11:token={t.token_label};object=sep-key?module-path={module};pin-value={PIN}",
    ]


def _assert_clean(err: BaseException, events: list[audit.AuditEvent]) -> None:
    text = f"{err}\n{err!r}\n{err.__cause__!r}\n{err.__context__!r}\n" + "\n".join(map(repr, events))
    assert PIN not in text
    assert isinstance(err, InvalidKeyUri), text
    assert "separated by" in str(err)  # says what was wrong: the separator


@pytest.mark.parametrize("index", range(4))
def test_misspelt_pin_separator_on_open_is_refused_without_echo(
    softhsm_token: SoftHsmToken, events: list[audit.AuditEvent], index: int
) -> None:
    uri = _misspelt(softhsm_token)[index]
    with pytest.raises(KeybridgeError) as err, open_key(uri) if "object=" in uri else open_provider(uri):
        pass
    _assert_clean(err.value, events)


@pytest.mark.parametrize("index", range(4))
def test_misspelt_pin_separator_in_key_lookups_is_refused_without_echo(
    softhsm_token: SoftHsmToken, provider: Pkcs11Provider, events: list[audit.AuditEvent], index: int
) -> None:
    uri = (
        _misspelt(softhsm_token)[index].replace(
            f"token={softhsm_token.token_label}", f"token={softhsm_token.token_label};object=sep-key", 1
        )
        if index in (0, 2)
        else _misspelt(softhsm_token)[index]
    )
    for call in (provider.get_key, provider.key):
        with pytest.raises(KeybridgeError) as err:
            call(uri)
        _assert_clean(err.value, events)
    assert PIN not in repr(provider) + str(provider)


def test_misspelt_token_separator_for_a_missing_token_names_no_pin(softhsm_token: SoftHsmToken) -> None:
    with pytest.raises(KeybridgeError) as err:
        Pkcs11Provider(softhsm_token.module_path, f"nope&pin-value={PIN}", softhsm_token.user_pin)
    assert PIN not in f"{err.value}{err.value!r}"
