"""GRIFFIN benchmark: decode speed (random bf16 Llama shapes) and quality (a trained small LM).

Speed (CUDA): Llama-style random bf16 models of ~1B (TinyLlama shape: 2048/5632, 22 layers, GQA 4) and
~7B (Llama-2-7B shape: 4096/11008, 32 layers) dimensions; prompt 512, 64 new tokens, batch 1 and 8.
Decode runs on HF's ``StaticCache`` with one decode step captured in a CUDA graph (the launch-overhead
removal that ``torch.compile(mode="reduce-overhead")`` gives HF's static-cache generation, without
minutes of compiling per shape): prefill eager, then the captured step replayed per token. Modes: dense;
GRIFFIN 50% with the sliced weights (batch 1; at batch 8 one expert set shared by the batch); GRIFFIN 50%
per-sequence experts (batch 8: the Triton gathered FF). The weight+KV bytes read per step give the
ceiling of each speed-up (``ceiling`` column).

Quality (``--lm PATH``, a model saved by ``python -m llmeff.lm.train_small_lm``): held-out windows
(``heldout_tokens.npy``) of ``prompt`` + ``continuation`` tokens. For GRIFFIN / magnitude / random at
densities 0.25, 0.5, 0.75: (1) perplexity of the true held-out continuation, teacher-forced as one decode
step after the prompt's prefill (so it uses the kept neurons only); (2) next-token agreement with the
dense model's argmax on those positions; (3) perplexity, under the dense model, of a greedy continuation
generated with the method. Flocking: overlap of the prompt's and the continuation's top-50% GRIFFIN sets
(chance 0.5) and the share of the continuation's activation mass on the prompt's set, measured on dense
forwards.

    python benchmarks/griffin.py --lm out/lm                # H100: < 4 minutes
    python benchmarks/griffin.py --smoke                    # tiny CPU run of every path
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

from llmeff import griffin  # noqa: E402
from llmeff.models import cache_keyword, find_mlps, output_cache  # noqa: E402

SHAPES = {
    "llama-1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000),
    "llama-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256),
}


def build_random(shape: str, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    model.eval()
    with torch.no_grad():                 # HF init is std 0.02 normal already; make sure nothing is 0/NaN
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.02)
    return model


def weight_bytes(model, density: float, batch: int, kv_len: int, per_seq: bool = False) -> tuple[float, float]:
    """(dense, GRIFFIN) bytes read per decode step: weights (input embedding rows ignored) + KV cache."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    total -= emb.numel() * emb.element_size()
    ff = 0
    for s in find_mlps(model):
        for m in (s.gate, s.up, s.down):
            ff += m.weight.numel() * m.weight.element_size()
    cfg = model.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = batch * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * hd * kv_len * emb.element_size()
    gr = total - ff + ff * density * (batch if per_seq else 1)
    return float(total + kv), float(gr + kv)


def time_decode(model, batch: int, prompt: int, new: int, mode: str, density: float, repeat: int = 3,
                compiled: bool = False):
    """Milliseconds per decode step (median of ``repeat`` runs of ``new`` steps). ``compiled``: the step
    is ``torch.compile``d (inductor, static shapes) before it is captured in the CUDA graph."""
    from transformers import StaticCache

    dev = next(model.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt), generator=g).to(dev)
    kw = cache_keyword(model)
    handle = None
    if mode != "dense":
        handle = griffin.apply(model, density=density,
                               batch_experts="per_sequence" if mode == "griffin-per-seq" else "shared")
    try:
        cache = StaticCache(config=model.config, max_cache_len=prompt + (new + 4) * (repeat + 1) + 8)
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, **{kw: cache})
            tok = out.logits[:, -1:].argmax(-1)
            pos = torch.full((batch, 1), prompt, device=dev, dtype=torch.long)
            del out

            fwd = torch.compile(model, dynamic=False) if compiled else model

            def step():
                o = fwd(input_ids=tok, position_ids=pos, use_cache=True, **{kw: cache}).logits
                tok.copy_(o[:, -1:].argmax(-1))
                pos.add_(1)
                return o

            use_graph = dev.type == "cuda"
            graph = None
            if use_graph:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    t_c = time.time()
                    for _ in range(2):
                        step()
                    torch.cuda.synchronize()
                    if compiled:
                        print(f"[speed] compiled + warm-up in {time.time() - t_c:.1f}s", flush=True)
                torch.cuda.current_stream().wait_stream(s)
                try:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        step()
                    run = graph.replay
                except Exception as exc:          # report, and time the eager step instead
                    print(f"[speed] CUDA-graph capture failed ({type(exc).__name__}: {exc}); timing eager",
                          flush=True)
                    graph = None
                    torch.cuda.synchronize()
                    run = step
            else:
                step()
                run = step
            times = []
            for _ in range(repeat):
                if use_graph:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(new):
                    run()
                if use_graph:
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - t0) / new * 1e3)
        del cache, graph
    finally:
        if handle is not None:
            handle.detach()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return float(np.median(times))


