"""``keybridge byok …`` (Azure bring-your-own-key) and ``keybridge demo``.

Every command prints each step it took, or one JSON document with ``--json``. Errors are
keybridge errors, which the entry point turns into one line on stderr and exit code 1.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .._byok import is_kek
from .._files import atomic_write
from .._softhsm import find_softhsm_module, throwaway_token
from ..byok import (
    ByokPackage,
    TransferResult,
    check_kek_id,
    export,
    implied_specs,
    import_package,
    load_kek_public_key,
    transfer,
)
from ..errors import IntegrityError, InvalidArgument
from ..keys import RSA_SIZES, KeyInfo, KeyOp, KeySpec, KeyType
from ..provider import KeyProvider, open_provider
from ._common import cli_uri, emit, json_option, key_info_dict, open_cli_key, open_cli_provider
from ._outputs import cli_write, early_check, force_option

__all__ = ["byok", "demo"]

_KTY = {"rsa": KeyType.RSA, "ec": KeyType.EC, "oct": KeyType.OCT}
_SIZES = click.Choice([str(s) for s in RSA_SIZES])


def _spec_options(f: Any) -> Any:
    f = click.option("--ops", help="Comma-separated key operations (default: the key type's usual ones).")(f)
    f = click.option("--curve", help="EC curve: P-256 (default), P-384 or P-521.")(f)
    f = click.option("--size", type=int, help="Key size in bits (RSA 2048/3072/4096, oct 128/192/256).")(f)
    return click.option(
        "--kty",
        type=click.Choice(["RSA", "EC", "oct"], case_sensitive=False),
        default="RSA",
        show_default=True,
        help="Key type.",
    )(f)


def _spec(kty: str, size: int | None, curve: str | None, package: ByokPackage | None = None) -> KeySpec:
    """The key spec from the options; an RSA/oct size missing is read off the package length."""
    t = _KTY[kty.lower()]
    if t is KeyType.EC:
        return KeySpec.ec(curve or "P-256")
    fits = set() if package is None else {spec for _, spec in implied_specs(package) if spec.kty is t}
    if size is not None:
        spec = KeySpec.rsa(size) if t is KeyType.RSA else KeySpec.aes(size)
        if fits and spec not in fits:
            # Key Vault's import names only the key type, so a wrong size would not be caught there.
            held = ", ".join(sorted(str(f) for f in fits))
            raise InvalidArgument(f"--size {size} does not fit this package, whose length shows {held}")
        return spec
    if package is None:
        return KeySpec.rsa(2048) if t is KeyType.RSA else KeySpec.aes(256)
    if len(fits) != 1:
        raise InvalidArgument(f"the package length does not tell the {t} key size; give it with --size")
    return fits.pop()


def _ops(text: str | None) -> list[str] | None:
    return None if text is None else [op.strip() for op in text.split(",") if op.strip()]


def _pem(info: KeyInfo) -> bytes:
    if info.public_key is None:
        raise InvalidArgument(f"{info.ref} has no public key to write")
    return info.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _lines(steps: Iterable[str]) -> str:
    return "\n".join(steps)


@click.group()
def byok() -> None:
    """Bring your own key: move a key from your HSM into Azure Key Vault / Managed HSM."""


@byok.group()
def kek() -> None:
    """Key-exchange keys (KEKs): RSA keys in the target whose only operation is 'import'."""


@kek.command("create")
@click.argument("vault_url", metavar="AZURE-VAULT-URL")
@click.option("--name", required=True, help="Name of the new KEK.")
@click.option("--size", type=_SIZES, default="4096", show_default=True, help="RSA modulus size.")
@click.option("--pem", type=click.Path(dir_okay=False), help="Also write the KEK public key (PEM) to this file.")
@force_option
@json_option
def kek_create(vault_url: str, name: str, size: str, pem: str | None, force: bool, as_json: bool) -> None:
    """Create a KEK in the target vault (like `az keyvault key create --ops import`)."""
    if pem:  # refuse a taken --pem before the KEK exists, not after
        early_check(pem, force=force)
    with open_cli_provider(cli_uri(vault_url)) as target:
        info = target.create_key(name, KeySpec.rsa(int(size)), ops=[KeyOp.IMPORT])
    steps = [f"Created KEK {info.ref} ({info.spec}, ops: import)"]
    if pem:
        cli_write(pem, _pem(info), force=force, mode=0o644)  # a public key: readable by all
        steps.append(f"Wrote its public key to {pem}")
    emit({"kek": key_info_dict(info), "pem": pem}, _lines(steps), as_json=as_json)


@kek.command("show")
@click.argument("key_uri", metavar="KEY-URI")
@click.option("--pem", type=click.Path(dir_okay=False), help="Write the KEK public key (PEM) to this file.")
@force_option
@json_option
def kek_show(key_uri: str, pem: str | None, force: bool, as_json: bool) -> None:
    """Show a KEK's id and size, and optionally save its public key for `byok export`."""
    handle = open_cli_key(key_uri)
    with handle.provider:
        info = handle.info()
    kek = is_kek(info)
    steps = [f"KEK {info.ref} ({info.spec}, ops: {', '.join(sorted(o.value for o in info.ops))})"]
    if not kek:
        steps.append("warning: this is not a key-exchange key (an RSA key with ops exactly [import])")
    if pem:
        cli_write(pem, _pem(info), force=force, mode=0o644)
        steps.append(f"Wrote its public key to {pem}")
    emit({"kek": key_info_dict(info), "is_kek": kek, "pem": pem}, _lines(steps), as_json=as_json)


