"""Wrapped export and import: the source provider wraps its own key under Azure's KEK (inside the HSM for
PKCS#11), and keybridge only packages the result. The key never exists in clear here."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from cryptography.hazmat.primitives.asymmetric import rsa

from .._byok import ByokPackage
from ..errors import IntegrityError, InvalidPackage
from ..keys import KeyInfo, KeyOp, KeyRef, KeySpec
from ..provider import KeyProvider
from ._wrap import DEFAULT_GENERATOR, check_kek_id, load_kek_public_key, make_package

__all__ = ["export", "import_package"]


def export(
    source: KeyProvider,
    key: str | KeyRef,
    kek_public_key: rsa.RSAPublicKey | bytes | str,
    kek_id: str,
    *,
    generator: str | None = None,
) -> ByokPackage:
    """A .byok package of ``key`` from ``source``, wrapped under the KEK ``kek_id`` by the source.

    The key must have been created exportable (otherwise the source raises
    :class:`~keybridge.OperationNotPermitted`); ``kek_public_key`` is the KEK's RSA public key
    (object or PEM) and ``kek_id`` its full key id with version, as Azure shows it.
    """
    kek = load_kek_public_key(kek_public_key)
    check_kek_id(kek_id)  # before the HSM does any work
    blob = source.export_wrapped(key, kek)
    if not isinstance(blob, bytes) or len(blob) < kek.key_size // 8 + 16:
        raise IntegrityError(f"the {source.scheme} provider returned a malformed wrapped key for {key}")
    return make_package(kek_id, blob, generator or f"{DEFAULT_GENERATOR}; source: {source.scheme} provider")


def import_package(
    target: KeyProvider,
    name: str,
    package: ByokPackage | bytes,
    spec: KeySpec,
    *,
    ops: Collection[KeyOp | str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> KeyInfo:
    """Import a .byok package into ``target`` as ``name``, a key of ``spec``.

    The package is validated first. A package the target cannot open (wrong KEK, damaged) or that
    holds another kind of key raises :class:`~keybridge.InvalidPackage`; whatever else the target
    raises (KEK not found, not allowed) passes through.
    """
    data = package.to_json() if isinstance(package, ByokPackage) else ByokPackage.from_json(package).to_json()
    try:
        return target.import_byok(name, data, spec, ops=ops, tags=tags)
    except IntegrityError as exc:
        raise InvalidPackage(f"the {target.scheme} provider could not open the package: {exc}") from exc
