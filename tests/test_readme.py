"""The README's API tour is real code: extract it and run it."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_tour_runs() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- tour:[^>]*-->\s*```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README lost its API tour block"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {"__name__": "readme_tour"})
