"""Guards for the conventions every backend follows (issue #15), so a new module cannot drift.

Each is checked against the source itself (``ast``, ``inspect``), not a list kept by hand.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

import keybridge
from keybridge import provider as registry

SRC = Path(keybridge.__file__).parent
BACKENDS = ("memory", "pkcs11", "azure")
# The backends that call a foreign library whose exceptions need translating (memory raises
# keybridge errors itself); a new such backend joins this list and the check below.
TRANSLATING = ("pkcs11", "azure")


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_exports_from_uri_from_its_provider_module(name: str) -> None:
    package = importlib.import_module(f"keybridge.providers.{name}")
    assert "from_uri" in package.__all__
    # One place in every backend: the factory lives beside the class it builds.
    assert package.from_uri.__module__ == f"keybridge.providers.{name}._provider"
    assert package.from_uri is importlib.import_module(f"keybridge.providers.{name}._provider").from_uri


def test_the_builtin_registry_names_each_backends_from_uri() -> None:
    assert sorted(registry._BUILTIN.values()) == sorted(f"keybridge.providers.{n}:from_uri" for n in BACKENDS)


def test_no_two_classes_share_a_name() -> None:
    where: defaultdict[str, list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert len(where) > 100  # the walk really saw the package
    shared = {name: places for name, places in where.items() if len(places) > 1}
    assert shared == {}, f"classes sharing a name (give each one that says what it is): {shared}"


def _shape(fn: Callable[..., object]) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", TRANSLATING)
def test_error_translators_have_one_shape(name: str) -> None:
    pytest.importorskip({"pkcs11": "pkcs11", "azure": "azure.keyvault.keys"}[name])
    errors = importlib.import_module(f"keybridge.providers.{name}._errors")
    kw, pos = inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD
    empty = inspect.Parameter.empty
    bad_input = ("bad_input", kw, keybridge.InvalidArgument)
    assert _shape(errors.translate) == [("action", pos, empty), ("what", pos, empty), ("exc", pos, empty), bad_input]
    assert _shape(errors.translated) == [("action", pos, empty), ("what", pos, None), bad_input]


@pytest.mark.parametrize("name", TRANSLATING)
def test_translated_keeps_the_cause_and_names_action_and_key(name: str) -> None:
    pytest.importorskip({"pkcs11": "pkcs11", "azure": "azure.keyvault.keys"}[name])
    errors = importlib.import_module(f"keybridge.providers.{name}._errors")
    if name == "pkcs11":
        from pkcs11 import exceptions as px

        raw: Exception = px.DataInvalid()
    else:
        from azure.core.exceptions import ServiceRequestError

        raw = ServiceRequestError("connection refused")
    with pytest.raises(keybridge.KeybridgeError) as info, errors.translated("decrypting with", "K"):
        raise raw
    assert info.value.__cause__ is raw
    assert str(info.value).startswith("decrypting with K")


# ---- one name for a cache's lifetime: cache_seconds -----------------------------------------------

_OLD_LIFETIME_NAMES = {"cache_ttl", "max_age"}  # kept only as deprecated aliases, where they were public


def test_cache_lifetime_has_one_name() -> None:
    found: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found |= {a.arg for a in (*node.args.args, *node.args.kwonlyargs)}
    assert "cache_seconds" in found
    lifetimes = {n for n in found if "ttl" in n or "max_age" in n or "lifetime" in n.replace("_", "")}
    # The emulator's token ``lifetime`` is how long a minted token is valid, not a cache.
    assert lifetimes <= _OLD_LIFETIME_NAMES | {"lifetime"}, lifetimes


def test_data_key_cache_takes_cache_seconds_and_warns_on_max_age() -> None:
    from keybridge.envelope import DataKeyCache, Keyring
    from keybridge.providers.memory import InMemoryProvider

    provider = InMemoryProvider()
    provider.create_key("k", keybridge.KeySpec.aes(256))
    ring = Keyring(provider.key("k"))
    assert DataKeyCache(ring, cache_seconds=5).cache_seconds == 5.0
    with pytest.warns(DeprecationWarning, match="max_age is deprecated; use cache_seconds") as warned:
        old = DataKeyCache(ring, max_age=7)
    assert warned[0].filename == __file__  # points at the caller, not at keybridge
    assert old.cache_seconds == 7.0
    with pytest.warns(DeprecationWarning, match="use cache_seconds"):
        assert old.max_age == 7.0
    with pytest.raises(keybridge.InvalidArgument, match="pass only cache_seconds"):
        DataKeyCache(ring, cache_seconds=5, max_age=7)
    with pytest.raises(keybridge.InvalidArgument, match=r"cache_seconds must be a number of seconds \(more than 0\)"):
        DataKeyCache(ring, cache_seconds=0)


def test_azure_takes_cache_seconds_and_warns_on_cache_ttl() -> None:
    pytest.importorskip("azure.keyvault.keys")
    from keybridge.providers.azure import AzureKeyVaultProvider

    url = "https://kb.vault.azure.net"
    assert AzureKeyVaultProvider(url, cache_seconds=5)._cache_seconds == 5.0
    with pytest.warns(DeprecationWarning, match="cache_ttl is deprecated; use cache_seconds") as warned:
        old = AzureKeyVaultProvider(url, cache_ttl=0)
    assert warned[0].filename == __file__
    assert old._cache_seconds == 0.0
    with pytest.raises(keybridge.InvalidArgument, match="pass only cache_seconds"):
        AzureKeyVaultProvider(url, cache_seconds=5, cache_ttl=7)
    with (
        pytest.warns(DeprecationWarning, match="cache_ttl is deprecated"),
        pytest.raises(keybridge.InvalidArgument, match="cache_seconds must be a number of seconds"),
    ):
        AzureKeyVaultProvider(url, cache_ttl=-1)


@pytest.mark.parametrize("value", ["5", -1, float("nan"), True])
def test_pkcs11_checks_cache_seconds_before_loading_the_module(value: object) -> None:
    pytest.importorskip("pkcs11")
    # Before this check a string reached float() in from_uri and a bare ValueError escaped.
    with pytest.raises(keybridge.InvalidArgument, match=r"cache_seconds must be a number of seconds \(0 or more\)"):
        keybridge.open_provider("pkcs11:token=t?module-path=/nonexistent/module.so&pin-value=1", cache_seconds=value)
