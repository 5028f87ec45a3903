"""Encrypted Parquet on Dask: write and read throughput of one encrypted partitioned dataset on a
``distributed.LocalCluster`` with 1 and then 2 worker processes (one thread each), keys in an
in-memory keystore file every worker opens. Prints the 1 -> 2 worker speed-up (target, issue 13:
>= 1.6x) and the KMS calls each worker made (one unwrap per master key per process, not per file).

    python benchmarks/bench_parquet_dask.py            # 256 MiB of data, 16 partitions
    python benchmarks/bench_parquet_dask.py --quick    # 32 MiB, 8 partitions, 3 rounds

Scaling needs idle cores: on a 2-CPU machine anything else running takes the second worker's CPU.
Each worker's pyarrow thread pool is pinned to one thread (``--arrow-threads``): by default pyarrow
decodes on every core, so "1 worker" would already use both CPUs and the figure would measure
pyarrow's own threading, not the workers. Rounds alternate the 1- and 2-worker clusters so that
load from other processes falls on both; the median and the min-max spread are printed.
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


def _pin_arrow(threads: int) -> int:
    """Runs on each worker: one CPU per worker means one pyarrow thread too (see the docstring)."""
    import pyarrow as pa

    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)
    return int(pa.cpu_count())


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


Round = tuple[float, float, dict[str, Any]]


def one_round(workers: int, df: Any, keys: ParquetKeys, out: Path, arrow_threads: int) -> Round:
    """Write and read seconds on a fresh cluster of ``workers`` processes, and its KMS calls."""
    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(_install_counter)
        if arrow_threads:
            client.run(_pin_arrow, arrow_threads)
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        dask_write_dataset(df, out, keys=keys, footer_key="footer", columns={"pii": ["ssn"]})
        write = time.perf_counter() - t
        meta = dask_read_dataset(out, keys=keys)._meta  # untimed: the client reads one file for it
        t = time.perf_counter()
        # Decrypted and counted on the workers: the client fetches one number per partition.
        # (Gathering the frame instead would time the client's concatenation, not the workers.)
        dask_read_dataset(out, keys=keys, meta=meta).map_partitions(len).sum().compute()
        read = time.perf_counter() - t
        return write, read, client.run(_calls)


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 MiB, 8 partitions, 3 rounds")
    ap.add_argument("--rounds", type=int, help="rounds per worker count (default 5, or 3 with --quick)")
    ap.add_argument("--arrow-threads", type=int, default=1, help="pyarrow threads per worker; 0: pyarrow's default")
    args = ap.parse_args()
    size, partitions, reps = (32 * MiB, 8, 3) if args.quick else (256 * MiB, 16, 5)
    reps = args.rounds or reps
    with tempfile.TemporaryDirectory(prefix="kb-bench-dask-") as tmp:
        directory = Path(tmp)
        keys = make_keys(directory)
        df, rows = frame(size, partitions)
        print(f"{rows} rows in {partitions} partitions, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
        rounds: dict[int, list[Round]] = {1: [], 2: []}
        ratios: dict[str, list[float]] = {"write": [], "read": []}
        for i in range(reps):
            order = (1, 2) if i % 2 == 0 else (2, 1)
            for n in order:
                rounds[n].append(one_round(n, df, keys, directory / f"ds{n}", args.arrow_threads))
            (w1, r1, _), (w2, r2, _) = rounds[1][-1], rounds[2][-1]
            ratios["write"].append(w1 / w2)
            ratios["read"].append(r1 / r2)
        print(f"load after {reps} rounds {os.getloadavg()[0]:.2f}; seconds: median (min-max)")
        print(f"{'workers':>8} {'write s':>17} {'read s':>17}   KMS calls per worker (last round)")
        for n, results in rounds.items():
            per = ", ".join(f"{dict(c)}" for c in results[-1][2].values())
            writes, reads = [r[0] for r in results], [r[1] for r in results]
            print(f"{n:8} {_spread(writes):>17} {_spread(reads):>17}   {per}")
        for op, values in ratios.items():
            verdict = "ok" if statistics.median(values) >= TARGET else "MISSED"
            print(f"1 -> 2 workers, {op}: {_spread(values)}x per round (target >= {TARGET}x) {verdict}")


if __name__ == "__main__":
    main()
