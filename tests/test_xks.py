"""The XKS proxy over real TLS, signed by botocore's SigV4Auth (the independent signer), against
SoftHSM and memory keys; ciphertexts are checked with `cryptography`'s AESGCM."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import keybridge
from _ekm_support import HSM_CN, make_pki
from keybridge import open_provider
from keybridge.ekm import ClientRule, ExportedKey, XksServer
from keybridge.ekm._xks import full_aad
from keybridge.errors import InvalidArgument
from keybridge.keys import KeyOp, KeySpec

AKID, SECRET, REGION = "AKIAXKSTEST0000001", "xks-test-secret-0123456789abcdef", "eu-west-1"
OLD_AKID, OLD_SECRET = "AKIAXKSTEST0000000", "the-previous-secret-still-valid"
PREFIX = "/example/prefix"
BOTH = frozenset({"encrypt", "decrypt"})
SRC = str(Path(keybridge.__file__).resolve().parents[1])
MD = {
    "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
    "kmsKeyArn": "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "kmsOperation": "Encrypt",
    "kmsRequestId": "r-1",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _keys(p: Any, tag: str) -> tuple[list[ExportedKey], bytes]:
    material = os.urandom(32)
    ops = [KeyOp.ENCRYPT, KeyOp.DECRYPT]
    name = f"xks-{tag}-{os.urandom(4).hex()}"
    p.import_key(name, material, ops=ops)
    off = p.import_key(name + "-off", os.urandom(32), ops=ops)
    p.set_enabled(off.ref, False)
    keys = [
        ExportedKey("k1", name, BOTH),
        ExportedKey("enc-only", name, frozenset({"encrypt"})),
        ExportedKey("dec-only", name, frozenset({"decrypt"})),
        ExportedKey("disabled", off.ref.name, BOTH),
    ]
    return keys, material


@pytest.fixture(scope="module", params=["softhsm", "memory"])
def xks(request: pytest.FixtureRequest, pki: Path) -> Iterator[tuple[XksServer, bytes]]:
    if request.param == "softhsm":
        token = request.getfixturevalue("softhsm_token")
        provider = open_provider(token.uri(pin=False), user_pin=token.user_pin)
    else:
        provider = open_provider("memory:")
    with provider:
        keys, material = _keys(provider, request.param)
        server = XksServer(
            provider,
            keys,
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            credentials={AKID: SECRET, OLD_AKID: OLD_SECRET},
            region=REGION,
            prefix=PREFIX,
            deadline=5.0,
        )
        yield server, material
        server.close()


def _send(
    server: XksServer,
    pki: Path,
    route: str,
    body: dict[str, Any] | bytes,
    *,
    creds: tuple[str, str] = (AKID, SECRET),
    service: str = "kms-xks-proxy",
    region: str = REGION,
    tamper: bytes | None = None,
    method: str = "POST",
    prefix: str = PREFIX,
    client: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """Sign with botocore as AWS KMS would, send over TLS, return (status, JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    port = server.url.split(":")[2].split("/")[0]
    url = f"https://127.0.0.1:{port}{prefix}/kms/xks/v1/{route}"
    req = AWSRequest(method=method, url=url, data=data, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(*creds), service, region).add_auth(req)
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if client is not None:
        ctx.load_cert_chain(pki / f"{client}.crt", pki / f"{client}.key")
    conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx, timeout=10)
    try:
        conn.request(
            method, url.split(port, 1)[1], body=tamper if tamper is not None else data, headers=dict(req.headers)
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def _conn(server: XksServer, pki: Path) -> http.client.HTTPSConnection:
    port = int(server.url.split(":")[2].split("/")[0])
    return http.client.HTTPSConnection(
        "127.0.0.1", port, context=ssl.create_default_context(cafile=str(pki / "ca.crt"))
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _encrypt(server: XksServer, pki: Path, pt: bytes, aad: bytes | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"requestMetadata": MD, "plaintext": _b64(pt), "encryptionAlgorithm": "AES_GCM", **extra}
    if aad is not None:
        body["additionalAuthenticatedData"] = _b64(aad)
    status, out = _send(server, pki, "keys/k1/encrypt", body)
    assert status == 200, out
    return out


def _decrypt_body(enc: dict[str, Any], aad: bytes | None = None) -> dict[str, Any]:
    body = {"requestMetadata": MD, "encryptionAlgorithm": "AES_GCM"}
    body.update({k: enc[k] for k in ("ciphertext", "initializationVector", "authenticationTag")})
    if aad is not None:
        body["additionalAuthenticatedData"] = _b64(aad)
    return body


def test_health(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    # an unknown kmsOperation must not be refused (the spec reserves new KMS operations)
    status, out = _send(server, pki, "health", {"requestMetadata": {"kmsOperation": "BulkFuture", "kmsRequestId": "h"}})
    assert status == 200
    assert out["xksProxyFleetSize"] == 1
    assert [d["healthStatus"] for d in out["ekmFleetDetails"]] == ["ACTIVE"]


def test_metadata(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    md = {"requestMetadata": MD}
    assert _send(server, pki, "keys/k1/metadata", md) == (
        200,
        {"keySpec": "AES_256", "keyUsage": ["DECRYPT", "ENCRYPT"], "keyStatus": "ENABLED"},
    )
    assert _send(server, pki, "keys/enc-only/metadata", md)[1]["keyUsage"] == ["ENCRYPT"]
    assert _send(server, pki, "keys/disabled/metadata", md)[1]["keyStatus"] == "DISABLED"


def test_round_trip_is_real_aes_gcm(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, material = xks
    pt, aad = os.urandom(4300), b"kms encryption context"
    enc = _encrypt(server, pki, pt, aad)
    iv, ct, tag = (base64.b64decode(enc[k]) for k in ("initializationVector", "ciphertext", "authenticationTag"))
    assert len(iv) == 12
    assert len(tag) == 16
    assert AESGCM(material).decrypt(iv, ct + tag, full_aad(aad)) == pt  # independent check of the HSM's output
    status, out = _send(server, pki, "keys/k1/decrypt", _decrypt_body(enc, aad))
    assert (status, base64.b64decode(out["plaintext"])) == (200, pt)
    # a ciphertext made by `cryptography` under the same key decrypts in the backend
    iv2 = os.urandom(12)
    sealed = AESGCM(material).encrypt(iv2, b"from outside", full_aad(b""))
    mine = {
        "ciphertext": _b64(sealed[:-16]),
        "initializationVector": _b64(iv2),
        "authenticationTag": _b64(sealed[-16:]),
    }
    status, out = _send(server, pki, "keys/k1/decrypt", _decrypt_body(mine))
    assert (status, base64.b64decode(out["plaintext"])) == (200, b"from outside")


def test_cdiv_is_sha256_over_aad_iv_ciphertext_tag(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    aad = b"ctx"
    enc = _encrypt(server, pki, b"secret", aad, ciphertextDataIntegrityValueAlgorithm="SHA_256")
    raw = b"".join(base64.b64decode(enc[k]) for k in ("initializationVector", "ciphertext", "authenticationTag"))
    assert base64.b64decode(enc["ciphertextDataIntegrityValue"]) == hashlib.sha256(aad + raw).digest()


@pytest.mark.parametrize("field", ["ciphertext", "authenticationTag", "initializationVector"])
def test_tampered_ciphertext_is_invalid(xks, pki: Path, field: str) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    enc = _encrypt(server, pki, b"attack at dawn", b"aad")
    raw = bytearray(base64.b64decode(enc[field]))
    raw[0] ^= 1
    body = _decrypt_body({**enc, field: _b64(bytes(raw))}, b"aad")
    status, out = _send(server, pki, "keys/k1/decrypt", body)
    assert (status, out["errorName"]) == (400, "InvalidCiphertextException")
    assert "attack" not in json.dumps(out)


def test_wrong_aad_is_invalid(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    enc = _encrypt(server, pki, b"x", b"right")
    for aad in (b"wrong", None):
        status, out = _send(server, pki, "keys/k1/decrypt", _decrypt_body(enc, aad))
        assert (status, out["errorName"]) == (400, "InvalidCiphertextException")


def test_key_usage_and_state(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    enc = _encrypt(server, pki, b"x")
    assert _send(server, pki, "keys/enc-only/decrypt", _decrypt_body(enc))[1]["errorName"] == "InvalidKeyUsageException"
    body = {"requestMetadata": MD, "plaintext": _b64(b"x"), "encryptionAlgorithm": "AES_GCM"}
    assert _send(server, pki, "keys/dec-only/encrypt", body)[1]["errorName"] == "InvalidKeyUsageException"
    cdiv = {**body, "ciphertextDataIntegrityValueAlgorithm": "SHA_256"}
    assert _send(server, pki, "keys/enc-only/encrypt", cdiv) == (
        400,
        {
            "errorName": "InvalidKeyUsageException",
            "errorMessage": "a ciphertextDataIntegrityValue needs decrypt on the key too",
        },
    )
    assert _send(server, pki, "keys/enc-only/encrypt", body)[0] == 200
    assert _send(server, pki, "keys/disabled/encrypt", body)[1]["errorName"] == "InvalidStateException"
    # the dec-only key shares material with k1, so k1's ciphertext opens there
    status, out = _send(server, pki, "keys/dec-only/decrypt", _decrypt_body(enc))
    assert (status, base64.b64decode(out["plaintext"])) == (200, b"x")


def test_validation(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    ok = {"requestMetadata": MD, "plaintext": _b64(b"x"), "encryptionAlgorithm": "AES_GCM"}
    bad = [
        {**ok, "encryptionAlgorithm": "AES_CBC"},
        {**ok, "plaintext": "not base64!"},
        {**ok, "plaintext": _b64(os.urandom(4301))},
        {k: v for k, v in ok.items() if k != "requestMetadata"},
        {**ok, "requestMetadata": {}},
        {**ok, "requestMetadata": {k: v for k, v in MD.items() if k != "kmsKeyArn"}},
        {**ok, "ciphertextDataIntegrityValueAlgorithm": "MD5"},
    ]
    for body in bad:
        status, out = _send(server, pki, "keys/k1/encrypt", body)
        assert (status, out["errorName"]) == (400, "ValidationException"), body
    assert _send(server, pki, "keys/k1/encrypt", b"{not json")[1]["errorName"] == "ValidationException"
    # Declared, not sent: the proxy refuses on Content-Length alone, before reading (or signing) a byte.
    conn = _conn(server, pki)
    conn.putrequest("POST", f"{PREFIX}/kms/xks/v1/keys/k1/encrypt")
    conn.putheader("Content-Length", "40000")
    conn.endheaders()
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())["errorName"]) == (400, "ValidationException")
    assert resp.getheader("Connection") == "close"
    conn.close()


def test_unknown_key_and_path(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    md = {"requestMetadata": MD}
    assert _send(server, pki, "keys/nope/metadata", md) == (
        404,
        {"errorName": "KeyNotFoundException", "errorMessage": "external key 'nope' is not exported by this proxy"},
    )
    assert _send(server, pki, "health", md, prefix="/other")[1]["errorName"] == "InvalidUriPathException"
    assert _send(server, pki, "keys/k1/sign", md)[1]["errorName"] == "InvalidUriPathException"
    assert _send(server, pki, "health", md, method="GET")[0] == 405


def test_signature_is_required(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    md = {"requestMetadata": MD}
    assert _send(server, pki, "health", md, creds=(OLD_AKID, OLD_SECRET))[0] == 200  # rotation: both pairs work
    refused = [
        {"creds": (AKID, "wrong-secret")},
        {"creds": ("AKIAUNKNOWN", SECRET)},
        {"service": "kms"},
        {"region": "us-east-1"},
        {"tamper": json.dumps({"requestMetadata": {**MD, "kmsOperation": "Decrypt"}}).encode()},
    ]
    for kw in refused:
        status, out = _send(server, pki, "keys/k1/metadata", md, **kw)
        assert (status, out["errorName"]) == (401, "AuthenticationFailedException"), kw
        assert SECRET not in out["errorMessage"]
        assert "keySpec" not in out


def test_unsigned_request_gets_nothing(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    conn = _conn(server, pki)
    conn.request("POST", f"{PREFIX}/kms/xks/v1/keys/k1/metadata", body=json.dumps({"requestMetadata": MD}))
    resp = conn.getresponse()
    assert (resp.status, json.loads(resp.read())["errorName"]) == (401, "AuthenticationFailedException")
    conn.close()


@pytest.mark.parametrize(("minutes", "status"), [(6, 401), (-6, 401), (4, 200)])
def test_request_time_window(xks, pki: Path, monkeypatch: pytest.MonkeyPatch, minutes: int, status: int) -> None:  # type: ignore[no-untyped-def]
    server, _ = xks
    # A skewed signer clock is the one fault that cannot be caused without patching botocore.
    skewed = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) + dt.timedelta(minutes=minutes)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: skewed)
    assert _send(server, pki, "health", {"requestMetadata": MD})[0] == status


def test_needs_credentials(pki: Path) -> None:
    with open_provider("memory:") as p, pytest.raises(InvalidArgument, match="SigV4"):
        XksServer(
            p, [], cert_file=str(pki / "server.crt"), key_file=str(pki / "server.key"), credentials={}, region=REGION
        )


def test_closed_server_serves_nothing(pki: Path) -> None:
    with open_provider("memory:") as p:
        keys, _ = _keys(p, "closed")
        server = XksServer(
            p,
            keys,
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            credentials={AKID: SECRET},
            region=REGION,
            prefix=PREFIX,
        )
        assert _send(server, pki, "health", {"requestMetadata": MD})[0] == 200
        server.close()
        with pytest.raises(OSError):
            _send(server, pki, "health", {"requestMetadata": MD})


def test_cli_serves_xks_until_sigterm(tmp_path: Path, pki: Path) -> None:
    material, store = os.urandom(32), tmp_path / "ks.kbks"
    with open_provider("memory:", keystore=store, passphrase="pass-phrase", create=True) as p:
        p.import_key("gcm", material, ops=[KeyOp.ENCRYPT, KeyOp.DECRYPT])
        p.import_key("aes128", os.urandom(16), ops=[KeyOp.ENCRYPT])
    env = {**os.environ, "PYTHONPATH": SRC, "KEYBRIDGE_KEYSTORE": str(store), "KEYBRIDGE_PASSPHRASE": "pass-phrase"}
    env["XKS_SECRET"] = SECRET
    cmd = [sys.executable, "-m", "keybridge.cli", "ekm", "serve", "--api", "xks", "--provider", "memory:"]
    cmd += ["--key", "xks.key_1=gcm", "--cert", str(pki / "server.crt"), "--key-file", str(pki / "server.key")]
    tail = ["--xks-access-key-id", AKID, "--xks-secret-env", "XKS_SECRET", "--xks-region", REGION]
    tail += ["--prefix", PREFIX, "--port", "0", "--json"]

    def run(*args: str, **kw: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cmd, *args], env={**env, **kw}, capture_output=True, text=True, timeout=60)

    unset = run("--xks-access-key-id", AKID, "--xks-secret-env", "NOT_SET", "--xks-region", REGION)
    assert unset.returncode == 2
    assert "NOT_SET" in unset.stderr
    assert "Traceback" not in unset.stderr
    half_mtls = run("--client-ca", str(pki / "ca.crt"), *tail)
    assert half_mtls.returncode == 2
    assert "needs both --client-ca and --allow-cn" in half_mtls.stderr
    not_aes = run("--key", "w=aes128", *tail)
    assert not_aes.returncode == 1
    assert not_aes.stderr.splitlines() == ["keybridge: error: key 'aes128' is oct-128; XKS serves AES-256 keys only"]
    proc = subprocess.Popen([*cmd, *tail], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["keys"] == ["xks.key_1"]
        port = int(ready["url"].split(":")[2].split("/")[0])

        class Url:  # what _send reads from a server
            url = f"https://127.0.0.1:{port}{PREFIX}"

        body = {"requestMetadata": MD, "plaintext": _b64(b"via the CLI"), "encryptionAlgorithm": "AES_GCM"}
        status, enc = _send(Url, pki, "keys/xks.key_1/encrypt", body)  # type: ignore[arg-type]
        assert status == 200, enc
        iv, ct, tag = (base64.b64decode(enc[k]) for k in ("initializationVector", "ciphertext", "authenticationTag"))
        assert AESGCM(material).decrypt(iv, ct + tag, full_aad(b"")) == b"via the CLI"
        status, out = _send(Url, pki, "health", {"requestMetadata": MD}, creds=(AKID, "guess"))  # type: ignore[arg-type]
        assert (status, out["errorName"]) == (401, "AuthenticationFailedException")
    finally:
        proc.send_signal(signal.SIGTERM)
        out_text, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "r-1" in err  # kmsRequestId is logged
    for secret in (SECRET, "pass-phrase", "via the CLI", _b64(b"via the CLI")):
        assert secret not in out_text + err


@pytest.mark.skipif(not os.environ.get("KEYBRIDGE_XKS_TEST_CLIENT"), reason="set KEYBRIDGE_XKS_TEST_CLIENT=DIR")
def test_aws_xks_test_client(softhsm_token, pki: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """AWS's own conformance scripts (aws-samples/aws-kms-xksproxy-test-client, a checkout in DIR)."""
    akid, secret = "BETWEEN2TENAND3TENCHARACTERS", "PleaseReplaceThisWithSomeSecretOfLength43To64"
    (tmp_path / "uuidgen").write_text('#!/bin/sh\nexec python3 -c "import uuid; print(uuid.uuid4())"\n')
    (tmp_path / "uuidgen").chmod(0o755)  # not installed everywhere; the scripts only need fresh request ids
    with open_provider(softhsm_token.uri(pin=False), user_pin=softhsm_token.user_pin) as hsm:
        ref = hsm.create_key(f"xks-tc-{os.urandom(4).hex()}", KeySpec.aes(256), ops=[KeyOp.ENCRYPT, KeyOp.DECRYPT])
        name = ref.ref.name
        keys = [
            ExportedKey("foo", name, BOTH),
            ExportedKey("encrypt_only_key", name, frozenset({"encrypt"})),
            ExportedKey("decrypt_only_key", name, frozenset({"decrypt"})),
            ExportedKey("impotent_key", name, frozenset()),
        ]
        server = XksServer(
            hsm,
            keys,
            cert_file=str(pki / "server.crt"),
            key_file=str(pki / "server.key"),
            credentials={akid: secret},
            region="us-east-1",
            prefix="/example/uri/path/prefix",
            deadline=5.0,
        )
        try:
            port = server.url.split(":")[2].split("/")[0]
            env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "XKS_PROXY_HOST": f"127.0.0.1:{port}"}
            env.update(SECURE=f"--cacert {pki / 'ca.crt'}", SIGV4_ACCESS_KEY_ID=akid, SIGV4_SECRET_ACCESS_KEY=secret)
            run = subprocess.run(
                ["bash", "./test-xks-proxy", "-a"],
                cwd=os.environ["KEYBRIDGE_XKS_TEST_CLIENT"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=600,
            )
        finally:
            server.close()
    assert "All 49 tests PASSED" in run.stdout, run.stdout[-3000:]


def test_optional_mtls(pki: Path) -> None:
    tls = {"cert_file": str(pki / "server.crt"), "key_file": str(pki / "server.key")}
    with open_provider("memory:") as p:
        keys, _ = _keys(p, "mtls")
        with pytest.raises(InvalidArgument, match="both client_ca_file and clients"):
            XksServer(p, keys, **tls, credentials={AKID: SECRET}, region=REGION, client_ca_file=str(pki / "ca.crt"))
        mtls = {"client_ca_file": str(pki / "ca.crt"), "clients": [ClientRule(HSM_CN)]}
        server = XksServer(p, keys, **tls, credentials={AKID: SECRET}, region=REGION, prefix=PREFIX, **mtls)
        try:
            md = {"requestMetadata": MD}
            assert _send(server, pki, "keys/k1/metadata", md, client="hsm")[0] == 200
            status, out = _send(server, pki, "keys/k1/metadata", md, client="stranger")
            assert (status, out["errorName"]) == (401, "AuthenticationFailedException")
            with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate: no handshake
                _send(server, pki, "keys/k1/metadata", md)
            # a valid certificate does not replace SigV4
            assert _send(server, pki, "keys/k1/metadata", md, client="hsm", creds=(AKID, "wrong"))[0] == 401
        finally:
            server.close()


def test_an_oversize_body_gets_its_answer_while_the_client_is_still_sending(xks, pki: Path) -> None:  # type: ignore[no-untyped-def]
    # 8 MB: more than loopback's socket buffers, so the client is still writing when the proxy
    # answers; before the proxy read (and dropped) such a body, the client got SSLEOFError.
    server, _ = xks
    status, out = _send(server, pki, "keys/k1/encrypt", b"x" * 8_000_000)
    assert status == 400
    assert out["errorName"] == "ValidationException"
    assert "request body over" in out["errorMessage"]
