"""``llmeff tp``: greedy generation from a local Llama-style model under W-way tensor parallelism
(processes on this machine: gloo on CPU, NCCL with one GPU per rank), with a chosen communication codec;
prints the completion and the communication accounting (bits/value, bytes each rank sent).

The model folder, codec and whether the model's heads split over ``--world`` ranks are checked before any
process starts; if a rank fails anyway, the others are stopped at once and the command exits non-zero with
that rank's error."""
from __future__ import annotations

import argparse
import json
import socket

from ..loading import LM_HELP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, args, port):
    import torch
    import torch.distributed as dist

    from .. import tp
    from ..loading import load_model, load_tokenizer

    nccl = args.backend == "nccl"
    if nccl:
        torch.cuda.set_device(rank)
    dev = torch.device(f"cuda:{rank}" if nccl else "cpu")
    torch.set_num_threads(1)
    dist.init_process_group(args.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world)
    try:
        tok = load_tokenizer(args.lm)
        model = load_model(args.lm, dev, torch.bfloat16 if nccl else torch.float32)
        h = tp.shard(model, codec=args.codec)
        calib = args.calib_text or args.prompt
        ids = tok(calib, return_tensors="pt").input_ids.to(dev)
        tp.calibrate(h, ids)
        h.reset_stats()
        enc = tok(args.prompt, return_tensors="pt").to(dev)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=0)
        if rank != 0:
            return None
        st = h.stats()
        return {"codec": args.codec, "world": args.world, "backend": args.backend,
                "completion": tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True),
                "bits_per_value": st.bits_per_value, "payload_bytes": st.payload_bytes,
                "sent_bytes_per_rank": st.wire_bytes, "reductions": st.calls}
    finally:
        dist.destroy_process_group()


def _validate(args) -> None:
    """Everything that can be checked before any process starts: the model folder, the codec, the world size
    and whether the model's heads and FF width split over it."""
    import torch

    from ..errors import LLMEffValueError
    from ..loading import load_config
    from ..tp.codecs import CODECS
    from ..tp.parallel import check_world

    if args.codec not in CODECS:
        raise LLMEffValueError(f"unknown codec {args.codec!r}; one of {', '.join(CODECS)}")
    if args.world < 1:
        raise LLMEffValueError(f"--world must be >= 1, got {args.world}")
    if args.backend == "nccl" and torch.cuda.device_count() < args.world:
        raise LLMEffValueError(f"--backend nccl needs one GPU per rank: {args.world} ranks, "
                               f"{torch.cuda.device_count()} GPUs; use --backend gloo (CPU) or a smaller --world")
    check_world(load_config(args.lm), args.world)


def _run(args) -> int:
    import torch

    from ..workers import run_workers

    if args.backend is None:
        args.backend = "nccl" if torch.cuda.device_count() >= args.world else "gloo"
    _validate(args)
    res = run_workers(_worker, args.world, (args, _free_port()), timeout=args.timeout)[0]
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
    p.add_argument("--lm", required=True, help="Llama-style model; " + LM_HELP)
    p.add_argument("--codec", default="ours", help="fp32, bf16, int8, int4 (naive) or ours (default)")
    p.add_argument("--world", type=int, default=2, help="number of ranks (processes)")
    p.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl when enough GPUs")
    p.add_argument("--prompt", default="def main(argv):\n    ")
    p.add_argument("--calib-text", default=None, help="calibration text for 'ours' (default: the prompt)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds for the whole run; the ranks are stopped after it (default: no limit)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)
