"""Dask: an encrypted, partitioned dataset written and read on a LocalCluster of two worker
processes, keys in SoftHSM2 (both workers open the same token through SOFTHSM2_CONF), counting
the KMS calls each worker makes."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")
pytest.importorskip("pkcs11")

from keybridge import audit  # noqa: E402
from keybridge.keys import KeyOp, KeySpec  # noqa: E402
from keybridge.parquet import ParquetKeys, dask_read_dataset, dask_write_dataset, read_dataset  # noqa: E402
from keybridge.providers.pkcs11 import Pkcs11Provider  # noqa: E402
from keybridge.testing._softhsm import SoftHsmToken  # noqa: E402

# The workers cannot import this test module; its helpers travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROWS = 1200
PARTITIONS = 8


def _install_counter(dask_worker: Any) -> int:
    """Runs on each worker: count this process's successful provider calls by operation."""
    calls: Counter[str] = Counter()

    def sink(event: audit.AuditEvent) -> None:
        if event.outcome == "ok":
            calls[event.operation] += 1

    dask_worker.keybridge_calls = calls
    audit.add_sink(sink)
    return os.getpid()


def _take_counts(dask_worker: Any) -> dict[str, int]:
    calls: Counter[str] = dask_worker.keybridge_calls
    taken = dict(calls)
    calls.clear()
    return taken


@pytest.fixture(scope="module")
def keys(softhsm_token: SoftHsmToken) -> ParquetKeys:
    names = {"footer": f"dk-f-{os.urandom(4).hex()}", "pii": f"dk-p-{os.urandom(4).hex()}"}
    with Pkcs11Provider(softhsm_token.module_path, softhsm_token.token_label, softhsm_token.user_pin) as hsm:
        for name in names.values():
            hsm.create_key(name, KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
    uris = {mk: softhsm_token.uri(name, pin=False) for mk, name in names.items()}
    return ParquetKeys(uris, options={uri: {"user_pin": softhsm_token.user_pin} for uri in uris.values()})


@pytest.fixture(scope="module")
def client(softhsm_token: SoftHsmToken) -> Iterator[Any]:
    # Worker processes start after the token fixture set SOFTHSM2_CONF, so they inherit it.
    assert os.environ.get("SOFTHSM2_CONF") == softhsm_token.conf_path
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def test_dask_write_and_read_on_two_worker_processes(tmp_path: Path, keys: ParquetKeys, client: Any) -> None:
    pids = client.run(_install_counter)
    assert len(set(pids.values())) == 2
    assert os.getpid() not in pids.values()
    pdf = pd.DataFrame(
        {
            "id": range(ROWS),
            "ssn": [f"{i:09d}" for i in range(ROWS)],
            "region": [("north", "south", "east")[i % 3] for i in range(ROWS)],
        }
    )
    out = tmp_path / "ds"
    assert (
        dask_write_dataset(
            dd.from_pandas(pdf, npartitions=PARTITIONS),
            out,
            keys=keys,
            footer_key="footer",
            columns={"pii": ["ssn"]},
            partition_on=["region"],
        )
        == ROWS
    )
    files = sorted(out.rglob("*.parquet"))
    assert len(files) == PARTITIONS * 3
    assert {f.parent.name for f in files} == {"region=north", "region=south", "region=east"}
    assert all(f.read_bytes()[:4] == b"PARE" for f in files)

    wrote = client.run(_take_counts)
    writers = [c for c in wrote.values() if c.get("wrap_key")]
    assert len(writers) == 2, wrote  # both processes wrote files
    # Double wrapping plus one CryptoFactory per worker process: one KEK per master key per
    # worker, not one per file (PARTITIONS tasks ran).
    assert all(c["wrap_key"] == 2 for c in writers), wrote

    back = dask_read_dataset(out, keys=keys).compute()
    got = back.sort_values("id").reset_index(drop=True)
    assert got["id"].tolist() == pdf["id"].tolist()
    assert got["ssn"].tolist() == pdf["ssn"].tolist()
    assert got["region"].astype(str).tolist() == pdf["region"].tolist()

    read = client.run(_take_counts)
    unwraps = {addr: c.get("unwrap_key", 0) for addr, c in read.items()}
    # Each worker unwraps each writer's two KEKs once at most: 2 writers x 2 master keys, against
    # 2 unwraps per file (footer and column) without the cache.
    assert sum(unwraps.values()) > 0
    assert all(n <= 4 for n in unwraps.values()), unwraps
    assert sum(unwraps.values()) < 2 * len(files)

    # The same dataset read in this process with plain pyarrow dataset calls agrees.
    assert read_dataset(out, keys=keys).num_rows == ROWS


def test_pickled_specs_share_one_factory_per_process(keys: ParquetKeys) -> None:
    copies = [cloudpickle.loads(cloudpickle.dumps(keys)) for _ in range(3)]
    assert all(c is copies[0] for c in copies)
    assert copies[0] == keys
