"""Subcommands of ``ebsdtk`` (see :mod:`ebsd.cli`)."""
