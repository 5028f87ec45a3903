"""keybridge.parquet one-call helpers and master key rotation, keys in the in-memory keystore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pc = pytest.importorskip("pyarrow.compute")

from _parquet_support import materials  # noqa: E402
from keybridge.errors import InvalidArgument, KeyDisabled, KeyNotFound  # noqa: E402
from keybridge.keys import KeyOp, KeySpec  # noqa: E402
from keybridge.parquet import (  # noqa: E402
    VERSION_TAG,
    ParquetKeys,
    read_dataset,
    read_table,
    rotate_master_keys,
    write_dataset,
    write_table,
)
from keybridge.providers.memory import InMemoryProvider  # noqa: E402

PASSPHRASE = "parquet-io-passphrase"
TABLE = pa.table({"id": [1, 2, 3, 4], "ssn": ["a", "b", "c", "d"], "city": ["x", "y", "x", "z"]})
COLUMNS = {"pii": ["ssn"]}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "keys.kbks"
    with InMemoryProvider.open(path, PASSPHRASE, create=True) as provider:
        for name in ("footer", "pii"):
            provider.create_key(name, KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
    return path


def _keys(store: Path, *names: str) -> ParquetKeys:
    opts = {"keystore": str(store), "passphrase": PASSPHRASE}
    return ParquetKeys({n: f"memory:{n}" for n in names}, options={f"memory:{n}": opts for n in names})


def test_write_read_round_trip_leaves_only_the_file(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "out" / "t.parquet"
    path.parent.mkdir()
    write_table(TABLE, path, keys=_keys(store, "footer", "pii"), footer_key="footer", columns=COLUMNS)
    assert os.listdir(path.parent) == ["t.parquet"]
    assert path.read_bytes()[:4] == b"PARE"
    assert read_table(path, keys=_keys(store, "footer", "pii")).equals(TABLE)


def test_uniform_encryption_without_columns(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "u.parquet"
    write_table(TABLE, path, keys=_keys(store, "footer"), footer_key="footer")
    with pytest.raises(KeyNotFound, match="'footer'"):
        read_table(path, keys=_keys(store, "pii"))
    assert read_table(path, keys=_keys(store, "footer")).equals(TABLE)


def test_reader_without_keys_gets_a_typed_error(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(TABLE, path, keys=_keys(store, "footer", "pii"), footer_key="footer", columns=COLUMNS)
    with pytest.raises(KeyNotFound, match=r"is encrypted .* pass keys="):
        read_table(path)


def test_plaintext_footer_shows_plain_columns_and_refuses_the_rest(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    keys = _keys(store, "footer", "pii")
    write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS, plaintext_footer=True)
    assert path.read_bytes()[:4] == b"PAR1"
    assert read_table(path, columns=["id", "city"]).equals(TABLE.select(["id", "city"]))
    with pytest.raises(KeyNotFound, match="is encrypted"):
        read_table(path, columns=["ssn"])
    assert read_table(path, skip_locked=True).equals(TABLE.select(["id", "city"]))


def test_reader_without_a_column_key_sees_only_the_other_columns(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    write_table(TABLE, path, keys=_keys(store, "footer", "pii"), footer_key="footer", columns=COLUMNS)
    partial = _keys(store, "footer")
    assert read_table(path, keys=partial, skip_locked=True).equals(TABLE.select(["id", "city"]))
    with pytest.raises(KeyNotFound, match="'pii'"):
        read_table(path, keys=partial)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    keys = _keys(store, "footer", "pii")
    write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS, external_key_material=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "keys.kbks"}
    with pytest.raises(InvalidArgument, match="nope"):
        write_table(
            TABLE,
            path,
            keys=keys,
            footer_key="footer",
            columns={"pii": ["nope"]},
            external_key_material=True,
            overwrite=True,
        )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "keys.kbks"} == before
    assert read_table(path, keys=keys).equals(TABLE)


def test_bad_arguments_fail_before_any_file(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    keys = _keys(store, "footer")
    with pytest.raises(KeyNotFound, match="'pii'"):
        write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS)
    with pytest.raises(InvalidArgument, match="data_key_bits"):
        write_table(TABLE, path, keys=keys, footer_key="footer", data_key_bits=64)
    assert not path.exists()


def test_dataset_round_trip_with_partitions_and_filter(tmp_path: Path, store: Path) -> None:
    out = tmp_path / "ds"
    keys = _keys(store, "footer", "pii")
    write_dataset(TABLE, out, keys=keys, footer_key="footer", columns=COLUMNS, partitioning=["city"])
    files = sorted(out.rglob("*.parquet"))
    assert [f.parent.name for f in files] == ["city=x", "city=y", "city=z"]
    assert all(f.read_bytes()[:4] == b"PARE" for f in files)
    back = read_dataset(out, keys=keys).sort_by("id")
    assert back.select(["id", "ssn"]).equals(TABLE.select(["id", "ssn"]))
    assert back.column("city").to_pylist() == TABLE.column("city").to_pylist()
    only_x = read_dataset(out, keys=keys, columns=["ssn"], filter=pc.field("city") == "x")
    assert sorted(only_x.column("ssn").to_pylist()) == ["a", "c"]
    with pytest.raises(KeyNotFound, match="'pii'"):
        read_dataset(out, keys=_keys(store, "footer"))


def test_rotation_moves_files_to_the_new_version_so_the_old_can_be_disabled(tmp_path: Path, store: Path) -> None:
    keys = _keys(store, "footer", "pii")
    rotated, stale = tmp_path / "rotated.parquet", tmp_path / "stale.parquet"
    for path in (rotated, stale):
        write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS, external_key_material=True)
    with InMemoryProvider.open(store, PASSPHRASE) as provider:
        old = {n: provider.get_key(n).ref for n in ("footer", "pii")}
        new = {n: provider.rotate_key(n).ref.version for n in ("footer", "pii")}
    tags = {str(m["wrappedKEK"]).split(":")[1] for m in materials(rotated)}
    assert tags == {old["footer"].version, old["pii"].version}

    assert rotate_master_keys(rotated, keys=_keys(store, "footer", "pii")) == [rotated]
    for m in materials(rotated):
        assert str(m["wrappedKEK"]).startswith(f"{VERSION_TAG}:{new[str(m['masterKeyID'])]}:")

    with InMemoryProvider.open(store, PASSPHRASE) as provider:
        for ref in old.values():
            provider.set_enabled(ref, False)
    assert read_table(rotated, keys=_keys(store, "footer", "pii")).equals(TABLE)
    with pytest.raises(KeyDisabled):
        read_table(stale, keys=_keys(store, "footer", "pii"))


def test_rotation_refuses_internal_key_material(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    keys = _keys(store, "footer", "pii")
    write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS)
    with pytest.raises(InvalidArgument, match="external_key_material=True"):
        rotate_master_keys(path, keys=keys)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match=r"no \.parquet files"):
        rotate_master_keys(tmp_path / "empty", keys=keys)


def test_missing_key_material_file_is_a_typed_error(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    keys = _keys(store, "footer", "pii")
    write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS, external_key_material=True)
    (tmp_path / "_KEY_MATERIAL_FOR_t.parquet.json").unlink()
    with pytest.raises(KeyNotFound, match=r"_KEY_MATERIAL_FOR_t\.parquet\.json"):
        read_table(path, keys=keys)


CRASHING_WRITER = """
import os, sys, time
import pyarrow as pa
from keybridge.parquet import ParquetKeys, write_table