def speed(args, device) -> Table:
    table = Table("GRIFFIN decode speed (static cache, CUDA-graph decode step)" if device.type == "cuda"
                  else "GRIFFIN decode speed (CPU smoke, eager)",
                  ["model", "batch", "mode", "ms/token", "tokens/s", "speed-up", "ceiling", "GB/s (dense bytes)"])
    shapes = ["tiny"] if args.smoke else args.shapes
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for shape in shapes:
        t0 = time.time()
        model = build_random(shape, device, dtype)
        print(f"[speed] built {shape} in {time.time() - t0:.1f}s", flush=True)
        for batch in args.batches:
            kv_len = args.prompt + (args.new + 4) * 4 + 8
            dense_b, gr_b = weight_bytes(model, 0.5, batch, kv_len)
            _, gr_ps = weight_bytes(model, 0.5, batch, kv_len, per_seq=True)
            modes = ["dense", "griffin"] + (["griffin-per-seq"] if batch > 1 else [])
            base = None
            for mode in modes:
                ms = time_decode(model, batch, args.prompt, args.new, mode, 0.5, repeat=args.repeat)
                base = ms if mode == "dense" else base
                ceil = 1.0 if mode == "dense" else dense_b / (gr_b if mode == "griffin" else gr_ps)
                label = mode if mode != "griffin" or batch == 1 else "griffin-shared"
                table.add([shape, batch, label, ms, batch * 1e3 / ms, base / ms, ceil, dense_b / (ms * 1e-3) / 1e9])
                print(f"[speed] {shape} b{batch} {label}: {ms:.3f} ms/token", flush=True)
            if device.type == "cuda" and shape in args.compile_shapes and batch in args.compile_batches:
                base_c = None
                for mode in ("dense", "griffin"):
                    ms = time_decode(model, batch, args.prompt, args.new, mode, 0.5, repeat=args.repeat,
                                     compiled=True)
                    base_c = ms if mode == "dense" else base_c
                    ceil = 1.0 if mode == "dense" else dense_b / gr_b
                    label = mode + ("-shared" if (mode == "griffin" and batch > 1) else "") + " (compiled)"
                    table.add([shape, batch, label, ms, batch * 1e3 / ms, base_c / ms, ceil,
                               dense_b / (ms * 1e-3) / 1e9])
                    print(f"[speed] {shape} b{batch} {label}: {ms:.3f} ms/token", flush=True)
                torch._dynamo.reset()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return table


# -- quality ---------------------------------------------------------------------------------------
def load_lm(path, device, local_heldout: bool = False):
    """The trained LM and its held-out stream. ``local_heldout``: build the held-out stream from this
    machine's stdlib files of the held-out split (:func:`llmeff.caprese.local_heldout_tokens`) instead of
    rebuilding the training machine's corpus (which needs the same files as the training machine)."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    if local_heldout:
        from llmeff.caprese import local_heldout_tokens

        held = local_heldout_tokens(path).astype(np.int64)
    else:
        from llmeff.lm.train_small_lm import heldout_tokens

        held = heldout_tokens(path).astype(np.int64)
    return model, held


def windows(held: np.ndarray, n: int, length: int) -> torch.Tensor:
    step = max(length, (len(held) - length) // max(1, n))
    starts = [i * step for i in range(n) if i * step + length <= len(held)]
    return torch.from_numpy(np.stack([held[s:s + length] for s in starts]))


@torch.no_grad()
def teacher_forced(model, prompt: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, C, V)`` predicting ``cont[:, 1:]`` and the token after: prefill + one decode forward."""
    kw = cache_keyword(model)
    out = model(input_ids=prompt, use_cache=True)
    logits = model(input_ids=cont, use_cache=True, **{kw: output_cache(out)}).logits
    return torch.cat([out.logits[:, -1:], logits[:, :-1]], 1).float()      # predictions of cont[:, t]


@torch.no_grad()
def nll(logits: torch.Tensor, target: torch.Tensor) -> float:
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)).item()


@torch.no_grad()
def generated_ppl(model, dense_model_fn, prompt, gen_len):
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=gen_len,
                         min_new_tokens=gen_len, do_sample=False, pad_token_id=0)
    gen = out[:, prompt.shape[1]:]
    logits = dense_model_fn(out)[:, prompt.shape[1] - 1:-1].float()
    return math.exp(nll(logits, gen)), gen


