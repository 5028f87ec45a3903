"""``keybridge ekm serve`` runs the EKM proxy (or, with ``--api xks``, the AWS XKS proxy) until
SIGTERM/Ctrl-C; ``keybridge ekm check`` calls a running EKM proxy as Managed HSM would (info,
metadata, a wrap/unwrap round trip per key)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
from typing import Any

import click
from rich.table import Table

from ..ekm import Client, ClientRule, EkmServer, ExportedKey, XksServer
from ..ekm._wire import unb64u
from ..errors import IntegrityError, InvalidArgument, KeybridgeError
from ..keys import KeySpec
from ..provider import KeyProvider
from ._common import cli_uri, emit, json_option, open_cli_provider

__all__ = ["ekm"]

_KEY_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_OPS = {"wrap": "wrapKey", "unwrap": "unwrapKey", "wrapkey": "wrapKey", "unwrapkey": "unwrapKey"}
# The XKS API's own key id and prefix alphabets, and its operation names.
_XKS_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_XKS_OPS = {"encrypt": "encrypt", "decrypt": "decrypt"}
_PREFIX = {"ekm": re.compile(r"(/[A-Za-z0-9-]+)+"), "xks": re.compile(r"(/[A-Za-z0-9._-]+)+")}
_BUDGET_MS = 250.0  # Managed HSM's timeout for every proxy call


@click.group("ekm")
def ekm() -> None:
    """Serve Managed HSM external keys from your own HSM, and check a running proxy."""


def parse_key(text: str, api: str = "ekm") -> tuple[str, str, frozenset[str]]:
    """``[ID=]NAME[:ops]`` as (external key id, provider key name, operations); ops are a comma
    list of ``wrap``/``unwrap`` (or ``wrapKey``/``unwrapKey``), for ``api="xks"`` of
    ``encrypt``/``decrypt``; both by default."""
    xks = api == "xks"
    names, pattern = (_XKS_OPS, _XKS_KEY_ID) if xks else (_OPS, _KEY_ID)
    usage = "encrypt,decrypt" if xks else "wrap,unwrap"
    alphabet = "1-128 letters, digits and '.', '_', '-'" if xks else "1-64 letters, digits and '-'"
    head, _, ops_text = text.partition(":")
    key_id, _, name = head.rpartition("=")
    key_id = key_id or name
    if not name or not pattern.fullmatch(key_id):
        raise click.BadParameter(
            f"{text!r}: use [ID=]NAME[:{usage}], where the external key ID is {alphabet}", param_hint="--key"
        )
    ops = {names.get(o.strip().lower(), "") for o in ops_text.split(",")} if ops_text else set(names.values())
    if "" in ops:
        raise click.BadParameter(f"{text!r}: operations are {usage} (comma separated)", param_hint="--key")
    return key_id, name, frozenset(ops)


@ekm.command("serve")
@click.option(
    "--api",
    type=click.Choice(["ekm", "xks"]),
    default="ekm",
    show_default=True,
    help="ekm: Managed HSM EKM proxy (mTLS); xks: AWS KMS XKS proxy (SigV4).",
)
@click.option("--provider", "provider_uri", required=True, metavar="URI", help="Provider URI (pkcs11:..., memory:).")
@click.option(
    "--key",
    "keys",
    multiple=True,
    required=True,
    metavar="[ID=]NAME[:ops]",
    help="Export provider key NAME as external key ID (default NAME); ops: wrap,unwrap (xks: encrypt,decrypt).",
)
@click.option("--cert", "cert_file", required=True, type=click.Path(dir_okay=False), help="Server certificate PEM.")
@click.option("--key-file", required=True, type=click.Path(dir_okay=False), help="Server private key PEM.")
@click.option(
    "--client-ca", type=click.Path(dir_okay=False), help="Root CA PEM of the client cert (ekm: required; xks: mTLS)."
)
@click.option(
    "--allow-cn", multiple=True, metavar="CN", help="Allowed client certificate subject CN (with --client-ca)."
)
@click.option(
    "--xks-access-key-id",
    "xks_ids",
    multiple=True,
    metavar="ID",
    help="xks: SigV4 access key id (repeat with --xks-secret-env for a rotation).",
)
@click.option(
    "--xks-secret-env",
    "xks_envs",
    multiple=True,
    metavar="VAR",
    help="xks: environment variable holding the secret of the matching --xks-access-key-id.",
)
@click.option("--xks-region", metavar="REGION", help="xks: the AWS region of the KMS external key store.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=443, show_default=True, help="0 picks a free port.")
@click.option("--prefix", default="", metavar="PATH", help="Path prefix, e.g. /contoso/prod.")
@click.option(
    "--deadline-ms", type=click.IntRange(1, 60000), default=250, show_default=True, help="Answer 408 past this."
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning"]),
    default="info",
    show_default=True,
    help="stderr log: info logs every call's request_context and client CN.",
)
@json_option
def serve(
    api: str,
    provider_uri: str,
    keys: tuple[str, ...],
    cert_file: str,
    key_file: str,
    client_ca: str | None,
    allow_cn: tuple[str, ...],
    xks_ids: tuple[str, ...],
    xks_envs: tuple[str, ...],
    xks_region: str | None,
    host: str,
    port: int,
    prefix: str,
    deadline_ms: int,
    log_level: str,
    as_json: bool,
) -> None:
    """Serve the Managed HSM EKM proxy API (or the AWS XKS proxy API) until SIGTERM or Ctrl-C."""
    _log_to_stderr(log_level)
    exported = [ExportedKey(i, n, ops) for i, n, ops in (parse_key(k, api) for k in keys)]
    if len({k.key_id for k in exported}) != len(exported):
        raise click.BadParameter("each external key ID may be given once", param_hint="--key")
    if (prefix and not _PREFIX[api].fullmatch(prefix.rstrip("/"))) or len(prefix) > 64:
        chars = "letters, digits, '.', '_' and '-'" if api == "xks" else "letters, digits and '-'"
        raise click.BadParameter(f"use up to 64 characters of /-separated {chars}", param_hint="--prefix")
    if api == "ekm" and (client_ca is None or not allow_cn):
        raise click.UsageError("--api ekm needs --client-ca and at least one --allow-cn (Managed HSM uses mTLS)")
    if (client_ca is None) != (not allow_cn):
        raise click.UsageError("XKS mTLS (optional) needs both --client-ca and --allow-cn, or neither")
    credentials = _xks_credentials(xks_ids, xks_envs, xks_region) if api == "xks" else {}
    provider = open_cli_provider(cli_uri(provider_uri))
    stop = threading.Event()
    # In place before the URL is printed, so a supervisor that signals on "ready" cannot beat it.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server: EkmServer | XksServer | None = None
    try:
        _check_keys(provider, exported, api)
        common: dict[str, Any] = {"prefix": prefix, "host": host, "port": port, "deadline": deadline_ms / 1000}
        clients = [ClientRule(cn) for cn in allow_cn]
        if api == "xks":
            assert xks_region is not None  # _xks_credentials refused a missing region
            server = XksServer(
                provider,
                exported,
                cert_file=cert_file,
                key_file=key_file,
                credentials=credentials,
                region=xks_region,
                client_ca_file=client_ca,
                clients=clients or None,
                **common,
            )
        else:
            assert client_ca is not None
            server = EkmServer(
                provider,
                exported,
                cert_file=cert_file,
                key_file=key_file,
                client_ca_file=client_ca,
                clients=clients,
                **common,
            )
        ids = sorted(k.key_id for k in exported)
        if as_json:
            click.echo(json.dumps({"url": server.url, "pid": os.getpid(), "keys": ids}, sort_keys=True))
        else:
            click.echo(f"{api.upper()} proxy: {server.url}  keys: {', '.join(ids)}  (Ctrl-C or SIGTERM stops)")
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.close()
        provider.close()
    if not as_json:
        click.echo("stopped")


def _xks_credentials(ids: tuple[str, ...], envs: tuple[str, ...], region: str | None) -> dict[str, str]:
    """Pair each access key id with the secret in its environment variable (never a flag value,
    which ``ps`` would show)."""
    if not ids or len(ids) != len(envs):
        raise click.UsageError("--api xks needs each --xks-access-key-id paired with one --xks-secret-env VAR")
    if not region:
        raise click.UsageError("--api xks needs --xks-region, the region KMS signs its calls for")
    out = {}
    for akid, var in zip(ids, envs, strict=True):
        secret = os.environ.get(var)
        if not secret:
            raise click.UsageError(f"environment variable {var} (the secret for {akid}) is unset or empty")
        out[akid] = secret
    return out


def _check_keys(provider: KeyProvider, exported: list[ExportedKey], api: str) -> None:
    """Look every key up now, so a mistyped name (or, for XKS, a non-AES-256 key) fails at start
    with its name, not on the first call from the cloud."""
    for k in exported:
        info = provider.get_key(k.ref)
        if api == "xks" and info.spec != KeySpec.aes(256):
            raise InvalidArgument(f"key {k.ref!r} is {info.spec.kty}-{info.spec.size}; XKS serves AES-256 keys only")


def _log_to_stderr(level: str) -> None:
    # Only the proxy's own logger: the provider's audit events have their own sinks.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("keybridge.ekm")
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False


def _round_trip(client: Client, key_id: str, md: dict[str, Any], algs: dict[str, str]) -> dict[str, Any]:
    """Wrap and unwrap a fresh random key, as Managed HSM would; RSA wraps are also made locally
    from the reported ``n``/``e`` so an unwrap-only key is checked and the public key is proven."""
    ops = set(md.get("key_ops") or ())
    rsa = md.get("key_type") == "RSA"
    alg = algs["RSA" if rsa else "oct"]
    secret = os.urandom(32)
    row: dict[str, Any] = {"alg": alg, "wrap_ms": None, "unwrap_ms": None}
    wrapped = None
    if "wrapKey" in ops:
        t = time.perf_counter()
        wrapped = client.wrap_key(key_id, alg, secret)
        row["wrap_ms"] = round((time.perf_counter() - t) * 1000, 2)
    if rsa:
        wrapped = _local_oaep(md, alg, secret)
    if "unwrapKey" in ops and wrapped is not None:
        t = time.perf_counter()
        got = client.unwrap_key(key_id, alg, wrapped)
        row["unwrap_ms"] = round((time.perf_counter() - t) * 1000, 2)
        if got != secret:
            raise IntegrityError("unwrap did not return the key that was wrapped")
    return row


def _local_oaep(md: dict[str, Any], alg: str, secret: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    n = int.from_bytes(unb64u(md.get("n"), "n"), "big")
    e = int.from_bytes(unb64u(md.get("e"), "e"), "big")
    digest = hashes.SHA256() if alg == "RSA-OAEP-256" else hashes.SHA1()
    oaep = padding.OAEP(mgf=padding.MGF1(digest), algorithm=digest, label=None)
    return rsa.RSAPublicNumbers(e, n).public_key().encrypt(secret, oaep)


class EkmCheckFailed(KeybridgeError):
    """A check that ran but found failures: the CLI prints this one line and exits 1."""


@ekm.command("check")
@click.argument("url")
@click.option("--cert", "cert_file", required=True, type=click.Path(dir_okay=False), help="Client certificate PEM.")
@click.option("--key-file", required=True, type=click.Path(dir_okay=False), help="Client private key PEM.")
@click.option("--ca", "ca_file", required=True, type=click.Path(dir_okay=False), help="Proxy's root CA PEM.")
@click.option("--key", "key_ids", multiple=True, metavar="ID", help="External key ID to exercise (repeatable).")
@click.option(
    "--oct-alg", type=click.Choice(["A256KWP", "A256KW"]), default="A256KWP", show_default=True, help="For oct keys."
)
@click.option(
    "--rsa-alg",
    type=click.Choice(["RSA-OAEP-256", "RSA-OAEP"]),
    default="RSA-OAEP-256",
    show_default=True,
    help="For RSA keys.",
)
@click.option("--pool", default="keybridge-check", show_default=True, help="pool_name in request_context.")
@json_option
def check(
    url: str,
    cert_file: str,
    key_file: str,
    ca_file: str,
    key_ids: tuple[str, ...],
    oct_alg: str,
    rsa_alg: str,
    pool: str,
    as_json: bool,
) -> None:
    """Call a running EKM proxy as Managed HSM does; exit 1 if any call fails."""
    with Client(url, ca_file=ca_file, cert_file=cert_file, key_file=key_file, pool_name=pool) as client:
        t = time.perf_counter()
        info = client.info()
        info_ms = round((time.perf_counter() - t) * 1000, 2)
        rows = []
        for key_id in key_ids:
            row: dict[str, Any] = {"key": key_id, "ok": False, "error": None}
            try:
                md = client.metadata(key_id)
                row.update(key_type=md.get("key_type"), key_size=md.get("key_size"), key_ops=md.get("key_ops"))
                row.update(_round_trip(client, key_id, md, {"oct": oct_alg, "RSA": rsa_alg}))
                slow = [ms for ms in (row["wrap_ms"], row["unwrap_ms"]) if ms is not None and ms > _BUDGET_MS]
                row["ok"] = not slow
                row["error"] = f"slower than Managed HSM's {_BUDGET_MS:.0f} ms timeout" if slow else None
            except KeybridgeError as exc:
                row["error"] = str(exc)
            rows.append(row)
    failed = [r for r in rows if not r["ok"]]
    data = {"url": url, "info": info, "info_ms": info_ms, "keys": rows, "ok": not failed}
    emit(data, _table(info, info_ms, rows), as_json=as_json)
    if failed:
        first = failed[0]
        raise EkmCheckFailed(f"EKM check failed for {len(failed)} key(s); {first['key']}: {first['error']}")


def _table(info: dict[str, Any], info_ms: float, rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title=f"{info.get('proxy_name')} ({info.get('ekm_product')}), api {info.get('api_version')}, info {info_ms} ms"
    )
    for col in ("key", "type", "ops", "alg", "wrap ms", "unwrap ms", "result"):
        table.add_column(col)
    for r in rows:
        kind = f"{r.get('key_type')}-{r.get('key_size')}" if r.get("key_type") else "-"
        table.add_row(
            r["key"],
            kind,
            ",".join(r.get("key_ops") or ()) or "-",
            r.get("alg") or "-",
            str(r.get("wrap_ms") or "-"),
            str(r.get("unwrap_ms") or "-"),
            "ok" if r["ok"] else f"FAIL: {r['error']}",
        )
    return table
