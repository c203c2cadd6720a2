"""KV-cache compression benchmark: full cache vs StreamingLLM, H2O, LESS, ShadowKV.

Quality (CPU or GPU, a trained causal LM, ``--lm PATH``, any HF causal-LM folder):

* perplexity: windows of ``--ppl-len`` held-out tokens; all but the last ``--ppl-eval`` are prefilled (exact
  attention, then compressed: the long-prompt case all four methods target), the last ``--ppl-eval`` are decoded
  one token at a time through the policy; perplexity of the decoded tokens;
* needle copy: held-out text of ``--needle-ctx`` tokens with a random ``--needle-len``-token needle inserted at
  depth 10-50%; the prompt ends with the needle's first 8 tokens; accuracy of greedy (teacher-forced) prediction
  of the rest of the needle after prefill (the model must look it up: induction/copying).

Equal memory budgets: each eviction policy keeps ``--budget`` tokens per head; LESS keeps ``budget - d`` tokens
where ``d`` is its state's size in tokens (R*(D+1) float32 per head vs 2*D model-dtype per token); ShadowKV
attends to ``budget`` tokens (sparse chunks + outliers + local window) and its device memory is reported.
Held-out tokens: ``--tokens`` (.npy), else ``--text FILE ...``, else ``LM/heldout_tokens.npy`` (written by
``llmeff.lm.train_small_lm``), else the held-out split of :mod:`llmeff.lm.corpus`.

System (CUDA, ``--system``): a random-weight Llama with 8B dimensions (hidden 4096, 32 layers, 32 heads,
8 KV heads, FF 14336, bf16) at ``--context`` tokens: KV bytes per sequence after prefill, the largest batch whose
cache fits (one prefilled sequence replicated, then decoding verified), decode tokens/s at that batch and at
the full cache's batch.

Commands::

    python benchmarks/kvcache.py --smoke                                  # CPU, seconds, tiny random model
    python benchmarks/kvcache.py --lm LM_DIR --budget 64 --less-train-minutes 2      # quality
    python benchmarks/kvcache.py --system --context 32768                 # H100: memory / batch / speed
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import Table, results_dir  # noqa: E402

from llmeff import kvcache  # noqa: E402
from llmeff.kvcache import H2O, LESS, FullCache, ShadowKV, StreamingLLM  # noqa: E402
from llmeff.models import cache_keyword  # noqa: E402


# ---- quality ---------------------------------------------------------------------------------------------------
def decode_losses(model, policy, ids, prefill):
    """Prefill ``ids[:, :prefill]`` then feed the rest one token at a time; returns (nll per decoded token (B, n),
    argmax hits (B, n), cache device/host bytes after the last step)."""
    from transformers import DynamicCache

    B, T = ids.shape
    nll, hits = [], []
    with torch.no_grad(), kvcache.apply(model, policy):
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids[:, :prefill], **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1]
        for t in range(prefill, T):
            lp = torch.log_softmax(logits.float(), -1)
            nll.append(-lp.gather(1, ids[:, t : t + 1]).squeeze(1))
            hits.append(logits.argmax(-1) == ids[:, t])
            if t + 1 < T:
                logits = model(input_ids=ids[:, t : t + 1], **{cache_keyword(model): cache}, use_cache=True).logits[:, -1]
        mem = kvcache.cache_memory(cache)
    return torch.stack(nll, 1), torch.stack(hits, 1), mem


def heldout_stream(args) -> np.ndarray:
    """Held-out tokens: ``--tokens``, else the LM's own held-out stream (``llmeff.lm.train_small_lm.heldout_tokens``:
    ``heldout_tokens.npy`` or rebuilt from the corpus recorded in its config), else the held-out split of
    :mod:`llmeff.lm.corpus` through the LM's tokenizer."""
    if args.tokens:
        return np.load(args.tokens).astype(np.int64)
    if args.text:
        from llmeff.kvcache.train_less import token_stream

        return token_stream(args.lm, args.text, None, 0.0)
    try:
        from llmeff.lm.train_small_lm import heldout_tokens

        return np.asarray(heldout_tokens(args.lm), dtype=np.int64)
    except (FileNotFoundError, KeyError, ImportError, ValueError) as exc:
        print(f"no recorded held-out stream ({exc}); using the corpus held-out split", file=sys.stderr)
    from transformers import AutoTokenizer

    from llmeff.lm.corpus import build_corpus

    tok = AutoTokenizer.from_pretrained(args.lm)
    docs = build_corpus(max_stdlib_mb=4, max_man_mb=2, log=lambda s: None).heldout
    return np.asarray(sum((tok(d, add_special_tokens=False)["input_ids"] for d in docs), []), dtype=np.int64)


