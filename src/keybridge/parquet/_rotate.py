"""Master key rotation for files written with external key material."""

from __future__ import annotations

import os
from pathlib import Path

from keybridge.errors import InvalidArgument

from ._io import key_material_path, typed_errors
from ._keys import ParquetKeys, new_crypto_factory, pe

__all__ = ["rotate_master_keys"]


def _targets(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
        if not found:
            raise InvalidArgument(f"{path} holds no .parquet files to rotate")
        return found
    return [path]


def rotate_master_keys(path: str | os.PathLike[str], *, keys: ParquetKeys, double_wrapping: bool = True) -> list[Path]:
    """Rewrap the data keys of the Parquet file at ``path`` (or every ``.parquet`` file under a
    directory) under the current version of each master key, without touching the data.

    Rotate the master keys in their providers first (``provider.rotate_key(name)``); afterwards
    the files open with the new versions, so the old ones can be disabled. Only files written with
    ``write_table(..., external_key_material=True)`` can rotate; their key material file is
    replaced whole by pyarrow. Answers the files rotated."""
    targets = _targets(Path(path))
    for target in targets:
        if not key_material_path(target).is_file():
            raise InvalidArgument(
                f"{target} has no {key_material_path(target).name}: it was written with internal key material"
                " (the default) and cannot rotate in place; rewrite it with external_key_material=True"
            )
    # A fresh factory: a cached one could hand back KEKs still wrapped under the old versions.
    factory = new_crypto_factory(keys)
    module = pe()
    for target in targets:
        with typed_errors(target):
            factory.rotate_master_keys(module.KmsConnectionConfig(), str(target), double_wrapping=double_wrapping)
    # New writes in this process must not keep using KEKs wrapped before the rotation.
    keys.crypto_factory().remove_cache_entries_for_all_tokens()
    return targets
