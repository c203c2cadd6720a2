"""The ``ebsdtk`` command line: one entry point, one subcommand per module in :mod:`ebsd.commands`.

Each ``ebsd/commands/<name>.py`` defines ``register(subparsers)`` that adds its parser and sets
``func`` (called with the parsed arguments, returning an exit code). Registration imports only
argparse-level code; the heavy work imports inside ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import EBSDError

# in the order ``--help`` lists them
COMMANDS = ["info", "synth", "rpca", "recover", "enhance", "demo", "view", "batch"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebsdtk",
        description="ebsd-tensor-toolkit: 3-D EBSD volumes, slice recovery, tensor RPCA, PL/EBSD diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"ebsdtk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"ebsd.commands.{name}")
        except ModuleNotFoundError as exc:  # a subcommand not built yet
            if exc.name != f"ebsd.commands.{name}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):  # no subcommand: a usage error (argparse convention: stderr, exit 2)
        parser.print_help(sys.stderr)
        print("ebsdtk: error: a subcommand is required (one of the commands listed above)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except EBSDError as exc:
        print(f"ebsdtk {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ebsdtk {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
