"""Secrets in hostile or careless input never reach a repr, a log line or an error message:
emulator tokens, and URL userinfo, queries and fragments in Azure key URIs."""

from __future__ import annotations

import logging

import pytest

import keybridge
from keybridge import InvalidKeyUri
from keybridge.emulator import EmulatorCredential
from keybridge.providers.azure._uri import split_key_id

CANARY = "CANARY-7f3a9"


def _shapes(obj: object) -> list[str]:
    return [repr(obj), str(obj), f"{obj}", f"{obj!r}", "%r" % (obj,), "%s" % (obj,), repr([obj]), repr({"k": obj})]  # noqa: UP031


@pytest.mark.parametrize(
    "make",
    [
        lambda c: c,
        lambda c: c.get_token("https://managedhsm.azure.net/.default"),
        lambda c: c.get_token_info("https://managedhsm.azure.net/.default"),
    ],
    ids=["credential", "AccessToken", "AccessTokenInfo"],
)
def test_token_holders_never_show_the_token(make: object, caplog: pytest.LogCaptureFixture) -> None:
    obj = make(EmulatorCredential(CANARY))  # type: ignore[operator]
    for text in _shapes(obj):
        assert CANARY not in text
        assert "hidden" in text
    with caplog.at_level(logging.DEBUG, logger="keybridge.test"):
        logging.getLogger("keybridge.test").debug("got %r and %s", obj, obj)
    assert caplog.records
    assert CANARY not in caplog.text


def test_the_access_token_still_works_as_the_sdk_expects() -> None:
    token = EmulatorCredential(CANARY).get_token("scope")
    assert token.token == CANARY  # the value itself is there for azure-core to send
    assert token[0] == CANARY
    assert token.expires_on > 0


_SECRET_URIS = [
    f"https://user:{CANARY}@x.managedhsm.azure.net/keys/k#frag",
    f"https://x.managedhsm.azure.net/keys/k#{CANARY}",
    f"https://x.managedhsm.azure.net/keys/k?sig={CANARY}",
    f"https://x.managedhsm.azure.net/keys/k/v?a=1#{CANARY}",
    f"https://x.managedhsm.azure.net/keys/bad_name#{CANARY}",
    f"https://u:p@{CANARY}@x.managedhsm.azure.net/keys/k",  # an unencoded "@" in the password
    f"https://u:{CANARY}?x@x.managedhsm.azure.net/keys/k",  # an unencoded "?" in the password
    f"https://[::1/keys/k#{CANARY}",  # urlsplit itself refuses this one
    f"https://x.managedhsm.azure.net:{CANARY}/keys/k",  # a port urlsplit cannot read
]


@pytest.mark.parametrize("uri", _SECRET_URIS)
def test_azure_uri_errors_show_scheme_host_and_path_only(uri: str) -> None:
    with pytest.raises(InvalidKeyUri) as info:
        split_key_id(uri)
    message = str(info.value)
    assert CANARY not in message
    assert "#frag" not in message
    assert "expected https://" in message  # still says what to do


@pytest.mark.parametrize("uri", _SECRET_URIS)
@pytest.mark.parametrize("opener", [keybridge.open_provider, keybridge.open_key], ids=["open_provider", "open_key"])
def test_open_provider_and_open_key_do_not_echo_url_secrets(uri: str, opener: object) -> None:
    with pytest.raises(InvalidKeyUri) as info:
        opener(uri, credential=object())  # type: ignore[operator]
    assert CANARY not in str(info.value)
    assert CANARY not in repr(info.value)


def test_the_redacted_form_keeps_scheme_host_and_path() -> None:
    with pytest.raises(InvalidKeyUri) as info:
        split_key_id(f"https://user:{CANARY}@x.managedhsm.azure.net/keys/k#frag")
    assert "'https://***@x.managedhsm.azure.net/keys/k#…'" in str(info.value)
