"""``python -m mtlkit`` runs the command line (also under torchrun)."""

from mtlkit.cli import entry

entry()
