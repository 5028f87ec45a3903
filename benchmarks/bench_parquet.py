"""Encrypted Parquet speed: keybridge's write_table/read_table against plain pyarrow on the same
table, all measured in this one run, plus the KMS calls each file costs.

    python benchmarks/bench_parquet.py            # 1 GiB table (Arrow in-memory size)
    python benchmarks/bench_parquet.py --quick    # 64 MiB (CI size)

Keys are AES-256 keys in an in-memory keystore (the KMS call is local, so the figures are
pyarrow's AES-GCM plus keybridge's overhead; a remote HSM adds its latency once per master key per
process, see the KMS table). Two of four columns are encrypted under a column key, the footer under
the footer key; "uniform" encrypts every column under the footer key. keybridge writes atomically
(temp file, fsync, rename), so "plain + fsync" isolates the cost of encryption from that of the
fsync; the target (issue 13) is against bare plain pyarrow.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from keybridge import audit
from keybridge._files import atomic_output
from keybridge.keys import KeyOp, KeySpec
from keybridge.parquet import ParquetKeys, read_table, write_table
from keybridge.providers.memory import InMemoryProvider

MiB = 1 << 20
PASSPHRASE = "bench-parquet"
COLUMNS = {"pii": ["name", "ssn"]}
TARGET = 0.8


def _columns(rows: int, rng: Any) -> Any:
    ids = np.arange(rows, dtype=np.int64)
    names = pa.array(np.char.add("user-", (ids % 100_000).astype(str)))
    ssn = pa.array(rng.integers(10**8, 10**9, rows).astype(str))
    return pa.table({"id": ids, "amount": rng.random(rows), "name": names, "ssn": ssn})


def make_table(nbytes: int) -> Any:
    """About ``nbytes`` of Arrow data: ints, floats and two string columns that compress a little."""
    rng = np.random.default_rng(13)
    per_row = _columns(10_000, rng).nbytes / 10_000
    return _columns(max(1000, int(nbytes / per_row)), rng)


def make_keys(directory: Path) -> ParquetKeys:
    store = directory / "keys.kbks"
    with InMemoryProvider.open(store, PASSPHRASE, create=True) as provider:
        for name in ("footer", "pii"):
            provider.create_key(name, KeySpec.aes(256), ops=[KeyOp.WRAP_KEY, KeyOp.UNWRAP_KEY])
    opts = {"keystore": str(store), "passphrase": PASSPHRASE}
    return ParquetKeys(
        {n: f"memory:{n}" for n in ("footer", "pii")}, options={f"memory:{n}": opts for n in ("footer", "pii")}
    )


Rates = dict[str, tuple[float, float]]
Samples = dict[str, tuple[list[float], list[float]]]


def throughput(table: Any, keys: ParquetKeys, directory: Path, reps: int) -> tuple[Rates, Rates, Samples]:
    """(write, read) MiB/s of Arrow data per configuration, by wall clock and per CPU second of
    this process (all threads): the median of ``reps`` rounds after one warm-up round,
    configurations interleaved within a round so that noise from other processes on the machine
    falls on all of them alike. CPU time hardly moves with the machine's load; wall time does.
    Also answers the wall-clock seconds of every round, for per-round ratios."""
    n = table.nbytes

    def plain_fsync(path: Path) -> None:
        with atomic_output(path) as out:
            pq.write_table(table, out)

    def read_keybridge(path: Path) -> Any:
        return read_table(path, keys=keys)

    configs: dict[str, tuple[Callable[[Path], object], Callable[[Path], Any]]] = {
        "plain pyarrow": (lambda path: pq.write_table(table, path), pq.read_table),
        "plain + fsync (atomic)": (plain_fsync, pq.read_table),
        "keybridge, 2 of 4 columns": (
            lambda path: write_table(table, path, keys=keys, footer_key="footer", columns=COLUMNS),
            read_keybridge,
        ),
        "keybridge, uniform": (
            lambda path: write_table(table, path, keys=keys, footer_key="footer"),
            read_keybridge,
        ),
    }
    times: Samples = {name: ([], []) for name in configs}
    cpu: Samples = {name: ([], []) for name in configs}
    paths = {name: directory / f"t{i}.parquet" for i, name in enumerate(configs)}
    names = list(configs)
    for round_ in range(reps + 1):
        # All writes, then all reads: a read right after its own write races the kernel's
        # writeback of that file (plain pyarrow does not fsync), which swamped the read figures.
        # Each round starts with another configuration, so none always goes first.
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            write = configs[name][0]
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            write(paths[name])
            if round_:  # round 0 warms caches and pyarrow's thread pool
                times[name][0].append(time.perf_counter() - t0)
                cpu[name][0].append(time.process_time() - c0)
        os.sync()
        for name in order:
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            back = configs[name][1](paths[name])
            t1, c1 = time.perf_counter(), time.process_time()
            if back.num_rows != table.num_rows:
                raise SystemExit(f"{name}: read {back.num_rows} rows, wrote {table.num_rows}")
            del back
            if round_:
                times[name][1].append(t1 - t0)
                cpu[name][1].append(c1 - c0)
        for path in paths.values():
            path.unlink()

    def rates(samples: Samples) -> Rates:
        return {k: (n / MiB / statistics.median(w), n / MiB / statistics.median(r)) for k, (w, r) in samples.items()}

    return rates(times), rates(cpu), times


def round_ratios(times: Samples, name: str, op: int) -> str:
    """Median (min-max) of plain/keybridge time, each round against the plain run beside it."""
    values = [p / k for p, k in zip(times["plain pyarrow"][op], times[name][op], strict=True)]
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def kms_calls(
    keys_factory: Callable[[], ParquetKeys], directory: Path, files: int, double: bool
) -> tuple[float, float]:
    """Wrap calls per file written and unwrap calls per file read, each side with its own spec."""
    table = make_table(64 * 1024)
    events: list[audit.AuditEvent] = []
    audit.add_sink(events.append)
    try:
        writer, reader = keys_factory(), keys_factory()
        paths = [directory / f"k{i}.parquet" for i in range(files)]
        for p in paths:
            write_table(table, p, keys=writer, footer_key="footer", columns=COLUMNS, double_wrapping=double)
        wraps = sum(e.operation == "wrap_key" for e in events)
        for p in paths:
            read_table(p, keys=reader)
        unwraps = sum(e.operation == "unwrap_key" for e in events)
    finally:
        audit.remove_sink(events.append)
    for p in paths:
        p.unlink()
    return wraps / files, unwraps / files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI size: 64 MiB table, 3 rounds")
    ap.add_argument("--mib", type=int, help="table size in MiB (default 1024, or 64 with --quick)")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds (after one warm-up)")
    args = ap.parse_args()
    size = (args.mib or (64 if args.quick else 1024)) * MiB
    reps = args.rounds
    with tempfile.TemporaryDirectory(prefix="kb-bench-parquet-") as tmp:
        directory = Path(tmp)
        keys = make_keys(directory)
        table = make_table(size)
        mib = table.nbytes / MiB
        print(f"pyarrow {pa.__version__}, {table.num_rows} rows, {mib:.0f} MiB Arrow data, {os.cpu_count()} CPUs")
        print(f"load average {os.getloadavg()[0]:.2f}")
        rates, per_cpu, times = throughput(table, keys, directory, reps)
        print(
            f"\nThroughput (load now {os.getloadavg()[0]:.2f}), median of {reps}:"
            " MiB/s of Arrow data (wall clock) and MiB per CPU second"
        )
        print(f"{'configuration':28} {'write':>8} {'read':>8} {'write/CPU':>10} {'read/CPU':>10}")
        for name, (w, r) in rates.items():
            cw, cr = per_cpu[name]
            print(f"{name:28} {w:8.0f} {r:8.0f} {cw:10.0f} {cr:10.0f}")

        files = 10
        print(f"\nKMS calls per file ({files} files, 2 master keys, one spec per side)")
        for label, double in (("double wrapping (default)", True), ("single wrapping", False)):
            w, r = kms_calls(keys.fresh, directory, files, double)
            print(f"  {label:28} wrap {w:5.2f}   unwrap {r:5.2f}")

        print(f"\nRatios against plain pyarrow: of medians, wall clock (target >= {TARGET}x), per CPU second,")
        print("  and per round (median, min-max), each round against the plain run interleaved with it")
        missed = False
        base_w, base_r = rates["plain pyarrow"]
        cpu_w, cpu_r = per_cpu["plain pyarrow"]
        for name in ("keybridge, 2 of 4 columns", "keybridge, uniform"):
            (w, r), (cw, cr) = rates[name], per_cpu[name]
            for i, (op, value, by_cpu) in enumerate(
                (("write", w / base_w, cw / cpu_w), ("read", r / base_r, cr / cpu_r))
            ):
                ok = value >= TARGET
                missed |= not ok
                verdict = "ok" if ok else "MISSED"
                print(
                    f"  {name + ' ' + op:40} {value:5.2f}x  {verdict:6}  CPU {by_cpu:5.2f}x"
                    f"  rounds {round_ratios(times, name, i)}x"
                )
        fs_w = rates["plain + fsync (atomic)"][0]
        for name in ("keybridge, 2 of 4 columns", "keybridge, uniform"):
            print(f"  ({name} write against plain + fsync: {rates[name][0] / fs_w:.2f}x)")
        if missed:
            print("\nsome targets were missed (see above)")


if __name__ == "__main__":
    main()
