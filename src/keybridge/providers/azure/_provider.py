"""The Azure Key Vault / Managed HSM backend."""

from __future__ import annotations

import datetime as _dt
import threading
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from azure.core.credentials import TokenCredential
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyVaultKey

from ..._durations import renamed, seconds
from ..._redact import redact_uri
from ...base import BaseProvider, check_options
from ...errors import (
    IntegrityError,
    InvalidArgument,
    InvalidKeySpec,
    InvalidKeyUri,
    InvalidPackage,
    ProviderUnavailable,
)
from ...keys import ALGORITHMS, AlgorithmSpec, KeyAttributes, KeyInfo, KeyRef, KeySpec, KeyType, PrivateKey
from . import _convert, _rest
from ._access import AccessControl
from ._errors import translated
from ._uri import NAME_RE, is_key_vault_host, split_key_id

DEFAULT_CLIENT_OPTIONS: Mapping[str, Any] = {
    "retry_total": 3,  # azure-core default is 10 with up to 120 s between tries: minutes on a dead vault
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 2,
    "connection_timeout": 5,
    "read_timeout": 30,
}
"""Client options keybridge sets unless you pass your own: a dead endpoint fails in seconds."""

CLIENT_OPTIONS = frozenset(
    {
        *DEFAULT_CLIENT_OPTIONS,
        "api_version",
        "verify_challenge_resource",
        "transport",
        "connection_verify",
        "connection_cert",
        "proxies",
        "retry_connect",
        "retry_read",
        "retry_status",
        "retry_mode",
        "per_call_policies",
        "per_retry_policies",
        "logging_enable",
        "user_agent",
    }
)
"""The azure-core / ``KeyClient`` keyword arguments the provider passes on; anything else is refused
(a misspelt option would otherwise be ignored, or fail later inside the SDK)."""
_OPTIONS = frozenset({"credential", "hsm", "cache_seconds", "delete_timeout", "purge_on_delete"}) | CLIENT_OPTIONS

_SYMMETRIC = frozenset(n for n, a in ALGORITHMS.items() if a.kty is KeyType.OCT)
_NOT_IN_AZURE = frozenset({"RSA-OAEP-384", "RSA-OAEP-512"})  # keybridge/ESDK names Key Vault lacks
_NO_RELEASE = (
    "Azure Key Vault never hands out key material in clear; an exportable key leaves only through"
    " secure key release (KeyClient.release_key with an attestation token)"
)


