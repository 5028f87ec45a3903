"""One key-encryption key (KEK) in any provider, as a materials source: the ESDK raw keyrings.

A :class:`Keyring` wraps data keys with one :class:`~keybridge.provider.KeyHandle`, through the
handle only, so the KEK may live in software, a PKCS#11 token or Azure. The EDKs it writes use the
AWS Encryption SDK raw-keyring layouts, so an ESDK raw keyring configured with the same key
namespace (ESDK ``provider_id``) and key name (ESDK ``key_id``) reads them, and the other way round:

* **AES KEK, AES-GCM** (ESDK raw AES keyring): the provider encrypts the data key with ``A<bits>GCM``
  and the serialized encryption context as AAD. ``provider_id`` = namespace, ``provider_info`` =
  name || u32 tag bits (128) || u32 IV length (12) || IV, ``ciphertext`` = ciphertext || tag.
* **AES KEK, key wrap** (keybridge only, for backends without AES-GCM): RFC 5649
  (``CKM_AES_KEY_WRAP_PAD``) or RFC 3394 (``A<bits>KW``). ``provider_info`` = name || u32 0 ||
  u32 length of the algorithm name || algorithm name (ASCII); the zero tag length keeps ESDK
  readers from mistaking it for their layout. Key wrap takes no AAD, so such an EDK does not bind
  the encryption context itself; the message still does, through the header tag under the
  committed data key, which an attacker without the data key cannot recompute.
* **RSA KEK** (ESDK raw RSA keyring): RSA-OAEP with SHA-256 (``RSA-OAEP-256``, the default where
  the provider has it), SHA-1 (``RSA-OAEP``), SHA-384 or SHA-512 (``RSA-OAEP-384``/``-512``; MGF1
  always with the OAEP hash, as the ESDK's ``RSA_OAEP_SHA*_MGF1``), or PKCS#1 v1.5 (``RSA1_5``, the
  ESDK's ``RSA_PKCS1``: only when asked for). ``provider_info`` = name, ``ciphertext`` = the RSA
  ciphertext. As in the ESDK, the RSA EDK does not bind the encryption context, nor say which
  padding it used.

Defaults: namespace ``"keybridge"``; name = the key's URI *without* a version
(``str(provider.ref(handle.ref.name))``, e.g. ``memory:kek`` or
``https://v.vault.azure.net/keys/kek``), so a handle pinned to an older version after a rotation
still recognises the EDKs written under it. An unversioned handle encrypts with the current
version and, on decrypt, falls back to older versions when the current one fails, so rotating a
KEK never strands messages written before the rotation.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .._crypto import GCM_IV, GCM_TAG
from ..errors import (
    IntegrityError,
    InvalidArgument,
    KeybridgeError,
    KeyNotFound,
    ProviderUnavailable,
    UnsupportedAlgorithm,
)
from ..keys import KeyOp, KeyRef, KeyType
from ..provider import KeyHandle
from ._header import serialize_context
from ._materials import EncryptedDataKey, EncryptionMaterials, OpenedBy, report_opened

__all__ = [
    "DEFAULT_NAMESPACE",
    "DataKeyUnavailable",
    "DataKeyUnreachable",
    "Keyring",
    "NoMatchingEdk",
    "data_key_length",
    "no_data_key",
    "serialize_context",
]

DEFAULT_NAMESPACE = "keybridge"
_GCM_TAG_BITS = 8 * GCM_TAG
_GCM_IV = GCM_IV
_KEY_WRAP = frozenset({"A128KW", "A192KW", "A256KW", "CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP_PAD"})
_RSA_OAEP = ("RSA-OAEP", "RSA-OAEP-256", "RSA-OAEP-384", "RSA-OAEP-512")
_RSA_WRAP = frozenset({*_RSA_OAEP, "RSA1_5"})
# Data-key length per ESDK message-format-v2 suite (both are AES-256-GCM, HKDF-SHA512, committing).
_SUITE_KEY_LENGTH = {0x0478: 32, 0x0578: 32}


class FailureList(KeybridgeError):
    """An error that lists ``(key reference, error)`` for every key tried; no secret in it."""

    def __init__(self, summary: str, failures: Sequence[tuple[str, KeybridgeError]]) -> None:
        self.failures = tuple(failures)
        lines = "".join(f"\n  - {who}: {type(err).__name__}: {err}" for who, err in self.failures)
        super().__init__(summary + lines)


class DataKeyUnavailable(FailureList, IntegrityError, KeyNotFound):
    """No key given for decryption could recover the data key.

    Wrong keys and damaged EDKs look the same from here, so this is both a :class:`KeyNotFound`
    and an :class:`IntegrityError`. ``failures`` holds ``(key reference, error)`` for every key
    that was tried (or had no EDK); the message lists them without any secret.
    """


class DataKeyUnreachable(FailureList, ProviderUnavailable):
    """No key recovered the data key, and at least one of them could not be asked (a provider
    raised :class:`ProviderUnavailable`: throttling that outlasted the retries, a service or token
    that is down). The message may well be intact: retry later rather than treat it as tampered.
    ``failures`` is as for :class:`DataKeyUnavailable`."""


def no_data_key(summary: str, failures: Sequence[tuple[str, KeybridgeError]]) -> FailureList:
    """The error for "no key recovered the data key": :class:`DataKeyUnreachable` when any key
    failed because its provider was unavailable (a retry may succeed), else :class:`DataKeyUnavailable`."""
    if any(isinstance(err, ProviderUnavailable) for _, err in failures):
        return DataKeyUnreachable(summary, failures)
    return DataKeyUnavailable(summary, failures)


class NoMatchingEdk(KeyNotFound):
    """The message has no EDK for this key (by namespace, name and layout); nothing was tried."""


def data_key_length(suite_id: int) -> int:
    """The data-key length (bytes) of an ESDK message-format-v2 suite."""
    try:
        return _SUITE_KEY_LENGTH[suite_id]
    except KeyError:
        known = ", ".join(f"0x{s:04X}" for s in _SUITE_KEY_LENGTH)
        raise UnsupportedAlgorithm(f"algorithm suite 0x{suite_id:04X} is not supported; use {known}") from None


@dataclass(frozen=True)
class _Plan:
    """How this keyring talks to its KEK, decided once from the key's metadata."""

    ref: KeyRef  # the version current when the plan was made (what an unversioned handle used)
    kty: KeyType
    bits: int
    wrapping: str  # algorithm for new EDKs
    ops: frozenset[KeyOp]
    rsa_unwrap: tuple[str, ...]  # RSA paddings to try: the EDK does not say which one it used


