"""Parquet modular encryption under keys keybridge opens (``pip install "keybridge-sdk[parquet]"``).

Master key identifiers in a pyarrow ``EncryptionConfiguration`` are names in a
:class:`ParquetKeys` spec, each bound to a key URI; the footer and column keys may live in
different providers. The spec pickles (for Dask or multiprocessing workers) and opens provider
sessions lazily, once per process, so no session crosses a fork. See docs/parquet.md.
"""

from __future__ import annotations

from ._dask import dask_read_dataset, dask_write_dataset
from ._io import read_dataset, read_table, write_dataset, write_table
from ._keys import VERSION_TAG, WRAP_ALG, ParquetKeys, crypto_factory
from ._rotate import rotate_master_keys

__all__ = [
    "VERSION_TAG",
    "WRAP_ALG",
    "ParquetKeys",
    "crypto_factory",
    "dask_read_dataset",
    "dask_write_dataset",
    "read_dataset",
    "read_table",
    "rotate_master_keys",
    "write_dataset",
    "write_table",
]
