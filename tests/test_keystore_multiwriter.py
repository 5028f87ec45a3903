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


def _other_process_creates(path: Path, name: str) -> None:
    code = "import sys\nfrom keybridge.keys import KeySpec\nfrom keybridge.providers.memory import InMemoryProvider\n"
    code += "InMemoryProvider.open(sys.argv[1], sys.argv[2]).create_key(sys.argv[3], KeySpec.aes(256))\n"
    subprocess.run([sys.executable, "-c", code, str(path), PASS, name], check=True)


def test_plain_save_of_a_stale_copy_keeps_another_process_keys(tmp_path: Path) -> None:
    path = tmp_path / "ks.kbks"
    held = InMemoryProvider.open(path, PASS, create=True)
    held.create_key("mine", KeySpec.aes(256))
    _other_process_creates(path, "theirs")
    held.save()
    names = {k.ref.name for k in InMemoryProvider.open(path, PASS).list_keys()}
    assert names == {"mine", "theirs"}


def test_rotating_a_key_another_process_created(tmp_path: Path) -> None:
    path = tmp_path / "ks.kbks"
    held = InMemoryProvider.open(path, PASS, create=True)
    _other_process_creates(path, "theirs")
    rotated = held.rotate_key("theirs")
    versions = [v.ref.version for v in InMemoryProvider.open(path, PASS).list_versions("theirs")]
    assert len(versions) == 2
    assert versions[-1] == rotated.ref.version
    assert rotated.spec == KeySpec.aes(256)
