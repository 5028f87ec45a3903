"""Encrypted Parquet from Dask: each partition is written and read inside the worker.

pyarrow's encryption objects do not pickle (and a ``ParquetFileFormat`` carrying decryption
pickles but silently drops it), so only the :class:`ParquetKeys` spec travels to the workers;
each worker process builds one ``CryptoFactory`` for it and keeps its KEK cache warm across tasks.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keybridge.errors import InvalidArgument, MissingDependency

from ._io import Columns, read_dataset, write_dataset
from ._keys import ParquetKeys

__all__ = ["dask_read_dataset", "dask_write_dataset"]


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingDependency("keybridge.parquet with Dask", "parquet-dask") from exc


def _write_partition(
    pdf: Any,
    number: int,
    base_dir: str,
    keys: ParquetKeys,
    footer_key: str,
    columns: Columns | None,
    partition_on: Sequence[str] | None,
) -> int:
    """Runs on a worker: one Dask partition to its own file(s), named by the partition number."""
    pa = _module("pyarrow")
    table = pa.Table.from_pandas(pdf, preserve_index=False)
    write_dataset(
        table,
        base_dir,
        keys=keys,
        footer_key=footer_key,
        columns=columns,
        partitioning=partition_on,
        basename_template=f"part-{number:05d}-{{i}}.parquet",
        existing_data_behavior="overwrite_or_ignore",
    )
    return int(table.num_rows)


def dask_write_dataset(
    df: Any,
    base_dir: str | os.PathLike[str],
    *,
    keys: ParquetKeys,
    footer_key: str,
    columns: Columns | None = None,
    partition_on: Sequence[str] | None = None,
) -> int:
    """Write a ``dask.dataframe.DataFrame`` as an encrypted Parquet dataset under ``base_dir``
    (hive-partitioned by ``partition_on``), each Dask partition written by the worker holding it
    with :func:`write_dataset`. Runs on the current Dask scheduler (e.g. a ``distributed.Client``);
    every worker must be able to open the key URIs in ``keys``. Answers the rows written."""
    dask = _module("dask")
    Path(base_dir).mkdir(parents=True, exist_ok=True)
    tasks = [
        dask.delayed(_write_partition)(part, i, str(base_dir), keys, footer_key, columns, partition_on)
        for i, part in enumerate(df.to_delayed())
    ]
    return sum(dask.compute(*tasks))


def _read_file(path: str, base_dir: str, keys: ParquetKeys, columns: Sequence[str] | None) -> Any:
    """Runs on a worker: one file, with its partition columns taken from its path."""
    table = read_dataset([path], keys=keys, columns=columns, partition_base_dir=base_dir)
    return table.to_pandas()


def dask_read_dataset(
    base_dir: str | os.PathLike[str],
    *,
    keys: ParquetKeys,
    columns: Sequence[str] | None = None,
    meta: Any = None,
) -> Any:
    """A lazy ``dask.dataframe.DataFrame`` over the encrypted Parquet files under ``base_dir``, one
    partition per file, each decrypted on the worker that reads it. ``meta`` (an empty pandas
    frame) saves reading the first file here, which otherwise needs the keys in this process too."""
    dd = _module("dask.dataframe")
    files = sorted(str(p) for p in Path(base_dir).rglob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise InvalidArgument(f"{base_dir} holds no .parquet files")
    cols = list(columns) if columns is not None else None
    if meta is None:
        meta = _read_file(files[0], str(base_dir), keys, cols).iloc[:0]
    return dd.from_map(
        _read_file, files, base_dir=str(base_dir), keys=keys, columns=cols, meta=meta, label="keybridge-parquet"
    )
