"""``llmeff train_lm``: train the small Llama-architecture LM of :mod:`llmeff.lm.train_small_lm`."""
from __future__ import annotations

import argparse


def _run(args) -> int:
    from ..lm.train_small_lm import main

    argv = ["--out", args.out, "--minutes", str(args.minutes)]
    if args.smoke:
        argv.append("--smoke")
    extra = [a for a in (args.extra or []) if a != "--"]
    return main(argv + extra)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train_lm", help="train a small Llama LM from scratch on offline text (stdlib sources, man pages)",
        description="Train a ~28 M-parameter Llama-architecture causal LM and its byte-level BPE tokenizer on "
        "text found offline (Python sources, man pages); see `python -m llmeff.lm.train_small_lm --help` "
        "for every option (pass them after `--`).")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--minutes", type=float, default=6.0, help="total wall-clock budget")
    p.add_argument("--smoke", action="store_true", help="a tiny CPU run of the whole path")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more options for train_small_lm (after --)")
    p.set_defaults(func=_run)
