"""Bridge (llmeff.bridge) vs independent sampling: SFT start, RLVR-independent, RLVR-Bridge at equal steps.

Training job (``--mode train``, one wall-clock budget ``--budget-s`` for everything, results written after
every phase so a cut-off run still leaves them):

1. SFT: a small Llama (``llmeff.lm.train_small_lm.make_model``, character vocabulary of
   :mod:`llmeff.bridge.tasks`) on the task mix (3-digit addition; even numbers as sums of two primes),
   until ``--sft-s`` seconds pass or sampled accuracy reaches ``--sft-stop-acc`` (room left for RL).
2. RLVR (GRPO, group size ``--n-train`` = 4) from that same start, arms **interleaved step by step** so
   every arm gets exactly the same number of steps and the same problems per step:
   ``indep`` (independent generations, all base weights trained), ``bridge`` (Bridge blocks added, base
   weights and blocks trained), ``bridge_frozen`` (Bridge blocks only, base frozen: the library default),
   ``selfonly_frozen`` (the same blocks, base frozen, but every sample attends only to itself: the
   parameter-matched control without interaction). Learning rates: ``--rl-lr`` for base weights (both
   full-model arms), ``--rl-lr * --bridge-lr-mult`` for Bridge blocks.
3. Held-out evaluation (problems never trained on) at widths ``N = 1, 2, 4, 8, 16``: accuracy, consistency,
   pass@N, majority vote, coverage of distinct correct answers (the prime-sum problems have several).

Timing job (``--mode timing``, must run alone on the GPU): decode ms per step (one token for each of the
``P x N`` sequences) with and without Bridge blocks, same sampling loop, bf16 autocast, at the benchmark's
model size and at a larger one.

    python benchmarks/bridge.py --mode train --device cuda --budget-s 290 --out $JOB_OUT
    python benchmarks/bridge.py --mode timing --device cuda --out $JOB_OUT
    python benchmarks/bridge.py --mode train --smoke            # CPU, tiny sizes, same code path
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import Table, environment, results_dir, time_call  # noqa: E402

from llmeff import bridge  # noqa: E402
from llmeff.bridge import rl, tasks  # noqa: E402
from llmeff.lm.train_small_lm import make_model  # noqa: E402

METRICS = ("accuracy", "consistency", "pass_at_n", "majority", "coverage", "accuracy_add", "accuracy_psum")


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def build_model(args, device):
    torch.manual_seed(args.seed)
    m = make_model(tasks.VOCAB, args.hidden, args.layers, args.heads, args.ff, 64)
    return m.to(device)


@torch.no_grad()
def bridge_diagnostics(model, br, tok, problems, n: int, seed: int = 0) -> dict:
    """How much the trained Bridge does, on ``n``-sample sets for ``problems``:
    ``update_ratio``: per block, ||Bridge update|| / ||hidden state|| over real tokens;
    ``kl_group_vs_alone``: mean KL(p(token | its group) || p(token | the sample alone, n=1)) over response tokens,
    i.e. how much a sample's next-token distribution depends on the other samples."""
    ratios = {k: [] for k in br.blocks}

    def mk(k):
        def hook(mod, args, out):
            h, valid = args[0], args[2] if len(args) > 2 else None
            w = valid[..., None].float() if valid is not None else 1.0
            ratios[k].append(((out.float() * w).norm() / (h.float() * w).norm().clamp_min(1e-12)).item())
        return hook

    hs = [b.register_forward_hook(mk(k)) for k, b in br.blocks.items()]
    dev = next(model.parameters()).device
    ids, am = tok.batch_prompts([p.prompt for p in problems], dev)
    try:
        o = bridge.generate(model, ids, n=n, attention_mask=am, max_new_tokens=tasks.MAX_ANSWER,
                            eos_token_id=tasks.EOS, pad_token_id=tasks.PAD, seed=seed)
    finally:
        for h in hs:
            h.remove()
    seq, mask, L = o.sequences[:, :-1], o.attention_mask[:, :-1], o.prompt_len
    with bridge.groups(model, n):
        lg = rl.answer_logits(model, seq, mask)[:, L - 1:]
    with bridge.groups(model, 1):
        la = rl.answer_logits(model, seq, mask)[:, L - 1:]
    lpg, lpa = torch.log_softmax(lg, -1), torch.log_softmax(la, -1)
    kl = (lpg.exp() * (lpg - lpa)).sum(-1)
    rm = o.response_mask.float()
    return {"update_ratio": {k: float(np.mean(v)) for k, v in ratios.items()},
            "kl_group_vs_alone": float((kl * rm).sum() / rm.sum()), "n": n}