def token_bytes(model) -> int:
    from llmeff.kvcache._model import attention_modules

    a = attention_modules(model)[0]
    return 2 * a.head_dim * next(model.parameters()).element_size()


def policies_at_budget(args, model, less_maps: dict):
    b = args.budget
    pols = {"full": FullCache(), "streaming": StreamingLLM.with_budget(b, sink=4), "h2o": H2O(b)}
    for name, less in less_maps.items():
        pols[name] = less
    pols["shadowkv"] = ShadowKV(budget=max(args.chunk, b - 16 - 8 * args.outlier_chunks), rank=args.rank,
                                chunk=args.chunk, local_window=16, outlier_chunks=args.outlier_chunks)
    return {k: v for k, v in pols.items() if k in args.policies or k.split("_")[0] in args.policies}


def less_delta_tokens(model, rank=8) -> int:
    from llmeff.kvcache._model import attention_modules

    a = attention_modules(model)[0]
    return math.ceil(rank * (a.head_dim + 1) * 4 / token_bytes(model))


def get_less(args, model, stream, log=print) -> dict:
    """LESS policies: loaded (``--less DIR``) or trained here (``--less-train-minutes``) at budget - d tokens."""
    out = {}
    for d in args.less or []:
        less = LESS.load(d)
        out[f"less_{less.base.name}"] = less
    if args.less_train_minutes and not out:
        from llmeff.kvcache import train_less

        d = less_delta_tokens(model)
        dev = next(model.parameters()).device
        for base in (StreamingLLM.with_budget(args.budget - d, sink=4), H2O(args.budget - d)):
            if f"less_{base.name}" not in [p.split("+")[0] for p in args.policies] and "less" not in args.policies:
                continue
            seq = min(args.ppl_len, 4 * args.budget)
            it = train_less.batch_iter(stream[: len(stream) // 2], args.less_batch, seq, dev, seed=1)
            less = train_less.train(model, base, it, steps=10_000, minutes=args.less_train_minutes, log=log)
            path = results_dir() / f"less_{base.name}_{args.budget - d}"
            less.save(path, overwrite=True)
            log(f"LESS ({base}) trained: rel. MSE {less.info['first_rel_mse']} -> {less.info['final_rel_mse']}, "
                f"saved to {path}")
            out[f"less_{base.name}"] = less
    return out


def quality(args, model, stream, log=print):
    dev = next(model.parameters()).device
    rng = np.random.default_rng(args.seed)
    less = get_less(args, model, stream, log)
    pols = policies_at_budget(args, model, less)
    # evaluation windows from the second half of the held-out stream when LESS trains here on the first half,
    # else from all of it
    half = len(stream) // 2
    trained_here = bool(args.less_train_minutes) and not args.less
    ev = stream[half:] if trained_here and len(stream) - half > args.ppl_len + args.needle_ctx + 10 else stream
    L = args.ppl_len
    starts = rng.integers(0, len(ev) - L - 1, size=args.windows)
    ppl_ids = torch.from_numpy(np.stack([ev[s : s + L] for s in starts])).to(dev)
    # needle prompts
    vocab = model.config.vocab_size
    nl, C = args.needle_len, args.needle_ctx
    needles = torch.from_numpy(rng.integers(10, vocab, size=(args.windows, nl))).to(dev)
    rows = []
    for i in range(args.windows):
        s = int(rng.integers(0, len(ev) - C - 1))
        ctx = torch.from_numpy(ev[s : s + C]).to(dev)
        depth = int(C * rng.uniform(0.1, 0.5))
        rows.append(torch.cat([ctx[:depth], needles[i], ctx[depth:], needles[i]]))
    needle_ids = torch.stack(rows)
    needle_prefill = C + nl + 8
    tb = token_bytes(model)
    table = Table(f"KV-cache policies at budget {args.budget} tokens/head ({args.lm})",
                  ["policy", "kept tokens", "ppl", "ppl vs full", "needle acc", "KV MiB (device)", "KV MiB (host)"])
    res = {}
    full_ppl = None
    for name, pol in pols.items():
        t0 = time.time()
        nll, _, mem = [], None, None
        for j in range(0, args.windows, args.batch):
            n, _, mem = decode_losses(model, pol, ppl_ids[j : j + args.batch], L - args.ppl_eval)
            nll.append(n)
        ppl = float(torch.exp(torch.cat(nll).mean()))
        hits = []
        for j in range(0, args.windows, args.batch):
            _, h, _ = decode_losses(model, pol, needle_ids[j : j + args.batch], needle_prefill)
            hits.append(h[:, :-1].float())  # predictions of needle tokens 9..nl
        acc = float(torch.cat(hits).mean())
        full_ppl = ppl if name == "full" else full_ppl
        kept = getattr(pol, "budget", None)
        kept = L if kept is None or kept == math.inf else kept
        if name == "shadowkv":
            kept = f"{pol.budget}+{16 + 8 * pol.outlier_chunks} exact"
        row = [name, kept, ppl, (ppl / full_ppl) if full_ppl else float("nan"), acc,
               mem["device"] / 2 ** 20, mem["host"] / 2 ** 20]
        table.add(row)
        res[name] = {"policy": pol.describe(), "ppl": ppl, "needle_acc": acc, "kv_bytes": mem,
                     "seconds": time.time() - t0}
        log(f"{name}: ppl {ppl:.3f}  needle {acc:.3f}  ({time.time() - t0:.0f} s)")
    table.print()
    path = table.write_json(results_dir() / f"kvcache_quality{'_' + args.tag if args.tag else ''}.json",
                            extra={"results": res, "args": vars(args), "token_bytes": tb})
    print(table.markdown())
    print(f"wrote {path}")
    return res


# ---- system ----------------------------------------------------------------------------------------------------
def big_model(layers: int, dev, dtype=torch.bfloat16, small=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    if small:
        cfg = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1 << 17)
    else:
        cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=1 << 17,
                          rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the weights in their final dtype, on the device
    try:
        with torch.device(dev):
            m = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return m.eval()


def prefill_one(model, policy, T, dev):
    from transformers import DynamicCache

    ids = torch.randint(0, model.config.vocab_size, (1, T), device=dev)
    cache = DynamicCache(config=model.config)
    ctx = kvcache.apply(model, policy) if policy is not None else _null()
    with torch.no_grad(), ctx:
        out = model(input_ids=ids, **{cache_keyword(model): cache}, use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1].argmax(-1)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def decode_speed(model, policy, cache, B, steps, dev):
    tok = torch.randint(0, model.config.vocab_size, (B, 1), device=dev)
    ctx = kvcache.apply(model, policy) if policy is not None else _null()
    with torch.no_grad(), ctx:
        model(input_ids=tok, **{cache_keyword(model): cache}, use_cache=True)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            model(input_ids=tok, **{cache_keyword(model): cache}, use_cache=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return B / dt, dt


def system(args, log=print):
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.smoke or dev.type != "cuda"
    T = args.context
    model = big_model(args.layers, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32, small=small)
    nparam = sum(p.numel() for p in model.parameters())
    log(f"model: {nparam / 1e9:.2f} B parameters, {args.layers} layers, context {T}, device {dev}, "
        f"torch {torch.__version__}, transformers {_tf_version()}")
    b = args.sys_budget
    pols = {"full": None, "streaming": StreamingLLM.with_budget(b), "h2o": H2O(b),
            "less": LESS.untrained(StreamingLLM.with_budget(b - 4), model),
            "shadowkv": ShadowKV(budget=b, rank=args.rank if not small else 16, local_window=32,
                                 outlier_chunks=args.outlier_chunks)}
    pols = {k: v for k, v in pols.items() if k in args.policies}
    total = torch.cuda.get_device_properties(dev).total_memory if dev.type == "cuda" else 8 << 30
    table = Table(f"KV cache at {T} tokens, random-weight {'8B-dim' if not small else 'tiny'} Llama ({dev})",
                  ["policy", "KV MiB/seq (device)", "KV MiB/seq (host)", "max batch", "tok/s @max batch",
                   "tok/s @full batch", "ms/step @full batch"])
    res = {}
    full_batch = None
    for name, pol in pols.items():
        t0 = time.time()
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        cache, _ = prefill_one(model, pol, T, dev)
        mem = kvcache.cache_memory(cache)
        per_seq = mem["device"]
        if per_seq + mem["host"] == 0:
            raise SystemExit(f"{name}: the cache stayed empty after prefill (transformers {_tf_version()} did not "
                             "use the cache passed to it)")
        if dev.type == "cuda":
            torch.cuda.synchronize()
            free = total - torch.cuda.memory_allocated(dev) + per_seq
        else:
            free = 8 << 30
        # decode workspace reserve: activations, logits, temporaries (and rebuilt chunks for ShadowKV)
        reserve = args.reserve_gib * 2 ** 30
        est = max(1, int((free - reserve) // max(per_seq, 1)))
        est = min(est, args.max_batch)
        if name == "shadowkv" and mem["host"]:
            host_free = int(args.host_gib * 2 ** 30)
            est = min(est, max(1, host_free // mem["host"]))
        Bfit = None
        base_cache = cache
        Bt = est
        while Bt >= 1:
            try:
                c = _replicate(base_cache, Bt, name)
                tps, dt = decode_speed(model, pol, c, Bt, args.steps, dev)
                Bfit = Bt
                del c
                break
            except torch.OutOfMemoryError:
                c = None
                gc.collect()
                torch.cuda.empty_cache()
                Bt = int(Bt * 0.85)
        if full_batch is None:
            full_batch = Bfit
        tps_fb, dt_fb = (tps, dt) if Bfit == full_batch else (float("nan"), float("nan"))
        if Bfit != full_batch and full_batch:
            try:
                c = _replicate(base_cache, min(full_batch, Bfit), name)
                tps_fb, dt_fb = decode_speed(model, pol, c, min(full_batch, Bfit), args.steps, dev)
                del c
            except torch.OutOfMemoryError:
                pass
        del base_cache, cache
        table.add([name, per_seq / 2 ** 20, mem["host"] / 2 ** 20, Bfit, tps, tps_fb, dt_fb * 1e3])
        res[name] = {"policy": None if pol is None else pol.describe(), "kv_bytes_per_seq": mem, "max_batch": Bfit,
                     "tok_s_at_max_batch": tps, "tok_s_at_full_batch": tps_fb, "seconds": time.time() - t0}
        log(f"{name}: {per_seq / 2 ** 20:.1f} MiB/seq, batch {Bfit}, {tps:.1f} tok/s ({time.time() - t0:.0f} s)")
    table.print()
    path = table.write_json(results_dir() / "kvcache_system.json", extra={"results": res, "args": vars(args)})
    print(table.markdown())
    print(f"wrote {path}")
    return res


def _tf_version():
    import transformers

    return transformers.__version__


def _replicate(cache, B, name):
    """A batch-B cache made of copies of a one-sequence cache (what B prefilled sequences would hold)."""
    import copy

    c = copy.copy(cache)
    c.layers = [copy.copy(lay) for lay in cache.layers]
    for lay in c.layers:
        vh = getattr(lay, "v_host", None)
        if vh is not None:
            lay.v_host = None
        lay.batch_repeat_interleave(B)
        if vh is not None:  # offloaded values: straight into (pinned) host memory, no pageable copy in between
            big = torch.empty((B, *vh.shape[1:]), dtype=vh.dtype, device=vh.device,
                              pin_memory=vh.device.type == "cpu" and torch.cuda.is_available())
            big.copy_(vh.expand(B, *vh.shape[1:]))
            lay.v_host = big
    return c


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", default=None, help="HF causal LM folder (quality benchmark)")
    ap.add_argument("--tokens", default=None, help="held-out .npy token stream (default LM/heldout_tokens.npy)")
    ap.add_argument("--text", nargs="*", default=None,
                    help="held-out plain-text files, tokenised with the LM's tokenizer (EOS between files)")
    ap.add_argument("--policies", nargs="+", default=["full", "streaming", "h2o", "less", "shadowkv"])
    ap.add_argument("--budget", type=int, default=64, help="tokens per head kept (quality)")
    ap.add_argument("--ppl-eval", type=int, default=128, help="perplexity: tokens decoded (and scored) after prefill")
    ap.add_argument("--ppl-len", type=int, default=512, help="perplexity window length")
    ap.add_argument("--windows", type=int, default=16, help="perplexity windows and needle prompts")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--needle-ctx", type=int, default=384)
    ap.add_argument("--needle-len", type=int, default=24)
    ap.add_argument("--less", nargs="*", default=None, help="LESS map folders (train_less output)")
    ap.add_argument("--less-train-minutes", type=float, default=0.0, help="train LESS here (per base policy)")
    ap.add_argument("--less-batch", type=int, default=8)
    ap.add_argument("--rank", type=int, default=160, help="ShadowKV rank (quality: min(rank, Hkv*D))")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--outlier-chunks", type=int, default=2)
    ap.add_argument("--system", action="store_true", help="8B-dim random Llama memory / batch / speed (CUDA)")
    ap.add_argument("--context", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--sys-budget", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10, help="timed decode steps")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--reserve-gib", type=float, default=6.0)
    ap.add_argument("--host-gib", type=float, default=32.0, help="host memory ShadowKV may use for values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="quality results file kvcache_quality_TAG.json")
    ap.add_argument("--smoke", action="store_true", help="tiny, seconds, CPU: both parts on random models")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.smoke:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024)).eval()
        stream = np.random.default_rng(0).integers(0, 300, 20000)
        args.lm = args.lm or "random tiny Llama"
        args.ppl_len, args.ppl_eval, args.windows, args.batch, args.budget = 128, 32, 4, 4, 32
        args.needle_ctx, args.needle_len, args.rank = 64, 16, 16
        if args.less_train_minutes == 0 and not args.less:
            args.less_train_minutes = 0.05
        quality(args, model, stream)
        args.context, args.layers, args.steps, args.max_batch, args.sys_budget = 512, 2, 3, 8, 64
        args.outlier_chunks = 2
        system(args)
        return 0
    if args.system:
        system(args)
        return 0
    if not args.lm:
        raise SystemExit("give --lm PATH (a trained HF causal LM folder), --system, or --smoke")
    from transformers import AutoModelForCausalLM

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(args.lm).to(device=dev, dtype=torch.float32).eval()
    quality(args, model, heldout_stream(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
