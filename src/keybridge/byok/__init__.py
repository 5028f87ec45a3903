"""Azure "bring your own key": move a key from an HSM you control into Azure Key Vault / Managed
HSM without it ever existing in clear outside the HSM, and prove it arrived.

* :class:`ByokPackage` — the .byok file (read, write, strict validation).
* :func:`export` — the source provider wraps its key under Azure's key-exchange key (KEK);
  :func:`import_package` — the target imports it.
* :func:`transfer` — the whole flow between two providers, with a two-way proof.
* :func:`wrap_for_azure` / :func:`unwrap` / :func:`load_unwrapped` — the same format in software,
  for keys you hold in hand and for checking packages.

This package uses only the :class:`~keybridge.KeyProvider` protocol, so any backend can be a
source (one that implements ``export_wrapped``) or a target (one that implements ``import_byok``).
"""

from __future__ import annotations

from .._byok import ByokPackage
from ._export import export, import_package
from ._transfer import Proof, TransferResult, transfer
from ._wrap import check_kek_id, implied_specs, load_kek_public_key, load_unwrapped, unwrap, wrap_for_azure

__all__ = [
    "ByokPackage",
    "Proof",
    "TransferResult",
    "check_kek_id",
    "export",
    "implied_specs",
    "import_package",
    "load_kek_public_key",
    "load_unwrapped",
    "transfer",
    "unwrap",
    "wrap_for_azure",
]
