"""The click application: one group, with each feature's commands in its own module."""

from __future__ import annotations

import click

from .. import __version__
from ._access import access
from ._byok import byok, demo
from ._common import keystore_option
from ._doctor import doctor
from ._ekm import ekm
from ._emulator import emulator
from ._envelope import decrypt, encrypt, rewrap
from ._keys import keys
from ._progress import progress_option
from ._sign import sign


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keybridge")
@keystore_option
@progress_option
def app(keystore: str | None, progress: bool | None) -> None:
    """Use keys you hold yourself: PKCS#11 HSMs, Azure Key Vault / Managed HSM, software.

    A KEY is a key URI (memory:NAME, pkcs11:token=T;object=NAME?module-path=..., or
    https://VAULT/keys/NAME) or a bare NAME, meaning memory:NAME. memory:NAME is the key NAME in the
    keystore file (--keystore, $KEYBRIDGE_KEYSTORE, or ~/.local/share/keybridge/keystore.kbks),
    encrypted under $KEYBRIDGE_PASSPHRASE (or a prompt); Python reaches the same keys with
    open_provider("memory:NAME", keystore=PATH, passphrase=...). See docs/cli.md.
    """


for command in (keys, byok, demo, emulator, encrypt, decrypt, rewrap, sign, access, ekm, doctor):
    app.add_command(command)
