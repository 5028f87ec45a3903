"""Azure provider pieces that need no service: URIs, JWK conversion, error mapping.

Error mapping is checked on real azure-core exception objects carrying real HTTP responses with
Key Vault error bodies, i.e. exactly what the SDK raises.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from azure.core.rest._requests_basic import RestRequestsTransportResponse
from azure.keyvault.keys import KeyVaultKey
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import keybridge
from keybridge.errors import (
    AuthenticationError,
    IntegrityError,
    InvalidArgument,
    InvalidKeySpec,
    InvalidKeyUri,
    InvalidPackage,
    KeybridgeError,
    KeyExists,
    KeyNotFound,
    OperationNotPermitted,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)
from keybridge.keys import KeyOp, KeySpec, KeyType
from keybridge.providers.azure import AzureKeyVaultProvider, from_uri
from keybridge.providers.azure._convert import SIZE_TAG, key_info, private_jwk, stored_tags
from keybridge.providers.azure._errors import translate, translated
from keybridge.providers.azure._uri import _shown, split_key_id

# ---- URIs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://contoso.vault.azure.net", ("https://contoso.vault.azure.net", None, None)),
        ("https://Contoso.Vault.Azure.Net/", ("https://contoso.vault.azure.net", None, None)),
        ("https://contoso.vault.azure.net:443/keys/k1", ("https://contoso.vault.azure.net", "k1", None)),
        ("https://h.managedhsm.azure.net/keys/k-1/0123abcd", ("https://h.managedhsm.azure.net", "k-1", "0123abcd")),
        ("https://127.0.0.1:8443/keys/k1/v1/", ("https://127.0.0.1:8443", "k1", "v1")),
        ("https://localhost:9/", ("https://localhost:9", None, None)),
    ],
)
def test_key_ids_split_into_vault_name_and_version(uri: str, expected: tuple[str, str | None, str | None]) -> None:
    assert split_key_id(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "http://contoso.vault.azure.net/keys/k",
        "https:///keys/k",
        "https://contoso.vault.azure.net/secrets/k",
        "https://contoso.vault.azure.net/keys/",
        "https://contoso.vault.azure.net/keys/a/b/c",
        "https://contoso.vault.azure.net/keys/bad_name",
        "https://contoso.vault.azure.net/keys/k?api-version=7.4",
        "https://user:pw@contoso.vault.azure.net/keys/k",
        "https://contoso.vault.azure.net:notaport/keys/k",
    ],
)
def test_malformed_uris_quote_the_input_and_the_expected_form(uri: str) -> None:
    with pytest.raises(InvalidKeyUri) as info:
        split_key_id(uri)
    # The input is quoted as far as it is safe to: credentials, query strings and ports that are
    # not numbers are redacted.
    assert repr(_shown(uri)) in str(info.value)
    assert "https://VAULT.vault.azure.net" in str(info.value)
    assert ":pw@" not in str(info.value)


def test_open_key_routes_a_key_id_to_its_vault_without_contacting_it() -> None:
    handle = keybridge.open_key("https://contoso.vault.azure.net/keys/k1/abc123", credential=object())
    assert isinstance(handle.provider, AzureKeyVaultProvider)
    assert handle.provider.vault_url == "https://contoso.vault.azure.net"
    assert (handle.ref.name, handle.ref.version) == ("k1", "abc123")
    assert str(handle.ref) == "https://contoso.vault.azure.net/keys/k1/abc123"


def test_a_key_of_another_vault_is_refused() -> None:
    p = from_uri("https://a.vault.azure.net")
    with pytest.raises(InvalidKeyUri, match=r"not of this provider's vault https://a\.vault\.azure\.net"):
        p.ref("https://b.vault.azure.net/keys/k1")


def test_the_constructor_wants_a_vault_url_not_a_key_id() -> None:
    with pytest.raises(InvalidKeyUri, match="is a key id"):
        AzureKeyVaultProvider("https://a.vault.azure.net/keys/k1")


def test_key_vault_hosts_offer_no_symmetric_algorithms_and_refuse_aes_keys_locally() -> None:
    kv = AzureKeyVaultProvider("https://a.vault.azure.net")
    assert {"RSA-OAEP-256", "PS256", "ES256"} <= kv.algorithms
    assert not {"A256KW", "A256GCM", "CKM_AES_KEY_WRAP_PAD"} & kv.algorithms
    assert kv.hsm is False
    with pytest.raises(InvalidKeySpec, match="Managed HSM"):
        kv.create_key("aes", KeySpec.aes(256))
    # Refused before any client (and so any DefaultAzureCredential) was built.
    assert kv._client is None


@pytest.mark.parametrize("url", ["https://h.managedhsm.azure.net", "https://127.0.0.1:8443"])
def test_managed_hsm_and_emulator_hosts_offer_aes_and_default_to_hsm_keys(url: str) -> None:
    p = AzureKeyVaultProvider(url)
    assert {"A256KW", "A128GCM", "CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP_PAD"} <= p.algorithms
    assert p.hsm is True
    assert AzureKeyVaultProvider(url, hsm=False).hsm is False


def test_export_hooks_explain_that_azure_only_releases_keys_securely() -> None:
    p = AzureKeyVaultProvider("https://h.managedhsm.azure.net")
    info = keybridge.KeyInfo(_ref("k", "1"), KeySpec.aes(256), frozenset(), exportable=True)
    with pytest.raises(UnsupportedAlgorithm, match="secure key release"):
        p._export_key(info)
    with pytest.raises(UnsupportedAlgorithm, match="secure key release"):
        p._export_wrapped(info, rsa.generate_private_key(65537, 2048).public_key())


def test_invalid_key_names_are_refused_before_the_service_is_called() -> None:
    p = AzureKeyVaultProvider("https://h.managedhsm.azure.net")
    with pytest.raises(InvalidArgument, match="letters, digits and dashes"):
        p.create_key("no_underscores", KeySpec.rsa(2048))
    assert p._client is None


def test_reserved_size_tag_cannot_be_set_by_callers() -> None:
    with pytest.raises(InvalidKeySpec, match="reserved"):
        stored_tags(KeySpec.aes(128), {SIZE_TAG: "256"})
    assert stored_tags(KeySpec.aes(128), {"a": "b"}) == {"a": "b", SIZE_TAG: "128"}
    assert stored_tags(KeySpec.rsa(2048), {"a": "b"}) == {"a": "b"}


# ---- JWK conversion --------------------------------------------------------------------------------


def _ref(name: str, version: str | None) -> keybridge.KeyRef:
    return keybridge.KeyRef("https", name, version, f"https://v/keys/{name}/{version}")


def test_rsa_private_jwk_carries_exactly_the_key_numbers() -> None:
    key = rsa.generate_private_key(65537, 2048)
    jwk = private_jwk(key, "RSA-HSM", {KeyOp.SIGN, KeyOp.DECRYPT})
    n = key.private_numbers()
    as_int = lambda b: int.from_bytes(b, "big")  # noqa: E731
    assert (as_int(jwk.n), as_int(jwk.e), as_int(jwk.d)) == (n.public_numbers.n, n.public_numbers.e, n.d)
    assert (as_int(jwk.p), as_int(jwk.q)) == (n.p, n.q)
    assert (as_int(jwk.dp), as_int(jwk.dq), as_int(jwk.qi)) == (n.dmp1, n.dmq1, n.iqmp)
    assert jwk.kty == "RSA-HSM"
    assert jwk.key_ops == ["decrypt", "sign"]


@pytest.mark.parametrize(("curve", "size"), [(ec.SECP256R1(), 32), (ec.SECP384R1(), 48), (ec.SECP521R1(), 66)])
def test_ec_private_jwk_pads_coordinates_to_the_curve_size(curve: ec.EllipticCurve, size: int) -> None:
    key = ec.generate_private_key(curve)
    jwk = private_jwk(key, "EC", {KeyOp.SIGN})
    assert (len(jwk.d), len(jwk.x), len(jwk.y)) == (size, size, size)
    assert int.from_bytes(jwk.d, "big") == key.private_numbers().private_value
    assert jwk.crv == KeySpec.of(key).curve


def test_aes_jwk_holds_the_raw_key() -> None:
    jwk = private_jwk(b"\x01" * 16, "oct-HSM", {KeyOp.WRAP_KEY})
    assert (jwk.kty, jwk.k, jwk.key_ops) == ("oct-HSM", b"\x01" * 16, ["wrapKey"])


def test_key_info_from_a_service_rsa_key() -> None:
    pub = rsa.generate_private_key(65537, 3072).public_key().public_numbers()
    jwk = {
        "kty": "RSA-HSM",
        "n": pub.n.to_bytes(384, "big"),
        "e": pub.e.to_bytes(3, "big"),
        "key_ops": ["sign", "verify", "release"],  # 'release' has no keybridge name: left out
    }
    info = key_info(KeyVaultKey("https://v/keys/k1/ver1", jwk=jwk, tags={"team": "x"}), _ref)
    assert info.spec == KeySpec.rsa(3072)
    assert info.ops == {KeyOp.SIGN, KeyOp.VERIFY}
    assert info.hsm_protected
    assert (info.ref.name, info.ref.version) == ("k1", "ver1")
    assert info.tags == {"team": "x"}
    assert info.public_key is not None
    assert info.public_key.public_numbers() == pub


def test_key_info_reads_the_aes_size_tag_and_hides_it() -> None:
    jwk = {"kty": "oct-HSM", "key_ops": ["wrapKey", "unwrapKey"]}
    info = key_info(KeyVaultKey("https://v/keys/a/1", jwk=jwk, tags={SIZE_TAG: "192", "t": "1"}), _ref)
    assert info.spec == KeySpec.aes(192)
    assert info.tags == {"t": "1"}
    assert info.public_key is None
    assert info.spec.kty is KeyType.OCT


def test_unsupported_service_curves_are_a_key_spec_error() -> None:
    jwk = {"kty": "EC-HSM", "crv": "P-224", "x": b"\x01" * 28, "y": b"\x02" * 28}
    with pytest.raises(InvalidKeySpec, match="P-224"):
        key_info(KeyVaultKey("https://v/keys/e/1", jwk=jwk), _ref)


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC-HSM", "crv": "P-256", "x": b"\x01" * 32, "y": b"\x02" * 32},  # not on the curve
        {"kty": "RSA-HSM", "n": b"\x0f", "e": b"\x01\x00\x01"},  # a modulus smaller than the exponent
    ],
)
def test_an_invalid_public_key_from_the_service_is_a_key_spec_error(jwk: dict[str, object]) -> None:
    with pytest.raises(InvalidKeySpec, match="not valid") as caught:
        key_info(KeyVaultKey("https://v/keys/bad/1", jwk=jwk), _ref)
    assert isinstance(caught.value.__cause__, ValueError)


# ---- error mapping -------------------------------------------------------------------------------


def _http_error(status: int, code: str = "", inner: str = "", message: str = "", cls: type = HttpResponseError):
    body = {"error": {"code": code, "message": message, **({"innererror": {"code": inner}} if inner else {})}}
    raw = requests.Response()
    raw.status_code = status
    raw.reason = "reason"
    raw.headers["Content-Type"] = "application/json"
    raw.raw = io.BytesIO(json.dumps(body).encode())
    response = RestRequestsTransportResponse(request=HttpRequest("GET", "https://v/keys/k"), internal_response=raw)
    response.read()
    return cls(response=response)


@pytest.mark.parametrize(
    ("status", "code", "inner", "cls", "expected"),
    [
        (401, "Unauthorized", "", ClientAuthenticationError, AuthenticationError),
        (401, "Unauthorized", "", HttpResponseError, AuthenticationError),  # raw send_request answers
        (403, "Forbidden", "KeyOperationForbidden", HttpResponseError, OperationNotPermitted),
        (404, "KeyNotFound", "", ResourceNotFoundError, KeyNotFound),
        (409, "Conflict", "ObjectIsBeingRecovered", HttpResponseError, KeyExists),
        (409, "Conflict", "ObjectIsDeletedButRecoverable", HttpResponseError, OperationNotPermitted),
        (400, "BadParameter", "", HttpResponseError, InvalidArgument),
        (429, "Throttled", "", HttpResponseError, ProviderUnavailable),
        (503, "ServiceUnavailable", "", HttpResponseError, ProviderUnavailable),
        (418, "Teapot", "", HttpResponseError, ProviderUnavailable),  # typed, as PKCS#11 does,
    ],
)
def test_http_errors_map_to_keybridge_errors(status: int, code: str, inner: str, cls: type, expected: type) -> None:
    exc = _http_error(status, code, inner, "A key with (name/id) k was not found", cls)
    err = translate("get key k", None, exc)
    assert type(err) is expected
    assert str(err).startswith("get key k: ")
    assert code in str(err)


def test_deleted_but_recoverable_says_recover_or_purge() -> None:
    err = translate("create key", "k", _http_error(409, "Conflict", "ObjectIsDeletedButRecoverable"))
    assert str(err).startswith("create key k: ")
    assert "recover it or purge it" in str(err)


@pytest.mark.parametrize("bad_input", [InvalidPackage, IntegrityError])
def test_a_refused_request_can_be_reported_as_the_callers_error(bad_input: type[KeybridgeError]) -> None:
    err = translate("import", None, _http_error(400, "BadParameter", message="bad key_hsm"), bad_input=bad_input)
    assert type(err) is bad_input
    assert "bad key_hsm" in str(err)


@pytest.mark.parametrize("exc_type", [ServiceRequestError, ServiceResponseError])
def test_connection_failures_are_provider_unavailable(exc_type: type) -> None:
    with pytest.raises(ProviderUnavailable, match="cannot be reached") as info, translated("get key k"):
        raise exc_type("Connection refused")
    assert isinstance(info.value.__cause__, exc_type)


def test_challenge_resource_mismatch_points_at_the_option() -> None:
    with pytest.raises(AuthenticationError, match="verify_challenge_resource=False"), translated("get key k"):
        raise ValueError("The challenge resource 'localhost' does not match the requested domain.")


def test_unrelated_value_errors_are_not_swallowed() -> None:
    with pytest.raises(ValueError, match="programming error") as info, translated("get key k"):
        raise ValueError("programming error")
    assert not isinstance(info.value, KeybridgeError)


def test_tokens_never_reach_error_messages() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    exc = _http_error(401, "Unauthorized", message=f"token Bearer {jwt} rejected")
    with pytest.raises(AuthenticationError) as info, translated("get key k"):
        raise exc
    assert jwt not in str(info.value)
    assert "eyJ" not in str(info.value)
    assert info.value.__cause__ is exc


def test_missing_azure_packages_name_the_extra_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['azure.keyvault.keys'] = None  # as if azure-keyvault-keys were not installed\n"
        "import keybridge\n"
        "try:\n"
        "    keybridge.AzureKeyVaultProvider\n"
        "except keybridge.MissingDependency as exc:\n"
        "    print('MISSING', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.startswith("MISSING ")
    assert 'pip install "keybridge-sdk[azure]"' in out


@pytest.mark.parametrize("option", ["cache_seconds", "delete_timeout"])
@pytest.mark.parametrize("value", ["30", -1, float("nan"), True, None])
def test_timing_options_must_be_non_negative_seconds(option: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=f"{option} must be a number of seconds"):
        AzureKeyVaultProvider("https://contoso.managedhsm.azure.net", **{option: value})  # type: ignore[arg-type]
