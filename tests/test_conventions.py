"""Guards for the conventions every backend follows (issue #15), so a new module cannot drift.

Each is checked against the source itself (``ast``, ``inspect``), not a list kept by hand.
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import pytest

import keybridge
from keybridge import provider as registry

SRC = Path(keybridge.__file__).parent
BACKENDS = ("memory", "pkcs11", "azure")


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
