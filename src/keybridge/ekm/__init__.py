"""An External Key Manager (EKM) proxy: serve Azure Managed HSM external keys from your own HSM.

:class:`EkmServer` answers the Managed HSM EKM proxy API (``/info``, ``/{key}/metadata``,
``/{key}/wrapkey``, ``/{key}/unwrapkey``) over TLS 1.3 with mutual TLS, using only the
:class:`~keybridge.provider.KeyProvider` protocol. :class:`Client` sends what Managed HSM sends.
:class:`XksServer` answers the AWS KMS XKS proxy API v1 (SigV4-signed AES-GCM encrypt/decrypt) over
the same provider, key export list and deadline.
"""

from ._client import Client, EkmError
from ._server import ClientRule, EkmServer, ExportedKey
from ._xks import XksServer

__all__ = ["Client", "ClientRule", "EkmError", "EkmServer", "ExportedKey", "XksServer"]
