"""Caprese on the trained small LM: dense vs GRIFFIN 50% vs GRIFFIN 50% + low-rank branch (CPU or GPU).

1. Distillation data: prompts from training-side text (this machine's stdlib files outside the held-out
   split), continuations sampled from the dense model (temperature 0.8).
2. Branches: rank from ``--extra-frac`` (1% of the parameters), trained with the local FF objective
   (:func:`llmeff.caprese.train`), original weights frozen; saved to ``--save`` (safetensors + JSON).
3. Held-out quality (this machine's held-out stdlib files, :func:`llmeff.caprese.local_heldout_tokens`):
   windows of ``prompt + continuation``; the true continuation teacher-forced as one decode forward after the
   prompt's prefill: perplexity, next-token agreement with the dense model's argmax, and the local FF loss.
4. Latency: greedy decode ms/token at batch 1 with GRIFFIN and with GRIFFIN + branch.

    python benchmarks/caprese.py --lm /path/lm                  # CPU (2 cores): ~6-10 minutes
    python benchmarks/caprese.py --smoke                        # tiny random Llama, seconds
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import Table, results_dir  # noqa: E402

from llmeff import caprese, griffin  # noqa: E402


@torch.no_grad()
def teacher_forced(model, prompt, cont, branches=None, density=None):
    kw = caprese._cache_kw(model)
    gh = griffin.apply(model, density=density) if density else None
    cap = caprese.apply(model, branches, griffin=gh) if branches is not None else None
    try:
        out = model(input_ids=prompt, use_cache=True)
        lg = model(input_ids=cont, use_cache=True, **{kw: caprese._cache_of(out)}).logits
    finally:
        if cap is not None:
            cap.detach()
        if gh is not None:
            gh.detach()
    return torch.cat([out.logits[:, -1:], lg[:, :-1]], 1).float()


@torch.no_grad()
def decode_ms(model, prompt, new, branches=None, density=None, repeat=3):
    kw = caprese._cache_kw(model)
    times = []
    for _ in range(repeat):
        gh = griffin.apply(model, density=density) if density else None
        cap = caprese.apply(model, branches, griffin=gh) if branches is not None else None
        try:
            out = model(input_ids=prompt, use_cache=True)
            cache = caprese._cache_of(out)
            tok = out.logits[:, -1:].argmax(-1)
            if prompt.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(new):
                o = model(input_ids=tok, use_cache=True, **{kw: cache})
                tok = o.logits[:, -1:].argmax(-1)
            if prompt.is_cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) / new * 1e3)
        finally:
            if cap is not None:
                cap.detach()
            if gh is not None:
                gh.detach()
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lm", default=None)
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--extra-frac", type=float, default=0.01)
    ap.add_argument("--n-train", type=int, default=48, help="generated distillation sequences")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--kl-weight", type=float, default=0.0)
    ap.add_argument("--q-n", type=int, default=16)
    ap.add_argument("--q-cont", type=int, default=32)
    ap.add_argument("--decode-new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save", default=None, help="folder for the trained branches (safetensors + JSON)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    t_all = time.time()
    if args.smoke:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from _tiny_lms import tiny_lm

        model = tiny_lm("llama").to(device)
        rng = np.random.default_rng(0)
        held = rng.integers(3, 101, 5000)
        cal = rng.integers(3, 101, 5000)
        args.n_train, args.prompt, args.gen, args.steps, args.q_n, args.q_cont, args.decode_new = 8, 16, 8, 5, 4, 8, 4
    else:
        if not args.lm:
            ap.error("--lm is required (or --smoke)")
        from transformers import AutoModelForCausalLM

        from tp_lowbit import calibration_tokens

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.lm, dtype=dtype).to(device).eval()
        held = caprese.local_heldout_tokens(args.lm).astype(np.int64)
        cal = calibration_tokens(args.lm, args.n_train * args.prompt * 3).astype(np.int64)
    P = args.prompt
    step = max(P, (len(cal) - P) // args.n_train)
    prompts = torch.from_numpy(np.stack([cal[i * step:i * step + P] for i in range(args.n_train)])).to(device)
    t0 = time.time()
    seqs = caprese.generate_distillation_data(model, prompts, new_tokens=args.gen, seed=0)
    t_gen = time.time() - t0
    print(f"[caprese] generated {tuple(seqs.shape)} distillation tokens in {t_gen:.0f}s", flush=True)
    branches = caprese.make_branches(model, extra_frac=args.extra_frac)
    n_model = sum(p.numel() for p in model.parameters())
    print(f"[caprese] rank {branches[0].rank}: {caprese.n_params(branches)} params "
          f"({100 * caprese.n_params(branches) / n_model:.2f}% of {n_model})", flush=True)
    rec = caprese.train(model, branches, seqs, P, density=args.density, steps=args.steps, batch=args.batch,
                        lr=args.lr, kl_weight=args.kl_weight, log=lambda m: print("[caprese] " + m, flush=True))
    print(f"[caprese] trained in {rec['seconds']:.0f}s", flush=True)
    if args.save:
        caprese.save(branches, args.save, meta={"lm": args.lm, "density": args.density, "selection": "griffin",
                                                "steps": args.steps, "lr": args.lr, "n_train": args.n_train,
                                                "prompt": P, "gen": args.gen, "loss_first": rec["loss"][0],
                                                "loss_last": rec["loss"][-1], "train_seconds": rec["seconds"]})
    # held-out evaluation
    L = P + args.q_cont
    stp = (len(held) - L) // args.q_n
    win = torch.from_numpy(np.stack([held[i * stp:i * stp + L] for i in range(args.q_n)])).to(device)
    pr, co = win[:, :P], win[:, P:]
    nll = lambda lg: torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), co.reshape(-1)).item()  # noqa: E731
    dense = teacher_forced(model, pr, co)
    dense_arg = dense.argmax(-1)
    rows = []
    for label, br, dens in (("dense", None, None), (f"GRIFFIN {args.density:.0%}", None, args.density),
                            (f"GRIFFIN {args.density:.0%} + branch", branches, args.density)):
        lg = dense if dens is None else teacher_forced(model, pr, co, br, dens)
        ll = float("nan") if dens is None else caprese.local_loss(model, br, win, P, density=dens)
        ms = decode_ms(model, pr[:1], args.decode_new, br, dens)
        rows.append([label, math.exp(nll(lg)), (lg.argmax(-1) == dense_arg).float().mean().item(), ll, ms])
        print(f"[caprese] {label}: ppl {rows[-1][1]:.3f} agreement {rows[-1][2]:.3f} local loss {ll:.4f} "
              f"decode {ms:.2f} ms/token", flush=True)
    table = Table(f"Caprese on the trained small LM ({'smoke' if args.smoke else device.type}; held-out, "
                  f"rank {branches[0].rank}, {100 * caprese.n_params(branches) / n_model:.2f}% extra params)",
                  ["model", "held-out ppl", "next-token agreement w/ dense", "FF rel. sq. error (held-out)",
                   "decode ms/token (batch 1)"])
    for r in rows:
        table.add(r)
    table.print()
    sec = round(time.time() - t_all, 1)
    out = Path(args.out) if args.out else results_dir() / ("caprese_smoke.json" if args.smoke else "caprese.json")
    table.write_json(out, extra={"markdown": [table.markdown()], "args": vars(args), "seconds": sec,
                                 "train_loss": rec["loss"], "train_seconds": rec["seconds"], "gen_seconds": t_gen,
                                 "rank": branches[0].rank, "branch_params": caprese.n_params(branches),
                                 "model_params": n_model})
    print(f"\nwrote {out} ({sec} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
