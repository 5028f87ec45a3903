"""The click application: one group, with each feature's commands in its own module."""

from __future__ import annotations

import click

from .. import __version__
from ._byok import byok, demo
from ._ekm import ekm
from ._emulator import emulator
from ._envelope import decrypt, encrypt, rewrap
from ._keys import keys
from ._sign import sign


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keybridge")
def app() -> None:
    """Use keys you hold yourself: PKCS#11 HSMs, Azure Key Vault / Managed HSM, software."""


for command in (keys, byok, demo, emulator, encrypt, decrypt, rewrap, sign, ekm):
    app.add_command(command)
