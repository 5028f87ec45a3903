"""Unknown provider options are InvalidArgument on every backend, in one message shape (issue #9)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from keybridge import InvalidArgument, KeybridgeError, open_provider
from keybridge.providers.azure import CLIENT_OPTIONS, AzureKeyVaultProvider
from keybridge.testing._softhsm import SoftHsmToken

_SHAPE = re.compile(r"unknown option\(s\) for the (memory|pkcs11|azure) provider: 'bogus'; allowed: (.+)")


def _pkcs11(token: SoftHsmToken) -> Callable[..., object]:
    pytest.importorskip("pkcs11")
    from keybridge.providers.pkcs11 import Pkcs11Provider

    return lambda **kw: Pkcs11Provider(token.module_path, token.token_label, token.user_pin, **kw)


def _cases(token: SoftHsmToken) -> dict[str, tuple[Callable[..., object], str]]:
    return {
        "memory uri": (lambda **kw: open_provider("memory:", **kw), "add_versions, create, keystore, passphrase"),
        "pkcs11 class": (_pkcs11(token), "cache_seconds, init_args, module_path, pin_source, token_label, user_pin"),
        "pkcs11 uri": (
            lambda **kw: open_provider(token.uri(pin=False), user_pin=token.user_pin, **kw),
            "cache_seconds, init_args, module_path, pin_source, user_pin",
        ),
        "azure class": (lambda **kw: AzureKeyVaultProvider("https://kb.vault.azure.net", **kw), "cache_seconds"),
        "azure uri": (lambda **kw: open_provider("https://kb.vault.azure.net/keys/k", **kw), "retry_total"),
    }


@pytest.mark.parametrize("case", ["memory uri", "pkcs11 class", "pkcs11 uri", "azure class", "azure uri"])
def test_an_unknown_option_is_invalid_argument_naming_it_and_the_allowed_ones(
    softhsm_token: SoftHsmToken, case: str
) -> None:
    make, allowed = _cases(softhsm_token)[case]
    with pytest.raises(InvalidArgument) as err:
        make(bogus=1)
    m = _SHAPE.fullmatch(str(err.value))
    assert m is not None, str(err.value)
    assert allowed in m[2]


def test_azure_passes_on_only_the_azure_core_options_it_allows() -> None:
    # A misspelling the SDK would have swallowed (azure-core ignores unknown kwargs).
    with pytest.raises(InvalidArgument, match="'retry_totl'"):
        AzureKeyVaultProvider("https://kb.vault.azure.net", retry_totl=1)
    p = AzureKeyVaultProvider("https://kb.vault.azure.net", retry_total=1, logging_enable=False, api_version="7.5")
    assert p._client_kwargs["retry_total"] == 1
    assert {"retry_total", "connection_verify", "transport", "verify_challenge_resource"} <= CLIENT_OPTIONS


@pytest.mark.parametrize("case", ["memory uri", "pkcs11 class", "azure class"])
def test_an_option_name_holding_a_pin_is_not_echoed(softhsm_token: SoftHsmToken, case: str) -> None:
    make, _ = _cases(softhsm_token)[case]
    with pytest.raises(KeybridgeError) as err:
        make(**{"pin_S3cret": 1, "bogus": 2})
    assert isinstance(err.value, InvalidArgument)
    assert "S3cret" not in f"{err.value}{err.value!r}"
    assert "'bogus'" in str(err.value)