real_fsync = os.fsync

def stall(fd):
    link = os.readlink(f"/proc/self/fd/{fd}")
    if not (link.endswith(".tmp") or link.endswith("(deleted)")):  # a named or an O_TMPFILE temp file
        return real_fsync(fd)
    print("fsync", flush=True)
    time.sleep(120)

os.fsync = stall  # killed while the data temp file syncs: written, nothing renamed yet
opts = {"keystore": sys.argv[2], "passphrase": sys.argv[3]}
names = ("footer", "pii")
keys = ParquetKeys({n: "memory:" + n for n in names}, options={"memory:" + n: opts for n in names})
table = pa.table({"id": [9], "ssn": ["new"], "city": ["new"]})
write_table(
    table, sys.argv[1], keys=keys, footer_key="footer", columns={"pii": ["ssn"]}, external_key_material=True,
    overwrite=True,
)
"""


def test_a_writer_killed_before_the_rename_leaves_the_old_file_readable(tmp_path: Path, store: Path) -> None:
    path = tmp_path / "t.parquet"
    keys = _keys(store, "footer", "pii")
    write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS, external_key_material=True)
    material = (tmp_path / "_KEY_MATERIAL_FOR_t.parquet.json").read_bytes()
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(path), str(store), PASSPHRASE], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "fsync"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "_KEY_MATERIAL_FOR_t.parquet.json").read_bytes() == material
    assert read_table(path, keys=_keys(store, "footer", "pii")).equals(TABLE)


def test_rotating_a_directory_rotates_every_file_in_it(tmp_path: Path, store: Path) -> None:
    keys = _keys(store, "footer", "pii")
    paths = [tmp_path / "d" / f"p{i}.parquet" for i in range(3)]
    paths[0].parent.mkdir()
    for path in paths:
        write_table(TABLE, path, keys=keys, footer_key="footer", columns=COLUMNS, external_key_material=True)
    with InMemoryProvider.open(store, PASSPHRASE) as provider:
        new = {n: provider.rotate_key(n).ref.version for n in ("footer", "pii")}
    assert rotate_master_keys(tmp_path / "d", keys=keys) == sorted(paths)
    # The spec that wrote before the rotation writes under the new versions after it.
    later = tmp_path / "later.parquet"
    write_table(TABLE, later, keys=keys, footer_key="footer", columns=COLUMNS, external_key_material=True)
    for path in [*paths, later]:
        assert {str(m["wrappedKEK"]).split(":")[1] for m in materials(path)} == set(new.values())


def test_close_closes_the_sessions_and_later_use_reopens(store: Path) -> None:
    keys = _keys(store, "footer")
    first = keys.handle("footer")
    closed: list[bool] = []
    real_close = first.provider.close
    first.provider.close = lambda: (closed.append(True), real_close())[1]  # type: ignore[method-assign]
    keys.close()
    assert closed == [True]
    again = keys.handle("footer")
    assert again.provider is not first.provider
    assert again.info().ref.name == "footer"


def test_without_dask_a_typed_error_names_the_extra(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keybridge.errors import MissingDependency
    from keybridge.parquet import dask_write_dataset

    monkeypatch.setitem(sys.modules, "dask", None)  # makes the import fail
    with pytest.raises(MissingDependency, match=r"keybridge-sdk\[parquet-dask\]"):
        dask_write_dataset(object(), tmp_path, keys=_keys(store, "footer"), footer_key="footer")
