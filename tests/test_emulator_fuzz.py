"""A seeded, reproducible fuzz of the router over the real HTTPS stack: no request may get a 5xx."""

from __future__ import annotations

import json
import random

from keybridge.emulator import ManagedHsmEmulator
from test_emulator_http import Raw

_METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW")
_SEGMENTS = (
    "keys", "deletedkeys", "rng", "fz", "fz-rsa", "", "create", "versions", "backup", "rotate", "restore",
    "rotationpolicy", "recover", "sign", "encrypt", "wrapkey", "release", "attestation", "%zz", "..", "x" * 300,
)  # fmt: skip
_VALUES: tuple[object, ...] = (
    None, 0, -1, 10**40, 1.5, True, "", "RSA", "oct-HSM", "P-256", "RS256", "A256KW", "AQAB", "P90D", [], {},
    ["sign"], {"type": "Rotate"}, {"enabled": "yes"}, {"exp": 10**30}, [{"trigger": 5, "action": "x"}],
)  # fmt: skip
_FIELDS = ("kty", "key_size", "crv", "key_ops", "attributes", "tags", "key", "alg", "value", "count",
           "lifetimeActions", "value", "digest", "release_policy", "key_hsm")  # fmt: skip


def _body(rng: random.Random) -> bytes | None:
    roll = rng.random()
    if roll < 0.15:
        return None
    if roll < 0.25:
        return rng.choice([b"[" * 5000, b"{", b"\xff\xfe", b"null", b"[]", b'"s"', b"{}" * 3])
    body = {rng.choice(_FIELDS): rng.choice(_VALUES) for _ in range(rng.randint(0, 4))}
    if rng.random() < 0.3:
        body["key"] = {rng.choice((*_FIELDS, "n", "e", "d", "k", "x", "y")): rng.choice(_VALUES) for _ in range(3)}
    return json.dumps(body).encode()


def test_random_requests_never_get_a_server_error(azure_emulator: ManagedHsmEmulator) -> None:
    raw = Raw(azure_emulator)
    raw.request("POST", "/keys/fz/create", {"kty": "oct-HSM"})
    raw.request("POST", "/keys/fz-rsa/create", {"kty": "RSA"})
    rng = random.Random(20261202)
    failures = []
    for _ in range(500):
        method = rng.choice(_METHODS)
        path = "/" + "/".join(rng.choice(_SEGMENTS) for _ in range(rng.randint(1, 4)))
        body = _body(rng)
        status, _, _ = raw.request(method, path, body)
        # release/attestation are documented as not emulated: 501 NotImplemented is their answer
        documented = status == 501 and path.rsplit("/", 1)[-1] in ("release", "attestation")
        if status >= 500 and not documented:
            failures.append((method, path, body[:80] if body else body, status))
    assert failures == []
    raw.alive()
