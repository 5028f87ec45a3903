"""One-call encrypted Parquet: a table to one file (atomically) or a partitioned dataset, and back."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from keybridge._files import atomic_output
from keybridge.errors import InvalidArgument, KeyNotFound

from ._keys import ParquetKeys, crypto_factory, pe

__all__ = ["key_material_path", "read_dataset", "read_table", "typed_errors", "write_dataset", "write_table"]

Columns = Mapping[str, Sequence[str]]
"""Master key id -> the columns it encrypts (``{"pii": ["ssn", "email"]}``)."""

_NO_KEYS = ("no decryption found", "Cannot decrypt ColumnMetadata", "FileDecryption is not setup")


def key_material_path(path: str | os.PathLike[str]) -> Path:
    """Where pyarrow keeps external key material for the Parquet file at ``path``."""
    p = Path(path)
    return p.with_name(f"_KEY_MATERIAL_FOR_{p.name}.json")


@contextlib.contextmanager
def typed_errors(what: object) -> Iterator[None]:
    """Turn pyarrow's ``OSError`` texts about keys and columns into keybridge errors that say what
    to do; errors raised by the KMS client (already keybridge's) pass through unchanged."""
    try:
        yield
    except OSError as exc:
        text = str(exc)
        if any(marker in text for marker in _NO_KEYS):
            raise KeyNotFound(
                f"{what} is encrypted (Parquet modular encryption) and this read has no keys for it;"
                " pass keys=ParquetKeys({...}) naming its footer key and the column keys you may use"
            ) from exc
        if "_KEY_MATERIAL_FOR_" in text or "external key material" in text:
            raise KeyNotFound(
                f"{what} keeps its key material in a separate file ({key_material_path(str(what)).name})"
                " that is missing; copy it next to the data file"
            ) from exc
        if "not in file schema" in text:
            raise InvalidArgument(f"{text.split('Detail:')[0].strip()}; name only columns the table has") from exc
        raise


def _encryption_config(
    footer_key: str,
    columns: Columns | None,
    keys: ParquetKeys,
    *,
    plaintext_footer: bool,
    double_wrapping: bool,
    data_key_bits: int,
    external_key_material: bool = False,
) -> Any:
    for mk in [footer_key, *(columns or {})]:
        if mk not in keys.keys:
            raise KeyNotFound(
                f"master key {mk!r} is not in the ParquetKeys given (known: {', '.join(sorted(keys.keys))})"
            )
    if data_key_bits not in (128, 192, 256):
        raise InvalidArgument(f"data_key_bits must be 128, 192 or 256, not {data_key_bits!r}")
    if columns is not None and not any(columns.values()):
        raise InvalidArgument("columns names no column; pass None to encrypt every column under the footer key")
    layout: dict[str, Any] = (
        {"uniform_encryption": True} if columns is None else {"column_keys": {mk: list(c) for mk, c in columns.items()}}
    )
    return pe().EncryptionConfiguration(
        footer_key=footer_key,
        plaintext_footer=plaintext_footer,
        double_wrapping=double_wrapping,
        data_key_length_bits=data_key_bits,
        internal_key_material=not external_key_material,
        **layout,
    )


def write_table(
    table: Any,
    path: str | os.PathLike[str],
    *,
    keys: ParquetKeys,
    footer_key: str,
    columns: Columns | None = None,
    plaintext_footer: bool = False,
    external_key_material: bool = False,
    double_wrapping: bool = True,
    data_key_bits: int = 128,
    mode: int = 0o600,
    overwrite: bool = False,
    **write_options: Any,
) -> None:
    """Write ``table`` to ``path`` encrypted: the footer under ``footer_key``, each column named in
    ``columns`` under its master key (other columns stay plaintext), or every column under the
    footer key when ``columns`` is None.

    The file appears whole or not at all (temp file, fsync, rename); an existing ``path`` is
    refused with :class:`~keybridge.OutputExists` unless ``overwrite=True``. With
    ``external_key_material=True`` the wrapped keys go to ``_KEY_MATERIAL_FOR_<name>.json`` beside
    it, which :func:`rotate_master_keys` can rewrap without touching the data; that file is moved
    into place once the data is synced, just before the data file is renamed. ``write_options``
    go to ``pyarrow.parquet.write_table``."""
    target = Path(path)
    enc = _encryption_config(
        footer_key,
        columns,
        keys,
        plaintext_footer=plaintext_footer,
        double_wrapping=double_wrapping,
        data_key_bits=data_key_bits,
        external_key_material=external_key_material,
    )
    # pyarrow names the key material after the path it is given and writes it while building the
    # properties, so stage it under a hidden name and move it only once the data is written.
    staging = target.with_name(f".{target.name}.{secrets.token_hex(6)}.staging")
    factory = crypto_factory(keys)
    import pyarrow.parquet as pq

    try:
        with typed_errors(target):
            props = factory.file_encryption_properties(pe().KmsConnectionConfig(), enc, str(staging))
            with atomic_output(target, mode=mode, overwrite=overwrite) as out:
                pq.write_table(table, out, encryption_properties=props, **write_options)
                if external_key_material:
                    # The data is on disk before its key material replaces the old file's, so a
                    # crash leaves at most the two renames' width where the pair does not match.
                    out.flush()
                    os.fsync(out.fileno())
                    os.replace(key_material_path(staging), key_material_path(target))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(key_material_path(staging))


def _decryption_properties(keys: ParquetKeys, path: str | os.PathLike[str]) -> Any:
    module = pe()
    # The path lets files with external key material find it; files with internal key material ignore it.
    return crypto_factory(keys).file_decryption_properties(
        module.KmsConnectionConfig(), module.DecryptionConfiguration(), str(path)
    )


def read_table(
    path: str | os.PathLike[str],
    *,
    keys: ParquetKeys | None = None,
    columns: Sequence[str] | None = None,
    skip_locked: bool = False,
    **read_options: Any,
) -> Any:
    """Read the Parquet file at ``path`` (encrypted or not) into a ``pyarrow.Table``.

    A column whose master key is not in ``keys`` raises :class:`~keybridge.errors.KeyNotFound`
    naming that key, unless ``skip_locked=True``, which leaves such columns out (the table then has
    only what this reader may see). An encrypted file read without ``keys`` raises ``KeyNotFound``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with typed_errors(path):
        props = None if keys is None else _decryption_properties(keys, path)
        if not skip_locked:
            # read_table, not ParquetFile.read: it decodes columns in parallel with pre-buffered
            # reads: 0.27 s instead of 0.30 s for a 256 MiB table (benchmarks/bench_parquet.py).
            wanted = list(columns) if columns is not None else None
            return pq.read_table(str(path), columns=wanted, decryption_properties=props, **read_options)
        pf = pq.ParquetFile(str(path), decryption_properties=props, **read_options)
        seen: dict[str, Any] = {}
        for name in columns if columns is not None else pf.schema_arrow.names:
            # One column at a time: a missing key fails only the columns it protects.
            with contextlib.suppress(KeyNotFound), typed_errors(path):
                seen[name] = pf.read(columns=[name]).column(name)
        return pa.table(seen)


def write_dataset(
    data: Any,
    base_dir: str | os.PathLike[str],
    *,
    keys: ParquetKeys,
    footer_key: str,
    columns: Columns | None = None,
    partitioning: Sequence[str] | None = None,
    plaintext_footer: bool = False,
    double_wrapping: bool = True,
    data_key_bits: int = 128,
    **write_options: Any,
) -> None:
    """Write ``data`` (a table, batches or dataset) as an encrypted Parquet dataset under
    ``base_dir``, hive-partitioned by the ``partitioning`` columns, every file encrypted as
    :func:`write_table` would. Key material is internal (pyarrow's dataset reader cannot find
    external key material). ``write_options`` go to ``pyarrow.dataset.write_dataset``."""
    import pyarrow.dataset as ds

    enc = _encryption_config(
        footer_key,
        columns,
        keys,
        plaintext_footer=plaintext_footer,
        double_wrapping=double_wrapping,
        data_key_bits=data_key_bits,
    )
    fmt = ds.ParquetFileFormat()
    config = ds.ParquetEncryptionConfig(crypto_factory(keys), pe().KmsConnectionConfig(), enc)
    if partitioning is not None:
        write_options.setdefault("partitioning_flavor", "hive")
    with typed_errors(base_dir):
        ds.write_dataset(
            data,
            str(base_dir),
            format=fmt,
            file_options=fmt.make_write_options(encryption_config=config),
            partitioning=list(partitioning) if partitioning is not None else None,
            **write_options,
        )


def read_dataset(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    keys: ParquetKeys,
    columns: Sequence[str] | None = None,
    filter: Any = None,
    partitioning: Any = "hive",
    partition_base_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Read an encrypted Parquet dataset (e.g. from :func:`write_dataset`) into a ``pyarrow.Table``,
    optionally only ``columns`` and rows matching ``filter`` (a ``pyarrow.compute`` expression).

    ``source`` is the dataset's directory or a list of its files; with a list, give the directory
    as ``partition_base_dir`` so the partition columns come from the paths below it."""
    import pyarrow.dataset as ds

    module = pe()
    config = ds.ParquetDecryptionConfig(
        crypto_factory(keys), module.KmsConnectionConfig(), module.DecryptionConfiguration()
    )
    fmt = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(decryption_config=config))
    with typed_errors(source):
        where = [str(p) for p in source] if isinstance(source, (list, tuple)) else str(source)
        base = None if partition_base_dir is None else str(partition_base_dir)
        dataset = ds.dataset(where, format=fmt, partitioning=partitioning, partition_base_dir=base)
        return dataset.to_table(columns=list(columns) if columns is not None else None, filter=filter)
