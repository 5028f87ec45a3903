"""Regenerate the known-answer files in tests/golden/ (see README.md there).

Nothing here uses keybridge: the ESDK messages come from aws-encryption-sdk, the .byok packages
from the OpenSSL command line (``openssl pkeyutl`` for RSA-OAEP-SHA1, ``openssl enc
-id-aes256-wrap-pad`` for RFC 5649) plus ``json``/``base64`` from the standard library. Keys that
exist are kept, so a re-run only remakes the messages and packages (which are randomised: their
bytes change, what they decrypt to does not).

    /work/main/.venv/bin/python tests/golden/make_goldens.py
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from pathlib import Path

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy, EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey

HERE = Path(__file__).resolve().parent
BYOK = HERE / "byok"
NAMESPACE = "keybridge-golden"
FRAME = 128  # small frames, so the plaintext below spans several of them and a final one
# The KEK id the packages name; tests/test_goldens.py points it at the KEK's copy it imports.
KID = "https://golden.managedhsm.azure.net/keys/golden-kek/00112233445566778899aabbccddeeff"
TARGETS = {  # package name -> (target key file, openssl command making it when missing)
    "rsa-2048": ("target-rsa-2048.pem", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
    "ec-p256": ("target-ec-p256.pem", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    "ec-p384": ("target-ec-p384.pem", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
    "aes-256": ("target-aes-256.hex", []),
}


def openssl(*args: str | Path) -> bytes:
    return subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True).stdout


def keep(path: Path, make: bytes | None = None, *, openssl_args: list[str] | None = None) -> bytes:
    """The file's bytes; made first (from ``make`` or by openssl) if it does not exist."""
    if not path.exists():
        path.write_bytes(make if make is not None else openssl(*(openssl_args or [])))
    return path.read_bytes()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_esdk() -> None:
    aes_key = bytes.fromhex(keep(HERE / "aes-256.hex", os.urandom(32).hex().encode() + b"\n").decode().strip())
    rsa_pem = keep(
        HERE / "rsa-2048.pem", openssl_args=["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
    )
    plaintext = keep(HERE / "plaintext.txt")
    context = json.loads(keep(HERE / "context.json"))
    client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    aes = RawMasterKey(
        provider_id=NAMESPACE,
        key_id=b"aes-1",
        wrapping_key=WrappingKey(
            WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING, aes_key, EncryptionKeyType.SYMMETRIC
        ),
    )
    rsa = RawMasterKey(
        provider_id=NAMESPACE,
        key_id=b"rsa-1",
        wrapping_key=WrappingKey(WrappingAlgorithm.RSA_OAEP_SHA256_MGF1, rsa_pem, EncryptionKeyType.PRIVATE),
    )
    messages = {
        "esdk-aes-0478.bin": (aes, Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY),
        "esdk-rsa-oaep-sha256-0478.bin": (rsa, Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY),
        "esdk-aes-signed-0578.bin": (aes, Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384),
    }
    for name, (master_key, suite) in messages.items():
        message, _ = client.encrypt(
            source=plaintext, key_provider=master_key, encryption_context=context, algorithm=suite, frame_length=FRAME
        )
        assert client.decrypt(source=message, key_provider=master_key)[0] == plaintext
        (HERE / name).write_bytes(message)


def make_byok() -> None:
    BYOK.mkdir(exist_ok=True)
    kek = BYOK / "kek-rsa-2048.pem"
    keep(kek, openssl_args=["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        openssl("pkey", "-in", kek, "-pubout", "-out", tmp / "kek.pub")
        for name, (key_file, genpkey) in TARGETS.items():
            path = BYOK / key_file
            if genpkey:
                keep(path, openssl_args=genpkey)
                # Azure BYOK carries PKCS#8 DER: OpenSSL's own encoding of the target.
                openssl("pkey", "-in", path, "-outform", "DER", "-out", tmp / "target")
            else:
                (tmp / "target").write_bytes(bytes.fromhex(keep(path, os.urandom(32).hex().encode() + b"\n").decode()))
            eph = os.urandom(32)
            (tmp / "eph").write_bytes(eph)
            openssl(
                "pkeyutl", "-encrypt", "-pubin", "-inkey", tmp / "kek.pub", "-in", tmp / "eph", "-out", tmp / "eph.enc",
                "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha1", "-pkeyopt", "rsa_mgf1_md:sha1",
            )  # fmt: skip
            openssl(
                "enc", "-e", "-id-aes256-wrap-pad", "-K", eph.hex(), "-iv", "A65959A6",
                "-in", tmp / "target", "-out", tmp / "target.enc",
            )  # fmt: skip
            doc = {
                "schema_version": "1.0.0",
                "header": {"kid": KID, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"},
                "ciphertext": b64url((tmp / "eph.enc").read_bytes() + (tmp / "target.enc").read_bytes()),
                "generator": "openssl (tests/golden/make_goldens.py)",
            }
            (BYOK / f"{name}.byok").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    make_esdk()
    make_byok()
