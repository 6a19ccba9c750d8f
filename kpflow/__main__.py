"""``python -m kpflow`` runs the ``kpflow`` command line."""

from kpflow.cli import console

console()
