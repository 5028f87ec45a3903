"""Distribution facts in one place: the name on PyPI (not the import name) and the version.

The import name is ``keybridge``, but ``keybridge`` on PyPI is an unrelated project, so the
distribution is ``keybridge-sdk``: every ``pip install`` hint must use :data:`DISTRIBUTION`, and
nothing may ask ``importlib.metadata`` about ``"keybridge"`` (that would report the other project).
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "VERSION", "pip_install"]

DISTRIBUTION = "keybridge-sdk"
# pyproject.toml reads this ([tool.setuptools.dynamic]), so the version is written only here.
VERSION = "0.1.0"


def pip_install(extra: str | None = None) -> str:
    """The ``pip install`` command for the distribution, or for one of its extras."""
    return f'pip install "{DISTRIBUTION}[{extra}]"' if extra else f"pip install {DISTRIBUTION}"
