"""STEM benchmark: dense vs STEM small LMs (quality, cost, angular spread), knowledge editing, decode speed.

Parts (each writes ``stem_<part>.json`` under ``--out`` and prints its table):

``quality``  Models trained by ``python -m llmeff.lm.train_small_lm`` on the same data folder (``--data``),
           tokenizer, steps and seed: ``--dense`` (d, L, ff), ``--stem`` (same d, L, ff: FLOP-matched up to
           the third of FF FLOPs STEM drops), ``--wide`` (dense with the FF width that matches STEM's total
           parameter count: parameter-matched). Held-out perplexity on the same windows of the held-out
           stream; FF FLOPs and weight bytes read per token (batch-1 decode); total and per-token-active
           parameters; angular spread (mean pairwise cosine) of the STEM table rows (tokens present in the
           held-out sample) vs the dense up projection: its outputs ``W_up h_t`` on held-out tokens (the
           vectors a STEM row replaces) and its weight rows.
``edit``     A tiny STEM LM (word-level vocabulary, one token per entity) trained on a few hundred synthetic
           facts "the capital of X is Y ." (two templates). Edits: swap the STEM rows of two countries X1,
           X2 (all layers, or one layer) and check that "the capital of X1 is" now completes with Y2 and X2
           with Y1; copy X2's rows into X1. Success rate over many random pairs; unrelated facts' accuracy
           before and after; controls: swapping the input-embedding rows only.
``speed``    Decode tokens/s at batch 1 (HF ``generate``, greedy, eager, DynamicCache): the STEM model with
           tables on the GPU (Triton fused gather, and the torch reference) vs tables offloaded to pinned
           CPU memory (:func:`llmeff.stem.offload`), plus the dense model of the same shape; random bf16
           weights of the trained small shape and of a ~1B shape. Must run alone on the GPU.

Commands (H100; see ``benchmarks/stem_jobs.sh`` for the exact training commands)::

    bash benchmarks/stem_jobs.sh train         # data, 3 LMs, quality + edit parts  (~5 min)
    bash benchmarks/stem_jobs.sh speed         # decode timing, alone on the GPU    (~1.5 min)
    SMOKE=1 bash benchmarks/stem_jobs.sh train # tiny CPU run of the same path
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import Table, environment, results_dir  # noqa: E402

from llmeff import stem  # noqa: E402


def _device(args) -> torch.device:
    return torch.device(args.device if args.device else ("cuda" if torch.cuda.is_available() else "cpu"))


def _dump(out: Path, name: str, payload: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    p = out / f"stem_{name}.json"
    payload = {"environment": environment(), **payload}
    p.write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {p}", flush=True)


# -- quality ----------------------------------------------------------------------------------------------
def _load_any(path, device, dtype):
    cfg = json.loads((Path(path) / "config.json").read_text())
    if cfg.get("stem"):
        model = stem.load(path, device=device, dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, cfg


@torch.no_grad()
def heldout_loss(model, held: np.ndarray, seq: int, n_windows: int, batch: int, device) -> tuple[float, int]:
    n = min(n_windows, (len(held) - 1) // seq)
    tot, cnt = 0.0, 0
    for s in range(0, n, batch):
        x = np.stack([held[i * seq:i * seq + seq + 1] for i in range(s, min(n, s + batch))]).astype(np.int64)
        xt = torch.from_numpy(x).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=xt[:, :-1]).logits
        tot += torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xt[:, 1:].reshape(-1),
                                                 reduction="sum").item()
        cnt += xt[:, 1:].numel()
    return tot / cnt, cnt


@torch.no_grad()
def _mlp_inputs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the FF block's input ``(N, d)`` on ``ids`` ``(B, S)``."""
    from llmeff.models import find_layers

    _, layers = find_layers(model)
    got = [None] * len(layers)

    def mk(i):
        def hook(mod, args, kwargs=None):
            got[i] = args[0].reshape(-1, args[0].shape[-1]).float()
        return hook

    hs = [layer.mlp.register_forward_pre_hook(mk(i)) for i, layer in enumerate(layers)]
    try:
        model(input_ids=ids)
    finally:
        for h in hs:
            h.remove()
    return got


