"""``keybridge ekm serve`` and ``keybridge ekm check`` as real processes over mTLS on a SoftHSM token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.keywrap import (
    aes_key_unwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

import keybridge
from _ekm_support import make_pki
from keybridge import open_provider
from keybridge.ekm import Client
from keybridge.keys import KeyOp, KeySpec

SRC = str(Path(keybridge.__file__).resolve().parents[1])


def _env(pin: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "KEYBRIDGE_PKCS11_PIN": pin}


def _kb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keybridge.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def names(softhsm_token) -> dict[str, str]:  # type: ignore[no-untyped-def]
    suffix = os.urandom(4).hex()
    out = {"aes": f"cli-aes-{suffix}", "rsa": f"cli-rsa-{suffix}"}
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        hsm.create_key(out["aes"], KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
        hsm.create_key(out["rsa"], KeySpec.rsa(2048), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
    return out


def _serve(token, pki: Path, *keys: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "keybridge.cli", "ekm", "serve", "--provider", token.uri(pin=False)]
    for k in keys:
        cmd += ["--key", k]
    cmd += ["--cert", str(pki / "server.crt"), "--key-file", str(pki / "server.key")]
    cmd += ["--client-ca", str(pki / "ca.crt"), "--allow-cn", "contoso.managedhsmclient.azure.net", "--port", "0"]
    return subprocess.Popen(
        [*cmd, *extra],
        env=_env(token.user_pin),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def served(
    softhsm_token, pki: Path, names: dict[str, str]
) -> Iterator[tuple[dict[str, object], subprocess.Popen[str]]]:  # type: ignore[no-untyped-def]
    proc = _serve(
        softhsm_token,
        pki,
        f"aes-1={names['aes']}",
        f"rsa-1={names['rsa']}:unwrap",
        f"aes-wo={names['aes']}:wrap",
        extra=("--json", "--prefix", "/contoso", "--deadline-ms", "5000"),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    yield json.loads(line), proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _check(softhsm_token, pki: Path, url: str, *args: str, who: str = "hsm") -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    tls = ["--cert", str(pki / f"{who}.crt"), "--key-file", str(pki / f"{who}.key"), "--ca", str(pki / "ca.crt")]
    return _kb("ekm", "check", url, *tls, *args, env=_env("unused"))


def test_serve_prints_one_ready_line_and_check_round_trips(served, softhsm_token, pki: Path) -> None:  # type: ignore[no-untyped-def]
    ready, proc = served
    assert ready["pid"] == proc.pid
    assert ready["keys"] == ["aes-1", "aes-wo", "rsa-1"]
    url = str(ready["url"])
    assert url.startswith("https://127.0.0.1:")
    assert url.endswith("/contoso")
    res = _check(softhsm_token, pki, url, "--key", "aes-1", "--key", "rsa-1", "--rsa-alg", "RSA-OAEP", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True
    assert report["info"]["api_version"] == "0.1-preview"
    rows = {r["key"]: r for r in report["keys"]}
    assert (rows["aes-1"]["key_type"], rows["aes-1"]["alg"]) == ("oct", "A256KWP")
    assert rows["aes-1"]["wrap_ms"] > 0
    assert rows["aes-1"]["unwrap_ms"] > 0
    # rsa-1 is unwrap-only: the check wrapped locally from the reported n/e and the HSM unwrapped it
    assert (rows["rsa-1"]["key_type"], rows["rsa-1"]["key_size"], rows["rsa-1"]["key_ops"]) == (
        "RSA",
        2048,
        ["unwrapKey"],
    )
    assert rows["rsa-1"]["wrap_ms"] is None
    assert rows["rsa-1"]["unwrap_ms"] > 0
    assert softhsm_token.user_pin not in res.stdout + res.stderr


def test_memory_keystore_wraps_are_real_rfc3394_and_5649(tmp_path: Path, pki: Path) -> None:
    kek = os.urandom(32)
    store = tmp_path / "ks.kbks"
    with open_provider("memory:", keystore=store, passphrase="pass-phrase", create=True) as p:
        p.import_key("kek", kek, ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
    env = {**_env("unused"), "KEYBRIDGE_KEYSTORE": str(store), "KEYBRIDGE_PASSPHRASE": "pass-phrase"}
    cmd = [sys.executable, "-m", "keybridge.cli", "ekm", "serve", "--provider", "memory:", "--key", "k1=kek"]
    cmd += [
        "--cert",
        str(pki / "server.crt"),
        "--key-file",
        str(pki / "server.key"),
        "--client-ca",
        str(pki / "ca.crt"),
    ]
    cmd += ["--allow-cn", "contoso.managedhsmclient.azure.net", "--port", "0", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]
        tls = {"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "hsm.crt"), "key_file": str(pki / "hsm.key")}
        with Client(url, **tls) as c:
            secret = os.urandom(32)
            # independent check: `cryptography` unwraps what the served key wrapped, both RFCs
            assert aes_key_unwrap_with_padding(kek, c.wrap_key("k1", "A256KWP", secret)) == secret
            assert aes_key_unwrap(kek, c.wrap_key("k1", "A256KW", secret)) == secret
            assert c.unwrap_key("k1", "A256KWP", aes_key_wrap_with_padding(kek, secret)) == secret
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "pass-phrase" not in out + err


def test_check_table_and_one_line_failures(served, softhsm_token, pki: Path) -> None:  # type: ignore[no-untyped-def]
    ready, _ = served
    url = str(ready["url"])
    ok = _check(softhsm_token, pki, url, "--key", "aes-1")
    assert ok.returncode == 0, ok.stderr
    assert "aes-1" in ok.stdout
    assert "oct-256" in ok.stdout
    assert "ok" in ok.stdout

    missing = _check(softhsm_token, pki, url, "--key", "aes-1", "--key", "nope")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "keybridge: error: EKM check failed for 1 key(s); nope: EKM proxy answered 404 KeyNotFound:"
        " external key 'nope' is not exported by this proxy"
    ]
    # wrap-only key: a wrap is made, no unwrap is possible for an AES key, and that is not a failure
    wo = _check(softhsm_token, pki, url, "--key", "aes-wo", "--json")
    assert wo.returncode == 0, wo.stderr
    assert json.loads(wo.stdout)["keys"][0]["unwrap_ms"] is None

    stranger = _check(softhsm_token, pki, url, who="stranger")
    assert stranger.returncode == 1
    assert "401 Unauthorized" in stranger.stderr
    assert "Traceback" not in stranger.stderr
    assert len(stranger.stderr.strip().splitlines()) == 1


def test_check_unreachable_proxy_is_one_line(softhsm_token, pki: Path) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket closes
    res = _check(softhsm_token, pki, f"https://127.0.0.1:{port}")
    assert res.returncode == 1
    assert res.stderr.startswith("keybridge: error: cannot reach the EKM proxy at Client(https://127.0.0.1:")
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(softhsm_token, pki: Path, names: dict[str, str], sig: signal.Signals) -> None:  # type: ignore[no-untyped-def]
    proc = _serve(softhsm_token, pki, names["aes"])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("EKM proxy: https://127.0.0.1:")
    assert names["aes"] in line
    url = line.split()[2]
    assert _check(softhsm_token, pki, url, "--key", names["aes"]).returncode == 0  # NAME alone is also the id
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.strip() == "stopped"
    assert "cn=contoso.managedhsmclient.azure.net" in err  # every call logged with its client and context
    assert "'pool_name': 'keybridge-check'" in err
    assert "Traceback" not in err
    assert softhsm_token.user_pin not in out + err + line


def test_serve_refuses_bad_setup_with_one_line(softhsm_token, pki: Path, names: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    absent = _serve(softhsm_token, pki, "ghost-key")
    _, err = absent.communicate(timeout=30)
    assert absent.returncode == 1
    assert err.startswith("keybridge: error:")
    assert "ghost-key" in err
    assert len(err.strip().splitlines()) == 1

    syntax = _serve(softhsm_token, pki, "bad id=name")
    _, err = syntax.communicate(timeout=30)
    assert syntax.returncode == 2
    assert "--key" in err
    assert "Traceback" not in err

    no_cert = _serve(softhsm_token, pki, names["aes"], extra=("--cert", str(pki / "missing.crt")))
    _, err = no_cert.communicate(timeout=30)
    assert no_cert.returncode == 1
    assert "cannot load the server certificate/key" in err
    assert len(err.strip().splitlines()) == 1