class FreshDataKey:
    """Mixin for materials sources that wrap a given data key: encryption draws a fresh random
    data key and wraps it with :meth:`wrap_existing` (which rewrap also uses)."""

    def wrap_existing(
        self, data_key: bytes, *, suite_id: int, context: Mapping[str, str]
    ) -> tuple[EncryptedDataKey, ...]:
        """The EDKs for ``data_key``."""
        raise NotImplementedError

    def encryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], plaintext_length: int | None
    ) -> EncryptionMaterials:
        """A fresh random data key of the suite's length and its EDKs."""
        data_key = os.urandom(data_key_length(suite_id))
        return EncryptionMaterials(data_key, self.wrap_existing(data_key, suite_id=suite_id, context=context))


class Keyring(FreshDataKey):
    """One KEK behind a :class:`KeyHandle`, writing and reading ESDK raw-keyring EDKs.

    ``namespace`` and ``name`` are what the EDK records (ESDK ``provider_id`` and key name);
    ``wrapping`` picks the algorithm for new EDKs (``A256GCM``, ``CKM_AES_KEY_WRAP_PAD``,
    ``A256KW``, ``RSA-OAEP-256``, ``RSA-OAEP``, ``RSA-OAEP-384``, ``RSA-OAEP-512``, ``RSA1_5``); by
    default AES-GCM for AES keys where the provider has it, else key wrap, and RSA-OAEP-256 for RSA
    keys, else RSA-OAEP. Decryption reads every AES layout regardless of ``wrapping``. An RSA EDK
    does not name its padding: with an explicit ``wrapping`` only that one is tried (as an ESDK
    raw RSA keyring does), without one every OAEP hash the provider offers. PKCS#1 v1.5 is tried
    only with ``wrapping="RSA1_5"`` or ``legacy_rsa1_5=True`` (after the OAEP ones), to read
    messages of ESDK keyrings configured with ``RSA_PKCS1``: trying it on every message would give
    an attacker a padding oracle to probe for no benefit.
    """

    def __init__(
        self,
        handle: KeyHandle,
        *,
        namespace: str | None = None,
        name: str | None = None,
        wrapping: str | None = None,
        legacy_rsa1_5: bool = False,
    ) -> None:
        if not isinstance(handle, KeyHandle):
            raise InvalidArgument(f"Keyring needs a KeyHandle (provider.key(NAME)), got {type(handle).__name__}")
        self.handle = handle
        self.namespace = DEFAULT_NAMESPACE if namespace is None else namespace
        self.name = str(handle.provider.ref(handle.ref.name)) if name is None else name
        if not self.namespace or not self.name:
            raise InvalidArgument("a keyring's namespace and name must be non-empty")
        if self.namespace.startswith("aws-kms"):
            raise InvalidArgument("the key namespace 'aws-kms' is reserved by the AWS Encryption SDK")
        self._pid = self.namespace.encode("utf-8")
        self._name = self.name.encode("utf-8")
        if len(self._pid) > 0xFFFF or len(self._name) > 0xFFFF - 64:
            raise InvalidArgument("the keyring's namespace or name is too long for an EDK")
        self._wrapping = wrapping
        self._legacy_rsa1_5 = bool(legacy_rsa1_5)
        self._plan: _Plan | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Keyring({self.handle.ref}, namespace={self.namespace!r}, name={self.name!r})"

    # ---- MaterialsSource -----------------------------------------------------------------------

    def edk_count(self) -> int:
        """One EDK per message."""
        return 1

    def wrap_existing(
        self, data_key: bytes, *, suite_id: int, context: Mapping[str, str]
    ) -> tuple[EncryptedDataKey, ...]:
        """Wrap a given data key under this KEK (used by rewrap and by k-of-n shares)."""
        if len(data_key) != data_key_length(suite_id):
            raise InvalidArgument(f"data key is {len(data_key)} bytes; suite 0x{suite_id:04X} needs 32")
        plan = self._resolve()
        h = self.handle
        if plan.kty is KeyType.RSA:
            use_wrap = KeyOp.WRAP_KEY in plan.ops or KeyOp.ENCRYPT not in plan.ops
            ct = h.wrap_key(plan.wrapping, data_key) if use_wrap else h.encrypt(plan.wrapping, data_key)
            return (EncryptedDataKey(self._pid, self._name, ct),)
        if plan.wrapping in _KEY_WRAP:
            alg = plan.wrapping.encode("ascii")
            info = self._name + struct.pack(">II", 0, len(alg)) + alg
            return (EncryptedDataKey(self._pid, info, h.wrap_key(plan.wrapping, data_key)),)
        out = h.encrypt(plan.wrapping, data_key, aad=serialize_context(context) or None)
        if len(out) != _GCM_IV + len(data_key) + _GCM_TAG_BITS // 8:
            raise IntegrityError(f"{h.ref} returned {len(out)} bytes from {plan.wrapping}; expected IV||ct||tag")
        info = self._name + struct.pack(">II", _GCM_TAG_BITS, _GCM_IV) + out[:_GCM_IV]
        return (EncryptedDataKey(self._pid, info, out[_GCM_IV:]),)

    def decryption_materials(
        self, *, suite_id: int, context: Mapping[str, str], edks: Sequence[EncryptedDataKey]
    ) -> bytes:
        """Unwrap the first EDK of this KEK that works; if none, raise :class:`DataKeyUnavailable`
        (or :class:`DataKeyUnreachable` when the provider was unavailable)."""
        length = data_key_length(suite_id)
        who = str(self.handle.ref)
        failures: list[tuple[str, KeybridgeError]] = []
        for edk in edks:
            call = self._match(edk) if edk.provider_id == self._pid else None
            if call is None:
                continue
            try:
                key = call(context)
            except KeybridgeError as exc:
                failures.append((who, exc))
                continue
            if len(key) == length:
                ref = self.handle.ref if self.handle.ref.version else self._resolve().ref
                report_opened(OpenedBy(str(ref), ref.version, self.namespace, self.name))
                return key
            failures.append((who, IntegrityError(f"unwrapped data key is {len(key)} bytes, expected {length}")))
        if not failures:
            failures.append((who, NoMatchingEdk(f"no EDK for namespace {self.namespace!r}, name {self.name!r}")))
        elif self.handle.ref.version is None and not any(isinstance(e, ProviderUnavailable) for _, e in failures):
            # Not while the service is unavailable: listing versions would only add load to it.
            recovered = self._older_versions(suite_id, context, edks, failures)
            if recovered is not None:
                return recovered
        raise no_data_key(f"{who} could not recover the data key", failures)

    def _older_versions(
        self,
        suite_id: int,
        context: Mapping[str, str],
        edks: Sequence[EncryptedDataKey],
        failures: list[tuple[str, KeybridgeError]],
    ) -> bytes | None:
        """After a KEK rotation an unversioned handle means the new version, but the EDK names the
        key without a version (so ESDK keyrings can match it): try the older versions, newest
        first. This runs only after the current version failed, so it costs nothing normally.
        An older version that could not be asked is added to ``failures`` (the right one may be it)."""
        provider, name = self.handle.provider, self.handle.ref.name
        try:
            versions = [v.ref for v in provider.list_versions(name)][::-1]
        except ProviderUnavailable as exc:
            failures.append((f"{self.handle.ref} (older versions)", exc))
            return None
        except KeybridgeError:
            return None
        for ref in versions[1:]:
            pinned = Keyring(
                provider.key(ref),
                namespace=self.namespace,
                name=self.name,
                wrapping=self._wrapping,
                legacy_rsa1_5=self._legacy_rsa1_5,
            )
            try:
                return pinned.decryption_materials(suite_id=suite_id, context=context, edks=edks)
            except DataKeyUnreachable as exc:
                failures.extend(exc.failures)
                break  # the service is unavailable: asking it about more versions would not help
            except KeybridgeError:
                continue
        return None

    # ---- internals -----------------------------------------------------------------------------

    def _resolve(self) -> _Plan:
        with self._lock:
            if self._plan is None:
                info = self.handle.info()
                spec = info.spec
                wrapping = self._choose(spec.kty, spec.size, info.ops)
                unwraps = self._rsa_unwraps(wrapping) if spec.kty is KeyType.RSA else (wrapping,)
                self._plan = _Plan(info.ref, spec.kty, spec.size, wrapping, info.ops, unwraps)
            return self._plan

    def _rsa_unwraps(self, wrapping: str) -> tuple[str, ...]:
        """The paddings to try on an RSA EDK, ours first: without an explicit choice every OAEP hash
        the provider offers; PKCS#1 v1.5 last and only when asked for."""
        offered = self.handle.provider.algorithms
        others = [] if self._wrapping else [a for a in _RSA_OAEP if a in offered and a != wrapping]
        if self._legacy_rsa1_5 and wrapping != "RSA1_5":
            others.append("RSA1_5")
        return (wrapping, *others)

    def _choose(self, kty: KeyType, bits: int, ops: frozenset[KeyOp]) -> str:
        offered = self.handle.provider.algorithms
        if kty is KeyType.RSA:
            allowed = _RSA_WRAP
            default = "RSA-OAEP-256" if "RSA-OAEP-256" in offered else "RSA-OAEP"
        elif kty is KeyType.OCT:
            gcm = f"A{bits}GCM"
            allowed = _KEY_WRAP | {gcm}
            if gcm in offered and KeyOp.ENCRYPT in ops:
                default = gcm
            else:
                default = "CKM_AES_KEY_WRAP_PAD" if "CKM_AES_KEY_WRAP_PAD" in offered else f"A{bits}KW"
        else:
            raise UnsupportedAlgorithm(f"{self.handle.ref} is an {kty} key; a keyring needs an AES or RSA key")
        wrapping = self._wrapping or default
        if wrapping not in allowed:
            raise UnsupportedAlgorithm(
                f"{wrapping!r} cannot wrap data keys with {self.handle.ref}; use one of {', '.join(sorted(allowed))}"
            )
        return wrapping

    def _match(self, edk: EncryptedDataKey) -> Callable[[Mapping[str, str]], bytes] | None:
        """A callable ``context -> data key`` if ``edk`` is this keyring's (by namespace, name and
        layout), else None. The KEK type is looked up only once an EDK's name matches."""
        info, n = edk.provider_info, len(self._name)
        if info == self._name:
            return lambda _ctx: self._rsa_unwrap(edk.ciphertext)
        if len(info) < n + 8 or info[:n] != self._name:
            return None
        tag_bits, field_len = struct.unpack(">II", info[n : n + 8])
        rest = info[n + 8 :]
        if tag_bits == _GCM_TAG_BITS and field_len == _GCM_IV and len(rest) == _GCM_IV:
            return lambda ctx: self._gcm_unwrap(rest + edk.ciphertext, ctx)
        if tag_bits == 0 and field_len == len(rest) and rest.decode("ascii", "replace") in _KEY_WRAP:
            return lambda _ctx: self._kw_unwrap(rest.decode("ascii"), edk.ciphertext)
        return None

    def _rsa_unwrap(self, ct: bytes) -> bytes:
        plan = self._resolve()
        if plan.kty is not KeyType.RSA:
            raise IntegrityError(f"EDK has the RSA layout but {self.handle.ref} is not an RSA key")
        use_unwrap = KeyOp.UNWRAP_KEY in plan.ops or KeyOp.DECRYPT not in plan.ops
        last: IntegrityError | None = None
        for alg in plan.rsa_unwrap:
            try:
                return self.handle.unwrap_key(alg, ct) if use_unwrap else self.handle.decrypt(alg, ct)
            except IntegrityError as exc:
                last = exc
        assert last is not None
        raise last

    def _gcm_unwrap(self, iv_ct_tag: bytes, context: Mapping[str, str]) -> bytes:
        plan = self._resolve()
        if plan.kty is not KeyType.OCT:
            raise IntegrityError(f"EDK has the AES-GCM layout but {self.handle.ref} is not an AES key")
        alg = f"A{plan.bits}GCM"
        return self.handle.decrypt(alg, iv_ct_tag, aad=serialize_context(context) or None)

    def _kw_unwrap(self, alg: str, wrapped: bytes) -> bytes:
        if self._resolve().kty is not KeyType.OCT:
            raise IntegrityError(f"EDK has the AES key-wrap layout but {self.handle.ref} is not an AES key")
        return self.handle.unwrap_key(alg, wrapped)
