"""``llmeff griffin``: generate with GRIFFIN FF expert selection, or measure flocking, on a local model."""
from __future__ import annotations

import argparse
import json

from ..loading import LM_HELP


def _load(args):
    import torch

    from ..loading import load_model, load_tokenizer, model_dir

    model_dir(args.lm)  # a clear local error before importing/initialising anything heavy
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tok = load_tokenizer(args.lm)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = load_model(args.lm, dev)
    return tok, model, dev


def _run(args) -> int:
    import torch

    from ..griffin import apply, flocking

    tok, model, dev = _load(args)
    prompts = args.prompt or ["def main(argv):\n    "]
    enc = tok(prompts, return_tensors="pt", padding=True).to(dev)
    result = {"density": args.density, "selection": args.selection, "completions": []}
    with torch.no_grad():
        if args.flocking:
            gen = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            am = torch.cat([enc["attention_mask"], torch.ones_like(gen[:, enc["input_ids"].shape[1]:])], 1)
            st = flocking(model, gen, enc["input_ids"].shape[1], args.density, attention_mask=am)
            result["flocking"] = {k: st[k] for k in ("overlap", "mass", "chance")}
        ctx = apply(model, density=args.density, selection=args.selection, seed=args.seed,
                    batch_experts=args.batch_experts) if args.density < 1 else None
        try:
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        finally:
            if ctx is not None:
                ctx.detach()
    for row in out[:, enc["input_ids"].shape[1]:]:
        result["completions"].append(tok.decode(row, skip_special_tokens=True))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if "flocking" in result:
            f = result["flocking"]
            print(f"flocking: prompt/continuation top-k overlap {f['overlap']:.3f} (chance {f['chance']:.2f}), "
                  f"continuation mass on prompt experts {f['mass']:.3f}")
        for p, c in zip(prompts, result["completions"]):
            print(f"--- {p!r}\n{c}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "griffin", help="generate with GRIFFIN FF expert selection (training-free)",
        description="Generate with GRIFFIN: the prompt's FF activations pick, per sequence, the FF neurons "
        "kept for every generated token. The model folder is read locally (local_files_only=True): nothing is "
        "downloaded.")
    p.add_argument("--lm", required=True, help=LM_HELP)
    p.add_argument("--prompt", action="append", help="prompt (repeat for a batch; left-padded)")
    p.add_argument("--density", type=float, default=0.5, help="fraction of FF neurons kept (0, 1]")
    p.add_argument("--selection", choices=["griffin", "magnitude", "random", "sample"], default="griffin")
    p.add_argument("--batch-experts", choices=["per_sequence", "shared"], default="per_sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--flocking", action="store_true", help="also measure flocking on the dense continuation")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
