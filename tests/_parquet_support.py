"""Helpers shared by the Parquet tests."""

from __future__ import annotations

import json
from pathlib import Path


def materials(path: Path) -> list[dict[str, object]]:
    """The key material entries pyarrow wrote beside ``path`` (external key material)."""
    raw = json.loads((path.parent / f"_KEY_MATERIAL_FOR_{path.name}.json").read_text())
    return [json.loads(v) for v in raw.values() if isinstance(v, str) and v.startswith("{")]