@byok.command("export")
@click.option("--source", "source_uri", required=True, metavar="KEY-URI", help="The key to export.")
@click.option("--kek-pem", required=True, type=click.Path(exists=True, dir_okay=False), help="KEK public key (PEM).")
@click.option("--kek-id", required=True, help="The KEK's full key id with version.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .byok file to write.")
@click.option(
    "--generate",
    is_flag=True,
    help="First generate the key in the source (exportable; in an HSM it stays sensitive: it leaves only wrapped).",
)
@_spec_options
@force_option
@json_option
def export_cmd(
    source_uri: str,
    kek_pem: str,
    kek_id: str,
    output: str,
    generate: bool,
    kty: str,
    size: int | None,
    curve: str | None,
    ops: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Have the source wrap its key under the KEK (inside the HSM) and write a .byok file (mode 0600)."""
    early_check(output, force=force, inputs=(kek_pem,))  # before --generate makes a key
    kek_key = load_kek_public_key(Path(kek_pem).read_bytes())
    check_kek_id(kek_id)
    handle = open_cli_key(source_uri, create=generate)
    steps: list[str] = []
    data: dict[str, Any] = {}
    with handle.provider as source:
        ref = handle.ref
        if generate:
            info = source.create_key(ref.name, _spec(kty, size, curve), ops=_ops(ops), exportable=True)
            ref = info.ref
            steps.append(
                f"Generated {info.spec} key {ref} in the {source.scheme} provider (exportable; in an HSM only wrapped)"
            )
            data["generated"] = key_info_dict(info)
        package = export(source, ref, kek_key, kek_id)
    steps.append(f"The {source.scheme} provider wrapped {ref} under KEK {kek_id} (CKM_RSA_AES_KEY_WRAP)")
    cli_write(output, package.to_json(), force=force, inputs=(kek_pem,), mode=0o600)
    steps.append(f"Wrote {output} ({len(package.ciphertext)} bytes of ciphertext)")
    data.update(source=str(ref), kek_id=kek_id, output=output, ciphertext_bytes=len(package.ciphertext))
    emit(data, _lines(steps), as_json=as_json)


@byok.command("import")
@click.argument("key_uri", metavar="AZURE-KEY-URI")
@click.option("--byok", "byok_file", required=True, type=click.Path(exists=True, dir_okay=False))
@_spec_options
@json_option
def import_cmd(
    key_uri: str, byok_file: str, kty: str, size: int | None, curve: str | None, ops: str | None, as_json: bool
) -> None:
    """Import a .byok file into the target (like `az keyvault key import --byok-file`)."""
    package = ByokPackage.read(byok_file)
    spec = _spec(kty, size, curve, package)
    handle = open_cli_key(key_uri)
    with handle.provider as target:
        info = import_package(target, handle.ref.name, package, spec, ops=_ops(ops))
    human = f"Read {byok_file} (KEK {package.kid})\nImported {info.spec} key {info.ref}"
    emit({"imported": key_info_dict(info), "kek_id": package.kid}, human, as_json=as_json)


def transfer_dict(r: TransferResult) -> dict[str, Any]:
    """A transfer result as JSON-able values (no key material)."""
    return {
        "source": str(r.source_ref),
        "target": str(r.target_ref),
        "kek": str(r.kek_ref),
        "kek_id": r.package.kid,
        "package_bytes": len(r.package.to_json()),
        "proof": {"method": r.proof.method, "algorithm": r.proof.algorithm, "checks": list(r.proof.checks)},
    }


@byok.command("transfer")
@click.option("--source", "source_uri", required=True, metavar="PROVIDER-URI", help="Where the key is generated.")
@click.option("--target", "target_uri", required=True, metavar="AZURE-VAULT-URL", help="Where it is imported.")
@click.option("--name", required=True, help="Key name in the source (and the target).")
@click.option("--target-name", help="Key name in the target, if different.")
@click.option("--kek", "kek_uri", metavar="KEK-URI", help="Reuse this KEK instead of creating one.")
@click.option("--kek-size", type=_SIZES, default="4096", show_default=True, help="Size of a KEK created here.")
@click.option("--keep-kek", is_flag=True, help="Keep a KEK created here (it is deleted by default).")
@_spec_options
@json_option
def transfer_cmd(
    source_uri: str,
    target_uri: str,
    name: str,
    target_name: str | None,
    kek_uri: str | None,
    kek_size: str,
    keep_kek: bool,
    kty: str,
    size: int | None,
    curve: str | None,
    ops: str | None,
    as_json: bool,
) -> None:
    """Generate a key in the source, move it into the target with BYOK, and prove it arrived."""
    spec = _spec(kty, size, curve)
    source_uri, target_uri = cli_uri(source_uri), cli_uri(target_uri)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_cli_provider(source_uri, create=True))
        # Two providers on one keystore file would overwrite each other's saves: share one.
        same = source_uri.split(":", 1)[0].lower() == target_uri.split(":", 1)[0].lower() == "memory"
        target = source if same else stack.enter_context(open_cli_provider(target_uri, create=True))
        r = transfer(
            source,
            target,
            name,
            spec,
            ops=_ops(ops),
            kek=kek_uri,
            keep_kek=keep_kek,
            target_name=target_name,
            kek_size=int(kek_size),
        )
    kept = kek_uri is not None or keep_kek
    steps = [
        f"KEK {r.kek_ref} in the target ({'reused' if kek_uri else 'created'})",
        f"Generated {spec} key {r.source_ref} in the {source.scheme} provider (exportable; in an HSM only wrapped)",
        f"The source wrapped it under the KEK: {len(r.package.ciphertext)} bytes of ciphertext",
        f"Imported it as {r.target_ref}",
        *(f"Proof ✓ {check}" for check in r.proof.checks),
        f"KEK {'kept' if kept else 'deleted'}",
    ]
    emit({**transfer_dict(r), "kek_kept": kept}, _lines(steps), as_json=as_json)


@byok.command("inspect")
@click.argument("byok_file", metavar="F.byok", type=click.Path(exists=True, dir_okay=False))
@json_option
def inspect_cmd(byok_file: str, as_json: bool) -> None:
    """Validate a .byok file and show what it says (never any key material)."""
    p = ByokPackage.read(byok_file)
    implied = [{"kek_bits": bits, "target": str(spec)} for bits, spec in implied_specs(p)]
    data = {
        "file": byok_file,
        "schema_version": p.schema_version,
        "kid": p.kid,
        "alg": p.alg,
        "enc": p.enc,
        "generator": p.generator,
        "ciphertext_bytes": len(p.ciphertext),
        "implied": implied,
    }
    guess = ", ".join(f"{i['target']} under an RSA-{i['kek_bits']} KEK" for i in implied)
    human = _lines(
        [
            f"{byok_file}: valid .byok package (schema {p.schema_version}, alg {p.alg}, enc {p.enc})",
            f"KEK id:     {p.kid}",
            f"generator:  {_printable(p.generator)}",
            f"ciphertext: {len(p.ciphertext)} bytes",
            f"sizes fit:  {guess or 'an EC key (the curve does not show in the length)'}",
        ]
    )
    emit(data, human, as_json=as_json)


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a package's free-text field must not be able to
    move the cursor or recolour the terminal of whoever inspects it."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# ---- keybridge demo ----------------------------------------------------------------------------

_DEMO_KEYS = (("demo-rsa", KeySpec.rsa(2048)), ("demo-ec", KeySpec.ec("P-256")), ("demo-aes", KeySpec.aes(256)))


@contextlib.contextmanager
def _softhsm_source(workdir: Path) -> Iterator[KeyProvider]:
    """A provider on a fresh SoftHSM2 token in ``workdir``; its PIN reaches it through a 0600 file."""
    with throwaway_token(workdir, "keybridge-demo") as token:
        pin_file = workdir / "user.pin"
        atomic_write(pin_file, token.user_pin.encode(), mode=0o600)
        with open_provider(token.uri(pin=False), pin_source=str(pin_file)) as provider:
            yield provider


@contextlib.contextmanager
def _demo_source(workdir: Path) -> Iterator[tuple[KeyProvider, str]]:
    if shutil.which("softhsm2-util") and find_softhsm_module() is not None:
        with _softhsm_source(workdir) as provider:
            yield provider, "a throwaway SoftHSM2 token (real PKCS#11; keys wrapped inside the token)"
    else:
        with open_provider("memory:") as provider:
            yield provider, "the in-memory provider (SoftHSM2 is not installed: apt-get install softhsm2)"


def _envelope_step(target: KeyProvider, ref: str) -> str | None:
    """Encrypt and decrypt a message under the imported AES key (when envelope encryption exists)."""
    try:
        from ..envelope import decrypt, encrypt
    except ImportError:
        return None
    key, context = target.key(ref), {"purpose": "keybridge demo"}
    message = b"hello from the keybridge demo"
    sealed = encrypt(message, key, context=context)
    if decrypt(sealed, key, expected_context=context).plaintext != message:
        raise IntegrityError("envelope round trip under the imported AES key gave different bytes")
    return f"Envelope: a message encrypted under the imported AES key ({len(sealed)} bytes) decrypts ✓"


@click.command()
@json_option
def demo(as_json: bool) -> None:
    """Move an RSA, an EC and an AES key from an HSM into a local Managed HSM emulator, with proof."""
    from ..emulator import ManagedHsmEmulator

    with tempfile.TemporaryDirectory(prefix="keybridge-demo-") as tmp, _demo_source(Path(tmp)) as (source, what):
        if not as_json:
            click.echo(f"Source: {what}")
        with ManagedHsmEmulator() as emu, open_provider(emu.vault_url, **emu.provider_options()) as target:
            vault_url = emu.vault_url
            if not as_json:
                click.echo(f"Target: Managed HSM emulator at {vault_url}")
            kek = target.create_key("demo-kek", KeySpec.rsa(4096), ops=[KeyOp.IMPORT])
            results = [(spec, transfer(source, target, name, spec, kek=kek.ref)) for name, spec in _DEMO_KEYS]
            aes_ref = str(results[-1][1].target_ref)
            envelope_line = _envelope_step(target, aes_ref)
            target.delete_key(kek.ref.name)
    table = Table(title="BYOK transfers")
    for column in ("key", "source", "target kid", "package", "proof"):
        table.add_column(column, overflow="fold")
    for spec, r in results:
        table.add_row(
            str(spec),
            f"{r.source_ref.scheme}:{r.source_ref.name}",
            str(r.target_ref),
            f"{len(r.package.to_json())} B",
            f"✓ {r.proof.method} {r.proof.algorithm}",
        )
    done = f"It worked: {len(results)} keys moved into the emulator, each proven from both sides."
    lines: list[Any] = [table, *(Text(f"{spec}: {r.proof}") for spec, r in results)]
    if envelope_line:
        lines.append(Text(envelope_line))
    lines.append(Text(done, style="bold green"))
    data = {
        "source": what,
        "target": vault_url,
        "kek": str(kek.ref),
        "transfers": [{"key": str(spec), **transfer_dict(r)} for spec, r in results],
        "envelope": envelope_line,
        "ok": True,
    }
    emit(data, Group(*lines), as_json=as_json)
