"""Capability flags, fixtures and the test matrix shared by the conformance test mixins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from .. import audit
from ..keys import KeyOp, KeySpec, KeyType
from ..provider import KeyProvider
from ._conformance_support import Call, Keys, algs_for


class ConformanceBase:
    """Flags, fixtures and parametrisation; see :class:`keybridge.testing.ProviderConformance`."""

    rsa_bits: int = 2048
    specs: tuple[KeySpec, ...] | None = None
    supports_import: bool = True
    supports_export: bool = True
    supports_export_wrapped: bool = True
    supports_versions: bool = True
    supports_disable: bool = True
    supports_expiry: bool = True
    supports_import_byok: bool = True
    threads: int = 8

    # ---- the matrix --------------------------------------------------------------------------------

    @classmethod
    def conformance_specs(cls) -> tuple[KeySpec, ...]:
        """The key specs to exercise: ``specs`` if set, else RSA-``rsa_bits``, EC P-256/384/521, AES-128/192/256."""
        if cls.specs is not None:
            return tuple(cls.specs)
        return (
            KeySpec.rsa(cls.rsa_bits),
            KeySpec.ec("P-256"),
            KeySpec.ec("P-384"),
            KeySpec.ec("P-521"),
            KeySpec.aes(128),
            KeySpec.aes(192),
            KeySpec.aes(256),
        )

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise by the class's specs (known at collection) and every keybridge algorithm that fits
        each; algorithms the provider does not claim are skipped at run time, with the reason."""
        specs = type(self).conformance_specs()
        first_per_type: dict[KeyType, KeySpec] = {}
        for s in specs:
            first_per_type.setdefault(s.kty, s)

        def cases(op: KeyOp, *, kty: KeyType, family: str = "") -> list[tuple[KeySpec, str]]:
            return [(s, a) for s in specs if s.kty is kty for a in algs_for(s, op) if family in a]

        sign = [c for kty in (KeyType.RSA, KeyType.EC) for c in cases(KeyOp.SIGN, kty=kty)]
        rsa_enc = cases(KeyOp.ENCRYPT, kty=KeyType.RSA)
        rsa_seal = [(s, a, KeyOp.ENCRYPT) for s, a in rsa_enc] + [
            (s, a, KeyOp.WRAP_KEY) for s, a in cases(KeyOp.WRAP_KEY, kty=KeyType.RSA)
        ]
        table: dict[str, list[object]] = {
            "spec": list(specs),
            "kty_spec": list(first_per_type.values()),
            "sign_case": list(sign),
            "rsa_enc_case": list(rsa_enc),
            "rsa_seal_case": list(rsa_seal),
            "gcm_case": list(cases(KeyOp.ENCRYPT, kty=KeyType.OCT, family="GCM")),
            "kw_case": list(cases(KeyOp.WRAP_KEY, kty=KeyType.OCT)),
        }
        for argname, values in table.items():
            if argname in metafunc.fixturenames:
                metafunc.parametrize(argname, values, ids=[_case_id(v) for v in values], scope="function")

    # ---- helpers for the tests ---------------------------------------------------------------------

    @staticmethod
    def claim(provider: KeyProvider, alg: str) -> None:
        """Skip unless the provider claims ``alg``."""
        if alg not in provider.algorithms:
            pytest.skip(f"{provider.scheme} provider does not claim {alg}")

    @staticmethod
    def require_calls(calls: list[Call], provider: KeyProvider, spec: KeySpec) -> list[Call]:
        """``calls`` if there are any; a key type the provider claims no algorithm for is skipped
        with the reason, not failed."""
        if not calls:
            pytest.skip(f"{provider.scheme} provider claims no algorithm for {spec} keys")
        return calls

    def require(self, flag: str) -> None:
        """Skip unless the class sets capability ``flag`` (e.g. ``supports_versions``)."""
        if not getattr(self, flag):
            pytest.skip(f"{type(self).__name__}.{flag} is False")

    # ---- fixtures ----------------------------------------------------------------------------------

    @pytest.fixture(scope="class")
    @classmethod
    def provider(cls) -> KeyProvider:
        """Override in the subclass with a class-scoped fixture that yields the provider under test."""
        pytest.fail(f"{cls.__name__} must define a class-scoped `provider` fixture yielding a KeyProvider")

    @pytest.fixture(scope="class")
    @classmethod
    def shared_keys(cls, provider: KeyProvider) -> Iterator[Keys]:
        """Keys shared by the read-only tests of the class: one per spec and flavour, deleted at the end."""
        keys = Keys(provider, can_import=cls.supports_import)
        yield keys
        keys.close()

    @pytest.fixture
    def new_keys(self, provider: KeyProvider) -> Iterator[Keys]:
        """Keys a single test owns (it may disable, rotate or delete them); deleted after the test."""
        keys = Keys(provider, can_import=self.supports_import)
        yield keys
        keys.close()

    @pytest.fixture
    def audit_events(self, provider: KeyProvider) -> Iterator[list[audit.AuditEvent]]:
        """Every audit event the provider under test emits while the test runs (a backend that
        runs in-process, such as the emulator's in-memory store, audits too: those are left out)."""
        events: list[audit.AuditEvent] = []

        def sink(event: audit.AuditEvent) -> None:
            if event.provider == provider.scheme:
                events.append(event)

        audit.add_sink(sink)
        yield events
        audit.remove_sink(sink)

    @pytest.fixture(scope="class")
    @classmethod
    def byok_kek(cls) -> rsa.RSAPrivateKey:
        """A software RSA key-exchange key (as an Azure KEK would be) for wrapped export."""
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _case_id(value: object) -> str:
    if isinstance(value, tuple):
        return "-".join(_case_id(v) for v in value)
    if isinstance(value, KeyOp):
        return value.value
    return str(value)
