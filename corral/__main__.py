"""``python -m corral``: the same CLI as the ``corral`` console script."""

from corral.cli import main

main()