@torch.no_grad()
def spread(models: dict, held: np.ndarray, device, max_rows: int, seq: int) -> dict:
    n_win = max(1, max_rows // seq + 1)
    ids = torch.from_numpy(np.stack([held[i * seq:(i + 1) * seq] for i in range(n_win)]).astype(np.int64)).to(device)
    toks = torch.unique(ids.reshape(-1)).cpu()
    out = {}
    for name, model in models.items():
        rows = []
        if stem.is_stem(model):
            for m in stem.stem_modules(model):
                s1 = stem.angular_spread(m.up_embed.weight.detach()[toks], max_rows=max_rows)
                rows.append({"layer": m.layer_idx, "what": "STEM table rows E[v] (held-out tokens)", **s1})
        else:
            from llmeff.models import find_mlps

            xs = _mlp_inputs(model, ids)
            for spec, x in zip(find_mlps(model), xs):
                u = torch.nn.functional.linear(x, spec.w_in().float())
                s1 = stem.angular_spread(u, max_rows=max_rows)
                s2 = stem.angular_spread(spec.w_in().float(), max_rows=max_rows)
                rows.append({"layer": spec.layer_idx, "what": "dense up-projection outputs W_up h_t (held-out)", **s1})
                rows.append({"layer": spec.layer_idx, "what": "dense up-projection weight rows", **s2})
        out[name] = rows
    return out


def _params(model) -> dict:
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    table = sum(m.up_embed.weight.numel() for m in stem.stem_modules(model))
    emb = model.get_input_embeddings().weight.numel()
    per_token_active = total - table - emb + sum(m.intermediate_size for m in stem.stem_modules(model))
    return {"total": total, "tables": table, "embedding": emb, "active_per_token": per_token_active}


def _convert_row(args, device, dtype, held, table, rec) -> None:
    if not args.dense or args.convert_windows <= 0:
        return
    # what converting a *trained* dense model means: rows = the dense up projection's mean output per token
    # over training windows (init="dense"), no further training
    train = np.load(Path(args.data) / "train_ids.npy", mmap_mode="r")
    step = max(args.seq, (len(train) - args.seq) // args.convert_windows)
    cal = torch.from_numpy(np.stack([np.asarray(train[i * step:i * step + args.seq], dtype=np.int64)
                                     for i in range(args.convert_windows)]))
    conv, cfg = _load_any(args.dense, device, torch.float32)
    stem.convert(conv, init="dense", calibration_ids=cal)
    conv.to(dtype)
    loss, n_tok = heldout_loss(conv, held, args.seq, args.windows, args.batch, device)
    d, L, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    cost = stem.ff_cost(d, ff, "stem", dtype_bytes=2)
    pr = _params(conv)
    table.add(["dense->stem (converted, untrained)", "stem", f"{d}x{L}", ff, pr["total"] / 1e6,
               pr["active_per_token"] / 1e6, 0.0, math.exp(loss), L * cost["flops"] / 1e6, L * cost["bytes"] / 1e6])
    rec["dense_converted"] = {"heldout_loss": loss, "heldout_ppl": math.exp(loss), "params": pr,
                              "calibration_tokens": int(cal.numel()),
                              "note": "convert(trained dense, init='dense'): table row = mean dense up-projection "
                                      "output over the calibration positions of that token; not fine-tuned"}
    print(f"[quality] dense converted to STEM without training: ppl {math.exp(loss):.3f}", flush=True)
    del conv


def part_quality(args, device) -> None:
    held = np.load(Path(args.data) / "heldout_ids.npy").astype(np.int64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    table = Table("STEM vs dense small LMs: held-out perplexity at equal tokens, FF cost per token",
                  ["model", "arch", "d x L", "ff", "params (M)", "active/token (M)", "train tokens (M)",
                   "held-out ppl", "FF MFLOP/token", "FF MB read/token"])
    rec, models = {}, {}
    for name, path in (("dense", args.dense), ("stem", args.stem), ("wide", args.wide)):
        if not path:
            continue
        model, cfg = _load_any(path, device, dtype)
        tr = cfg.get("llmeff_train", {})
        loss, n_tok = heldout_loss(model, held, args.seq, args.windows, args.batch, device)
        arch = "stem" if stem.is_stem(model) else "dense"
        d, L, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
        cost = stem.ff_cost(d, ff, arch, dtype_bytes=2)
        pr = _params(model)
        table.add([name, arch, f"{d}x{L}", ff, pr["total"] / 1e6, pr["active_per_token"] / 1e6,
                   tr.get("tokens", float("nan")) / 1e6, math.exp(loss), L * cost["flops"] / 1e6,
                   L * cost["bytes"] / 1e6])
        rec[name] = {"path": str(path), "arch": arch, "d_model": d, "layers": L, "ff": ff, "params": pr,
                     "heldout_loss": loss, "heldout_ppl": math.exp(loss), "heldout_tokens_scored": n_tok,
                     "ff_flops_per_token": L * cost["flops"], "ff_bytes_per_token": L * cost["bytes"],
                     "train": {k: tr.get(k) for k in ("steps", "tokens", "train_seconds", "tokens_per_second",
                                                      "heldout_loss", "cut_short", "seed", "command", "device")},
                     "loss_curve": tr.get("loss_curve")}
        models[name] = model
        print(f"[quality] {name}: ppl {math.exp(loss):.3f}", flush=True)
    dev_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    base = {"models": rec, "seq": args.seq, "windows": args.windows, "device": dev_name}
    _dump(Path(args.out), "quality", {**base, "table": table.rows})      # the measured rows first
    try:
        _convert_row(args, device, dtype, held, table, rec)
    except Exception as exc:                              # optional row: report, keep the rest
        import traceback

        traceback.print_exc()
        rec["dense_converted"] = {"error": f"{type(exc).__name__}: {exc}"}
    table.print()
    _dump(Path(args.out), "quality", {**base, "table": table.rows})
    sp = spread(models, held, device, args.spread_rows, args.seq)
    t2 = Table("Angular spread (mean over layers of pairwise cosine; lower abs cos = wider spread)",
               ["model", "vectors", "mean cos", "mean abs cos", "mean angle (deg)"])
    summary = {}
    for name, rows in sp.items():
        kinds = sorted({r["what"] for r in rows})
        for k in kinds:
            rr = [r for r in rows if r["what"] == k]
            vals = {m: float(np.mean([r[m] for r in rr])) for m in ("mean_cos", "mean_abs_cos", "mean_angle_deg")}
            summary[f"{name}: {k}"] = vals
            t2.add([name, k, vals["mean_cos"], vals["mean_abs_cos"], vals["mean_angle_deg"]])
    t2.print()
    _dump(Path(args.out), "quality", {**base, "table": table.rows, "spread_per_layer": sp,
                                      "spread_summary": summary})


# -- knowledge editing -----------------------------------------------------------------------------------
class Facts:
    """Synthetic word-level fact corpus: ``n`` countries, each with one capital (a bijection)."""

    WORDS = ["<pad>", "the", "capital", "of", "is", ".", "has", "its", "in", "city"]

    def __init__(self, n: int, seed: int = 0):
        rng = random.Random(seed)
        self.n = n
        self.vocab = list(self.WORDS) + [f"C{i}" for i in range(n)] + [f"K{i}" for i in range(n)]
        self.tid = {w: i for i, w in enumerate(self.vocab)}
        perm = list(range(n))
        rng.shuffle(perm)
        self.capital = {i: perm[i] for i in range(n)}

    def country(self, i: int) -> int:
        return self.tid[f"C{i}"]

    def city(self, j: int) -> int:
        return self.tid[f"K{j}"]

    def sentence(self, i: int, template: int) -> list[int]:
        t = self.tid
        c, k = self.country(i), self.city(self.capital[i])
        if template == 0:
            return [t["the"], t["capital"], t["of"], c, t["is"], k, t["."]]
        return [c, t["has"], t["its"], t["capital"], t["in"], t["city"], k, t["."]]

    def prompt(self, i: int) -> list[int]:
        return self.sentence(i, 0)[:5]                 # "the capital of X is" -> Y

    def batch(self, rng: np.random.Generator, B: int, L: int) -> torch.Tensor:
        out = np.zeros((B, L), dtype=np.int64)
        for b in range(B):
            seq: list[int] = []
            while len(seq) < L:
                seq += self.sentence(int(rng.integers(self.n)), int(rng.integers(2)))
            out[b] = seq[:L]
        return torch.from_numpy(out)


@torch.no_grad()
def _answers(model, facts: Facts, which: list[int], device) -> torch.Tensor:
    ids = torch.tensor([facts.prompt(i) for i in which], device=device)
    return model(input_ids=ids).logits[:, -1].argmax(-1).cpu()


def part_edit(args, device) -> None:
    from llmeff.lm.train_small_lm import make_model

    torch.manual_seed(args.seed)
    facts = Facts(args.facts, seed=args.seed)
    V = len(facts.vocab)
    if args.edit_load:                                   # a model saved by an earlier run (--edit-save)
        model = stem.load(args.edit_load, device=device)
        args.edit_steps = 0
    else:
        model = make_model(V, args.edit_hidden, args.edit_layers, 4, args.edit_ff, 64)
        stem.convert(model, seed=args.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.edit_lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    curve = []
    for step in range(args.edit_steps):
        lr = args.edit_lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.edit_steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        x = facts.batch(rng, args.edit_batch, 49).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.edit_steps - 1:
            curve.append((step, round(loss.item(), 4)))
            print(f"[edit] step {step}: loss {loss.item():.4f}", flush=True)
    train_s = time.time() - t0
    model.eval()
    if args.edit_save:
        stem.save_pretrained(model, args.edit_save, overwrite=True)
    everyone = list(range(facts.n))
    base = _answers(model, facts, everyone, device)
    truth = torch.tensor([facts.city(facts.capital[i]) for i in everyone])
    known = [i for i in everyone if base[i] == truth[i]]
    acc = len(known) / facts.n
    print(f"[edit] trained {args.edit_steps} steps in {train_s:.1f} s; fact accuracy {acc:.3f}", flush=True)
    prng = random.Random(args.seed + 1)
    pairs = []
    while len(pairs) < min(args.edits, len(known) // 2) and len(known) >= 2:
        a, b = prng.sample(known, 2)
        pairs.append((a, b))
    L = len(stem.stem_modules(model))
    configs = [("swap STEM rows, all layers", "swap", None)]
    configs += [(f"swap STEM rows, layer {l}", "swap", [l]) for l in range(L)]
    configs += [("copy X2's STEM rows into X1, all layers", "copy", None),
                ("control: swap input-embedding rows only", "swap_emb", None)]
    table = Table("Knowledge editing by STEM rows (tiny STEM LM, synthetic facts)",
                  ["edit", "success X1->Y2", "success X2->Y1", "both", "other facts unchanged", "edited rows"])
    res = []
    emb = model.get_input_embeddings().weight
    for label, kind, layers in configs:
        s12 = s21 = both = 0
        other_same = other_tot = 0
        for a, b in pairs:
            ca, cb = facts.country(a), facts.country(b)
            if kind == "swap":
                stem.swap_rows(model, ca, cb, layers)
            elif kind == "copy":
                saved = [m.up_embed.weight[ca].clone() for m in stem.stem_modules(model)]
                stem.copy_rows(model, cb, ca, layers)
            else:
                with torch.no_grad():
                    ea, eb = emb[ca].clone(), emb[cb].clone()
                    emb[ca].copy_(eb)
                    emb[cb].copy_(ea)
            others = [i for i in prng.sample(known, min(len(known), args.edit_others + 2)) if i not in (a, b)]
            ans = _answers(model, facts, [a, b] + others, device)
            ok12 = int(ans[0] == facts.city(facts.capital[b]))
            ok21 = int(ans[1] == facts.city(facts.capital[a])) if kind != "copy" else int(ans[1] == base[b])
            s12 += ok12
            s21 += ok21
            both += ok12 * ok21
            other_same += int((ans[2:] == base[others]).sum())
            other_tot += len(others)
            if kind == "swap":
                stem.swap_rows(model, ca, cb, layers)
            elif kind == "copy":
                with torch.no_grad():
                    for m, r in zip(stem.stem_modules(model), saved):
                        m.up_embed.weight[ca].copy_(r)
            else:
                with torch.no_grad():
                    emb[ca].copy_(ea)
                    emb[cb].copy_(eb)
        n = max(1, len(pairs))
        nrows = (2 if kind != "copy" else 1) * (L if layers is None else len(layers))
        row = {"edit": label, "success_x1": s12 / n, ("x2_unchanged" if kind == "copy" else "success_x2"): s21 / n,
               "both": both / n,
               "other_unchanged": other_same / max(1, other_tot), "rows_edited": nrows if kind != "swap_emb" else 0}
        res.append(row)
        table.add([label, row["success_x1"], row.get("success_x2", float("nan")), row["both"]
                   if kind != "copy" else float("nan"), row["other_unchanged"], row["rows_edited"]])
    # the model is back to its trained state: check
    assert torch.equal(_answers(model, facts, everyone, device), base)
    table.print()
    print("(copy: X2 itself is not edited; X2 kept its answer in "
          f"{[r.get('x2_unchanged') for r in res if 'x2_unchanged' in r][0]:.3f} of the pairs)", flush=True)
    _dump(Path(args.out), "edit", {"facts": facts.n, "vocab": V, "pairs": len(pairs), "fact_accuracy": acc,
                                   "train_steps": args.edit_steps, "train_seconds": train_s, "loss_curve": curve,
                                   "model": {"hidden": args.edit_hidden, "layers": L, "ff": args.edit_ff},
                                   "results": res,
                                   "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"})


# -- speed -----------------------------------------------------------------------------------------------
SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=4096),
    "1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=512),
}


def _random_model(shape: str, device, dtype, arch: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
        if arch == "stem":
            stem.convert(model)
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@torch.no_grad()
def _gen_time(model, prompt: torch.Tensor, new: int) -> float:
    sync = torch.cuda.synchronize if prompt.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                         min_new_tokens=new, do_sample=False)
    sync()
    return time.perf_counter() - t0, out


def decode_rate(model, prompt, new: int, repeat: int) -> tuple[float, torch.Tensor]:
    """Decode tokens/s: ``new`` tokens minus a 1-token generate (prefill), median of ``repeat``."""
    _gen_time(model, prompt, 4)                          # warm-up (kernels, allocator)
    pre, full, out = [], [], None
    for _ in range(repeat):
        pre.append(_gen_time(model, prompt, 1)[0])
        t_all, out = _gen_time(model, prompt, new + 1)
        full.append(t_all)
    return float(new / max(1e-9, np.median(full) - np.median(pre))), out


def part_speed(args, device) -> None:
    import os

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    table = Table(f"Decode tokens/s at batch 1 (generate, greedy, eager, prompt {args.prompt}, {args.new} new)",
                  ["shape", "model", "tables", "gather kernel", "tokens/s", "vs STEM on GPU", "same tokens",
                   "table GB", "FF MB read/token"])
    recs = []
    for shape in args.shapes:
        sh = SHAPES[shape]
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(3, sh["vocab_size"], (1, args.prompt), generator=g).to(device)
        dense = _random_model(shape, device, dtype, "dense")
        r_dense, _ = decode_rate(dense, prompt, args.new, args.repeat)
        del dense
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model = _random_model(shape, device, dtype, "stem")
        d, L, ff = sh["hidden_size"], sh["num_hidden_layers"], sh["intermediate_size"]
        tgb = sum(m.up_embed.weight.numel() * m.up_embed.weight.element_size() for m in stem.stem_modules(model)) / 1e9
        runs = []
        old = os.environ.get("EBSDTK_KERNEL_BACKEND")
        try:
            os.environ["EBSDTK_KERNEL_BACKEND"] = "torch"
            runs.append(("GPU" if device.type == "cuda" else "device", "torch", *decode_rate(model, prompt, args.new,
                                                                                            args.repeat)))
        finally:
            if old is None:
                os.environ.pop("EBSDTK_KERNEL_BACKEND", None)
            else:
                os.environ["EBSDTK_KERNEL_BACKEND"] = old
        auto = "triton" if device.type == "cuda" else "torch"
        runs.append(("GPU" if device.type == "cuda" else "device", auto, *decode_rate(model, prompt, args.new,
                                                                                     args.repeat)))
        with torch.no_grad():
            ref_logits = model(input_ids=prompt).logits
        modes = ["device", "host"] if device.type == "cuda" else ["host"]
        for mode in modes:
            try:
                off = stem.offload(model, mode=mode)
            except Exception as exc:                      # e.g. the device gather cannot read pinned memory here
                print(f"[speed] {shape}: offload mode {mode!r} unavailable: {type(exc).__name__}: {exc}", flush=True)
                recs.append({"shape": shape, "mode": mode, "error": f"{type(exc).__name__}: {exc}"})
                continue
            with off:
                with torch.no_grad():
                    bit_identical = bool(torch.equal(model(input_ids=prompt).logits, ref_logits))
                where = (f"pinned CPU ({off.mode} gather)" if device.type == "cuda" else "CPU (offload path)")
                runs.append((where, auto, *decode_rate(model, prompt, args.new, args.repeat)))
            print(f"[speed] {shape}: prefill logits with offloaded tables ({mode} gather) bit-identical to "
                  f"on-GPU: {bit_identical}", flush=True)
            recs.append({"shape": shape, "mode": mode, "offload_prefill_logits_bit_identical": bit_identical})
        ref_rate, ref_out = runs[1][2], runs[1][3]
        dc, sc = stem.ff_cost(d, ff, "dense"), stem.ff_cost(d, ff, "stem")
        table.add([shape, "dense", "-", "-", r_dense, r_dense / ref_rate, "-", 0.0, L * dc["bytes"] / 1e6])
        recs.append({"shape": shape, "model": "dense", "tokens_per_s": r_dense, "relative_to_stem_gpu": r_dense / ref_rate})
        for where, kern, rate, out in runs:
            same = bool(torch.equal(out, ref_out))
            table.add([shape, "stem", where, kern, rate, rate / ref_rate, same, tgb, L * sc["bytes"] / 1e6])
            recs.append({"shape": shape, "model": "stem", "tables": where, "kernel": kern, "tokens_per_s": rate,
                         "relative_to_stem_gpu": rate / ref_rate, "same_tokens": same, "table_gb": tgb})
            print(f"[speed] {shape} stem {where} {kern}: {rate:.1f} tok/s", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table.print()
    _dump(Path(args.out), "speed", {"rows": recs, "prompt": args.prompt, "new": args.new, "repeat": args.repeat,
                                    "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"})


def part_report(args, device) -> None:
    """Markdown tables from the stem_*.json files in ``--out`` (for benchmarks/RESULTS.md)."""
    out = Path(args.out)

    def md(cols, rows):
        f = lambda v: (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
        return "\n".join([f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)] +
                         [f"| {' | '.join(f(c) for c in r)} |" for r in rows])

    q = out / "stem_quality.json"
    if q.is_file():
        d = json.loads(q.read_text())
        print(md(["model", "arch", "d x L", "ff", "params (M)", "active/token (M)", "train tokens (M)",
                  "held-out ppl", "FF MFLOP/token", "FF MB read/token"], d["table"]))
        print()
        print(md(["model: vectors", "mean cos", "mean abs cos", "mean angle (deg)"],
                 [[k, v["mean_cos"], v["mean_abs_cos"], v["mean_angle_deg"]] for k, v in d["spread_summary"].items()]))
        print()
    e = out / "stem_edit.json"
    if e.is_file():
        d = json.loads(e.read_text())
        print(f"facts {d['facts']}, pairs {d['pairs']}, fact accuracy before edits {d['fact_accuracy']:.3f}, "
              f"trained in {d['train_seconds']:.1f} s")
        print(md(["edit", "X1 -> Y2", "X2 -> Y1 (copy: X2 unchanged)", "both", "other facts unchanged",
                  "rows edited"],
                 [[r["edit"], r["success_x1"], r.get("success_x2", r.get("x2_unchanged")), r["both"],
                   r["other_unchanged"], r["rows_edited"]] for r in d["results"]]))
        print()
    sp = out / "stem_speed.json"
    if sp.is_file():
        d = json.loads(sp.read_text())
        rows = [[r["shape"], r["model"], r.get("tables", "-"), r.get("kernel", "-"), r["tokens_per_s"],
                 r.get("relative_to_stem_gpu", float("nan"))] for r in d["rows"] if "tokens_per_s" in r]
        print(md(["shape", "model", "tables", "gather", "tokens/s", "vs STEM tables on GPU"], rows))
        for r in d["rows"]:
            if "offload_prefill_logits_bit_identical" in r:
                print(f"{r['shape']} ({r.get('mode', 'host')} gather): offloaded prefill logits bit-identical: "
                      f"{r['offload_prefill_logits_bit_identical']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("quality", "edit", "speed", "report"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default=str(results_dir()), help="folder for stem_<part>.json")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check of the same code path)")
    ap.add_argument("--seed", type=int, default=0)
    # quality
    ap.add_argument("--data", help="data folder of train_small_lm --data (heldout_ids.npy)")
    ap.add_argument("--dense"), ap.add_argument("--stem"), ap.add_argument("--wide")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--windows", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--spread-rows", type=int, default=2048)
    ap.add_argument("--convert-windows", type=int, default=256,
                    help="training windows used to convert the trained dense model (init='dense'); 0: skip")
    # edit
    ap.add_argument("--facts", type=int, default=400)
    ap.add_argument("--edits", type=int, default=150)
    ap.add_argument("--edit-others", type=int, default=30)
    ap.add_argument("--edit-hidden", type=int, default=128)
    ap.add_argument("--edit-layers", type=int, default=4)
    ap.add_argument("--edit-ff", type=int, default=256)
    ap.add_argument("--edit-steps", type=int, default=1500)
    ap.add_argument("--edit-batch", type=int, default=128)
    ap.add_argument("--edit-lr", type=float, default=3e-3)
    ap.add_argument("--edit-save", default=None, help="save the trained fact model here (STEM safetensors)")
    ap.add_argument("--edit-load", default=None, help="evaluate edits on a saved fact model (no training)")
    # speed
    ap.add_argument("--shapes", nargs="+", default=["small", "1B"])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if args.smoke:
        args.windows, args.spread_rows, args.seq, args.batch, args.convert_windows = 8, 256, 64, 4, 8
        args.facts, args.edits, args.edit_others = 40, 10, 5
        args.edit_hidden, args.edit_layers, args.edit_ff, args.edit_steps, args.edit_batch = 32, 2, 64, 60, 16
        args.shapes, args.prompt, args.new, args.repeat = ["tiny"], 8, 4, 1
    device = _device(args)
    t0 = time.time()
    {"quality": part_quality, "edit": part_edit, "speed": part_speed, "report": part_report}[args.part](args, device)
    print(f"[{args.part}] done in {time.time() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
