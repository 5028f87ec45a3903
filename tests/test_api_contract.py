"""The public API as a contract (issue #15): what ``keybridge`` exports, the names that mean one
thing, typed algorithm names, and handles that own what they open."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

import keybridge
from keybridge import ALGORITHMS, Algorithm, InMemoryProvider, KeyHandle, KeyRef, KeySpec, open_key, register_provider
from keybridge.byok import transfer

ROOT = Path(__file__).resolve().parent.parent
API_DOC = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")


# ---- keybridge.__all__ -----------------------------------------------------------------------------


def test_every_exported_name_is_importable_public_and_documented() -> None:
    assert len(set(keybridge.__all__)) == len(keybridge.__all__), "a name is listed twice"
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", API_DOC))
    for name in keybridge.__all__:
        assert getattr(keybridge, name) is not None, name  # lazy backends included
        assert name == "__version__" or not name.startswith("_"), f"private name {name} exported"
        assert name in documented, f"{name} is exported but not in docs/api.md"


def test_the_package_exports_no_public_name_it_does_not_list() -> None:
    # A module-level public name that is not in __all__ is either an accident or undocumented API.
    public = {n for n in vars(keybridge) if not n.startswith("_")} - {"annotations", "base", "keys", "provider"}
    unlisted = {n for n in public if not inspect.ismodule(getattr(keybridge, n))} - set(keybridge.__all__)
    assert unlisted == set()


def test_dir_shows_the_lazily_loaded_providers() -> None:
    listing = dir(keybridge)
    for name in ("InMemoryProvider", "Pkcs11Provider", "AzureKeyVaultProvider", "UnsupportedOperation", "Algorithm"):
        assert name in listing
    assert listing == sorted(listing)


def test_an_unknown_attribute_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        keybridge.NoSuchThing  # noqa: B018


# ---- algorithm names -------------------------------------------------------------------------------


def test_algorithm_constants_are_exactly_the_known_algorithms_and_plain_strings() -> None:
    assert {a.value for a in Algorithm} == set(ALGORITHMS)
    for a in Algorithm:
        assert a == a.value
        assert str(a) == f"{a}" == a.value  # messages and audit lines show the JWA name
        assert ALGORITHMS[a].name == a.value


def test_an_algorithm_constant_goes_wherever_a_name_does() -> None:
    p = InMemoryProvider()
    info = p.create_key("s", KeySpec.ec("P-256"))
    digest = bytes(32)
    sig = p.sign(info.ref, Algorithm.ES256, digest)
    assert p.verify(info.ref, "ES256", digest, sig)
    assert p.key(info.ref).verify(Algorithm.ES256, digest, sig)


def test_mypy_catches_a_misspelt_algorithm_constant(tmp_path: Path) -> None:
    user = tmp_path / "user_code.py"
    user.write_text(
        textwrap.dedent(
            """
            from keybridge import Algorithm, KeyHandle

            def good(key: KeyHandle) -> bytes:
                return key.sign(Algorithm.PS256, bytes(32))

            def typo(key: KeyHandle) -> bytes:
                return key.sign(Algorithm.PS265, bytes(32))
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", str(user)],
        capture_output=True,
        text=True,
        env={"MYPYPATH": str(ROOT / "src"), "PATH": ""},
        cwd=tmp_path,
        timeout=300,
    )
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, run.stdout + run.stderr
    assert ":8:" in errors[0]
    assert "PS265" in errors[0]


# ---- names that mean one thing -----------------------------------------------------------------------


def test_key_ref_scheme_and_its_deprecated_alias() -> None:
    info = InMemoryProvider().create_key("k", KeySpec.aes(256))
    assert info.ref.scheme == "memory"
    assert info.name == info.ref.name == "k"
    with pytest.warns(DeprecationWarning, match="KeyRef.scheme"):
        assert info.ref.provider == "memory"
    assert KeyRef(scheme="pkcs11", name="n") == KeyRef("pkcs11", "n")


def test_no_keybridge_code_path_uses_the_deprecated_alias() -> None:
    p = InMemoryProvider()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        info = p.create_key("k", KeySpec.ec("P-256"))
        p.ref(info.ref)
        str(info.ref)
        p.key(info.ref).as_private_key()
        transfer(p, InMemoryProvider(), "moved", KeySpec.aes(256), kek_size=2048)


def test_list_keys_is_an_iterator_over_a_snapshot_taken_when_called() -> None:
    p = InMemoryProvider()
    p.create_key("a", KeySpec.aes(256))
    it = p.list_keys()
    assert iter(it) is it
    p.create_key("b", KeySpec.aes(256))
    assert [k.name for k in it] == ["a"]
    assert list(it) == []  # spent, as any iterator
    assert sorted(k.name for k in p.list_keys()) == ["a", "b"]


def test_transfer_takes_ops_by_keyword_only() -> None:
    param = inspect.signature(transfer).parameters["ops"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError):
        transfer(InMemoryProvider(), InMemoryProvider(), "k", KeySpec.aes(256), ["encrypt", "decrypt"])  # type: ignore[misc]


# ---- open_key owns its provider -------------------------------------------------------------------------


class _Closing(InMemoryProvider):
    scheme = "closing"
    closed = 0

    def _close(self) -> None:
        type(self).closed += 1

    def _parse_uri(self, uri: str) -> tuple[str, str | None]:
        return super()._parse_uri("memory:" + uri.split(":", 1)[1])

    def _make_ref(self, name: str, version: str | None) -> KeyRef:
        return KeyRef(self.scheme, name, version, f"closing:{name}")


@pytest.fixture
def closing() -> _Closing:
    provider = _Closing()
    provider.create_key("k", KeySpec.ec("P-256"))
    _Closing.closed = 0
    register_provider("closing", lambda uri, **_: provider, replace=True)
    return provider


def test_open_key_returns_a_handle_that_closes_its_provider(closing: _Closing) -> None:
    with open_key("closing:k") as key:
        assert isinstance(key, KeyHandle)
        assert key.provider is closing
        assert key.info().name == "k"
        assert _Closing.closed == 0
    assert _Closing.closed == 1
    # Closed means closed, even for a backend whose own _close() refuses nothing.
    with pytest.raises(keybridge.ProviderUnavailable, match="closed"):
        key.info()
    with pytest.raises(keybridge.ProviderUnavailable, match="closed"):
        key.encrypt(Algorithm.A256GCM, b"x")


def test_open_key_closes_the_provider_it_opened_when_the_uri_is_bad(closing: _Closing) -> None:
    with pytest.raises(keybridge.InvalidKeyUri):
        open_key("closing:bad name!")
    assert _Closing.closed == 1


def test_a_handle_from_provider_key_borrows_and_leaves_it_open(closing: _Closing) -> None:
    with closing.key("k") as key:
        assert key.info().name == "k"
    assert _Closing.closed == 0
