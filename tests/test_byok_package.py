"""The .byok codec: what Azure tools write parses, and anything malformed is an InvalidPackage."""

from __future__ import annotations

import base64
import json
import os

import pytest

from keybridge import InvalidArgument, InvalidPackage
from keybridge.byok import ByokPackage

KID = "https://contoso.managedhsm.azure.net/keys/kek/0123456789abcdef"
BLOB = bytes(range(256)) + os.urandom(42)  # 298 bytes: base64 needs padding


def doc(**changes: object) -> dict[str, object]:
    d: dict[str, object] = {
        "schema_version": "1.0.0",
        "header": {"kid": KID, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
        "ciphertext": base64.urlsafe_b64encode(BLOB).decode().rstrip("="),
        "generator": "test",
    }
    d.update(changes)
    return d


def test_written_package_has_the_azure_shape_and_unpadded_base64url() -> None:
    written = json.loads(ByokPackage(kid=KID, ciphertext=BLOB, generator="g").to_json())
    assert written["schema_version"] == "1.0.0"
    assert written["header"] == {"kid": KID, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"}
    assert "=" not in written["ciphertext"]
    assert "+" not in written["ciphertext"]
    assert base64.urlsafe_b64decode(written["ciphertext"] + "==") == BLOB


@pytest.mark.parametrize("padded", [True, False])
def test_padded_and_unpadded_base64url_both_parse(padded: bool) -> None:
    text = base64.urlsafe_b64encode(BLOB).decode()
    assert text.endswith("=")
    pkg = ByokPackage.from_json(json.dumps(doc(ciphertext=text if padded else text.rstrip("="))))
    assert pkg.ciphertext == BLOB
    assert pkg.kid == KID
    assert pkg.generator == "test"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json at all", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (json.dumps([1, 2]).encode(), "JSON object"),
        (json.dumps(doc(header=None)).encode(), "header"),
        (json.dumps(doc(header={"kid": KID, "alg": "RSA-OAEP", "enc": "CKM_RSA_AES_KEY_WRAP"})).encode(), "alg"),
        (json.dumps(doc(header={"kid": KID, "alg": "dir", "enc": "RSA_AES_KEY_WRAP_256"})).encode(), "enc"),
        (json.dumps(doc(header={"kid": "kek", "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"})).encode(), "kid"),
        (json.dumps(doc(schema_version="2.0")).encode(), "schema_version"),
        (json.dumps(doc(ciphertext=base64.urlsafe_b64encode(b"x" * 200).decode())).encode(), "shorter"),
        (json.dumps(doc(ciphertext="!!not base64!!")).encode(), "base64url"),
        (json.dumps(doc(ciphertext=12)).encode(), "base64url"),
    ],
)
def test_malformed_packages_are_invalid_package(data: bytes, words: str) -> None:
    with pytest.raises(InvalidPackage, match=words):
        ByokPackage.from_json(data)


def test_invalid_package_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        ByokPackage.from_json(b"{}")


def test_write_then_read_gives_the_same_package(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "key.byok")
    pkg = ByokPackage(kid=KID, ciphertext=BLOB, generator="g")
    pkg.write(path)
    assert ByokPackage.read(path) == pkg
    assert not [f for f in os.listdir(tmp_path) if f != "key.byok"]  # no temp file left behind


def test_reading_a_missing_file_is_invalid_package(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(InvalidPackage, match="cannot read"):
        ByokPackage.read(os.path.join(tmp_path, "absent.byok"))


def test_repr_shows_no_ciphertext_bytes() -> None:
    text = repr(ByokPackage(kid=KID, ciphertext=BLOB))
    assert "298 bytes" in text
    assert base64.urlsafe_b64encode(BLOB).decode()[:16] not in text
