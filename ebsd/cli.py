"""The ``ebsdtk`` command line: one entry point, one subcommand per module.

Each subcommand module defines ``register(subparsers)`` that adds its parser and sets ``func`` (called
with the parsed arguments, returning an exit code). Registration imports only argparse-level code; the
heavy work imports inside ``func``.

Where subcommands come from:

* ``ebsd/commands/<name>.py`` for the names in :data:`COMMANDS` (this package's own);
* the ``ebsdtk.commands`` entry-point group, for subcommands that live in packages *above* ``ebsd``
  (``ebsd`` never imports them: the package graph runs one way). This distribution declares
  ``enhance = "diffusion.cli"`` there; another distribution may add its own commands the same way.
  A command whose module fails to import is left out with a note on stderr, never a crash.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from types import ModuleType
from typing import Iterable

from . import __version__
from .errors import EBSDError

# this package's own subcommands, in the order ``--help`` lists them (entry-point commands follow, by name)
COMMANDS = ["info", "synth", "rpca", "recover", "demo", "view", "batch", "reconstruct"]

ENTRY_POINT_GROUP = "ebsdtk.commands"


def _entry_point_commands() -> list[tuple[str, object]]:
    """``(name, entry point)`` of the ``ebsdtk.commands`` group, one per name (the first found; a second
    one of the same name is reported on stderr), sorted by name."""
    seen: dict[str, object] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen:
            if seen[ep.name].value != ep.value:
                print(f"ebsdtk: note: command {ep.name!r} from entry point {ep.value!r} ignored: "
                      f"{seen[ep.name].value!r} already provides it", file=sys.stderr)
            continue
        seen[ep.name] = ep
    return sorted(seen.items())


def _plugin_module(name: str, ep) -> ModuleType | None:
    """Load an entry point's module and check, on a scratch parser, that its ``register`` adds exactly the
    subcommand ``name``; None (with a note on stderr) when it does not."""
    try:
        mod = ep.load()
        scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
        mod.register(scratch)
        added = sorted(scratch.choices)
        if added != [name]:
            raise ValueError(f"its register() adds {added}, expected [{name!r}]")
    except Exception as exc:  # a broken plugin must not take the whole CLI down
        print(f"ebsdtk: note: command {name!r} ({ep.value}) is unavailable: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return None
    return mod


def build_parser(extra: Iterable[ModuleType] = ()) -> argparse.ArgumentParser:
    """The ``ebsdtk`` parser: own commands, then entry-point commands, then ``extra`` modules.

    Args:
        extra: subcommand modules (each with ``NAME`` and ``register(subparsers)``) to add when no entry
            point registered that name, e.g. by ``python -m diffusion`` in a source tree never installed.
    """
    parser = argparse.ArgumentParser(
        prog="ebsdtk",
        description="ebsd-tensor-toolkit: 3-D EBSD volumes, slice recovery, tensor RPCA, PL/EBSD diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"ebsdtk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"ebsd.commands.{name}").register(sub)
    for name, ep in _entry_point_commands():
        if name in sub.choices:
            print(f"ebsdtk: note: command {name!r} from entry point {ep.value!r} ignored: the name is taken",
                  file=sys.stderr)
            continue
        mod = _plugin_module(name, ep)
        if mod is not None:
            mod.register(sub)
    for mod in extra:
        if mod.NAME not in sub.choices:  # not registered by an entry point (e.g. a source tree never installed)
            mod.register(sub)
    return parser


def main(argv: list[str] | None = None, extra: Iterable[ModuleType] = ()) -> int:
    parser = build_parser(extra)
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
