"""transfer(): move a key from one provider into another (Azure) with BYOK, and prove it arrived.

The proof uses each side's private key and the other side's public key, in both directions, so
a transfer that silently imported a different key, or a key the target cannot use, fails loudly.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from cryptography.hazmat.primitives import serialization

from .. import _crypto
from .._byok import ByokPackage, is_kek
from ..errors import (
    IntegrityError,
    InvalidArgument,
    InvalidKeySpec,
    KeybridgeError,
    KeyExists,
    KeyNotFound,
    UnsupportedOperation,
)
from ..keys import ES_CURVES, RSA_SIZES, KeyInfo, KeyOp, KeyRef, KeySpec, KeyType, PublicKey, algorithm
from ..provider import KeyProvider
from ._export import export, import_package

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from ..providers.azure import Assignment, AzureKeyVaultProvider, Role

GrantCredential = Callable[[str], "TokenCredential"] | Mapping[str, "TokenCredential"]
"""principal -> the credential that authenticates as it (``transfer(grant_credential=)``)."""

__all__ = ["GrantCredential", "Proof", "TransferResult", "transfer"]


@dataclass(frozen=True)
class Proof:
    """How :func:`transfer` showed that source and target hold the same key. Every check listed
    passed (a failed one raises :class:`~keybridge.IntegrityError` instead)."""

    method: str  # "signature", "decryption", "encryption", "key-wrap" or "public-key"
    algorithm: str | None
    checks: tuple[str, ...]

    def __str__(self) -> str:
        return "; ".join(self.checks)


@dataclass(frozen=True)
class TransferResult:
    """What :func:`transfer` did: the key in the source and in the target, the package that
    carried it, the KEK used (deleted afterwards if transfer created it and ``keep_kek`` was
    false), the proof, and the role assignments ``grant=`` made on the imported key."""

    source_ref: KeyRef
    target_ref: KeyRef
    package: ByokPackage
    kek_ref: KeyRef
    proof: Proof
    assignments: tuple[Assignment, ...] = ()


def transfer(
    source: KeyProvider,
    target: KeyProvider,
    name: str,
    spec: KeySpec,
    *,
    ops: Collection[KeyOp | str] | None = None,
    kek: KeyRef | str | None = None,
    keep_kek: bool = False,
    target_name: str | None = None,
    kek_size: int = 4096,
    tags: Mapping[str, str] | None = None,
    grant: Sequence[tuple[str, str]] | None = None,
    grant_credential: GrantCredential | None = None,
) -> TransferResult:
    """Generate ``name`` in ``source``, move it into ``target`` with BYOK, and prove it arrived.

    Steps: use the KEK ``kek`` in the target, or create one (RSA ``kek_size``, ops exactly
    ``import``); generate the key in the source as exportable (an HSM keeps it sensitive, so it
    leaves only wrapped); have the source wrap it under the KEK; import the package into the
    target as ``target_name`` (default ``name``);
    prove both sides hold the same key (RSA/EC: sign on each side, verify with the other side's
    public key, and compare public keys; AES: encrypt or wrap on each side, decrypt or unwrap on
    the other). A KEK created here is deleted at the end unless ``keep_kek``.

    ``grant`` (Azure Managed HSM targets) ends the transfer with least privilege: a list of
    ``(principal, role)`` pairs, each becoming exactly one role assignment scoped to the imported
    key (``/keys/NAME``); once all exist, the target half of the proof runs *as each principal*,
    with the credential ``grant_credential`` gives for it (a callable or mapping principal ->
    credential). So a role that cannot do the proof's operation fails the transfer (with
    :class:`~keybridge.OperationNotPermitted` naming the missing data action), and on any failure
    the assignments this call created are removed again.

    Errors are typed: a source without ``export_wrapped`` or a target without ``import_byok`` in
    its ``capabilities`` raises :class:`~keybridge.UnsupportedOperation` before either side is
    touched; a name already in use on the source (``name``) or the target (``target_name``)
    raises :class:`~keybridge.KeyExists` naming the side, before either side is touched; a refused
    import raises :class:`~keybridge.InvalidPackage`, a failed proof :class:`~keybridge.IntegrityError`;
    provider errors pass through unchanged.
    """
    for role, p in (("source", source), ("target", target)):
        if not isinstance(p, KeyProvider):
            raise InvalidArgument(f"transfer needs a KeyProvider as {role}, got {type(p).__name__}")
    if not isinstance(spec, KeySpec):
        raise InvalidArgument(f"spec must be a KeySpec (e.g. KeySpec.rsa(3072)), got {type(spec).__name__}")
    _require_capabilities(source, target)
    key_ops = spec.check_ops(ops)
    if KeyOp.IMPORT in key_ops:
        raise InvalidKeySpec("a transferred key cannot be a key-exchange key: leave 'import' out of ops")
    prove = _proof_plan(source, target, spec, key_ops)  # refuse an unprovable transfer before any work
    grants = _grants(target, grant, grant_credential)  # unknown roles, too
    hsm = cast("AzureKeyVaultProvider", target)  # only used when there are grants, which checked it
    dest = target_name or name
    # Before any KEK or key exists: a second run must not leave a KEK, a key or a version behind.
    _refuse_taken(source, name, "source", "name")
    _refuse_taken(target, dest, "target", "target_name")
    kek_info, created = _kek(target, dest, kek, kek_size)
    made: list[Assignment] = []
    assignments: list[Assignment] = []
    try:
        src = source.create_key(name, spec, ops=key_ops, exportable=True, tags=tags)
        assert kek_info.public_key is not None
        pkg = export(source, src.ref, kek_info.public_key, target.kek_id(kek_info))  # type: ignore[arg-type]
        tgt = import_package(target, dest, pkg, spec, ops=key_ops, tags=tags)
        if not grants:
            proof = prove(source, src, target, tgt)
        for principal, granted, _ in grants:
            held = {a.name for a in hsm.access.list(tgt.ref, principal=principal)}
            assignment = hsm.access.grant(tgt.ref, principal, granted)
            assignments.append(assignment)
            if assignment.name not in held:
                made.append(assignment)
        # Every grant is in place before any proof: a principal's roles add up, whatever the order.
        for credential in {p: c for p, _, c in grants}.values():
            as_principal = hsm.with_credential(credential)
            try:
                proof = prove(source, src, as_principal, tgt)  # the same checks for every principal
            finally:
                as_principal.close()
        if grants:
            ran_as = ", ".join(dict.fromkeys(p for p, _, _ in grants))
            proof = Proof(proof.method, proof.algorithm, (*proof.checks, f"the target side ran as {ran_as}"))
    except BaseException:
        for assignment in made:  # only what this transfer created; an older identical one stays
            with contextlib.suppress(KeybridgeError):
                hsm.access.remove(assignment)
        if created and not keep_kek:
            _delete_quietly(target, kek_info.ref)
        raise
    if created and not keep_kek:
        target.delete_key(kek_info.ref.name)
    return TransferResult(src.ref, tgt.ref, pkg, kek_info.ref, proof, tuple(assignments))


def _grants(
    target: KeyProvider, grant: Sequence[tuple[str, str]] | None, credentials: GrantCredential | None
) -> list[tuple[str, Role, TokenCredential]]:
    """Check ``grant=`` before any work: an Azure Managed HSM target, known roles, a credential
    for every principal."""
    if not grant:
        return []
    # What grants need, asked of the target itself (byok uses providers only through what they
    # offer): role assignments (`access`) and a copy acting as another principal.
    if not (hasattr(type(target), "access") and callable(getattr(target, "with_credential", None))):
        raise InvalidArgument(f"grant= needs an Azure Managed HSM target, not {type(target).__name__}")
    if credentials is None:
        raise InvalidArgument(
            "grant= needs grant_credential= (principal -> credential): the proof runs as each granted principal"
        )
    out: list[tuple[str, Role, TokenCredential]] = []
    for item in grant:
        if not (isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise InvalidArgument(f"each grant must be a (principal, role) pair of strings, got {item!r}")
        principal, role = item
        out.append((principal, target.access.role(role), _credential_for(credentials, principal)))  # type: ignore[attr-defined]
    return out


def _credential_for(credentials: GrantCredential, principal: str) -> TokenCredential:
    if isinstance(credentials, Mapping):
        if principal not in credentials:
            raise InvalidArgument(f"grant_credential has no credential for principal {principal!r}")
        return credentials[principal]
    if not callable(credentials):
        raise InvalidArgument(f"grant_credential must be a callable or a mapping, got {type(credentials).__name__}")
    return credentials(principal)


def _refuse_taken(provider: KeyProvider, name: str, side: str, option: str) -> None:
    try:
        info = provider.get_key(name)
    except KeyNotFound:
        return
    raise KeyExists(
        f"the {side} already has a key named {name!r} ({info.ref}); transfer creates a new key on both sides:"
        f" pass another {option}, or delete the existing key first"
    )


def _require_capabilities(source: KeyProvider, target: KeyProvider) -> None:
    # Checked before any key or KEK exists: finding out half way would leave both behind.
    for side, p, op in (("source", source, "export_wrapped"), ("target", target, "import_byok")):
        if op not in p.capabilities:
            raise UnsupportedOperation(
                p.scheme, op, f"transfer needs a {side} that can do {op}; its capabilities: {sorted(p.capabilities)}"
            )


def _delete_quietly(target: KeyProvider, ref: KeyRef) -> None:
    # Cleanup after a failure must not hide the failure itself.
    with contextlib.suppress(KeybridgeError):
        target.delete_key(ref.name)


def _kek(target: KeyProvider, name: str, kek: KeyRef | str | None, size: int) -> tuple[KeyInfo, bool]:
    if kek is None:
        if size not in RSA_SIZES:
            raise InvalidKeySpec(f"KEK size {size} is not allowed; Azure BYOK takes RSA {RSA_SIZES}")
        info = target.create_key(f"{name}-kek-{secrets.token_hex(4)}", KeySpec.rsa(size), ops=[KeyOp.IMPORT])
        return info, True
    info = target.get_key(kek)
    if not is_kek(info):
        raise InvalidArgument(f"{info.ref} cannot be a KEK: it must be an RSA key whose only operation is 'import'")
    return info, False


Prover = Callable[[KeyProvider, KeyInfo, KeyProvider, KeyInfo], Proof]


def _common(source: KeyProvider, target: KeyProvider, *names: str) -> str | None:
    return next((n for n in names if n in source.algorithms and n in target.algorithms), None)


def _proof_plan(source: KeyProvider, target: KeyProvider, spec: KeySpec, ops: frozenset[KeyOp]) -> Prover:
    """Pick the strongest proof the key's operations and both providers allow."""
    if spec.kty is KeyType.OCT:
        gcm = _common(source, target, f"A{spec.size}GCM")
        if gcm and {KeyOp.ENCRYPT, KeyOp.DECRYPT} <= ops:
            return _symmetric("encryption", gcm)
        kw = _common(source, target, f"A{spec.size}KW", "CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP_PAD")
        if kw and {KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY} <= ops:
            return _symmetric("key-wrap", kw)
        raise InvalidArgument(
            f"an {spec} transfer cannot be proven with ops {sorted(o.value for o in ops)}: give the key"
            " encrypt+decrypt (AES-GCM) or wrapKey+unwrapKey on providers that both support them"
        )
    if spec.kty is KeyType.EC:
        es = next(a for a, curve in ES_CURVES.items() if curve == spec.curve)
        sig = _common(source, target, es)
    else:
        sig = _common(source, target, "PS256", "RS256")
    if sig and KeyOp.SIGN in ops:
        return _signature(sig)
    if spec.kty is KeyType.RSA and _common(source, target, "RSA-OAEP") and ops & {KeyOp.DECRYPT, KeyOp.UNWRAP_KEY}:
        return _rsa_decryption(KeyOp.DECRYPT if KeyOp.DECRYPT in ops else KeyOp.UNWRAP_KEY)
    return _public_only