def quality(args, device) -> tuple[Table, dict]:
    if args.lm:
        model, held = load_lm(args.lm, device, local_heldout=args.local_heldout)
    else:                                           # smoke without a trained model: random tiny LM
        model = build_random("tiny", device, torch.float32)
        held = np.random.default_rng(0).integers(3, 256, size=20000)
    P, C, G, N = args.q_prompt, args.q_cont, args.q_gen, args.q_n
    seq = windows(held, N, P + C).to(device)
    prompt, cont = seq[:, :P], seq[:, P:]
    print(f"[quality] {seq.shape[0]} held-out windows of {P}+{C} tokens", flush=True)
    dense_logits = teacher_forced(model, prompt, cont)
    dense_arg = dense_logits.argmax(-1)
    fwd = lambda ids: model(input_ids=ids).logits  # noqa: E731
    dense_gen_ppl, dense_gen = generated_ppl(model, fwd, prompt, G)
    table = Table("GRIFFIN quality on the trained small LM (held-out)",
                  ["selection", "density", "held-out ppl", "next-token agreement", "generated ppl (dense judge)"])
    table.add(["dense", 1.0, math.exp(nll(dense_logits, cont)), 1.0, dense_gen_ppl])
    for sel in ("griffin", "magnitude", "random"):
        for dens in args.densities:
            with griffin.apply(model, density=dens, selection=sel, seed=0):
                lg = teacher_forced(model, prompt, cont)
                ppl = math.exp(nll(lg, cont))
                agree = (lg.argmax(-1) == dense_arg).float().mean().item()
                out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=G,
                                     min_new_tokens=G, do_sample=False, pad_token_id=0)
            logits = fwd(out)[:, P - 1:-1].float()                      # dense judge, outside the context
            gppl = math.exp(nll(logits, out[:, P:]))
            table.add([sel, dens, ppl, agree, gppl])
            print(f"[quality] {sel} {dens}: ppl {ppl:.3f} agreement {agree:.3f} gen-ppl {gppl:.3f}", flush=True)
    # flocking on dense forwards: true held-out continuations and the dense model's own generations
    fl_true = griffin.flocking(model, seq, P, density=0.5)
    fl_gen = griffin.flocking(model, torch.cat([prompt, dense_gen], 1), P, density=0.5)
    # a shuffled control: prompt of one window against the continuation of another
    shuf = torch.cat([prompt, cont.roll(1, dims=0)], 1)
    fl_ctrl = griffin.flocking(model, shuf, P, density=0.5)
    flock = {"heldout_continuation": {k: fl_true[k] for k in ("overlap", "mass")},
             "dense_generation": {k: fl_gen[k] for k in ("overlap", "mass")},
             "other_sequence_control": {k: fl_ctrl[k] for k in ("overlap", "mass")},
             "chance": 0.5, "overlap_per_layer_heldout": fl_true["overlap_per_layer"]}
    print(f"[quality] flocking (density 0.5, chance 0.5): held-out overlap {fl_true['overlap']:.3f} "
          f"mass {fl_true['mass']:.3f}; dense generation overlap {fl_gen['overlap']:.3f}; "
          f"other-sequence control overlap {fl_ctrl['overlap']:.3f}", flush=True)
    return table, flock


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lm", default=None, help="trained model folder (llmeff.lm.train_small_lm --out)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of every path")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--shapes", nargs="+", default=["llama-1B", "llama-7B"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--compile-shapes", nargs="*", default=["llama-7B"],
                    help="shapes also timed with the decode step torch.compile'd (inductor) inside the graph")
    ap.add_argument("--compile-batches", nargs="*", type=int, default=[1])
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--densities", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    ap.add_argument("--q-prompt", type=int, default=256)
    ap.add_argument("--q-cont", type=int, default=64)
    ap.add_argument("--q-gen", type=int, default=32)
    ap.add_argument("--q-n", type=int, default=64)
    ap.add_argument("--local-heldout", action="store_true",
                    help="held-out text from this machine's stdlib held-out files (CPU runs on another image)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="JSON path (default: results dir / griffin.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.batches, args.prompt, args.new, args.repeat = [1, 2], 16, 8, 1
        args.q_prompt, args.q_cont, args.q_gen, args.q_n = 24, 8, 6, 3
    t0 = time.time()
    payload = {}
    tables = []
    if not args.skip_speed:
        ts = speed(args, device)
        ts.print()
        tables.append(ts)
        payload["speed"] = ts.as_records()
    if not args.skip_quality:
        tq, flock = quality(args, device)
        tq.print()
        tables.append(tq)
        payload["quality"] = tq.as_records()
        payload["flocking"] = flock
        print(f"\nflocking: {flock}")
    payload["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out) if args.out else results_dir() / ("griffin_smoke.json" if args.smoke else "griffin.json")
    main_table = tables[0] if tables else Table("empty", ["-"])
    main_table.write_json(out, extra={**payload, "markdown": [t.markdown() for t in tables], "args": vars(args)})
    print(f"\nwrote {out} ({payload['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
