"""Shared by the envelope format tests: an ESDK raw-AES key source written with ``cryptography``
directly (independent of keybridge's keyrings) and the matching aws-encryption-sdk objects."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence

from aws_encryption_sdk.internal.formatting.encryption_context import serialize_encryption_context
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybridge.envelope import EncryptedDataKey, EncryptionMaterials
from keybridge.errors import IntegrityError

NAMESPACE = "keybridge-test"
NAME = "kek-1"


class RawAesSource:
    """The ESDK raw AES keyring layout: AES-GCM, AAD = serialized context (ESDK's own serializer),
    provider info = name || u32 128 || u32 12 || IV."""

    def __init__(self, kek: bytes, namespace: str = NAMESPACE, name: str = NAME) -> None:
        self.kek = kek  # test-only: lets the ESDK side be built with the same key
        self._aead = AESGCM(kek)
        self.pid = namespace.encode()
        self.name = name.encode()
        self.calls = 0

    def encryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], plaintext_length: int | None
    ) -> EncryptionMaterials:
        data_key = os.urandom(32)
        return EncryptionMaterials(data_key, self.wrap_existing(data_key, suite_id=suite_id, context=context))

    def wrap_existing(
        self, data_key: bytes, *, suite_id: int, context: Mapping[str, str]
    ) -> tuple[EncryptedDataKey, ...]:
        iv = os.urandom(12)
        ct = self._aead.encrypt(iv, data_key, serialize_encryption_context(dict(context)))
        return (EncryptedDataKey(self.pid, self.name + struct.pack(">II", 128, 12) + iv, ct),)

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        self.calls += 1
        aad = serialize_encryption_context(dict(context))
        prefix = self.name + struct.pack(">II", 128, 12)
        for edk in edks:
            info = edk.provider_info
            if edk.provider_id == self.pid and info.startswith(prefix) and len(info) == len(prefix) + 12:
                try:
                    return self._aead.decrypt(info[-12:], edk.ciphertext, aad)
                except InvalidTag:
                    continue
        raise IntegrityError("no EDK could be decrypted with this test key")


def esdk_raw_aes(kek: bytes, namespace: str = NAMESPACE, name: str = NAME):  # type: ignore[no-untyped-def]
    """An aws-encryption-sdk RawMasterKey with the same namespace, name and key."""
    from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKey

    return RawMasterKey(
        provider_id=namespace,
        key_id=name.encode(),
        wrapping_key=WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=kek,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        ),
    )


def esdk_client(max_encrypted_data_keys: int | None = None):  # type: ignore[no-untyped-def]
    import aws_encryption_sdk
    from aws_encryption_sdk.identifiers import CommitmentPolicy

    kwargs = {"max_encrypted_data_keys": max_encrypted_data_keys} if max_encrypted_data_keys else {}
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT, **kwargs
    )


def esdk_raw_rsa(private_key, wrapping: str, namespace: str = NAMESPACE, name: str = "rsa-1"):  # type: ignore[no-untyped-def]
    """An aws-encryption-sdk RawMasterKey over an RSA private key (``cryptography`` object) with the
    ESDK's ``WrappingAlgorithm`` of that name (RSA_PKCS1, RSA_OAEP_SHA256_MGF1, ...)."""
    from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
    from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
    from aws_encryption_sdk.key_providers.raw import RawMasterKey
    from cryptography.hazmat.primitives import serialization

    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return RawMasterKey(
        provider_id=namespace,
        key_id=name.encode(),
        wrapping_key=WrappingKey(WrappingAlgorithm[wrapping], pem, EncryptionKeyType.PRIVATE),
    )
