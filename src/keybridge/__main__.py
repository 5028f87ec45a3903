"""``python -m keybridge``: the command line, for when the ``keybridge`` script is not on PATH
(a venv that is not activated, ``pipx run``, a container with only ``python``)."""

from .cli import main

main()
