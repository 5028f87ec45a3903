"""BYOK import: check the package's key-exchange key, then let the provider unwrap the key.

The wire request names only the key family (``kty``, and ``crv`` for EC when the caller gives
it), while the provider needs the exact spec it must find in the package. The emulator asks for
each spec of the family in turn (at most four; with ``crv`` only that curve) and keeps the one
the unwrapped key matches. Only a package that unwraps cleanly gets a second try: a wrong KEK, a
tampered ciphertext or a KEK the service refuses fails on the first attempt with one 400, so the
number of attempts (and the time taken) depends only on what a genuine package holds, which its
maker knows already.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from .._byok import ByokPackage, is_full_key_id
from ..errors import InvalidPackage, KeybridgeError
from ..keys import AES_SIZES, CURVES, RSA_SIZES, KeyInfo, KeySpec, KeyType
from ._errors import ApiError, bad
from ._vault import Vault

__all__ = ["importer"]


def _candidates(kind: KeyType, crv: object) -> list[KeySpec]:
    if kind is KeyType.EC:
        if crv is None:
            return [KeySpec.ec(c) for c in CURVES]
        if crv not in CURVES:
            raise bad(f"crv {crv!r} is not supported; use one of {', '.join(CURVES)}")
        return [KeySpec.ec(str(crv))]
    if kind is KeyType.RSA:
        return [KeySpec.rsa(bits) for bits in RSA_SIZES]
    return [KeySpec.aes(bits) for bits in AES_SIZES]


def _kek_kid(vault: Vault, kid: str) -> str:
    """The provider-side kid of the KEK the package names, after the service's own checks."""
    parts = [unquote(p) for p in urlsplit(kid).path.strip("/").split("/")]
    if not is_full_key_id(kid) or len(parts) != 3:
        raise bad(f"the package's kid {kid!r} is not a key id of this vault (https://HOST/keys/NAME/VERSION)")
    try:
        entry = vault.active(parts[1])
        ver = vault.version(entry, parts[2])
    except ApiError:
        raise bad(f"the package's key-exchange key {kid!r} is not a key in this vault") from None
    if ver.kty != "RSA-HSM" or ver.ops != ["import"]:
        raise bad(
            f"key {entry.name} cannot be a key-exchange key: a KEK must be RSA-HSM with key_ops exactly"
            f" ['import'] (it is {ver.kty} with {ver.ops})"
        )
    # nbf/exp are the emulator's state, not the provider's, so the window is checked here; the
    # enabled flag too, so that the message names the Azure key rather than the provider's.
    if not vault.info(entry, ver).enabled:
        raise bad(f"key-exchange key {entry.name}/{ver.id} is disabled; enable it before importing")
    if not ver.in_window(vault.now()):
        raise bad(f"key-exchange key {entry.name}/{ver.id} is outside its not-before/expiry window")
    return f"https://emulator.invalid/keys/{entry.pname}/{ver.id}"


def importer(vault: Vault, package: bytes, kind: KeyType, crv: object) -> Callable[[str, list[str] | None], KeyInfo]:
    """A ``make`` function for :meth:`Vault.add` that imports ``package`` (the .byok bytes)."""
    try:
        pkg = ByokPackage.from_json(package)
    except InvalidPackage as exc:
        raise bad(f"key_hsm is not a valid BYOK package: {exc}") from None
    except ValueError:  # urlsplit refuses a kid such as "https://[bad/..." before any check of ours
        raise bad("key_hsm names a kid that is not a URL; use https://HOST/keys/NAME/VERSION") from None
    rewritten = ByokPackage(_kek_kid(vault, pkg.kid), pkg.ciphertext, pkg.generator).to_json()
    specs = _candidates(kind, crv)

    def make(pname: str, ops: list[str] | None) -> KeyInfo:
        first: InvalidPackage | None = None
        for spec in specs:
            try:
                return vault.provider.import_byok(pname, rewritten, spec, ops=ops)
            except InvalidPackage as exc:  # it unwrapped, but holds no ``spec`` key
                first = first or exc
            except KeybridgeError as exc:  # wrong KEK, damaged package: the same for every spec
                raise bad(f"BYOK import failed: {exc}") from None
        tried = ", ".join(str(s) for s in specs)
        raise bad(f"BYOK import failed: the package holds no key of kty {kind} that fits ({tried}): {first}")

    return make
