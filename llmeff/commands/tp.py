"""``llmeff tp``: greedy generation from a local Llama-style model under W-way tensor parallelism
(processes on this machine: gloo on CPU, NCCL with one GPU per rank), with a chosen communication codec;
prints the completion and the communication accounting (bits/value, bytes each rank sent)."""
from __future__ import annotations

import argparse
import json
import socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, args, port, q):
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import tp

    nccl = args.backend == "nccl"
    if nccl:
        torch.cuda.set_device(rank)
    dev = torch.device(f"cuda:{rank}" if nccl else "cpu")
    torch.set_num_threads(1)
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world)
    try:
        tok = AutoTokenizer.from_pretrained(args.lm)
        model = AutoModelForCausalLM.from_pretrained(
            args.lm, dtype=torch.bfloat16 if nccl else torch.float32).to(dev).eval()
        h = tp.shard(model, codec=args.codec)
        calib = args.calib_text or args.prompt
        ids = tok(calib, return_tensors="pt").input_ids.to(dev)
        tp.calibrate(h, ids)
        h.reset_stats()
        enc = tok(args.prompt, return_tensors="pt").to(dev)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=0)
        if rank == 0:
            st = h.stats()
            q.put({"codec": args.codec, "world": args.world, "backend": args.backend,
                   "completion": tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True),
                   "bits_per_value": st.bits_per_value, "payload_bytes": st.payload_bytes,
                   "sent_bytes_per_rank": st.wire_bytes, "reductions": st.calls})
    finally:
        dist.destroy_process_group()


def _run(args) -> int:
    import torch
    import torch.multiprocessing as mp

    from ..errors import LLMEffValueError

    if args.backend is None:
        args.backend = "nccl" if torch.cuda.device_count() >= args.world else "gloo"
    if args.codec not in ("fp32", "bf16", "int8", "int4", "ours"):
        raise LLMEffValueError(f"unknown codec {args.codec!r}")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args, port, q)) for r in range(args.world)]
    for p in procs:
        p.start()
    res = q.get()
    for p in procs:
        p.join()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"TP={res['world']} ({res['backend']}), codec {res['codec']}: {res['bits_per_value']:.3f} bits/value, "
              f"{res['reductions']} reductions, {res['sent_bytes_per_rank'] / 1e3:.1f} kB sent per rank")
        print(f"--- {args.prompt!r}\n{res['completion']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tp", help="generate under tensor parallelism with a low-bit communication codec",
                              description=__doc__)
    p.add_argument("--lm", required=True, help="local HF model folder (Llama-style)")
    p.add_argument("--codec", default="ours", help="fp32, bf16, int8, int4 (naive) or ours (default)")
    p.add_argument("--world", type=int, default=2, help="number of ranks (processes)")
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl when enough GPUs")
    p.add_argument("--prompt", default="def main(argv):\n    ")
    p.add_argument("--calib-text", default=None, help="calibration text for 'ours' (default: the prompt)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
