"""init_args: modules that need an init string in C_Initialize (NSS softokn), on a real NSS database."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote

import pytest

from keybridge import open_provider
from keybridge.errors import ProviderUnavailable
from keybridge.testing._softhsm import Pkcs11TestToken

pytest.importorskip("pkcs11")

from keybridge.providers.pkcs11 import Pkcs11Provider


def test_the_init_string_reaches_c_initialize(nss_token: Pkcs11TestToken) -> None:
    with nss_token.provider() as p:
        assert p.token_label == "NSS Certificate DB"
        assert p._pool.token.manufacturer_id.startswith("Mozilla")  # really NSS, not SoftHSM
        assert "A256GCM" in p.algorithms
    assert nss_token.user_pin not in repr(nss_token)


def test_the_uri_carries_it_as_x_init_args(nss_token: Pkcs11TestToken) -> None:
    assert nss_token.init_args is not None
    uri = (
        f"pkcs11:token={quote(nss_token.token_label, safe='')}?module-path={nss_token.module_path}"
        f"&x-init-args={quote(nss_token.init_args, safe='')}"
    )
    with open_provider(uri, user_pin=nss_token.user_pin) as p:
        assert isinstance(p, Pkcs11Provider)
        list(p.list_keys())


def test_a_second_provider_with_other_init_args_is_refused(nss_token: Pkcs11TestToken) -> None:
    with nss_token.provider(), pytest.raises(ProviderUnavailable, match="same init_args"):
        Pkcs11Provider(nss_token.module_path, nss_token.token_label, nss_token.user_pin, init_args="configdir='x'")


def test_without_it_nss_fails_saying_what_to_pass(nss_token: Pkcs11TestToken) -> None:
    # A fresh process: in this one the module is initialised already.
    code = (
        "from keybridge.providers.pkcs11 import Pkcs11Provider\n"
        "from keybridge.errors import ProviderUnavailable\n"
        "try:\n"
        f"    Pkcs11Provider({nss_token.module_path!r}, {nss_token.token_label!r}, 'x')\n"
        "except ProviderUnavailable as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "ERR C_Initialize" in out.stdout, out.stdout + out.stderr
    assert "init_args=" in out.stdout
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("threading_mode", ["os", "lock"])
def test_the_init_string_survives_reinitialisation_in_both_threading_modes(
    nss_token: Pkcs11TestToken, threading_mode: str
) -> None:
    # C_Finalize + C_Initialize must pass the string again, and the lock mode (python-pkcs11 would
    # call C_Initialize(NULL)) must pass it too. A fresh process: NSS is initialised here already.
    code = (
        "import sys\n"
        "from keybridge import KeySpec\n"
        "from keybridge.providers.pkcs11 import Pkcs11Provider, _compat\n"
        "p = Pkcs11Provider(sys.argv[1], sys.argv[2], sys.argv[3], init_args=sys.argv[4])\n"
        "print('OS_LOCKING', p._pool.lib.os_locking)\n"
        f"p.create_key('reinit-{threading_mode}', KeySpec.aes(128))\n"
        "assert _compat.reinitialize(sys.argv[1])\n"
        f"print('AFTER', 'reinit-{threading_mode}' in {{k.ref.name for k in p.list_keys()}})\n"
        f"p.delete_key('reinit-{threading_mode}')\n"
        "p.close()\n"
    )
    assert nss_token.init_args is not None
    args = [nss_token.module_path, nss_token.token_label, nss_token.user_pin, nss_token.init_args]
    env = {**os.environ, "KEYBRIDGE_PKCS11_THREADING": threading_mode}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"OS_LOCKING {threading_mode == 'os'}" in out.stdout
    assert "AFTER True" in out.stdout