class AzureKeyVaultProvider(BaseProvider):
    """Keys in Azure Key Vault or Azure Key Vault Managed HSM, through azure-keyvault-keys.

    ``credential`` is any azure-core ``TokenCredential``; ``None`` means ``DefaultAzureCredential``,
    created on first use. The azure-core keyword arguments in :data:`CLIENT_OPTIONS` go to
    ``KeyClient`` (``retry_total``, ``connection_verify``, ``verify_challenge_resource``,
    ``transport`` …) on top of :data:`DEFAULT_CLIENT_OPTIONS`; any other is ``InvalidArgument``.
    Provider options: ``hsm`` (create ``-HSM`` keys; default True on Managed HSM and non-Azure
    hosts such as the emulator), ``cache_seconds`` (seconds key metadata is reused, default 30, 0
    disables; ``cache_ttl`` is its deprecated old name), ``delete_timeout`` (seconds to wait for a
    soft delete, 60) and ``purge_on_delete`` (also purge the soft-deleted key, default False).
    """

    scheme = "https"
    unsupported = MappingProxyType({"export_key": _NO_RELEASE, "export_wrapped": _NO_RELEASE})

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential | None = None,
        *,
        hsm: bool | None = None,
        cache_seconds: float = 30.0,
        delete_timeout: float = 60.0,
        purge_on_delete: bool = False,
        cache_ttl: float | None = None,
        **client_kwargs: Any,
    ) -> None:
        check_options("azure", client_kwargs, _OPTIONS)
        url, name, _ = split_key_id(vault_url)
        if name is not None:
            raise InvalidKeyUri(
                f"{redact_uri(vault_url)!r} is a key id; pass the vault URL, or use from_uri()/open_key()"
            )
        self.vault_url = url
        # Key Vault proper has no AES keys; Managed HSM has, and unknown hosts (an emulator) are
        # treated as Managed HSM so that everything can be tested locally.
        self.managed_hsm = not is_key_vault_host(url)
        self.hsm = self.managed_hsm if hsm is None else bool(hsm)
        self.algorithms = frozenset(
            a for a in ALGORITHMS if (self.managed_hsm or a not in _SYMMETRIC) and a not in _NOT_IN_AZURE
        )
        self._credential = credential
        self._client_kwargs = {**DEFAULT_CLIENT_OPTIONS, **client_kwargs}
        self._cache_seconds = seconds(
            "cache_seconds", renamed("cache_ttl", cache_ttl, "cache_seconds", cache_seconds, 30.0)
        )
        self._delete_timeout = seconds("delete_timeout", delete_timeout)
        self._purge_on_delete = purge_on_delete
        self._client: KeyClient | None = None
        self._access: AccessControl | None = None
        self._borrowed_transport = False  # closing a client closes its transport: not ours to close
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], tuple[float, KeyInfo]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<AzureKeyVaultProvider {self.vault_url} managed_hsm={self.managed_hsm}>"

    # ---- plumbing -------------------------------------------------------------------------------

    @property
    def credential(self) -> TokenCredential:
        """The credential every client of this provider uses (``DefaultAzureCredential`` is
        created here, on first use, when none was given)."""
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            return self._credential

    @property
    def client_options(self) -> dict[str, Any]:
        """Transport options (TLS, retries, timeouts, ``transport`` …) shared by this provider's
        clients; ``api_version`` is left out because it differs between the keys and RBAC APIs."""
        return {k: v for k, v in self._client_kwargs.items() if k != "api_version"}

    @property
    def client(self) -> KeyClient:
        """The underlying ``KeyClient`` (created, with its credential, on first use)."""
        credential = self.credential
        with self._lock:
            self._check_open()
            if self._client is None:
                self._client = KeyClient(
                    self.vault_url, credential, raw_request_hook=_rest.correlate, **self._client_kwargs
                )
            return self._client

    @property
    def access(self) -> AccessControl:
        """Managed HSM local RBAC of this HSM: grant, revoke, list and check role assignments
        (see :class:`~keybridge.providers.azure.AccessControl` and docs/access-control.md).
        Key Vault proper has no data-plane RBAC (it uses Azure RBAC through ARM), so there it
        raises :class:`~keybridge.UnsupportedAlgorithm`."""
        if not self.managed_hsm:
            raise self._unsupported(
                f"local RBAC on {self.vault_url}: Key Vault access is managed with Azure RBAC or access"
                " policies (az role assignment create); only Managed HSM has provider.access"
            )
        with self._lock:
            self._check_open()
            if self._access is None:
                self._access = AccessControl(self)
            return self._access

    def with_credential(self, credential: TokenCredential) -> AzureKeyVaultProvider:
        """A provider for the same vault with the same options that calls it as ``credential``
        (another identity), e.g. to prove that a role assignment works. A ``transport`` you passed
        is shared, and closing the copy leaves it open for this provider."""
        copy = AzureKeyVaultProvider(
            self.vault_url,
            credential,
            hsm=self.hsm,
            cache_seconds=self._cache_seconds,
            delete_timeout=self._delete_timeout,
            purge_on_delete=self._purge_on_delete,
            **self._client_kwargs,
        )
        copy._borrowed_transport = "transport" in self._client_kwargs
        return copy

    def _make_ref(self, name: str, version: str | None) -> KeyRef:
        uri = f"{self.vault_url}/keys/{name}" + (f"/{version}" if version else "")
        return KeyRef(self.scheme, name, version, uri)

    def _parse_uri(self, uri: str) -> tuple[str, str | None]:
        url, name, version = split_key_id(uri)
        if name is None:
            raise InvalidKeyUri(f"{redact_uri(uri)!r} names no key; expected {self.vault_url}/keys/NAME[/VERSION]")
        if url != self.vault_url:
            raise InvalidKeyUri(f"{redact_uri(uri)!r} is a key of {url}, not of this provider's vault {self.vault_url}")
        return name, version

    def _check_name(self, name: str) -> None:
        super()._check_name(name)
        if not NAME_RE.fullmatch(name):
            raise InvalidArgument(f"invalid Key Vault key name {name!r}: use 1-127 letters, digits and dashes")

    def _info(self, key: KeyVaultKey, *, latest: bool = False) -> KeyInfo:
        """Convert and cache; ``latest`` also caches it as the key's current version."""
        info = _convert.key_info(key, self._make_ref)
        if self._cache_seconds:
            entry = (time.monotonic() + self._cache_seconds, info)
            with self._lock:
                self._cache[(info.ref.name, info.ref.version)] = entry
                if latest:
                    self._cache[(info.ref.name, None)] = entry
        return info

    def _forget(self, name: str) -> None:
        with self._lock:
            for k in [k for k in self._cache if k[0] == name]:
                del self._cache[k]

    def _cached(self, name: str, version: str | None) -> KeyInfo | None:
        with self._lock:
            hit = self._cache.get((name, version))
        return hit[1] if hit and hit[0] > time.monotonic() else None

    def _check_open(self) -> None:
        if self._closed:
            raise ProviderUnavailable(f"this azure provider for {self.vault_url} is closed; open a new one")

    def _close(self) -> None:
        with self._lock:
            self._closed = True  # a later call must not quietly open a new client (and credential)
            client, self._client = self._client, None
            access, self._access = self._access, None
            self._cache.clear()
        if self._borrowed_transport:
            return
        if client is not None:
            client.close()
        if access is not None:
            access.close()

    # ---- management -----------------------------------------------------------------------------

    def _check_spec(self, spec: KeySpec) -> None:
        if spec.kty is KeyType.OCT and not self.managed_hsm:
            raise InvalidKeySpec(f"{self.vault_url} is a Key Vault; AES keys need Azure Key Vault Managed HSM")

    def _create_key(self, name: str, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        common: dict[str, Any] = {
            "key_operations": sorted(op.value for op in attrs.ops),
            "hardware_protected": self.hsm or spec.kty is KeyType.OCT,
            "enabled": True,
            "tags": _convert.stored_tags(spec, attrs.tags),
            "not_before": attrs.not_before,
            "expires_on": attrs.expires,
            "exportable": True if attrs.exportable else None,
        }
        self._forget(name)
        with translated(f"create key {name!r} ({spec}) in {self.vault_url}"):
            if spec.kty is KeyType.RSA:
                key = self.client.create_rsa_key(name, size=spec.size, **common)
            elif spec.kty is KeyType.EC:
                key = self.client.create_ec_key(name, curve=spec.curve, **common)
            else:
                key = self.client.create_oct_key(name, size=spec.size, **common)
        return self._info(key, latest=True)

    def _import_key(self, name: str, key: PrivateKey | bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        hsm = self.hsm or spec.kty is KeyType.OCT
        jwk = _convert.private_jwk(key, _convert.azure_kty(spec, hsm), attrs.ops)
        return self._import(
            name, jwk, spec, attrs.tags, f"import key {name!r} ({spec}) into {self.vault_url}", InvalidArgument,
            hardware_protected=hsm, not_before=attrs.not_before, expires_on=attrs.expires,
            exportable=True if attrs.exportable else None,
        )  # fmt: skip

    def _import_byok(self, name: str, package: bytes, spec: KeySpec, attrs: KeyAttributes) -> KeyInfo:
        # The .byok file bytes go in ``t`` as they are; the SDK base64url-encodes them as key_hsm.
        jwk = JsonWebKey(
            kty=_convert.azure_kty(spec, True), crv=spec.curve, t=package, key_ops=sorted(op.value for op in attrs.ops)
        )
        return self._import(
            name, jwk, spec, attrs.tags, f"BYOK import of {name!r} ({spec}) into {self.vault_url}", InvalidPackage,
            hardware_protected=True,
        )  # fmt: skip

    def _import(
        self,
        name: str,
        jwk: JsonWebKey,
        spec: KeySpec,
        tags: Mapping[str, str],
        action: str,
        bad_input: type[InvalidArgument],
        **kwargs: Any,
    ) -> KeyInfo:
        self._forget(name)
        with translated(action, bad_input=bad_input):
            key = self.client.import_key(name, jwk, enabled=True, tags=_convert.stored_tags(spec, tags), **kwargs)
        return self._info(key, latest=True)

    def _get_key(self, name: str, version: str | None) -> KeyInfo:
        cached = self._cached(name, version)
        if cached is not None:
            return cached
        with translated(f"get key {self._make_ref(name, version)}"):
            key = self.client.get_key(name, version)
        return self._info(key, latest=version is None)

    def _list_keys(self) -> Iterator[KeyInfo]:
        with translated(f"list keys in {self.vault_url}"):
            names = [p.name for p in self.client.list_properties_of_keys() if not p.managed]
        for name in names:
            try:
                yield self._get_key(name, None)
            except InvalidKeySpec:
                continue  # a key type keybridge cannot represent (e.g. RSA-1024, P-256K): not ours to list

    def _list_versions(self, name: str) -> Iterator[KeyInfo]:
        with translated(f"list versions of {self._make_ref(name, None)}"):
            versions = [p.version for p in self.client.list_properties_of_key_versions(name)]
        if not versions:
            self._get_key(name, None)  # raises KeyNotFound for a name that does not exist
        infos = [self._get_key(name, v) for v in versions if v]
        epoch = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
        return iter(sorted(infos, key=lambda i: i.created or epoch))

    def _rotate_key(self, name: str) -> KeyInfo:
        current = self._get_key(name, None)
        self._forget(name)
        with translated(f"rotate key {self._make_ref(name, None)}"):
            key = self.client.rotate_key(name)
            if current.spec.kty is KeyType.OCT and _convert.SIZE_TAG not in (key.properties.tags or {}):
                # Keep the AES size on the new version, whatever the service copied over.
                tags = _convert.stored_tags(current.spec, current.tags)
                key = self.client.update_key_properties(name, key.properties.version, tags=tags)
        return self._info(key, latest=True)

    def _set_enabled(self, info: KeyInfo, enabled: bool) -> KeyInfo:
        self._forget(info.ref.name)
        with translated(f"{'enable' if enabled else 'disable'} key {info.ref}"):
            key = self.client.update_key_properties(info.ref.name, info.ref.version, enabled=enabled)
        return self._info(key)

    def _delete_key(self, name: str) -> None:
        self._forget(name)
        action = f"delete key {self._make_ref(name, None)}"
        with translated(action):
            poller = self.client.begin_delete_key(name)
            poller.wait(timeout=self._delete_timeout)
            if not poller.done():
                raise ProviderUnavailable(f"{action}: still not deleted after {self._delete_timeout:g} s")
            if self._purge_on_delete:
                self.client.purge_deleted_key(name)

    # ---- key operations (always in the service) ------------------------------------------------

    def _wrap_key(self, info: KeyInfo, alg: AlgorithmSpec, key: bytes) -> bytes:
        with translated(f"wrap with {info.ref} ({alg.name})"):
            return _rest.transform(self.client, info, "wrapkey", alg.name, key)

    def _unwrap_key(self, info: KeyInfo, alg: AlgorithmSpec, wrapped: bytes) -> bytes:
        with translated(f"unwrap with {info.ref} ({alg.name})", bad_input=IntegrityError):
            return _rest.transform(self.client, info, "unwrapkey", alg.name, wrapped)

    def _encrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        # Only A*GCM gets here: RSA encryption runs locally from the public key in BaseProvider.
        with translated(f"encrypt with {info.ref} ({alg.name})"):
            return _rest.gcm_encrypt(self.client, info, alg.name, data, aad)

    def _decrypt(self, info: KeyInfo, alg: AlgorithmSpec, data: bytes, aad: bytes | None) -> bytes:
        with translated(f"decrypt with {info.ref} ({alg.name})", bad_input=IntegrityError):
            if alg.kty is KeyType.OCT:
                return _rest.gcm_decrypt(self.client, info, alg.name, data, aad)
            return _rest.transform(self.client, info, "decrypt", alg.name, data)

    def _sign(self, info: KeyInfo, alg: AlgorithmSpec, digest: bytes) -> bytes:
        # Key Vault returns ES* signatures as raw r||s already, which is keybridge's form too.
        with translated(f"sign with {info.ref} ({alg.name})"):
            return _rest.transform(self.client, info, "sign", alg.name, digest)


def from_uri(uri: str, **options: Any) -> AzureKeyVaultProvider:
    """``open_provider`` factory: a vault URL or key id (``https://…/keys/NAME[/VERSION]``) -> provider
    for its vault; ``options`` are :class:`AzureKeyVaultProvider` keyword arguments."""
    vault_url, _, _ = split_key_id(uri)
    return AzureKeyVaultProvider(vault_url, **options)
