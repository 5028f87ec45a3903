"""Two real processes and a held-open provider write one keystore: no key may be lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from keybridge.keys import KeySpec
from keybridge.providers.memory import InMemoryProvider

PASS = "multi-writer test passphrase"

_WRITER = """
import sys
from keybridge.keys import KeySpec
from keybridge.providers.memory import InMemoryProvider
p = InMemoryProvider.open(sys.argv[1], sys.argv[2])
for i in range(100):
    p.create_key(f"{sys.argv[3]}-{i}", KeySpec.aes(256))
"""


def test_two_processes_and_a_held_open_provider_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ks.kbks"
    held = InMemoryProvider.open(path, PASS, create=True)
    first = held.create_key("rotated", KeySpec.aes(256))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), PASS, tag]) for tag in ("a", "b")]
    rotations = []
    while any(p.poll() is None for p in procs):
        rotations.append(held.rotate_key("rotated"))
    assert [p.wait() for p in procs] == [0, 0]
    rotations.append(held.rotate_key("rotated"))

    reopened = InMemoryProvider.open(path, PASS)
    names = {k.ref.name for k in reopened.list_keys()}
    assert names == {"rotated"} | {f"{t}-{i}" for t in "ab" for i in range(100)}
    versions = [v.ref.version for v in reopened.list_versions("rotated")]
    assert versions == [first.ref.version] + [r.ref.version for r in rotations]
