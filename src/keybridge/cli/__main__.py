"""`python -m keybridge.cli`."""

from . import main

main()
