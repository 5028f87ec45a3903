"""``keybridge emulator``: run the local Managed HSM emulator until Ctrl-C."""

from __future__ import annotations

import signal
import threading

import click

from ..emulator import Faults, ManagedHsmEmulator
from ..errors import KeybridgeError
from ._common import AZURE_CA_ENV, AZURE_CHALLENGE_ENV, AZURE_TOKEN_ENV

__all__ = ["emulator"]

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
def emulator(port: int, state_dir: str | None, faults: str | None) -> None:
    """Run a local Azure Key Vault / Managed HSM keys endpoint over HTTPS."""
    try:
        spec = Faults.parse(faults) if faults else None
        hsm = ManagedHsmEmulator(port=port, faults=spec, state_dir=state_dir, require_token=False).start()
    except KeybridgeError as exc:
        raise click.ClickException(str(exc)) from None
    stop = threading.Event()
    # SIGTERM (kill, a service manager, CI teardown) shuts down as cleanly as Ctrl-C does; the
    # handler is in place before the emulator announces itself, so no signal can beat it.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        click.echo(f"Vault URL: {hsm.vault_url}")
        click.echo(f"CA file:   {hsm.ca_file}")
        if state_dir:
            click.echo(f"State dir: {state_dir}")
        if spec:
            click.echo(f"Faults:    {spec}")
        click.echo("")
        env = {"ca_env": AZURE_CA_ENV, "token_env": AZURE_TOKEN_ENV, "challenge_env": AZURE_CHALLENGE_ENV}
        click.echo(_HOWTO.format(url=hsm.vault_url, ca=hsm.ca_file, **env))
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping")
        hsm.stop()
