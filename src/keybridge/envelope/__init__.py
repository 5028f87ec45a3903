"""Envelope encryption in the AWS Encryption SDK message format 2.0, over keys from any provider.

Messages carry a header (algorithm suite, message ID, encryption context, the data key wrapped by
one or more key-encryption keys, frame length, key commitment, header tag), AES-256-GCM frames and,
for suite 0x0578, an ECDSA P-384 signature. They interoperate with aws-encryption-sdk raw keyrings.
See docs/envelope.md (format, API, security notes) and docs/envelope-keys.md (keys, recipients).

Example::

    provider = keybridge.InMemoryProvider()
    provider.create_key("kek", keybridge.KeySpec.aes(256))
    kek = Keyring(provider.key("kek"))
    message = encrypt(b"data", kek, context={"purpose": "demo"})
    assert decrypt(message, kek, expected_context={"purpose": "demo"}).plaintext == b"data"
"""

from __future__ import annotations

from ._cache import DataKeyCache
from ._decrypt import DecryptInfo, DecryptingReader, DecryptResult, decrypt, open_decryptor
from ._encrypt import DEFAULT_FRAME_LENGTH, EncryptingWriter, encrypt, open_encryptor
from ._files import decrypt_file, encrypt_file
from ._header import MessageInfo
from ._keyring import DataKeyUnavailable, DataKeyUnreachable, Keyring, NoMatchingEdk
from ._materials import EncryptedDataKey, EncryptionMaterials, MaterialsSource, OpenedBy, report_opened
from ._recipients import AnyOf, Keys, KOfN, as_materials
from ._rewrap import rewrap, rewrap_file
from ._suites import DEFAULT_SUITE, PUBLIC_KEY_CONTEXT_KEY, Suite

__all__ = [
    "DEFAULT_FRAME_LENGTH",
    "DEFAULT_SUITE",
    "PUBLIC_KEY_CONTEXT_KEY",
    "AnyOf",
    "DataKeyCache",
    "DataKeyUnavailable",
    "DataKeyUnreachable",
    "DecryptInfo",
    "DecryptResult",
    "DecryptingReader",
    "EncryptedDataKey",
    "EncryptingWriter",
    "EncryptionMaterials",
    "KOfN",
    "Keyring",
    "Keys",
    "MaterialsSource",
    "MessageInfo",
    "NoMatchingEdk",
    "OpenedBy",
    "Suite",
    "as_materials",
    "decrypt",
    "decrypt_file",
    "encrypt",
    "encrypt_file",
    "open_decryptor",
    "open_encryptor",
    "report_opened",
    "rewrap",
    "rewrap_file",
]
