"""``keybridge emulator``: run the local Managed HSM emulator until Ctrl-C or SIGTERM.

For people it prints how to connect; for scripts ``--json`` prints one JSON object on one line and
``--print-env`` prints ``export`` lines, each before serving and with nothing else on stdout.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from typing import Any

import click

from ..emulator import Faults, ManagedHsmEmulator
from ..errors import KeybridgeError
from ._common import AZURE_CA_ENV, AZURE_CHALLENGE_ENV, AZURE_TOKEN_ENV
from ._messages import cli_message

__all__ = ["emulator", "EMULATOR_PID_ENV", "EMULATOR_URL_ENV"]

# Printed by --print-env for scripts (`--target "$KEYBRIDGE_EMULATOR_URL"`, `kill "$KEYBRIDGE_EMULATOR_PID"`);
# the CLI itself does not read them.
EMULATOR_URL_ENV = "KEYBRIDGE_EMULATOR_URL"
EMULATOR_PID_ENV = "KEYBRIDGE_EMULATOR_PID"

_HOWTO = """\
Point the Azure SDK at it:

    from azure.keyvault.keys import KeyClient
    from keybridge.emulator import EmulatorCredential

    client = KeyClient("{url}", EmulatorCredential(),
                       connection_verify="{ca}", verify_challenge_resource=False)

or keybridge:  open_provider("{url}", credential=EmulatorCredential(),
                             connection_verify="{ca}", verify_challenge_resource=False)

or the keybridge command line (any bearer token is accepted):

    export {ca_env}={ca}
    export {token_env}=emulator
    export {challenge_env}=0
    keybridge byok kek create {url} --name my-kek

Other tools: trust {ca} (e.g. REQUESTS_CA_BUNDLE={ca}).
Press Ctrl-C to stop.
"""


@click.command("emulator")
@click.option("--port", type=click.IntRange(0, 65535), default=8443, show_default=True, help="0 picks a free port.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, writable=True),
    default=None,
    help="Keep keys and vault state here across runs (test data only).",
)
@click.option(
    "--faults",
    default=None,
    metavar="SPEC",
    help="Inject faults, e.g. 'error_rate=0.3,statuses=429/503,retry_after=0,latency=0.05,drop_rate=0.01,seed=1'.",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Append a Managed HSM AuditEvent record (JSON lines) per request to this file.",
)
@click.option(
    "--rbac",
    type=click.Choice(["default", "strict"]),
    default="default",
    show_default=True,
    help="strict: the first principal gets no Crypto User; key use must be granted (keybridge access grant).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one line of JSON (url, ca_file, env, pid), then serve.")
@click.option(
    "--print-env", is_flag=True, help="Print 'export KEYBRIDGE_...=...' lines for the CLI to use it, then serve."
)
def emulator(
    port: int,
    state_dir: str | None,
    faults: str | None,
    audit_log: str | None,
    rbac: str,
    as_json: bool,
    print_env: bool,
) -> None:
    """Run a local Azure Key Vault / Managed HSM keys endpoint over HTTPS.

    In scripts: `keybridge emulator --port 0 --print-env > emu.env &`, wait until emu.env is not
    empty, then `. ./emu.env` (serving never ends, so `eval "$(...)"` would wait forever).
    """
    if as_json and print_env:
        raise click.UsageError("--json and --print-env are alternatives; pick one")
    try:
        spec = Faults.parse(faults) if faults else None
        hsm = ManagedHsmEmulator(
            port=port, faults=spec, state_dir=state_dir, require_token=False, rbac=rbac, audit_log=audit_log
        ).start()
    except KeybridgeError as exc:
        raise click.ClickException(cli_message(exc)) from None
    stop = threading.Event()
    # SIGTERM (kill, a service manager, CI teardown) shuts down as cleanly as Ctrl-C does; the
    # handler is in place before the emulator announces itself, so no signal can beat it.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    scripted = as_json or print_env
    try:
        if as_json:
            _announce(json.dumps(_description(hsm, state_dir, spec), sort_keys=True))
        elif print_env:
            env = _cli_env(hsm)
            _announce("\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items()))
        else:
            _describe_for_people(hsm, state_dir, spec)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        # Scripts read stdout as data, so the goodbye goes where diagnostics go.
        click.echo("stopping", err=scripted)
        hsm.stop()


def _cli_env(hsm: ManagedHsmEmulator) -> dict[str, str]:
    """The environment that points the keybridge CLI at ``hsm`` (the token is not a secret: the
    emulator accepts any)."""
    return {
        AZURE_CA_ENV: str(hsm.ca_file),
        AZURE_TOKEN_ENV: "emulator",
        AZURE_CHALLENGE_ENV: "0",
        EMULATOR_URL_ENV: hsm.vault_url,
        EMULATOR_PID_ENV: str(os.getpid()),
    }


def _description(hsm: ManagedHsmEmulator, state_dir: str | None, spec: Faults | None) -> dict[str, Any]:
    return {
        "url": hsm.vault_url,
        "ca_file": str(hsm.ca_file),
        "pid": os.getpid(),
        "state_dir": state_dir,
        "faults": str(spec) if spec else None,
        "env": _cli_env(hsm),
    }


def _announce(text: str) -> None:
    # One write and a flush: a reader polling the file or pipe sees all of it or nothing.
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _describe_for_people(hsm: ManagedHsmEmulator, state_dir: str | None, spec: Faults | None) -> None:
    click.echo(f"Vault URL: {hsm.vault_url}")
    click.echo(f"CA file:   {hsm.ca_file}")
    if state_dir:
        click.echo(f"State dir: {state_dir}")
    if spec:
        click.echo(f"Faults:    {spec}")
    click.echo("")
    env = {"ca_env": AZURE_CA_ENV, "token_env": AZURE_TOKEN_ENV, "challenge_env": AZURE_CHALLENGE_ENV}
    click.echo(_HOWTO.format(url=hsm.vault_url, ca=hsm.ca_file, **env))
