"""A seeded, reproducible fuzz of the router over the real HTTPS stack: no request may get a 5xx.

500 requests by default; ``KEYBRIDGE_FUZZ_N=25000`` runs that many (a few minutes).
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections import Counter

from keybridge.emulator import ManagedHsmEmulator
from test_emulator_http import Raw

_N = int(os.environ.get("KEYBRIDGE_FUZZ_N", "500"))
_METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW")
_SEGMENTS = (
    "keys", "deletedkeys", "rng", "fz", "fz-rsa", "", "create", "versions", "backup", "rotate", "restore",
    "rotationpolicy", "recover", "sign", "encrypt", "wrapkey", "release", "attestation", "%zz", "..", "x" * 300,
)  # fmt: skip
_NAMES = ("fz", "fz-rsa", "fz-ec", "fz-kek", "nope", "", "%2F", "a" * 128)
_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapkey", "unwrapkey", "release", "")
_QUERIES = (
    "", "", "maxresults=0", "maxresults=-1", "maxresults=" + "9" * 50, "$skiptoken=-3", "$skiptoken=abc",
    "maxresults=1&$skiptoken=" + "9" * 30, "api-version=", "%zz=%zz", "maxresults=1.5",
)  # fmt: skip
_HEADERS: tuple[dict[str, str], ...] = (
    {"Host": "fz.localhost:1"}, {"Host": "a.localhost:99999"}, {"Host": "[::1]"}, {"Host": ""}, {"Host": "x" * 300},
    {"Host": "\u00e9vil:443"}, {"Content-Type": "text/plain"}, {"Content-Type": "application/json; charset=latin-1"},
    {"Transfer-Encoding": "chunked"}, {"Expect": "100-continue"}, {"Content-Encoding": "gzip"},
    {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwdw=="}, {"X-Ms-Client-Request-Id": "%00" * 50},
)  # fmt: skip
_ALGS = ("RSA-OAEP", "RSA-OAEP-256", "RSA1_5", "A256KW", "A128GCM", "A256GCM", "CKM_AES_KEY_WRAP",
         "CKM_AES_KEY_WRAP_PAD", "RS256", "PS512", "ES256", "ES384", "HS256", "dir", "")  # fmt: skip
_VALUES: tuple[object, ...] = (
    None, 0, -1, 10**40, 1.5, True, "", "RSA", "oct-HSM", "P-256", "RS256", "A256KW", "AQAB", "P90D", [], {},
    ["sign"], {"type": "Rotate"}, {"enabled": "yes"}, {"exp": 10**30}, [{"trigger": 5, "action": "x"}],
    "A" * 43, "=" * 4, "!!", {"exp": -(10**20), "nbf": "x"}, ["import"], {"lifetimeActions": None},
)  # fmt: skip
_FIELDS = ("kty", "key_size", "crv", "key_ops", "attributes", "tags", "key", "alg", "value", "count",
           "lifetimeActions", "value", "digest", "release_policy", "key_hsm", "iv", "tag", "aad",
           "public_exponent", "Hsm")  # fmt: skip


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _package(rng: random.Random) -> str:
    """A key_hsm value: base64url of a (mostly broken) .byok document."""
    kid = rng.choice(("https://127.0.0.1/keys/fz-kek/0", "https://[::1/keys/a/b", "https://h/keys/fz-kek", 5, None))
    doc = {
        "schema_version": rng.choice(("1.0.0", "2", None)),
        "header": rng.choice(({"kid": kid, "alg": "dir", "enc": "CKM_RSA_AES_KEY_WRAP"}, [], None)),
        "ciphertext": _b64(rng.randbytes(rng.choice((0, 16, 300, 552)))),
    }
    text = rng.choice((json.dumps(doc), "[" * 2000, "{", json.dumps(doc)[: rng.randint(0, 60)]))
    return _b64(text.encode())


def _value(rng: random.Random) -> object:
    roll = rng.random()
    if roll < 0.2:
        return _b64(rng.randbytes(rng.choice((0, 1, 12, 16, 32, 48, 256, 512))))
    if roll < 0.3:
        return rng.choice(_ALGS)
    return rng.choice(_VALUES)


def _body(rng: random.Random) -> bytes | None:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.25:
        return rng.choice([b"[" * 5000, b"{", b"\xff\xfe", b"null", b"[]", b'"s"', b"{}" * 3, b'{"a":' * 3000])
    body = {rng.choice(_FIELDS): _value(rng) for _ in range(rng.randint(0, 5))}
    if rng.random() < 0.3:
        body["key"] = {rng.choice((*_FIELDS, "n", "e", "d", "k", "x", "y")): _value(rng) for _ in range(3)}
        if rng.random() < 0.3:
            body["key"]["key_hsm"] = _package(rng)
    if rng.random() < 0.3:
        body["alg"] = rng.choice(_ALGS)
    return json.dumps(body).encode()


def _plausible(rng: random.Random, versions: list[str]) -> tuple[str, str, bytes | None]:
    """A request with a fitting method and mostly well-formed fields, to reach past the router."""
    name = rng.choice(("fz", "fz-rsa", "fz-ec", "fz-kek"))
    version = rng.choice((*versions, ""))
    data = _b64(rng.randbytes(rng.choice((16, 24, 32, 48, 64, 190))))
    choices: list[tuple[str, str, object]] = [
        ("GET", "/keys", None),
        ("GET", f"/keys/{name}", None),
        ("GET", f"/keys/{name}/{version}", None),
        ("GET", f"/keys/{name}/versions", None),
        ("GET", "/deletedkeys", None),
        ("POST", "/rng", {"count": rng.randint(-2, 200)}),
        ("POST", f"/keys/{name}/{version}/{rng.choice(_OPS[:6])}", {"alg": rng.choice(_ALGS), "value": data}),
        ("POST", f"/keys/{name}/{version}/verify", {"alg": rng.choice(_ALGS), "digest": data, "value": data}),
        ("POST", f"/keys/{name}/{version}/decrypt", {"alg": "A256GCM", "value": data, "iv": data, "tag": data}),
        ("PATCH", f"/keys/{name}/{version}", {"attributes": {"exp": rng.choice(_VALUES)}, "tags": {"t": "v"}}),
        ("PUT", f"/keys/{name}/rotationpolicy", {"lifetimeActions": rng.choice(_VALUES), "attributes": {}}),
        ("GET", f"/keys/{name}/rotationpolicy", None),
        ("POST", f"/keys/{name}/backup", None),
        ("POST", "/keys/restore", {"value": data}),
        ("POST", f"/keys/fz-new-{rng.randrange(20)}/create", {
            "kty": rng.choice(("RSA", "EC", "oct-HSM", "RSA-HSM", "EC-HSM", "oct", "x")),
            "key_size": rng.choice((None, 2048, 256, 128, 1024, -1)), "crv": rng.choice((None, "P-256", "P-521", "x")),
        }),
        ("PUT", f"/keys/fz-imp-{rng.randrange(20)}", {"key": {"kty": "oct-HSM", "k": data}, "Hsm": True}),
        ("PUT", f"/keys/fz-byok-{rng.randrange(5)}", {"key": {"kty": "RSA-HSM", "key_hsm": _package(rng)}}),
    ]  # fmt: skip
    method, path, body = rng.choice(choices)
    return method, path, None if body is None else json.dumps(body).encode()


def _path(rng: random.Random, versions: list[str]) -> str:
    if rng.random() < 0.5:
        return "/" + "/".join(rng.choice(_SEGMENTS) for _ in range(rng.randint(1, 4)))
    version = rng.choice((*versions, "", "0" * 32, "zz"))
    return f"/keys/{rng.choice(_NAMES)}/{version}/{rng.choice(_OPS)}"


def test_random_requests_never_get_a_server_error() -> None:
    with ManagedHsmEmulator() as emulator:  # its own: the fuzz creates, deletes and disables keys
        _fuzz(Raw(emulator))


def _fuzz(raw: Raw) -> None:
    versions = []
    for name, kty in (("fz", "oct-HSM"), ("fz-rsa", "RSA"), ("fz-ec", "EC")):
        _, _, bundle = raw.request("POST", f"/keys/{name}/create", {"kty": kty})
        if bundle and "key" in bundle:
            versions.append(bundle["key"]["kid"].rsplit("/", 1)[-1])
    raw.request("POST", "/keys/fz-kek/create", {"kty": "RSA-HSM", "key_ops": ["import"]})
    rng = random.Random(20261202)
    failures = []
    statuses: Counter[int] = Counter()
    for _ in range(_N):
        if rng.random() < 0.4:
            method, path, body = _plausible(rng, versions)
        else:
            method, path, body = rng.choice(_METHODS), _path(rng, versions), _body(rng)
        query = rng.choice(_QUERIES)
        token = None if rng.random() < 0.03 else "default"
        headers = rng.choice(_HEADERS) if rng.random() < 0.1 else None
        try:
            status, _, _ = raw.request(method, f"{path}?{query}" if query else path, body, token=token, headers=headers)
        except Exception as exc:  # a dropped connection or a non-JSON answer is a failure too
            failures.append((method, path, body[:80] if body else body, repr(exc)))
            continue
        statuses[status] += 1
        if status >= 500:
            failures.append((method, path, body[:80] if body else body, status))
    print(f"{_N} requests, statuses {sorted(statuses.items())}")
    assert failures == []
    assert {200, 400, 401, 404, 405} <= set(statuses)  # the fuzz reached past routing and auth
    raw.alive()
