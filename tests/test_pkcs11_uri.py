"""RFC 7512 URIs and PIN sources of the PKCS#11 provider."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keybridge import AuthenticationError, InvalidArgument, InvalidKeyUri, KeySpec, open_key, open_provider
from keybridge.testing._softhsm import SoftHsmToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import PIN_ENV, Pkcs11Provider, from_uri
from keybridge.providers.pkcs11._pin import read_pin_source
from keybridge.providers.pkcs11._uri import key_uri, parse

SECRET = "s3cr3t-PIN"


def test_parse_decodes_percent_encoding_and_id_bytes() -> None:
    u = parse("pkcs11:token=My%20Token;object=a%3Bb;id=%01%FF;type=private?module-path=/x/lib.so&pin-value=12%2634")
    assert u.path == {"token": "My Token", "object": "a;b", "type": "private"}
    assert u.id == b"\x01\xff"
    assert u.query == {"module-path": "/x/lib.so", "pin-value": "12&34"}


def test_key_uri_round_trips_through_parse() -> None:
    uri = key_uri("tok en", "name/with;odd=chars", b"\x00kb\xff")
    u = parse(uri)
    assert (u.path["token"], u.path["object"], u.id) == ("tok en", "name/with;odd=chars", b"\x00kb\xff")


def test_vendor_attributes_are_accepted() -> None:
    assert parse("pkcs11:token=t;x-vendor=1?x-other=2").path["x-vendor"] == "1"


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("pkcs11:token=t;colour=red", "'colour'"),
        ("pkcs11:token=t?pin-colour=1", "mentions a PIN"),  # a misspelt PIN attribute is not echoed
        ("pkcs11:token=t;object=%zz", "'object'"),
        ("pkcs11:token=t;object", "'object'"),
        ("pkcs11:token=t;token=u", "'token'"),
        ("pkcs11:token=t;type=banana", "'type'"),
        ("pkcs11:token=t;id=%01;id=%02", "'id'"),
        ("memory:x", "pkcs11:"),
    ],
)
def test_malformed_uris_are_typed_errors_naming_the_attribute(uri: str, named: str) -> None:
    with pytest.raises(InvalidKeyUri, match=named):
        parse(uri)


def test_uri_errors_never_echo_the_pin() -> None:
    with pytest.raises(InvalidKeyUri) as err:
        parse(f"pkcs11:token=t;bogus=1?pin-value={SECRET}")
    assert SECRET not in str(err.value)
    assert "pin-value=***" in str(err.value)


def test_from_uri_needs_token_and_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYBRIDGE_PKCS11_MODULE", raising=False)
    with pytest.raises(InvalidKeyUri, match="token"):
        from_uri("pkcs11:object=x?module-path=/x.so")
    with pytest.raises(InvalidKeyUri, match="module"):
        from_uri(f"pkcs11:token=t?pin-value={SECRET}")


@pytest.fixture(scope="module")
def key_name(softhsm_token: SoftHsmToken) -> Iterator[str]:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        p.create_key("uri-key", KeySpec.aes(128))
        yield "uri-key"
        p.delete_key("uri-key")


def test_open_provider_with_pin_value_and_canonical_ref_has_no_pin(softhsm_token: SoftHsmToken, key_name: str) -> None:
    with open_provider(softhsm_token.uri()) as p:
        info = p.get_key(key_name)
    assert info.ref.uri.startswith(f"pkcs11:token={softhsm_token.token_label};object={key_name};id=%6B%62")
    assert "pin" not in info.ref.uri
    assert softhsm_token.user_pin not in repr(p) + str(info)


def test_pin_source_file(softhsm_token: SoftHsmToken, key_name: str, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm_token.user_pin + "\n")
    uri = softhsm_token.uri(key_name, pin=False) + f"&pin-source=file:{pin_file}"
    handle = open_key(uri)
    try:
        ct = handle.encrypt("A128GCM", b"data")
        assert handle.decrypt("A128GCM", ct) == b"data"
    finally:
        handle.provider.close()


def test_pin_from_environment(softhsm_token: SoftHsmToken, key_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PIN_ENV, softhsm_token.user_pin)
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label) as p:
        assert p.get_key(key_name).spec == KeySpec.aes(128)


def test_missing_pin_says_how_to_give_one(softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PIN_ENV, raising=False)
    with pytest.raises(AuthenticationError, match=PIN_ENV):
        Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label)


def test_unreadable_pin_source_is_an_authentication_error(softhsm_token: SoftHsmToken, tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError, match="PIN file"):
        Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, pin_source=f"file:{tmp_path}/none")


def test_key_uri_of_another_token_is_refused(softhsm_token: SoftHsmToken, key_name: str) -> None:
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as p:
        with pytest.raises(InvalidKeyUri, match="other"):
            p.get_key(f"pkcs11:token=other;object={key_name}")
        assert p.get_key(f"pkcs11:token={softhsm_token.token_label};object={key_name}").ref.name == key_name


@pytest.mark.parametrize(
    "uri",
    [
        "pkcs11:token=x?pin=CANARY99",
        "pkcs11:token=x?pin_value=CANARY99",
        "pkcs11:token=x?user-pin=CANARY99",
        "pkcs11:token=x?pin-value%3DCANARY99",
        "pkcs11:token=x;pin-value:CANARY99",
        "pkcs11:token=x;object=k;pinned=CANARY99",
    ],
)
def test_misspelt_pin_attributes_are_never_echoed(uri: str) -> None:
    with pytest.raises(InvalidKeyUri) as info:
        parse(uri)
    assert "CANARY99" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe" + SECRET.encode() + b"\n", "not UTF-8"),
        (SECRET.encode() + b"\x00\n", "NUL"),
        (b"7" * 5000, "longer"),
    ],
)
def test_pin_file_that_is_not_a_text_pin_is_a_typed_error(tmp_path: Path, content: bytes, problem: str) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_bytes(content)
    with pytest.raises(InvalidArgument, match=problem) as err:
        read_pin_source(f"file:{pin_file}")
    assert SECRET not in str(err.value)


def test_pin_source_dev_zero_is_read_capped_and_refused() -> None:
    # /dev/zero has no line end: an uncapped readline would never return
    with pytest.raises(InvalidArgument, match="longer"):
        read_pin_source("file:/dev/zero")


def test_pin_file_first_line_only(tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_bytes(SECRET.encode() + b"\r\nsecond line\n")
    assert read_pin_source(f"file://{pin_file}") == SECRET


def test_unknown_provider_option_is_a_typed_error_naming_the_accepted_ones() -> None:
    with pytest.raises(
        InvalidArgument, match=r"bogus.*allowed: cache_seconds, init_args, module_path, pin_source, user_pin"
    ):
        open_provider("pkcs11:token=t?module-path=/x.so", bogus=1)


@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libz.so.1").exists(), reason="needs libz at the Debian path")
def test_a_shared_library_that_is_not_pkcs11_is_a_typed_error() -> None:
    from keybridge import ProviderUnavailable

    with pytest.raises(ProviderUnavailable, match=r"libz\.so\.1 is a shared library but not a PKCS#11 module"):
        Pkcs11Provider("/lib/x86_64-linux-gnu/libz.so.1", "t", SECRET)
