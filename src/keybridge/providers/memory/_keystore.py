"""The in-memory provider's keystore file, encrypted at rest.

File layout (all integers big-endian)::

    offset  size  field
    0       4     magic  b"KBKS"
    4       1     format version (1)
    5       1     scrypt log2(N)   (default 15, i.e. N = 2**15)
    6       1     scrypt r         (default 8)
    7       1     scrypt p         (default 1)
    8       16    salt (random per keystore)
    ---- header: bytes 0..23 ----
    24      32    passphrase check: HMAC-SHA256(check_key, header)
    56      12    AES-GCM nonce (fresh per save)
    68      n+16  AES-256-GCM(enc_key, nonce, body, aad=header): ciphertext || tag
    end-32  32    SHA-256 of everything before it (corruption check, no secret)

``scrypt(passphrase, salt, N, r, p)`` gives 64 bytes: the first 32 are ``enc_key``, the last 32
``check_key``. The body is UTF-8 JSON ``{"format": 1, "keys": {NAME: [VERSION, ...]}}`` where each
version holds its metadata and its material in base64 (PKCS#8 DER for RSA/EC, raw bytes for AES).

Reading checks, in order: the magic (else :class:`InvalidArgument`: not a keystore), the trailing
SHA-256 (else :class:`IntegrityError`: truncated or damaged), the passphrase check compared with
:func:`hmac.compare_digest` (else :class:`AuthenticationError`: wrong passphrase), then the GCM tag
(else :class:`IntegrityError`). The unkeyed checksum exists only so that a damaged file and a
wrong passphrase give different errors; security rests on the HMAC and GCM under scrypt keys.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ... import _crypto
from ..._byok import b64url_decode, b64url_encode
from ..._files import atomic_write
from ...errors import AuthenticationError, IntegrityError, InvalidArgument, KeybridgeError, ProviderUnavailable
from ...keys import KeyInfo, KeyOp, KeyRef, KeySpec, KeyType, PrivateKey

MAGIC = b"KBKS"
FORMAT = 1
_HEADER = struct.Struct(">4sBBBB16s")
_CHECK = 32
_NONCE = _crypto.GCM_IV
_TAG = _crypto.GCM_TAG
_DIGEST = 32
MIN_SIZE = _HEADER.size + _CHECK + _NONCE + _TAG + _DIGEST
DEFAULT_LOG2N, DEFAULT_R, DEFAULT_P = 15, 8, 1
# Bounds on the work factor read from a file, so a doctored header cannot demand gigabytes.
_MAX_SCRYPT_MEMORY = 256 << 20
_MAX_WORK = 16 * (1 << DEFAULT_LOG2N) * DEFAULT_R * DEFAULT_P

Material = PrivateKey | bytes
RefFactory = Callable[[str, str], KeyRef]


@dataclass(frozen=True)
class StoredKey:
    """One key version: its metadata and its material. The repr never shows the material."""

    info: KeyInfo
    material: Material

    def __repr__(self) -> str:
        return f"StoredKey({self.info.ref}, {self.info.spec})"


def _check_params(log2n: int, r: int, p: int) -> None:
    # The parameters come from the file, so bound both what scrypt allocates (OpenSSL's own
    # accounting, 128·r·(N+p+2)) and the work it does (N·r·p), at 16x the defaults: a doctored
    # keystore must not make opening it cost gigabytes or minutes.
    n = 1 << log2n
    memory = 128 * r * (n + p + 2)
    work = n * r * p
    if not (10 <= log2n <= 24 and 1 <= r <= 32 and 1 <= p <= 16) or memory > _MAX_SCRYPT_MEMORY or work > _MAX_WORK:
        raise InvalidArgument(
            f"scrypt parameters N=2**{log2n}, r={r}, p={p} are out of range (at most"
            f" {_MAX_SCRYPT_MEMORY >> 20} MiB of memory and 16x the default work); the keystore header is damaged"
        )


class Sealer:
    """Keys derived from a passphrase for one keystore (one salt); seals and opens bodies.

    Holding the derived keys instead of the passphrase lets every autosave skip scrypt."""

    __slots__ = ("_check_key", "_enc_key", "header")

    def __init__(
        self,
        passphrase: str | bytes,
        *,
        log2n: int = DEFAULT_LOG2N,
        r: int = DEFAULT_R,
        p: int = DEFAULT_P,
        salt: bytes | None = None,
    ) -> None:
        _check_params(log2n, r, p)
        pw = passphrase.encode("utf-8") if isinstance(passphrase, str) else bytes(passphrase)
        if not pw:
            raise InvalidArgument("the keystore passphrase is empty; give a non-empty passphrase")
        salt = os.urandom(16) if salt is None else salt
        self.header = _HEADER.pack(MAGIC, FORMAT, log2n, r, p, salt)
        try:
            derived = Scrypt(salt=salt, length=64, n=1 << log2n, r=r, p=p).derive(pw)
        except MemoryError as exc:  # OpenSSL's own limit, should _check_params ever admit more
            raise InvalidArgument(f"scrypt parameters N=2**{log2n}, r={r}, p={p} need too much memory") from exc
        self._enc_key, self._check_key = derived[:32], derived[32:]

    def __repr__(self) -> str:
        return "<Sealer>"

    def _check(self) -> bytes:
        return hmac.new(self._check_key, self.header, hashlib.sha256).digest()

    def seal(self, body: bytes) -> bytes:
        """The complete file content for ``body``."""
        nonce = os.urandom(_NONCE)
        data = self.header + self._check() + nonce + AESGCM(self._enc_key).encrypt(nonce, body, self.header)
        return data + hashlib.sha256(data).digest()

    def reopen(self, data: bytes) -> bytes:
        """Decrypt file content written under this sealer's keys (the same salt and parameters):
        how a provider re-reads its keystore before each save without running scrypt again."""
        if data[: _HEADER.size] != self.header:
            raise ProviderUnavailable(
                "the keystore was re-keyed (new passphrase or salt) by another process; open it again"
            )
        if len(data) < MIN_SIZE or not hmac.compare_digest(hashlib.sha256(data[:-_DIGEST]).digest(), data[-_DIGEST:]):
            raise IntegrityError("the keystore is damaged or truncated (checksum mismatch); restore it from a backup")
        pos = _HEADER.size
        if not hmac.compare_digest(self._check(), data[pos : pos + _CHECK]):
            raise AuthenticationError("wrong passphrase for this keystore")
        pos += _CHECK
        try:
            return AESGCM(self._enc_key).decrypt(data[pos : pos + _NONCE], data[pos + _NONCE : -_DIGEST], self.header)
        except InvalidTag as exc:
            raise IntegrityError("the keystore failed authentication: it was modified or damaged") from exc

    @classmethod
    def unseal(cls, data: bytes, passphrase: str | bytes) -> tuple[Sealer, bytes]:
        """Check and decrypt file content; returns the sealer (for later saves) and the body."""
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise InvalidArgument("this file is not a keybridge keystore (wrong magic bytes)")
        if len(data) < MIN_SIZE:
            raise IntegrityError(f"the keystore is truncated: {len(data)} bytes, a keystore has at least {MIN_SIZE}")
        if not hmac.compare_digest(hashlib.sha256(data[:-_DIGEST]).digest(), data[-_DIGEST:]):
            raise IntegrityError("the keystore is damaged or truncated (checksum mismatch); restore it from a backup")
        _, version, log2n, r, p, salt = _HEADER.unpack_from(data)
        if version != FORMAT:
            raise InvalidArgument(f"keystore format version {version} is not supported (this keybridge reads {FORMAT})")
        sealer = cls(passphrase, log2n=log2n, r=r, p=p, salt=salt)
        pos = _HEADER.size
        if not hmac.compare_digest(sealer._check(), data[pos : pos + _CHECK]):
            raise AuthenticationError("wrong passphrase for this keystore")
        pos += _CHECK
        nonce, sealed = data[pos : pos + _NONCE], data[pos + _NONCE : -_DIGEST]
        try:
            return sealer, AESGCM(sealer._enc_key).decrypt(nonce, sealed, sealer.header)
        except InvalidTag as exc:
            raise IntegrityError("the keystore failed authentication: it was modified or damaged") from exc


# ---- body <-> keys -----------------------------------------------------------------------------


def _time(t: _dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _encode_version(s: StoredKey) -> dict[str, Any]:
    i = s.info
    return {
        "version": i.ref.version,
        "kty": i.spec.kty.value,
        "size": i.spec.size,
        "curve": i.spec.curve,
        "ops": sorted(op.value for op in i.ops),
        "enabled": i.enabled,
        "created": _time(i.created),
        "not_before": _time(i.not_before),
        "expires": _time(i.expires),
        "tags": dict(i.tags),
        "hsm_protected": i.hsm_protected,
        "exportable": i.exportable,
        "material": b64url_encode(_crypto.key_bytes(s.material)),
    }


def encode(keys: Mapping[str, Sequence[StoredKey]]) -> bytes:
    """The JSON body for a set of keys (name -> versions, oldest first)."""
    doc = {"format": FORMAT, "keys": {name: [_encode_version(v) for v in versions] for name, versions in keys.items()}}
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def _parse_time(text: str | None) -> _dt.datetime | None:
    return None if text is None else _dt.datetime.fromisoformat(text)


def _decode_version(name: str, d: Mapping[str, Any], make_ref: RefFactory) -> StoredKey:
    kty = KeyType(d["kty"])
    spec = KeySpec.ec(d["curve"]) if kty is KeyType.EC else KeySpec(kty, int(d["size"]))
    raw = b64url_decode(d["material"], "key material")
    material: Material = raw if kty is KeyType.OCT else serialization.load_der_private_key(raw, None)  # type: ignore[assignment]
    if KeySpec.of(material) != spec:
        raise ValueError("material does not match its spec")
    info = KeyInfo(
        ref=make_ref(name, str(d["version"])),
        spec=spec,
        ops=frozenset(KeyOp(op) for op in d["ops"]),
        enabled=bool(d["enabled"]),
        created=_parse_time(d["created"]),
        not_before=_parse_time(d["not_before"]),
        expires=_parse_time(d["expires"]),
        tags={str(k): str(v) for k, v in d["tags"].items()},
        hsm_protected=bool(d["hsm_protected"]),
        exportable=bool(d["exportable"]),
        public_key=None if isinstance(material, bytes) else material.public_key(),
    )
    return StoredKey(info, material)


def decode(body: bytes, make_ref: RefFactory) -> dict[str, list[StoredKey]]:
    """Inverse of :func:`encode`. The body was authenticated, so a defect here means a bug or a
    keystore from an incompatible keybridge; either way it is reported, never half-loaded."""
    try:
        doc = json.loads(body)
        if doc.get("format") != FORMAT:
            raise ValueError(f"body format {doc.get('format')!r}")
        return {
            str(name): [_decode_version(str(name), v, make_ref) for v in versions]
            for name, versions in doc["keys"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError, KeybridgeError) as exc:
        raise IntegrityError("the keystore content is not understood by this keybridge version") from exc


# ---- files -------------------------------------------------------------------------------------


def read(path: Path, passphrase: str | bytes, make_ref: RefFactory) -> tuple[Sealer, dict[str, list[StoredKey]]]:
    """Load a keystore file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProviderUnavailable(
            f"keystore {str(path)!r} does not exist; open it with create=True (the CLI does) to make a new one"
        ) from None
    except OSError as exc:
        raise ProviderUnavailable(f"cannot read keystore {str(path)!r}: {exc.strerror}") from exc
    sealer, body = Sealer.unseal(data, passphrase)
    return sealer, decode(body, make_ref)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock for a read-merge-write of the keystore at ``path``.

    The lock is on a sidecar ``.lock`` file because each save renames a new file over the
    keystore, and a lock on the old inode would not exclude a writer that opened the new one."""
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ProviderUnavailable(f"cannot lock keystore {str(path)!r}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def reread(path: Path, sealer: Sealer, make_ref: RefFactory) -> dict[str, list[StoredKey]] | None:
    """The keystore's current content under ``sealer``, or None if the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProviderUnavailable(f"cannot read keystore {str(path)!r}: {exc.strerror}") from exc
    return decode(sealer.reopen(data), make_ref)


def write(path: Path, sealer: Sealer, keys: Mapping[str, Sequence[StoredKey]]) -> None:
    """Write a keystore file atomically (temp file, fsync, rename), mode 0600."""
    try:
        atomic_write(path, sealer.seal(encode(keys)), mode=0o600, overwrite=True)
    except OSError as exc:
        raise ProviderUnavailable(f"cannot write keystore {str(path)!r}: {exc.strerror}") from exc
