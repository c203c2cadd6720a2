"""Low-bit tensor-parallel communication: bytes, all-reduce time, decode latency and quality per codec.

Codecs (:mod:`llmeff.tp.codecs`): ``bf16`` (baseline: one all_reduce on NCCL), naive ``int8`` / ``int4``
(per-token absmax), ``ours`` (calibrated per-feature ranges, top 1/64 features in bf16, rest int4;
quantized all-gather + local dequantize-and-sum). ``fp32`` is the exact reference.

Each of ``W`` (=2) processes loads the trained small LM, shards it (column-parallel q/k/v/gate/up,
row-parallel o/down), calibrates ``ours`` on calibration text (training-side stdlib files, not the held-out
split), then:

* quality: perplexity of held-out windows (teacher-forced prefill forwards; every row-parallel layer's
  partial sums go through the codec), relative logit error and next-token agreement vs the exact fp32 TP
  model;
* bytes: payload bits/value, payload bytes per token per layer-reduction, bytes each rank sends per token
  (all layers; ring all-gather ``(W-1) x payload``, ring all-reduce ``2 (W-1)/W x payload``);
* speed (``--backend nccl``, one GPU per rank): time of one reduction of ``(tokens, d)`` partial sums per
  codec (decode: 1 and 8 tokens, prefill: 512 tokens; d of the LM and of Llama-7B, 4096), and end-to-end
  greedy decode ms/token of the LM under TP with each codec (``--decode-new`` tokens, batch 1).

    python benchmarks/tp_lowbit.py --lm /path/lm --backend gloo            # CPU, 2 processes: quality + bytes
    python benchmarks/tp_lowbit.py --lm /path/lm --backend nccl            # 2 GPUs: + speed (~2 min)
    python benchmarks/tp_lowbit.py --smoke                                 # tiny random Llama, CPU gloo
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import Table, results_dir  # noqa: E402

CODECS = ["fp32", "bf16", "int8", "int4", "ours", "ours-g128"]
VARIANTS = {"ours-g128": ("ours", {"group_size": 128})}     # ours + a dynamic bf16 scale per 128 int4 values


def calibration_tokens(model_dir, n_tokens: int, heldout_frac: float = 0.03) -> np.ndarray:
    """Tokens of this machine's stdlib files *outside* the held-out split (first files in sorted order)."""
    from tokenizers import Tokenizer

    from llmeff.lm.corpus import default_stdlib, is_heldout, stdlib_files
    from llmeff.lm.train_small_lm import encode_stream

    root = default_stdlib()
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    texts, n = [], 0
    for p in stdlib_files(Path(root)):
        if is_heldout("stdlib:" + p.relative_to(root).as_posix(), heldout_frac):
            continue
        t = p.read_text(encoding="utf-8", errors="replace")
        if len(t) < 2000:
            continue
        texts.append(t)
        n += len(t) // 3
        if n > 2 * n_tokens:
            break
    return encode_stream(tok, texts)[:n_tokens]


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=97, hidden_size=128, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                lin.weight[[5, 77]] *= 40.0
    return m


def _load(args, device, dtype):
    if args.smoke:
        return _tiny_model().to(device=device, dtype=dtype)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(args.lm, dtype=dtype).to(device).eval()