def _same_public_key(s: KeyInfo, t: KeyInfo) -> tuple[PublicKey, PublicKey]:
    if s.public_key is None or t.public_key is None:
        raise IntegrityError(f"proof failed: {s.ref} or {t.ref} has no public key")

    def spki(k: PublicKey) -> bytes:
        return k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    if not hmac.compare_digest(spki(s.public_key), spki(t.public_key)):
        raise IntegrityError(f"proof failed: {t.ref} has a different public key than {s.ref}")
    return s.public_key, t.public_key


def _public_only(source: KeyProvider, s: KeyInfo, target: KeyProvider, t: KeyInfo) -> Proof:
    _same_public_key(s, t)
    return Proof("public-key", None, ("public keys are equal (the key's ops allow no private-key check)",))


def _signature(alg: str) -> Prover:
    a = algorithm(alg)

    def prove(source: KeyProvider, s: KeyInfo, target: KeyProvider, t: KeyInfo) -> Proof:
        s_pub, t_pub = _same_public_key(s, t)
        for signer, info, other_pub, where in ((target, t, s_pub, "target"), (source, s, t_pub, "source")):
            digest = os.urandom(a.digest_size())
            if not _crypto.verify(other_pub, a, digest, signer.sign(info.ref, alg, digest)):
                other = "source" if where == "target" else "target"
                raise IntegrityError(
                    f"proof failed: a {alg} signature made in the {where} does not verify with the {other}'s public key"
                )
        return Proof(
            "signature",
            alg,
            (
                "public keys are equal",
                f"{alg} signature made in the target verifies with the source public key",
                f"{alg} signature made in the source verifies with the target public key",
            ),
        )

    return prove