def train_mode(args, device, out: Path) -> int:
    t_start = time.time()
    deadline = t_start + args.budget_s
    log = lambda m: print(f"[{time.time() - t_start:6.1f}s] {m}", flush=True)  # noqa: E731
    res: dict = {"environment": environment(), "args": vars(args), "device": str(device)}
    jpath = out / "bridge_train.json"
    tok = tasks.CharTokenizer()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    # 1. SFT -----------------------------------------------------------------------------------------------
    model = build_model(args, device)
    n_base = sum(p.numel() for p in model.parameters())
    log(f"model: Llama {args.layers}x{args.hidden} ff {args.ff}, {n_base / 1e6:.2f} M parameters")
    ck = Path(args.sft_ckpt) if args.sft_ckpt else None
    if ck is not None and ck.is_file():                   # a saved SFT start (tuning the RL phase on CPU)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(ck)), strict=False)
        model.tie_weights()
        rec = json.loads(ck.with_suffix(".json").read_text())
        log(f"SFT start loaded from {ck}")
    else:
        sft_s = min(args.sft_s, max(1.0, deadline - time.time() - args.rl_min_s - args.eval_reserve_s))
        rec = rl.sft(model, tok, seconds=sft_s, max_steps=args.sft_steps, batch=args.sft_batch, lr=args.sft_lr,
                     seed=args.seed, stop_acc=args.sft_stop_acc, check_every=args.sft_check_every, log=log)
        if ck is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                       if k != "lm_head.weight"}, str(ck))
            ck.with_suffix(".json").write_text(json.dumps(rec))
    log(f"SFT: {rec['steps']} steps in {rec['seconds']} s, final loss {rec['final_loss']}, checks {rec['checks']}")
    res["sft"] = rec
    res["base_params"] = n_base
    _write(jpath, res)

    # 2. RLVR arms, interleaved ---------------------------------------------------------------------------
    arms = {}
    for name in args.arms.split(","):
        m = copy.deepcopy(model)
        br = None
        if name in ("bridge", "bridge_frozen", "selfonly_frozen"):
            br = bridge.add_blocks(m, rank=args.bridge_rank, heads=args.bridge_heads, extra_frac=args.extra_frac,
                                   freeze_base=name.endswith("_frozen"), seed=args.seed)
            if name == "selfonly_frozen":
                br.group_override = 1        # same blocks, each sample attends only to itself: no interaction
            groups = [{"params": [p for p in br.parameters()], "lr": args.rl_lr * args.bridge_lr_mult}]
            if name == "bridge":
                groups.append({"params": [p for p in m.parameters()], "lr": args.rl_lr})
        elif name == "indep":
            groups = [{"params": [p for p in m.parameters()], "lr": args.rl_lr}]
        else:
            raise SystemExit(f"unknown arm {name!r} (indep, bridge, bridge_frozen, selfonly_frozen)")
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.99), weight_decay=0.0)
        base_before = {k: v.detach().clone() for k, v in m.state_dict().items()} if name.endswith("_frozen") else None
        arms[name] = {"model": m, "bridge": br, "opt": opt, "params": params, "hist": [], "base_before": base_before}
        if br is not None:
            res.setdefault("bridge", {})[name] = {"rank": next(iter(br.blocks.values())).rank,
                                                  "heads": args.bridge_heads, "layers": br.layers,
                                                  "params": br.n_params(), "share": br.share()}
    rl_deadline = deadline - args.eval_reserve_s
    rng = np.random.default_rng(args.seed + 1)
    step, t_rl = 0, time.time()
    arm_time = {k: 0.0 for k in arms}
    while time.time() < rl_deadline and step < args.rl_steps:
        probs = tasks.sample_problems(args.rl_prompts, rng)
        for name, a in arms.items():
            t0 = time.time()
            st = rl.grpo_step(a["model"], a["opt"], a["params"], tok, probs, n=args.n_train,
                              temperature=args.temperature, seed=args.seed * 100003 + step)
            if device.type == "cuda":
                torch.cuda.synchronize()
            arm_time[name] += time.time() - t0
            a["hist"].append(st)
        step += 1
        if step % args.log_every == 0 or step == 1:
            w = min(args.log_every, step)
            log(f"RL step {step}: " + "; ".join(
                f"{k} reward {np.mean([h['reward'] for h in a['hist'][-w:]]):.3f}" for k, a in arms.items()))
    log(f"RL: {step} steps per arm in {time.time() - t_rl:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in arm_time.items())})")
    res["rl"] = {"steps": step, "prompts_per_step": args.rl_prompts, "n_train": args.n_train, "lr": args.rl_lr,
                 "bridge_lr_mult": args.bridge_lr_mult, "seconds_per_arm": arm_time,
                 "reward_curve": {k: [round(float(np.mean([h["reward"] for h in a["hist"][i:i + 25]])), 4)
                                      for i in range(0, len(a["hist"]), 25)] for k, a in arms.items()},
                 "mixed_groups": {k: float(np.mean([h["mixed"] for h in a["hist"]])) if a["hist"] else None
                                  for k, a in arms.items()}}
    for name, a in arms.items():
        if a["base_before"] is not None:
            same = all(torch.equal(v, a["base_before"][k]) for k, v in a["model"].state_dict().items())
            res["rl"][f"{name}_base_bit_identical"] = same
            log(f"{name}: base weights bit-identical after RL: {same}")
    diag_probs = tasks.heldout_problems(64, 32)
    for name, a in arms.items():
        if a["bridge"] is not None and a["bridge"].group_override is None:
            d = bridge_diagnostics(a["model"], a["bridge"], tok, diag_probs, args.n_train, seed=args.seed)
            res["bridge"][name]["diagnostics"] = d
            log(f"{name}: Bridge update / hidden norm per block "
                f"{ {k: round(v, 4) for k, v in d['update_ratio'].items()} }, "
                f"KL(group || alone) per response token {d['kl_group_vs_alone']:.4f} nats")
    _write(jpath, res)

    # 3. held-out evaluation ------------------------------------------------------------------------------
    problems = tasks.heldout_problems(args.eval_single, None if args.eval_psum < 0 else args.eval_psum)
    widths = tuple(int(w) for w in args.widths.split(","))
    models = [("SFT start", model)] + [(f"RLVR-{k}", a["model"]) for k, a in arms.items()]
    if "bridge" in arms:
        models.append(("RLVR-bridge, blocks off", arms["bridge"]))
    ev: dict = {}
    table = Table(f"held-out: {sum(p.kind == 'add' for p in problems)} add + {sum(p.kind == 'psum' for p in problems)} "
                  f"psum problems, temperature {args.temperature}, RL steps {step}",
                  ["model", "N", *METRICS])
    log(f"evaluating {len(problems)} held-out problems at N = {widths}")
    for label, m in models:
        if time.time() > deadline - 2:
            log(f"budget reached: {label} not evaluated")
            break
        ev[label] = {}
        for N in widths:
            if time.time() > deadline - 2:
                log(f"budget reached: {label} N={N} not evaluated")
                break
            if isinstance(m, dict):                       # the bridge arm's model with its blocks disabled
                with m["bridge"].disabled():
                    r = rl.evaluate(m["model"], tok, problems, (N,), args.temperature, seed=args.seed + 5,
                                    log=None)[N]
            else:
                r = rl.evaluate(m, tok, problems, (N,), args.temperature, seed=args.seed + 5, log=None)[N]
            ev[label][N] = r
            table.add([label, N, *[r.get(k, float("nan")) for k in METRICS]])
        res["eval"] = ev
        _write(jpath, res)
    table.print()
    res["eval_table"] = table.as_records()
    # in-distribution check: training-side problems (what RL optimised), a fixed sample
    train_probs = tasks.sample_problems(args.eval_train, np.random.default_rng(args.seed + 4242))
    t2 = Table(f"training-side problems ({len(train_probs)}), temperature {args.temperature}",
               ["model", "N", "accuracy", "consistency", "pass_at_n", "majority"])
    res["eval_train"] = {}
    for label, m in models:
        for N in (1, args.n_train):
            if time.time() > deadline - 1 or not train_probs:
                break
            if isinstance(m, dict):
                with m["bridge"].disabled():
                    r = rl.evaluate(m["model"], tok, train_probs, (N,), args.temperature, seed=args.seed + 6,
                                    log=None)[N]
            else:
                r = rl.evaluate(m, tok, train_probs, (N,), args.temperature, seed=args.seed + 6, log=None)[N]
            res["eval_train"].setdefault(label, {})[N] = r
            t2.add([label, N, r["accuracy"], r["consistency"], r["pass_at_n"], r["majority"]])
    t2.print()
    res["total_seconds"] = round(time.time() - t_start, 1)
    _write(jpath, res)
    if "bridge" in res:
        for k, v in res["bridge"].items():
            print(f"{k}: {v['params']} Bridge parameters = {100 * v['share']:.2f} % of the base model "
                  f"({n_base}); rank {v['rank']}, heads {v['heads']}, after layers {v['layers']}")
    print(f"results: {jpath} (total {res['total_seconds']} s)")
    return 0


