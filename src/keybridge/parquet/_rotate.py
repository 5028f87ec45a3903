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
    # Fresh sessions and a fresh factory: a cached session may not have seen the new versions (an
    # in-memory keystore rereads its file only when it changes it), and a cached factory could hand
    # back KEKs still wrapped under the old ones.
    rotating = keys.fresh()
    factory = new_crypto_factory(rotating)
    module = pe()
    try:
        for target in targets:
            with typed_errors(target):
                factory.rotate_master_keys(module.KmsConnectionConfig(), str(target), double_wrapping=double_wrapping)
    finally:
        rotating.close()
    # New writes in this process must not keep using the old versions: drop the spec's sessions and
    # factory (KEK caches) so its next use starts from the current versions. They are not closed,
    # since another thread may still be writing with them.
    keys.forget()
    return targets
