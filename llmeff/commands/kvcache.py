"""``llmeff kvcache``: generate with a compressed KV cache, or train LESS maps."""
from __future__ import annotations

import argparse
import json

from ..loading import LM_HELP


def policy_from_args(args, model=None):
    """Build the policy named by ``--policy`` (full, streaming, h2o, less, shadowkv)."""
    from ..kvcache import H2O, LESS, FullCache, ShadowKV, StreamingLLM

    name = args.policy
    if name == "full":
        return FullCache()
    if name == "streaming":
        return StreamingLLM.with_budget(args.budget, sink=args.sink)
    if name == "h2o":
        return H2O(args.budget, recent=args.recent)
    if name == "shadowkv":
        return ShadowKV(budget=args.budget, rank=args.rank, chunk=args.chunk, local_window=args.local_window,
                        outlier_chunks=args.outlier_chunks)
    if name == "less":
        if not args.less:
            from ..errors import LLMEffValueError

            raise LLMEffValueError("--policy less needs --less DIR (maps saved by `llmeff kvcache train-less`)")
        return LESS.load(args.less)
    raise ValueError(name)


def add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", choices=["full", "streaming", "h2o", "less", "shadowkv"], default="h2o")
    p.add_argument("--budget", type=int, default=256, help="tokens kept (eviction) / selected (ShadowKV) per head")
    p.add_argument("--sink", type=int, default=4, help="StreamingLLM attention sinks")
    p.add_argument("--recent", type=int, default=None, help="H2O recent window (default budget/2)")
    p.add_argument("--less", default=None, help="LESS maps folder (its eviction policy comes with it)")
    p.add_argument("--rank", type=int, default=160, help="ShadowKV key rank")
    p.add_argument("--chunk", type=int, default=8, help="ShadowKV chunk size")
    p.add_argument("--local-window", type=int, default=32, help="ShadowKV exact local window")
    p.add_argument("--outlier-chunks", type=int, default=48, help="ShadowKV exact outlier chunks")


def _generate(args) -> int:
    import torch

    from ..kvcache import apply
    from ..loading import load_model, load_tokenizer, model_dir

    model_dir(args.lm)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = load_tokenizer(args.lm)
    model = load_model(args.lm, dev)
    policy = policy_from_args(args, model)
    enc = tok(args.prompt, return_tensors="pt").to(dev)
    with torch.no_grad(), apply(model, policy):
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"policy": policy.describe(), "completion": text}, indent=2) if args.json else text)
    return 0


def _train_less(args) -> int:
    from ..kvcache import train_less

    return train_less.run(args)


def register(subparsers) -> None:
    p = subparsers.add_parser("kvcache", help="KV-cache compression: StreamingLLM, H2O, LESS, ShadowKV",
                              description="Generate with a compressed KV cache, or train LESS maps. Models are read from local "
                              "folders only (local_files_only=True): nothing is downloaded.")
    sub = p.add_subparsers(dest="kv_command", metavar="ACTION")
    g = sub.add_parser("generate", help="greedy generation from a prompt under a cache policy")
    g.add_argument("--lm", required=True, help=LM_HELP)
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--device", default=None)
    g.add_argument("--json", action="store_true", help="print a JSON record")
    add_policy_args(g)
    g.set_defaults(func=_generate)
    from ..kvcache.train_less import build_parser

    t = sub.add_parser("train-less", help="train LESS maps for a model (frozen) and an eviction policy")
    build_parser(t)
    t.set_defaults(func=_train_less)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])