def timing_mode(args, device, out: Path) -> int:
    res: dict = {"environment": environment(), "args": vars(args), "device": str(device), "rows": []}
    jpath = out / "bridge_timing.json"
    sizes = [("benchmark model", args.hidden, args.layers, args.heads, args.ff)]
    if not args.smoke:
        sizes.append(("1024x8 model", 1024, 8, 16, 2816))
    table = Table("decode cost per step (one new token for each of the P x N sequences), same sampling loop",
                  ["model", "params (M)", "P", "N", "independent ms/step", "Bridge ms/step", "Bridge/indep",
                   "Bridge share %"])
    t_end = time.time() + args.budget_s
    for label, h, L, H, ff in sizes:
        torch.manual_seed(0)
        m = make_model(tasks.VOCAB, h, L, H, ff, 64).to(device).eval()
        br = bridge.add_blocks(m, heads=4, extra_frac=args.extra_frac)
        with torch.no_grad():
            for b in br.blocks.values():
                b.o.normal_(0, 0.02)
        nparam = sum(p.numel() for p in m.parameters()) / 1e6
        for P, N in [(1, 4), (1, 16), (64, 4), (64, 16)]:
            if time.time() > t_end:
                break
            prompts = torch.randint(3, tasks.VOCAB, (P, 8), device=device)
            gen = lambda: bridge.generate(m, prompts, n=N, max_new_tokens=args.timing_tokens, seed=0)  # noqa: E731
            with br.disabled():
                ti = time_call(gen, warmup=2, repeat=args.timing_repeat)
            tb = time_call(gen, warmup=2, repeat=args.timing_repeat)
            mi, mb = ti.median / args.timing_tokens * 1e3, tb.median / args.timing_tokens * 1e3
            table.add([label, round(nparam, 2), P, N, mi, mb, mb / mi, 100 * br.share()])
            res["rows"] = table.as_records()
            _write(jpath, res)
        br.remove()
        del m
    table.print()
    print(f"(ms/step include the prompt's prefill spread over {args.timing_tokens} tokens; bf16 autocast on CUDA)")
    _write(jpath, res)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["train", "timing"], default="train")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="output folder (default: $JOB_OUT, else benchmarks/results)")
    ap.add_argument("--budget-s", type=float, default=290.0, help="wall-clock budget of the whole job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=688)
    ap.add_argument("--sft-s", type=float, default=70.0)
    ap.add_argument("--sft-steps", type=int, default=None)
    ap.add_argument("--sft-batch", type=int, default=512)
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--sft-stop-acc", type=float, default=0.5)
    ap.add_argument("--sft-check-every", type=int, default=100)
    ap.add_argument("--sft-ckpt", default=None, help="load the SFT start from this .safetensors if it exists, "
                    "else save it there after SFT")
    ap.add_argument("--arms", default="indep,bridge,bridge_frozen,selfonly_frozen")
    ap.add_argument("--rl-steps", type=int, default=100000)
    ap.add_argument("--rl-min-s", type=float, default=120.0, help="seconds kept for RL when sizing SFT")
    ap.add_argument("--rl-prompts", type=int, default=64)
    ap.add_argument("--n-train", type=int, default=4)
    ap.add_argument("--rl-lr", type=float, default=3e-5, help="base weights (3e-4 collapsed the full-model arms "
                    "on the H100 run of 2026-12-07)")
    ap.add_argument("--bridge-lr-mult", type=float, default=100.0, help="Bridge blocks: rl-lr x this (3e-3)")
    ap.add_argument("--bridge-rank", type=int, default=None)
    ap.add_argument("--bridge-heads", type=int, default=4)
    ap.add_argument("--extra-frac", type=float, default=0.04)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--eval-reserve-s", type=float, default=45.0)
    ap.add_argument("--eval-single", type=int, default=512, help="held-out addition problems")
    ap.add_argument("--eval-psum", type=int, default=-1, help="-1: all held-out prime-sum problems")
    ap.add_argument("--widths", default="1,2,4,8,16")
    ap.add_argument("--eval-train", type=int, default=512, help="training-side problems evaluated at N=1 and n_train")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--timing-tokens", type=int, default=32)
    ap.add_argument("--timing-repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check of the same code path)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.hidden, args.layers, args.heads, args.ff = 32, 2, 2, 64
        args.sft_steps, args.sft_batch, args.sft_check_every = 30, 32, 15
        args.rl_steps, args.rl_prompts, args.eval_single, args.eval_psum, args.eval_train = 3, 4, 6, 4, 8
        args.widths, args.timing_tokens, args.timing_repeat = "1,2,4", 4, 2
        args.budget_s = min(args.budget_s, 120.0)
        args.rl_min_s, args.eval_reserve_s = 5.0, 30.0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out or os.environ.get("JOB_OUT") or results_dir())
    out.mkdir(parents=True, exist_ok=True)
    return train_mode(args, device, out) if args.mode == "train" else timing_mode(args, device, out)


if __name__ == "__main__":
    sys.exit(main())
