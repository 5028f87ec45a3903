"""Encrypted Parquet on Dask: write and read throughput of one encrypted partitioned dataset on a
``distributed.LocalCluster`` with 1 and then 2 worker processes (one thread each), keys in an
in-memory keystore file every worker opens. Prints the 1 -> 2 worker speed-up (target, issue 13:
>= 1.6x) and the KMS calls each worker made (one unwrap per master key per process, not per file).

    python benchmarks/bench_parquet_dask.py            # 256 MiB of data, 16 partitions
    python benchmarks/bench_parquet_dask.py --quick    # 32 MiB, 8 partitions

Scaling needs idle cores: on a 2-CPU machine anything else running takes the second worker's CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

try:
    import dask.dataframe as dd
    import distributed
    import pandas as pd
except ImportError as exc:  # pragma: no cover - a benchmark, not a test
    raise SystemExit(f"needs keybridge-sdk[parquet-dask] and distributed ({exc})") from None

from bench_parquet import make_keys

from keybridge import audit
from keybridge.parquet import ParquetKeys, dask_read_dataset, dask_write_dataset

MiB = 1 << 20
TARGET = 1.6


def _install_counter(dask_worker: Any) -> int:
    """Runs on each worker: count this process's KMS (provider) calls. The counter lives on the
    worker object, since functions from this script reach the workers pickled by value."""
    calls: Counter[str] = Counter()
    dask_worker.keybridge_calls = calls
    audit.add_sink(lambda event: calls.update([event.operation]))
    return os.getpid()


def _calls(dask_worker: Any) -> dict[str, int]:
    return dict(dask_worker.keybridge_calls)


def _partition(i: int, rows: int) -> Any:
    """Made on the worker, so the client ships no data and the run measures the workers."""
    rng = np.random.default_rng(i)
    return pd.DataFrame(
        {
            "id": np.arange(i * rows, (i + 1) * rows, dtype=np.int64),
            "amount": rng.random(rows),
            "ssn": rng.integers(10**8, 10**9, rows).astype(str),
        }
    )


def frame(nbytes: int, partitions: int) -> Any:
    rows = max(1000, nbytes // 40 // partitions)  # about 40 bytes a row in these columns
    meta = _partition(0, 1).iloc[:0]
    return dd.from_map(_partition, range(partitions), rows=rows, meta=meta), rows * partitions


def run(workers: int, df: Any, keys: ParquetKeys, out: Path, reps: int) -> tuple[float, float, dict[int, Any]]:
    """Median write and read seconds on a fresh cluster of ``workers`` processes, and its KMS calls."""
    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(_install_counter)
        writes, reads = [], []
        for _ in range(reps):
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            dask_write_dataset(df, out, keys=keys, footer_key="footer", columns={"pii": ["ssn"]})
            writes.append(time.perf_counter() - t)
            meta = dask_read_dataset(out, keys=keys)._meta  # untimed: the client reads one file for it
            t = time.perf_counter()
            # Decrypted and counted on the workers: the client fetches one number per partition.
            dask_read_dataset(out, keys=keys, meta=meta).map_partitions(len).sum().compute()
            reads.append(time.perf_counter() - t)
        calls = client.run(_calls)
    return statistics.median(writes), statistics.median(reads), calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 MiB, 8 partitions, 2 rounds")
    args = ap.parse_args()
    size, partitions, reps = (32 * MiB, 8, 2) if args.quick else (256 * MiB, 16, 3)
    with tempfile.TemporaryDirectory(prefix="kb-bench-dask-") as tmp:
        directory = Path(tmp)
        keys = make_keys(directory)
        df, rows = frame(size, partitions)
        print(f"{rows} rows in {partitions} partitions, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        results = {n: run(n, df, keys, directory / f"ds{n}", reps) for n in (1, 2)}
        print(f"{'workers':>8} {'write s':>9} {'read s':>9}   KMS calls per worker")
        for n, (w, r, calls) in results.items():
            per = ", ".join(f"{dict(c)}" for c in calls.values())
            print(f"{n:8} {w:9.2f} {r:9.2f}   {per}")
        (w1, r1, _), (w2, r2, _) = results[1], results[2]
        for op, speedup in (("write", w1 / w2), ("read", r1 / r2)):
            verdict = "ok" if speedup >= TARGET else "MISSED"
            print(f"1 -> 2 workers, {op}: {speedup:.2f}x (target >= {TARGET}x) {verdict}")


if __name__ == "__main__":
    main()