def _rsa_decryption(op: KeyOp) -> Prover:
    a = algorithm("RSA-OAEP")

    def prove(source: KeyProvider, s: KeyInfo, target: KeyProvider, t: KeyInfo) -> Proof:
        s_pub, t_pub = _same_public_key(s, t)
        for opener, info, other_pub, where in ((target, t, s_pub, "target"), (source, s, t_pub, "source")):
            secret = os.urandom(32)
            sealed = _crypto.public_encrypt(other_pub, a, secret)  # type: ignore[arg-type]
            fn = opener.decrypt if op is KeyOp.DECRYPT else opener.unwrap_key
            _check_opens(where, secret, fn, info.ref, a.name, sealed)
        return Proof(
            "decryption",
            a.name,
            (
                "public keys are equal",
                f"the target opens {a.name} ciphertext made with the source public key",
                f"the source opens {a.name} ciphertext made with the target public key",
            ),
        )

    return prove


def _symmetric(method: str, alg: str) -> Prover:
    def prove(source: KeyProvider, s: KeyInfo, target: KeyProvider, t: KeyInfo) -> Proof:
        for sealer, si, opener, oi, where in ((source, s, target, t, "target"), (target, t, source, s, "source")):
            secret = os.urandom(32)
            if method == "encryption":
                _check_opens(where, secret, opener.decrypt, oi.ref, alg, sealer.encrypt(si.ref, alg, secret))
            else:
                _check_opens(where, secret, opener.unwrap_key, oi.ref, alg, sealer.wrap_key(si.ref, alg, secret))
        verb = "decrypts" if method == "encryption" else "unwraps"
        return Proof(
            method,
            alg,
            (
                f"the target {verb} {alg} output of the source",
                f"the source {verb} {alg} output of the target",
            ),
        )

    return prove


def _check_opens(where: str, expected: bytes, open_: Callable[[KeyRef, str, bytes], bytes], *args: object) -> None:
    """``open_(*args)`` must give back ``expected``: the other side sealed it with the same key."""
    try:
        got = open_(*args)  # type: ignore[arg-type]
    except IntegrityError as exc:
        raise IntegrityError(f"proof failed: the {where} could not open what the other side sealed") from exc
    if not hmac.compare_digest(got, expected):
        raise IntegrityError(f"proof failed: the {where} opened different bytes than the other side sealed")
