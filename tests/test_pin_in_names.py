"""A PIN typed into a key name or URI never reaches audit events, logs, reprs or messages (issue #9).

Every public name-taking call of BaseProvider is tried with names and URIs that carry
``pin-value=S3cret``; whatever happens (a typed error, or a result), the secret appears nowhere."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keybridge import KeybridgeError, KeySpec, audit
from keybridge.providers.memory import InMemoryProvider
from keybridge.testing._softhsm import SoftHsmToken

SECRET = "S3cret"
_NAMES = [
    f"pin-value={SECRET}",
    f"k;pin-value={SECRET}",
    f"k?pin-value={SECRET}",
    f"PIN_VALUE={SECRET}",
    f"pin-source=file:/run/{SECRET}",
    f"k pin-value={SECRET}",
]


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    texts: list[str] = []
    sink: Callable[[audit.AuditEvent], None] = lambda e: texts.append(repr(e))  # noqa: E731
    audit.add_sink(sink)
    caplog.set_level(logging.DEBUG, logger="keybridge")
    yield texts
    audit.remove_sink(sink)
    texts.extend(r.getMessage() for r in caplog.records)


def _chain(exc: BaseException | None) -> str:
    out = []
    while exc is not None:
        out.append(f"{exc}\n{exc!r}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(out)


def _calls(p: Any, ref: str) -> list[Callable[[], object]]:
    return [
        lambda: p.create_key(ref, KeySpec.aes(256)),
        lambda: p.import_key(ref, bytes(32)),
        lambda: p.get_key(ref),
        lambda: p.ref(ref),
        lambda: p.key(ref),
        lambda: list(p.list_versions(ref)),
        lambda: p.rotate_key(ref),
        lambda: p.set_enabled(ref, False),
        lambda: p.encrypt(ref, "A256GCM", b"data"),
        lambda: p.delete_key(ref),
    ]


def _assert_no_secret(p: Any, refs: list[str], captured: list[str]) -> None:
    seen = []
    for ref in refs:
        for call in _calls(p, ref):
            try:
                seen.append(repr(call()))
            except KeybridgeError as exc:
                seen.append(_chain(exc))
    seen.append(repr(p))
    seen.extend(repr(k) for k in p.list_keys())
    leaks = [t for t in seen + captured if SECRET in t]
    assert not leaks, "\n---\n".join(leaks)


def test_memory_never_echoes_a_pin_in_a_name_or_uri(captured: list[str]) -> None:
    p = InMemoryProvider()
    p.create_key("k", KeySpec.aes(256))
    uris = [f"memory:{n}" for n in _NAMES] + [f"memory:k?pin-value={SECRET}"]
    _assert_no_secret(p, _NAMES + uris, captured)
    assert not [k for k in p.list_keys() if SECRET in k.ref.name]  # nothing was created under such a name


def test_pkcs11_never_echoes_a_pin_in_a_name_or_uri(softhsm_token: SoftHsmToken, captured: list[str]) -> None:
    pytest.importorskip("pkcs11")
    from keybridge.providers.pkcs11 import Pkcs11Provider

    t = softhsm_token.token_label
    uris = [
        f"pkcs11:token={t};object=pin-value%3D{SECRET}",
        f"pkcs11:token={t};object=pin-value={SECRET}",
        f"pkcs11:token={t};object=k%3Bpin-value%3D{SECRET}",
        f"pkcs11:token={t};object=kbnames-k?pin-value={SECRET}",
        f"pkcs11:token={t};object=kbnames-k;x-pin-value={SECRET}",
    ]
    with Pkcs11Provider(softhsm_token.module_path, t, softhsm_token.user_pin) as p:
        p.create_key("kbnames-k", KeySpec.aes(256))
        try:
            _assert_no_secret(p, _NAMES + uris, captured)
            assert not [k for k in p.list_keys() if SECRET in k.ref.name]
        finally:
            with contextlib.suppress(KeybridgeError):  # the URI with a query reaches it: deleted above
                p.delete_key("kbnames-k")
