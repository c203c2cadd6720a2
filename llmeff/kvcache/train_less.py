"""Train the LESS maps (phi, psi) of every layer of a causal LM, the model frozen.

For each batch of text windows the frozen model runs once with full attention; a capturing attention function
records every layer's post-RoPE queries, keys, values and exact attention output. Per layer, the LESS output
of every query under the eviction policy (tokens decoded one at a time from an empty cache: kept keys exactly,
evicted ones through the low-rank state, :func:`llmeff.kvcache.less.less_attention`) is compared with the
exact output *after the layer's output projection* (MSE, divided by the target's mean square so layers weigh
alike), on the queries that have evicted tokens. Layers are independent; one optimiser steps them all.

Commands (the small LM of ``llmeff.lm.train_small_lm``; any HF causal LM folder works)::

    # CPU, ~20-30M-parameter model, a few minutes
    python -m llmeff.kvcache.train_less --lm LM_DIR --policy streaming --budget 64 --out LM_DIR/less_streaming64 \\
        --minutes 3 --device cpu
    # GPU
    python -m llmeff.kvcache.train_less --lm LM_DIR --policy h2o --budget 64 --out LM_DIR/less_h2o64 --minutes 2

Text: ``--text FILE ...`` (plain text), ``--tokens FILE.npy`` (a token stream), or by default the training
side of :mod:`llmeff.lm.corpus` (never its held-out split, which the benchmark evaluates on).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import EvictionPolicy
from .h2o import H2O
from .less import LESS, keep_masks, less_attention
from .streaming import StreamingLLM
from ..loading import LM_HELP

CAPTURE_NAME = "llmeff_less_capture"


@contextlib.contextmanager
def capture_attention(model):
    """Record, per attention layer, ``(module, q, k, v, exact output (B, H, T, D), scaling)`` of a forward."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from ._model import attention_modules

    rec: dict[int, tuple] = {}

    def fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
        out, w = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
        s = scaling if scaling is not None else query.shape[-1] ** -0.5
        rec[module.layer_idx] = (module, query.detach(), key.detach(), value.detach(),
                                 out.detach().transpose(1, 2), s)
        return out, w

    AttentionInterface.register(CAPTURE_NAME, fn)
    AttentionMaskInterface.register(CAPTURE_NAME, sdpa_mask)
    cfgs = {id(a.module.config): (a.module.config, a.module.config._attn_implementation)
            for a in attention_modules(model)}
    try:
        for cfg, _ in cfgs.values():
            cfg._attn_implementation_internal = CAPTURE_NAME
        yield rec
    finally:
        for cfg, impl in cfgs.values():
            cfg._attn_implementation_internal = impl


def _o_proj(module, x):
    """The module's output projection in float32: x (B, T, H*D)."""
    lin = module.o_proj
    w = lin.weight.float()
    b = lin.bias.float() if lin.bias is not None else None
    return F.linear(x, w, b)


def _scores(policy: EvictionPolicy, rec_item) -> torch.Tensor | None:
    """Causal pre-softmax scores (B, H, T, T) of one recorded layer, when the policy needs them."""
    if not policy.needs_scores:
        return None
    _, q, k, _, _, s = rec_item
    T = q.shape[2]
    kk = k.float().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    tt = torch.arange(T, device=q.device)
    return ((q.float() @ kk.transpose(-1, -2)) * s).masked_fill(tt[None, :] > tt[:, None], float("-inf"))


def all_keep_masks(policy: EvictionPolicy, rec: dict) -> dict:
    """Keep masks of every recorded layer. Score-based policies (H2O) replay the eviction token by token; all
    layers of equal shape go through one replay (stacked on the batch axis), which is ~layers x fewer kernel
    launches than one replay per layer and gives the same masks."""
    out, groups = {}, {}
    for i, item in rec.items():
        q, k = item[1], item[2]
        groups.setdefault((tuple(q.shape), k.shape[1]), []).append(i)
    for (qshape, hk), layers in groups.items():
        B, H, T, _ = qshape
        if not policy.needs_scores:  # position-only masks: one for all layers of this shape
            keep = keep_masks(policy, _shape_only(rec[layers[0]][1], B, H, T), hk)
            out.update({i: keep for i in layers})
            continue
        keep = keep_masks(policy, torch.cat([_scores(policy, rec[i]) for i in layers], 0), hk)
        for j, i in enumerate(layers):
            out[i] = keep[j * B:(j + 1) * B]
    return out


def _shape_only(like: torch.Tensor, B: int, H: int, T: int) -> torch.Tensor:
    """A (B, H, T, T) stand-in for the scores of policies that use only positions (no memory behind it)."""
    return like.new_zeros(()).expand(B, H, T, T)


