"""``python -m diffusion enhance ...``: the ``ebsdtk enhance`` subcommand, also where ``ebsdtk`` was never
installed (a source tree: no entry points). Every other ``ebsdtk`` subcommand works here too."""
import sys

from ebsd.cli import main

from . import cli

sys.exit(main(extra=[cli]))
