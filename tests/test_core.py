"""The core contract: specs, URIs, the provider registry, audit events, missing extras, and that no
key byte or passphrase ever shows up in a repr, message or log line."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import keybridge
from keybridge import (
    InvalidKeySpec,
    InvalidKeyUri,
    KeybridgeError,
    KeyNotFound,
    KeyOp,
    KeySpec,
    OperationNotPermitted,
    audit,
    open_key,
    open_provider,
    register_provider,
)
from keybridge import provider as provider_module
from keybridge.providers.memory import InMemoryProvider

# ---- key specs and operations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: KeySpec.rsa(1024), "RSA key size 1024"),
        (lambda: KeySpec.aes(512), "AES key size 512"),
        (lambda: KeySpec.ec("P-192"), "'P-192'"),
        (lambda: KeySpec.of(b"short"), "AES key size 40"),
        (lambda: KeySpec.of("not a key"), "unsupported key object str"),  # type: ignore[arg-type]
    ],
)
def test_bad_key_specs_name_what_is_supported(make: Any, says: str) -> None:
    with pytest.raises(InvalidKeySpec) as exc:
        make()
    message = str(exc.value)
    assert says in message
    assert "use one of" in message or "pass an RSA/EC key" in message


def test_operations_are_checked_against_the_key_type() -> None:
    assert KeySpec.ec("P-256").check_ops(None) == {KeyOp.SIGN, KeyOp.VERIFY}
    with pytest.raises(InvalidKeySpec, match="encrypt are not possible with an EC-P-256 key"):
        KeySpec.ec("P-256").check_ops(["encrypt"])
    with pytest.raises(InvalidKeySpec, match="'import' is exclusive"):
        KeySpec.rsa(2048).check_ops(["import", "sign"])
    with pytest.raises(InvalidKeySpec, match="unknown key operation 'sing'"):
        KeySpec.aes(256).check_ops(["sing"])


# ---- URIs and the registry ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "no-scheme", "memory", 42])
def test_a_string_without_a_scheme_is_not_a_key_uri(bad: Any) -> None:
    with pytest.raises(InvalidKeyUri) as exc:
        open_provider(bad)
    assert repr(bad) in str(exc.value)
    assert "memory:NAME" in str(exc.value)


def test_an_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(InvalidKeyUri) as exc:
        open_provider("nope:x")
    assert "'nope'" in str(exc.value)
    for scheme in ("memory", "pkcs11", "https"):
        assert scheme in str(exc.value)


def test_a_key_ref_of_another_provider_is_refused() -> None:
    kp = InMemoryProvider()
    other = keybridge.KeyRef("pkcs11", "k")
    with pytest.raises(InvalidKeyUri, match="belongs to a pkcs11 provider"):
        kp.get_key(other)
    with pytest.raises(InvalidKeyUri, match="'pkcs11:token=x;object=k' is not an in-memory key URI"):
        kp.get_key("pkcs11:token=x;object=k")


class AcmeProvider(InMemoryProvider):
    """A third-party provider: the in-memory one under another scheme."""

    scheme = "acme"

    def _parse_uri(self, uri: str) -> tuple[str, str | None]:
        return uri.split(":", 1)[1], None


def acme_from_uri(uri: str, **options: Any) -> AcmeProvider:
    return AcmeProvider()


def test_register_provider_routes_a_third_party_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provider_module, "_registry", {})
    register_provider("ACME", acme_from_uri)
    handle = open_key("acme:thing")
    assert isinstance(handle.provider, AcmeProvider)
    assert handle.ref.name == "thing"
    with pytest.raises(InvalidKeyUri, match="already registered"):
        register_provider("acme", acme_from_uri)
    register_provider("acme", lambda uri, **o: InMemoryProvider(), replace=True)
    assert type(open_provider("acme:x")) is InMemoryProvider


def test_an_entry_point_provides_a_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_kb.py").write_text(
        "from keybridge.providers.memory import InMemoryProvider\n"
        "class P(InMemoryProvider):\n    scheme = 'acmeep'\n"
        "def from_uri(uri, **options):\n    return P()\n"
    )
    dist = tmp_path / "acme_kb-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-kb\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[keybridge.providers]\nacmeep = acme_kb:from_uri\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert open_provider("acmeep:k").scheme == "acmeep"


# ---- audit ----------------------------------------------------------------------------------------


@pytest.fixture
def events() -> Any:
    seen: list[audit.AuditEvent] = []
    audit.add_sink(seen.append)
    yield seen
    audit.remove_sink(seen.append)


def test_every_operation_emits_exactly_one_event(events: list[audit.AuditEvent]) -> None:
    kp = InMemoryProvider()
    digest = hashlib.sha256(b"x").digest()
    calls: list[tuple[str, Any]] = [
        ("create_key", lambda: kp.create_key("ec", KeySpec.ec("P-256"), ops=["sign"])),
        ("sign", lambda: kp.sign("ec", "ES256", digest)),
        ("verify", lambda: kp.verify("ec", "ES256", digest, bytes(64))),  # OperationNotPermitted
        ("get_key", lambda: kp.get_key("missing")),  # KeyNotFound
        ("rotate_key", lambda: kp.rotate_key("ec")),
        ("list_keys", lambda: list(kp.list_keys())),
        ("disable_key", lambda: kp.set_enabled("ec", False)),
        ("sign", lambda: kp.sign("ec", "ES256", digest)),  # KeyDisabled
        ("delete_key", lambda: kp.delete_key("ec")),
    ]
    outcomes = []
    for operation, call in calls:
        before = len(events)
        try:
            call()
            outcome = "ok"
        except KeybridgeError as exc:
            outcome = type(exc).__name__
        assert len(events) == before + 1, operation
        ev = events[-1]
        assert (ev.operation, ev.provider, ev.outcome) == (operation, "memory", outcome)
        assert ev.duration >= 0
        assert ev.timestamp.tzinfo is not None
        outcomes.append(outcome)
    assert outcomes == ["ok", "ok", "OperationNotPermitted", "KeyNotFound", "ok", "ok", "ok", "KeyDisabled", "ok"]
    sign = events[1]
    assert sign.algorithm == "ES256"
    assert sign.key is not None
    assert sign.key.startswith("memory:ec/")


def test_the_default_sink_is_the_keybridge_audit_logger(caplog: pytest.LogCaptureFixture) -> None:
    kp = InMemoryProvider()
    with caplog.at_level(logging.INFO, logger="keybridge.audit"):
        kp.create_key("k", KeySpec.aes(128))
        with pytest.raises(KeyNotFound):
            kp.encrypt("nope", "A128GCM", b"x")
    records = [r for r in caplog.records if r.name == "keybridge.audit"]
    assert [r.keybridge_audit.outcome for r in records] == ["ok", "KeyNotFound"]  # type: ignore[attr-defined]
    assert "encrypt memory key=nope alg=A128GCM outcome=KeyNotFound" in records[1].getMessage()


def test_a_failing_sink_does_not_break_the_operation(caplog: pytest.LogCaptureFixture) -> None:
    def broken(event: audit.AuditEvent) -> None:
        raise RuntimeError("sink down")

    audit.add_sink(broken)
    try:
        kp = InMemoryProvider()
        with caplog.at_level(logging.INFO, logger="keybridge.audit"):
            info = kp.create_key("k", KeySpec.aes(128))
        assert kp.get_key("k") == info
    finally:
        audit.remove_sink(broken)
    assert any("audit sink" in r.getMessage() and r.exc_info for r in caplog.records)


# ---- missing extras -------------------------------------------------------------------------------

_BLOCKED = textwrap.dedent(
    """
    import sys
    BLOCK = {"pkcs11", "azure", "click", "rich"}
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCK:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    import keybridge
    from keybridge import KeySpec
    keybridge.InMemoryProvider().create_key("k", KeySpec.aes(128))
    print("core ok")
    for what, call in [
        ("pkcs11 attr", lambda: keybridge.Pkcs11Provider),
        ("pkcs11 uri", lambda: keybridge.open_provider("pkcs11:token=t;object=k?module-path=/x.so")),
        ("azure attr", lambda: keybridge.AzureKeyVaultProvider),
        ("azure uri", lambda: keybridge.open_provider("https://v.vault.azure.net/keys/k")),
    ]:
        try:
            call()
            print(what, "NO ERROR")
        except keybridge.MissingDependency as exc:
            print(what, "|", exc)
        except Exception as exc:
            print(what, "WRONG", type(exc).__name__, exc)
    from keybridge.cli import main
    main(["--help"])
    """
)


def test_missing_extras_name_the_pip_install_command() -> None:
    # Needs src/keybridge/providers/{pkcs11,azure}/__init__.py to turn a missing python-pkcs11 /
    # azure-keyvault-keys into MissingDependency (the other backends' helpers own those files).
    run = subprocess.run([sys.executable, "-c", _BLOCKED], capture_output=True, text=True, timeout=60)
    lines = run.stdout.splitlines()
    assert lines[0] == "core ok", run.stderr
    assert len(lines) >= 5, run.stdout + run.stderr
    for line, extra in zip(lines[1:5], ["pkcs11", "pkcs11", "azure", "azure"], strict=True):
        assert f'pip install "keybridge-sdk[{extra}]"' in line, line
    assert run.returncode == 1
    assert 'pip install "keybridge-sdk[cli]"' in run.stderr
    assert "Traceback" not in run.stderr


# ---- canary: no key byte or passphrase anywhere ---------------------------------------------------

CANARY = bytes.fromhex("c4a9a21f0e5b7d3c9f8e6a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f")
PASSPHRASE = "canary-passphrase-Zq7!"


def _forms() -> list[str]:
    b64 = base64.b64encode(CANARY).decode()
    url = base64.urlsafe_b64encode(CANARY).decode()
    return [CANARY.hex(), CANARY.hex().upper(), b64, b64.rstrip("="), url.rstrip("="), repr(CANARY)[2:-1], PASSPHRASE]


def test_canary_key_and_passphrase_never_leak(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    texts: list[str] = []
    seen: list[audit.AuditEvent] = []
    audit.add_sink(seen.append)
    path = tmp_path / "canary.kbks"

    def expect_error(call: Any) -> None:
        with pytest.raises(KeybridgeError) as exc:
            call()
        texts.extend([str(exc.value), repr(exc.value)])
        cause = exc.value.__cause__
        if cause is not None:
            texts.extend([str(cause), repr(cause)])

    try:
        with caplog.at_level(logging.DEBUG):
            kp = InMemoryProvider.open(path, PASSPHRASE, create=True)
            info = kp.import_key("canary", CANARY, ops=["wrapKey", "unwrapKey", "encrypt", "decrypt"])
            wrapped = kp.wrap_key("canary", "A256KW", bytes(32))
            kp.unwrap_key("canary", "A256KW", wrapped)
            ct = kp.encrypt("canary", "A256GCM", b"data")
            expect_error(lambda: kp.decrypt("canary", "A256GCM", ct[:-1] + bytes([ct[-1] ^ 1])))
            expect_error(lambda: kp.unwrap_key("canary", "A256KW", wrapped[:-1] + b"\x00"))
            expect_error(lambda: kp.sign("canary", "ES256", bytes(32)))
            expect_error(lambda: kp.export_key("canary"))
            expect_error(lambda: kp.import_key("short", CANARY[:31]))
            expect_error(lambda: kp.import_key("bad name/" + CANARY.hex()[:4], CANARY))
            expect_error(lambda: InMemoryProvider.open(path, PASSPHRASE + "x"))
            expect_error(lambda: InMemoryProvider.open(path, PASSPHRASE[:-1]))
            expect_error(lambda: kp.save(path.with_suffix(".copy"), passphrase=""))
            whole = path.read_bytes()
            path.write_bytes(whole[:-3])
            expect_error(lambda: InMemoryProvider.open(path, PASSPHRASE))
            # Every change re-reads the file under the lock: a damaged keystore is refused, not overwritten.
            expect_error(lambda: kp.set_enabled("canary", False))
            path.write_bytes(whole)
            kp.set_enabled("canary", False)
            expect_error(lambda: kp.encrypt("canary", "A256GCM", b"x"))
            stored = kp._stored("canary", None)  # the internal record, repr included
            texts.extend(
                [repr(kp), str(kp), repr(info), str(info), repr(kp.key("canary")), repr(stored), repr(kp._sealer)]
            )
    finally:
        audit.remove_sink(seen.append)
    texts.extend(r.getMessage() for r in caplog.records)
    texts.extend(repr(r.__dict__) for r in caplog.records)
    texts.extend(repr(e) for e in seen)
    assert len(seen) >= 12
    assert any(r.name == "keybridge.audit" for r in caplog.records)
    blob = "\n".join(texts)
    for form in _forms():
        assert form not in blob, form
    assert path.with_suffix(".copy").exists() is False
    # The keystore on disk holds the canary only encrypted.
    raw = path.read_bytes()
    for form in _forms():
        assert form.encode() not in raw
    assert CANARY not in raw


def test_operation_not_permitted_is_raised_before_the_backend_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    kp = InMemoryProvider()
    kp.create_key("k", KeySpec.aes(256), ops=["encrypt"])

    def boom(*args: Any) -> bytes:
        raise AssertionError("backend reached")

    monkeypatch.setattr(kp, "_decrypt", boom)
    with pytest.raises(OperationNotPermitted):
        kp.decrypt("k", "A256GCM", bytes(40))


# ---- input validation and redaction (found by review) -------------------------------------------


def test_audit_never_records_a_pin_from_an_unparsed_reference() -> None:
    from keybridge._redact import redact_uri

    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)
    try:
        kp = InMemoryProvider()
        for ref in ("pkcs11:token=T;object=k?module-path=/x.so&pin-value=CANARY1234", "x;pin-value:CANARY1234"):
            with pytest.raises(keybridge.KeybridgeError):
                kp.sign(ref, "ES256", bytes(32))
    finally:
        audit.remove_sink(events.append)
    assert events
    assert all("CANARY1234" not in str(e) for e in events)
    assert redact_uri("https://user:CANARY1234@v.vault.azure.net/keys/k") == "https://***@v.vault.azure.net/keys/k"
    assert redact_uri("pkcs11:token=T;pin-value%3DCANARY1234;object=k") == "pkcs11:token=T;***;object=k"
    assert redact_uri("pkcs11:token=T;%70in-value=CANARY1234") == "pkcs11:token=T;***"  # percent-encoded name
    assert redact_uri("pkcs11:token=T;%50IN=CANARY1234;object=k") == "pkcs11:token=T;***;object=k"


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda kp: kp.create_key("n", None), "KeySpec"),
        (lambda kp: kp.create_key("memory:n", KeySpec.aes(256)), "key URI|invalid key name"),
        (lambda kp: kp.create_key("n", KeySpec.aes(256), ops="encrypt"), "collection"),
        (lambda kp: kp.create_key("n", KeySpec.aes(256), expires=dt.datetime(2030, 1, 1)), "timezone-aware"),
        (lambda kp: kp.create_key("n", KeySpec.aes(256), not_before="2030-01-01"), "timezone-aware"),
        (lambda kp: kp.create_key("n", KeySpec.aes(256), exportable="yes"), "exportable"),
        (lambda kp: kp.create_key("n", KeySpec.aes(256), tags={"a": 1}), "tags"),
        (lambda kp: kp.import_key("i", rsa.generate_private_key(65537, 2048).public_key()), "private key"),
        (lambda kp: kp.set_enabled("a", "false"), "True or False"),
        (lambda kp: kp.encrypt("a", "A256GCM", None), "data must be bytes"),
        (lambda kp: kp.encrypt("a", "A256GCM", b"x", aad=5), "aad must be bytes"),
        (lambda kp: kp.sign("e", "ES256", "digest"), "digest must be bytes"),
        (lambda kp: kp.wrap_key("a", "A256KW", 5), "key must be bytes"),
        (lambda kp: kp.verify("e", "ES256", bytes(32), None), "signature must be bytes"),
    ],
)
def test_wrong_argument_types_raise_invalid_argument(call: Any, fragment: str) -> None:
    kp = InMemoryProvider()
    kp.create_key("a", KeySpec.aes(256))
    kp.create_key("e", KeySpec.ec("P-256"))
    with pytest.raises(keybridge.InvalidArgument, match=fragment):
        call(kp)
    assert [i.ref.name for i in kp.list_keys()] == ["a", "e"]  # nothing half-created


def test_more_wrong_types_are_typed_errors(tmp_path: Path) -> None:
    from keybridge.byok import ByokPackage, transfer
    from keybridge.envelope import DataKeyCache, Keyring

    kp = InMemoryProvider()
    kp.create_key("k", KeySpec.aes(256))
    with pytest.raises(keybridge.InvalidArgument, match="passphrase"):
        InMemoryProvider.open(tmp_path / "ks", 5, create=True)  # type: ignore[arg-type]
    assert not (tmp_path / "ks").exists()
    with pytest.raises(keybridge.InvalidPackage, match="JSON text or bytes"):
        ByokPackage.from_json(None)  # type: ignore[arg-type]
    with pytest.raises(keybridge.InvalidArgument, match="needs cache_seconds"):
        DataKeyCache(Keyring(kp.key("k")), cache_seconds=None)
    with pytest.raises(keybridge.InvalidArgument, match="KeyProvider as target"):
        transfer(kp, None, "x", KeySpec.aes(256))  # type: ignore[arg-type]