def layer_loss(policy: EvictionPolicy, maps, rec_item, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Relative MSE after the output projection for one layer's recorded batch (``keep``: its precomputed
    :func:`keep_masks`, else computed here)."""
    module, q, k, v, out, s = rec_item
    B, H, T, D = q.shape
    hk = k.shape[1]
    if keep is None:
        logits = _scores(policy, rec_item)
        keep = keep_masks(policy, logits if logits is not None else _shape_only(q, B, H, T), hk)
    o = less_attention(q, k, v, keep, maps, s)
    rows = slice(policy.budget, T)  # queries that have evicted tokens
    y = _o_proj(module, o.transpose(1, 2).reshape(B, T, H * D)[:, rows])
    tgt = _o_proj(module, out.float().transpose(1, 2).reshape(B, T, H * D)[:, rows])  # out is (B, H, T, D)
    return F.mse_loss(y, tgt) / tgt.pow(2).mean().clamp_min(1e-12)


def train(model, policy: EvictionPolicy, batches, steps: int = 200, lr: float = 3e-3, rank: int = 8,
          hidden: int | None = None, minutes: float | None = None, seed: int = 0, log=print) -> LESS:
    """Train LESS maps for every layer; ``batches`` yields (B, T) token id tensors on the model's device."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    less = LESS.untrained(policy, model, rank=rank, hidden=hidden, seed=seed)
    dev = next(model.parameters()).device
    params = []
    for m in less.maps.values():
        m.to(dev)
        params += list(m.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)))
    t0 = time.time()
    history = []
    step = 0
    for step in range(steps):
        ids = next(batches)
        with torch.no_grad(), capture_attention(model) as rec:
            model(input_ids=ids, use_cache=False)
        with torch.no_grad():
            keeps = all_keep_masks(policy, rec)
        losses = {i: layer_loss(policy, less.maps[i], rec[i], keeps[i]) for i in sorted(rec)}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        per = [round(float(v.detach()), 4) for v in losses.values()]
        history.append(per)
        if step % 10 == 0 or step == steps - 1:
            log(f"step {step:4d}  rel. MSE per layer {per}  ({time.time() - t0:.0f} s)")
        if minutes is not None and time.time() - t0 > 60 * minutes:
            log(f"time budget reached after {step + 1} steps")
            break
    less.info = {"steps": step + 1, "final_rel_mse": history[-1] if history else None, "seconds": time.time() - t0,
                 "first_rel_mse": history[0] if history else None}
    return less


def token_stream(lm_dir: str, text: list[str] | None, tokens: str | None, max_mb: float, log=print) -> np.ndarray:
    if tokens:
        return np.load(tokens).astype(np.int64)
    from ..loading import load_tokenizer

    tok = load_tokenizer(lm_dir)
    if text:
        docs = [Path(p).read_text(encoding="utf-8", errors="replace") for p in text]
    else:
        from ..lm.corpus import build_corpus

        frac = 0.03  # the held-out fraction the LM was trained with, so its held-out files stay out
        cfg = Path(lm_dir) / "config.json"
        if cfg.is_file():
            frac = (json.loads(cfg.read_text()).get("llmeff_train") or {}).get("corpus_args", {}).get("heldout_frac", frac)
        mb = max(max_mb, 2.0)  # small caps can leave the held-out side empty, which build_corpus refuses
        docs = build_corpus(heldout_frac=frac, max_stdlib_mb=mb, max_man_mb=mb / 2, log=log).train
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    ids: list[int] = []
    for d in docs:
        ids += tok(d, add_special_tokens=False)["input_ids"] + [eos]
    return np.asarray(ids, dtype=np.int64)


def batch_iter(stream: np.ndarray, batch: int, seq: int, device, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = len(stream) - seq - 1
    if n <= 0:
        raise ValueError(f"token stream of {len(stream)} tokens is shorter than --seq {seq}")
    while True:
        starts = rng.integers(0, n, size=batch)
        yield torch.from_numpy(np.stack([stream[s : s + seq] for s in starts])).to(device)


def make_policy(name: str, budget: int, sink: int = 4, recent: int | None = None) -> EvictionPolicy:
    if name == "streaming":
        return StreamingLLM.with_budget(budget, sink=sink)
    if name == "h2o":
        return H2O(budget, recent=recent)
    raise ValueError(f"unknown policy {name!r}: streaming or h2o")


def build_parser(ap: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = ap or argparse.ArgumentParser(prog="python -m llmeff.kvcache.train_less", description=__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", required=True, help=LM_HELP)
    ap.add_argument("--out", required=True, help="output folder for less_maps.safetensors + less_config.json")
    ap.add_argument("--policy", choices=["streaming", "h2o"], default="streaming")
    ap.add_argument("--budget", type=int, default=64, help="tokens kept per head by the eviction policy")
    ap.add_argument("--sink", type=int, default=4, help="StreamingLLM sink tokens")
    ap.add_argument("--recent", type=int, default=None, help="H2O recent window (default budget/2)")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=None, help="MLP hidden width (default head_dim)")
    ap.add_argument("--seq", type=int, default=256, help="training window length (> budget)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=None, help="stop after this many minutes")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--text", nargs="*", default=None, help="plain-text training files")
    ap.add_argument("--tokens", default=None, help="a .npy token stream instead of text")
    ap.add_argument("--corpus-mb", type=float, default=4.0, help="MB of the default corpus to read")
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    return ap


def run(args) -> int:
    from ..loading import load_model, model_dir

    model_dir(args.lm)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = load_model(args.lm, dev, dtype)
    policy = make_policy(args.policy, args.budget, args.sink, args.recent)
    if args.seq <= policy.budget:
        raise SystemExit(f"--seq {args.seq} must exceed the budget {policy.budget}")
    stream = token_stream(args.lm, args.text, args.tokens, args.corpus_mb)
    print(f"LESS training: {policy}, rank {args.rank}, {len(stream)} tokens, device {dev}", flush=True)
    less = train(model, policy, batch_iter(stream, args.batch, args.seq, dev, args.seed), steps=args.steps,
                 lr=args.lr, rank=args.rank, hidden=args.hidden, minutes=args.minutes, seed=args.seed)
    less.info.update({"lm": str(args.lm), "seq": args.seq, "batch": args.batch, "lr": args.lr,
                      "command": " ".join(sys.argv)})
    path = less.save(args.out, overwrite=args.overwrite)
    print(f"saved {path}  ({json.dumps(less.info['final_rel_mse'])})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
