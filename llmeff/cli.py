"""The ``llmeff`` command line. Subcommands live in :mod:`llmeff.commands` (``register(subparsers)``)."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import LLMEffError

COMMANDS = ["griffin", "kvcache", "train_lm", "tp", "caprese"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmeff",
        description="LLM inference efficiency on HF transformers models: GRIFFIN, KV-cache compression, "
        "low-bit tensor parallelism, low-rank distillation.",
    )
    parser.add_argument("--version", action="version", version=f"llmeff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"llmeff.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"llmeff.commands.{name}", "llmeff.commands"):
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):  # no subcommand: a usage error (argparse convention: stderr, exit 2)
        parser.print_help(sys.stderr)
        print("llmeff: error: a subcommand is required (one of the commands listed above)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except LLMEffError as exc:
        print(f"llmeff {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