def _data(args):
    if args.smoke:
        g = np.random.default_rng(0)
        return g.integers(0, 97, (2, 64)), g.integers(0, 97, (3, 65))
    from llmeff.caprese import local_heldout_tokens

    held = local_heldout_tokens(args.lm).astype(np.int64)
    L = args.seq + 1
    step = (len(held) - L) // args.windows
    ev = np.stack([held[i * step:i * step + L] for i in range(args.windows)])
    cal = calibration_tokens(args.lm, args.calib_windows * args.seq).astype(np.int64)
    cal = cal[: (len(cal) // args.seq) * args.seq].reshape(-1, args.seq)
    return cal, ev


def _time_reduce(codec, N, D, device, iters):
    import torch.distributed as dist

    x = torch.randn(N, D, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    x[:, :: max(1, D // 8)] *= 30.0
    for _ in range(3):
        codec.reduce(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        codec.reduce(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e6


def _worker(rank, world, port, args, outdir):
    import torch.distributed as dist

    from llmeff import tp

    torch.set_num_threads(max(1, args.threads))
    nccl = args.backend == "nccl"
    if nccl:
        torch.cuda.set_device(rank)
    device = torch.device(f"cuda:{rank}" if nccl else "cpu")
    dtype = torch.bfloat16 if nccl else torch.float32
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    res = {"quality": {}, "reduce_us": {}, "decode_ms": {}}
    try:
        cal, ev = _data(args)
        cal_t = torch.from_numpy(cal).to(device)
        ev_t = torch.from_numpy(ev).to(device)
        ref_logits = None
        for name in CODECS:
            t0 = time.time()
            model = _load(args, device, dtype)
            kw = {"native": True} if name in ("fp32", "bf16") else {}
            cname, vkw = VARIANTS.get(name, (name, {}))
            kw.update(vkw)
            h = tp.shard(model, codec=cname, **kw)
            tp.calibrate(h, [cal_t[i:i + args.batch] for i in range(0, len(cal_t), args.batch)])
            h.reset_stats()
            nll, agree, err2, ref2, ntok = 0.0, 0, 0.0, 0.0, 0
            logits_all = []
            with torch.no_grad():
                for i in range(0, len(ev_t), args.batch):
                    x = ev_t[i:i + args.batch]
                    lg = model(input_ids=x[:, :-1], use_cache=False).logits.float()
                    nll += torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1),
                                                             reduction="sum").item()
                    ntok += x[:, 1:].numel()
                    logits_all.append(lg.cpu())
            st = h.stats()
            n_sites = len(h.codecs)
            lg = torch.cat(logits_all)
            if name == "fp32":
                ref_logits = lg
            q = {"ppl": math.exp(nll / ntok), "bits_per_value": st.bits_per_value,
                 "payload_bytes_per_token_per_reduction": st.payload_bytes / (ntok * n_sites),
                 "wire_bytes_per_token_all_layers": st.wire_bytes / ntok,
                 "rel_logit_err": ((lg - ref_logits).norm() / ref_logits.norm()).item(),
                 "agreement": (lg.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
                 "seconds": time.time() - t0}
            res["quality"][name] = q
            if rank == 0:
                print(f"[tp] {name}: ppl {q['ppl']:.3f} bits {q['bits_per_value']:.3f} "
                      f"err {q['rel_logit_err']:.4f} agree {q['agreement']:.4f} ({q['seconds']:.0f}s)", flush=True)
            if nccl or args.smoke:                      # speed: per-layer reduction and decode latency
                D = model.config.hidden_size
                for (N, d) in [(1, D), (8, D), (512, D), (1, 4096), (8, 4096), (512, 4096)]:
                    if args.smoke and (N > 8 or d > D):
                        continue
                    c = tp.make_codec(cname, **kw)
                    if c.needs_calibration:
                        c.observe(torch.randn(64, d, device=device) * 2)
                        c.finalize()
                    res["reduce_us"][f"{name}|{N}x{d}"] = _time_reduce(c, N, d, device, 3 if args.smoke else 50)
                res["decode_ms"][name] = _decode_ms(model, ev_t[:1, : args.decode_prompt], args.decode_new, device)
            del model, h
        if rank == 0:
            with open(os.path.join(outdir, "rank0.json"), "w") as f:
                json.dump(res, f)
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def _decode_ms(model, prompt, new, device):
    from llmeff.models import cache_keyword, output_cache

    kw = cache_keyword(model)
    out = model(input_ids=prompt, use_cache=True)
    cache = output_cache(out)
    tok = out.logits[:, -1:].argmax(-1)
    for _ in range(2):
        o = model(input_ids=tok, use_cache=True, **{kw: cache})
        tok = o.logits[:, -1:].argmax(-1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(new):
        o = model(input_ids=tok, use_cache=True, **{kw: cache})
        tok = o.logits[:, -1:].argmax(-1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / new * 1e3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lm", default=None, help="trained model folder (llmeff.lm.train_small_lm --out)")
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="nccl" if torch.cuda.device_count() >= 2 else "gloo")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--windows", type=int, default=16, help="held-out windows")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--calib-windows", type=int, default=8, help="calibration windows of --seq tokens")
    ap.add_argument("--decode-prompt", type=int, default=128)
    ap.add_argument("--decode-new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--smoke", action="store_true", help="tiny random Llama, CPU gloo, every path")
    ap.add_argument("--out", default=None, help="JSON path (default: results dir / tp_lowbit[_<backend>].json)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.backend, args.batch, args.decode_prompt, args.decode_new = "gloo", 2, 16, 4
    elif not args.lm:
        ap.error("--lm is required (or --smoke)")
    if args.backend == "nccl" and torch.cuda.device_count() < args.world:
        ap.error(f"--backend nccl needs {args.world} GPUs, found {torch.cuda.device_count()}")
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(args.world, _free_port(), args, d), nprocs=args.world, join=True)
        res = json.loads(Path(d, "rank0.json").read_text())
    tq = Table(f"TP={args.world} ({args.backend}) communication codecs on the trained small LM"
               if not args.smoke else "TP smoke (tiny random Llama)",
               ["codec", "bits/value", "payload B/token/reduction", "sent B/token (all layers)",
                "held-out ppl", "rel. logit err vs fp32", "next-token agreement"])
    for name in CODECS:
        q = res["quality"][name]
        tq.add([name, q["bits_per_value"], q["payload_bytes_per_token_per_reduction"],
                q["wire_bytes_per_token_all_layers"], q["ppl"], q["rel_logit_err"], q["agreement"]])
    tq.print()
    tables = [tq]
    if res["reduce_us"]:
        shapes = sorted({k.split("|")[1] for k in res["reduce_us"]}, key=lambda s: tuple(map(int, s.split("x"))))
        ts = Table("one reduction of (tokens x d) partial sums, microseconds", ["codec"] + shapes + ["decode ms/token"])
        for name in CODECS:
            ts.add([name] + [res["reduce_us"].get(f"{name}|{s}", float("nan")) for s in shapes]
                   + [res["decode_ms"].get(name, float("nan"))])
        ts.print()
        tables.append(ts)
    sec = round(time.time() - t0, 1)
    out = Path(args.out) if args.out else results_dir() / (
        "tp_lowbit_smoke.json" if args.smoke else f"tp_lowbit_{args.backend}.json")
    tq.write_json(out, extra={"raw": res, "markdown": [t.markdown() for t in tables], "args": vars(args),
                              "seconds": sec})
    print(f"\nwrote {out} ({sec} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
