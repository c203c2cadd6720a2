"""Train a small Llama-architecture causal LM from scratch on offline text; save it with ``save_pretrained``.

Exact command used for the model the GRIFFIN benchmark measures (one H100, shared)::

    python -m llmeff.lm.train_small_lm --out $OUT/lm --minutes 6

Steps (all inside the wall-clock budget ``--minutes``, corpus building and saving included):

1. corpus: :func:`llmeff.lm.corpus.build_corpus` (Python stdlib sources, installed packages' Python
   sources up to ``--max-site-mb``, man pages; deterministic 3% held-out split by file name);
2. tokenizer: byte-level BPE (``tokenizers``), ``--vocab`` entries, trained on the training documents only,
   with ``<|endoftext|>`` between documents (also BOS/EOS/PAD);
3. model: ``LlamaForCausalLM`` (default hidden 512, 8 layers, 8 heads, FF 1280, tied embeddings,
   vocab 8192: ~28 M parameters), AdamW, warm-up then cosine decay over the *time* budget, bf16 autocast on
   CUDA, random windows of ``--seq`` tokens from the concatenated training stream;
4. held-out loss on fixed windows of the held-out stream; model saved in bf16 safetensors shards
   < 15 MB (``max_shard_size``) and the tokenizer (``PreTrainedTokenizerFast``): 8 files at the default
   size, within what a device run's ``$OUT`` brings back. The training record (tokens/s, held-out loss,
   loss curve, corpus sources and caps) is stored in ``config.json`` under ``llmeff_train`` and printed as
   one ``train_log: {...}`` line. ``--save-heldout`` also writes ``heldout_tokens.npy`` (uint16 held-out
   stream) and ``train_log.json``; without it :func:`heldout_tokens` rebuilds the stream from the same
   corpus (same machine image: same files, same split).

``--smoke`` trains a tiny model for a few seconds on a few hundred kB (a CPU test of the whole path).

STEM (:mod:`llmeff.stem`): ``--arch stem`` converts the fresh model's FF blocks to token-indexed tables
(up projection -> ``nn.Embedding(vocab, ff)``) before training and saves it so that
:func:`llmeff.stem.load` reads it back. For dense/STEM comparisons at equal tokens: ``--steps N`` trains
exactly ``N`` steps (warm-up + cosine over steps; ``--minutes`` stays a safety cap, and the record says if
it cut training short), and ``--data DIR`` shares the corpus and tokenizer between runs: the first run
builds them and writes ``DIR/tokenizer.json``, ``DIR/train_ids.npy``, ``DIR/heldout_ids.npy`` (and
``DIR/corpus.json``); later runs read them (``--prepare-only`` builds them and exits). Exact commands of
the STEM benchmark: ``benchmarks/stem.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .corpus import build_corpus

EOT = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab: int, log=print):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    log(f"tokenizer: byte-level BPE, {tok.get_vocab_size()} entries")
    return tok


def encode_stream(tok, texts: list[str]) -> np.ndarray:
    """All documents, each followed by ``<|endoftext|>``, as one uint16 token stream (``tok``: a
    ``tokenizers.Tokenizer``). A tokenizer without ``<|endoftext|>`` gets the documents back to back, with a
    warning saying so."""
    eot = tok.token_to_id(EOT)
    if eot is None:
        import warnings

        warnings.warn(f"the tokenizer has no {EOT} token: documents are concatenated without a separator",
                      stacklevel=2)
    ids = []
    for i in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[i:i + 256], add_special_tokens=False):
            ids.append(np.asarray(enc.ids, dtype=np.uint16))
            if eot is not None:
                ids.append(np.asarray([eot], dtype=np.uint16))
    return np.concatenate(ids) if ids else np.zeros(0, np.uint16)


def make_model(vocab: int, hidden: int, layers: int, heads: int, ff: int, seq: int, kv_heads: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=max(seq, 2048),
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
        pad_token_id=0, hidden_act="silu", attention_bias=False, mlp_bias=False,
    )
    return LlamaForCausalLM(cfg)


@torch.no_grad()
def evaluate(model, stream: np.ndarray, seq: int, batch: int, device, max_windows: int = 256) -> float:
    """Mean next-token loss over non-overlapping windows of ``seq + 1`` tokens of ``stream``."""
    model.eval()
    n = min(max_windows, (len(stream) - 1) // seq)
    if n <= 0:
        return float("nan")
    tot, cnt = 0.0, 0
    for s in range(0, n, batch):
        idx = np.arange(s, min(n, s + batch))
        x = np.stack([stream[i * seq:i * seq + seq + 1] for i in idx]).astype(np.int64)
        xt = torch.from_numpy(x).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=xt[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 xt[:, 1:].reshape(-1), reduction="sum")
        tot += loss.item()
        cnt += xt[:, 1:].numel()
    model.train()
    return tot / cnt


def heldout_tokens(model_dir) -> np.ndarray:
    """The held-out token stream of a model saved by this script: ``heldout_tokens.npy`` when present,
    else rebuilt from the corpus recorded in ``config.json`` (``llmeff_train.corpus_args``) and the saved
    tokenizer. The rebuild reads the same files only on a machine with the same Python/site-packages/man
    pages as the training machine; a warning is printed when the token count differs from the record."""
    model_dir = Path(model_dir)
    p = model_dir / "heldout_tokens.npy"
    if p.is_file():
        return np.load(p)
    from tokenizers import Tokenizer

    cfg = json.loads((model_dir / "config.json").read_text())
    rec = cfg.get("llmeff_train") or {}
    ca = rec.get("corpus_args")
    if not ca:
        raise FileNotFoundError(f"{p} is missing and {model_dir / 'config.json'} has no llmeff_train.corpus_args")
    corpus = build_corpus(Path(ca["stdlib"]) if ca.get("stdlib") else None, Path(ca["man"]) if ca.get("man") else None,
                          heldout_frac=ca["heldout_frac"], max_stdlib_mb=ca["max_stdlib_mb"],
                          max_man_mb=ca["max_man_mb"], site=Path(ca["site"]) if ca.get("site") else None,
                          max_site_mb=ca["max_site_mb"] if ca.get("site") else 0.0, log=lambda m: None)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    ids = encode_stream(tok, corpus.heldout)
    if rec.get("heldout_tokens") not in (None, len(ids)):
        print(f"warning: rebuilt held-out stream has {len(ids)} tokens, training recorded {rec['heldout_tokens']} "
              "(different files on this machine)", file=sys.stderr)
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmeff.lm.train_small_lm", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (created; model + tokenizer + logs)")
    ap.add_argument("--minutes", type=float, default=6.0, help="total wall-clock budget, corpus and save included")
    ap.add_argument("--stdlib", default=None, help="Python stdlib folder (default: this interpreter's)")
    ap.add_argument("--man", default="/usr/share/man", help="man page root ('' to skip)")
    ap.add_argument("--max-stdlib-mb", type=float, default=48.0)
    ap.add_argument("--max-man-mb", type=float, default=24.0)
    ap.add_argument("--site", default="auto", help="site-packages folder for extra Python sources ('auto': "
                    "this interpreter's purelib)")
    ap.add_argument("--max-site-mb", type=float, default=96.0,
                    help="cap on site-packages text (0: stdlib + man pages only)")
    ap.add_argument("--heldout-frac", type=float, default=0.03)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ff", type=int, default=1280)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64, help="sequences per optimizer step")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA; ~1 min of compiling)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reserve-s", type=float, default=25.0, help="seconds kept for the final eval and save")
    ap.add_argument("--save-heldout", action="store_true",
                    help="also write heldout_tokens.npy and train_log.json (by default the folder holds 8 files "
                    "at the default size: 4 shards, index, config.json (with the training record under "
                    "'llmeff_train'), tokenizer.json, tokenizer_config.json; the held-out stream is rebuilt "
                    "from the corpus by llmeff.lm.corpus.heldout_tokens)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of the whole path (seconds)")
    ap.add_argument("--arch", choices=("dense", "stem"), default="dense",
                    help="stem: FF up projections replaced by token-indexed tables (llmeff.stem)")
    ap.add_argument("--steps", type=int, default=None,
                    help="train exactly this many steps (schedule over steps; --minutes is then only a cap)")
    ap.add_argument("--data", default=None, help="folder caching corpus token streams + tokenizer (built "
                    "there on first use, read by later runs: same data and tokenizer for every --arch)")
    ap.add_argument("--prepare-only", action="store_true", help="with --data: build the data folder and exit")
    ap.add_argument("--eval-windows", type=int, default=256, help="held-out windows of --seq tokens evaluated")
    args = ap.parse_args(argv)

    t_start = time.time()
    if args.smoke:
        args.max_stdlib_mb, args.max_man_mb, args.vocab = min(args.max_stdlib_mb, 0.6), min(args.max_man_mb, 0.2), 512
        args.max_site_mb = min(args.max_site_mb, 0.2)
        args.hidden, args.layers, args.heads, args.ff, args.seq, args.batch = 64, 2, 4, 160, 64, 8
        args.warmup, args.minutes, args.reserve_s = 5, min(args.minutes, 0.75), 5.0
        args.heldout_frac = max(args.heldout_frac, 0.1)
    deadline = t_start + args.minutes * 60.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def log(msg):
        print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)

    data = Path(args.data) if args.data else None
    if data is not None and (data / "tokenizer.json").is_file():
        corpus, tok, train_ids, held_ids = _read_data(data)
        log(f"data from {data}: train {len(train_ids) / 1e6:.2f} M tokens, held-out {len(held_ids) / 1e6:.3f} M")
    else:
        corpus = build_corpus(Path(args.stdlib) if args.stdlib else None, Path(args.man) if args.man else None,
                              heldout_frac=args.heldout_frac, max_stdlib_mb=args.max_stdlib_mb,
                              max_man_mb=args.max_man_mb, site=Path(args.site) if args.site not in ("auto", "")
                              else (None if args.site == "" else "auto"), max_site_mb=args.max_site_mb, log=log)
        tok = train_tokenizer(corpus.train, args.vocab, log=log)
        train_ids = encode_stream(tok, corpus.train)
        held_ids = encode_stream(tok, corpus.heldout)
        log(f"tokens: train {len(train_ids) / 1e6:.2f} M, held-out {len(held_ids) / 1e6:.3f} M "
            f"({corpus.n_chars / max(1, len(train_ids) + len(held_ids)):.2f} chars/token)")
        if data is not None:
            _write_data(data, corpus, tok, train_ids, held_ids)
            log(f"data written to {data}")
    if args.prepare_only:
        return 0

    torch.manual_seed(args.seed)
    model = make_model(tok.get_vocab_size(), args.hidden, args.layers, args.heads, args.ff, args.seq)
    if args.arch == "stem":
        from llmeff import stem

        stem.convert(model, seed=args.seed)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: Llama{' STEM' if args.arch == 'stem' else ''} {args.layers}x{args.hidden} ff {args.ff}, "
        f"{n_params / 1e6:.2f} M parameters, on {device}")
    step_model = torch.compile(model) if (args.compile and device.type == "cuda") else model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    train_t = torch.from_numpy(train_ids.astype(np.int64)).to(device)   # ~15 M tokens: 120 MB on the GPU
    window = torch.arange(args.seq + 1, device=device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t_train0 = time.time()
    train_budget = max(1.0, deadline - args.reserve_s - t_train0)
    log(f"training for {train_budget:.0f} s")
    step, tokens, losses = 0, 0, []
    model.train()
    hi = len(train_ids) - args.seq - 1
    cut_short = False
    while True:
        now = time.time()
        frac = (now - t_train0) / train_budget
        if args.steps is not None:
            if step >= args.steps:
                break
            if frac >= 1.0:
                cut_short = True
                log(f"warning: the --minutes cap stopped training at step {step} of --steps {args.steps}")
                break
            frac = step / args.steps
        elif frac >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.from_numpy(rng.integers(0, hi, size=args.batch)).to(device, non_blocking=True)
        x = train_t[starts[:, None] + window]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = step_model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += args.batch * args.seq
        if step % 50 == 0 or step == 1:
            lv = loss.item()
            losses.append((step, round(time.time() - t_train0, 1), round(lv, 4)))
            log(f"step {step}: loss {lv:.3f}, lr {lr:.2e}, {tokens / (time.time() - t_train0):,.0f} tokens/s")
    train_s = time.time() - t_train0
    tps = tokens / train_s
    held_loss = evaluate(model, held_ids, args.seq, max(1, args.batch // 2), device, max_windows=args.eval_windows)
    log(f"done: {step} steps, {tokens / 1e6:.1f} M tokens in {train_s:.0f} s ({tps:,.0f} tokens/s); "
        f"held-out loss {held_loss:.4f} (ppl {math.exp(held_loss):.2f})")

    from transformers import PreTrainedTokenizerFast

    corpus_args = {"stdlib": corpus.stats.get("stdlib", {}).get("root"), "man": corpus.stats.get("man", {}).get("root"),
                   "site": corpus.stats.get("site", {}).get("root"), "max_stdlib_mb": args.max_stdlib_mb,
                   "max_man_mb": args.max_man_mb, "max_site_mb": args.max_site_mb,
                   "heldout_frac": args.heldout_frac}
    info = {
        "command": " ".join(["python -m llmeff.lm.train_small_lm", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "params": n_params, "steps": step, "tokens": tokens, "train_seconds": round(train_s, 1),
        "tokens_per_second": round(tps), "heldout_loss": held_loss, "heldout_ppl": math.exp(held_loss),
        "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(held_ids)), "corpus": corpus.stats,
        "corpus_args": corpus_args, "loss_curve": losses, "total_seconds": round(time.time() - t_start, 1),
        "arch": args.arch, "steps_requested": args.steps, "cut_short": cut_short, "seq": args.seq,
        "batch": args.batch, "hidden": args.hidden, "layers": args.layers, "ff": args.ff, "seed": args.seed,
        "data": str(data) if data is not None else None,
    }
    model.to(torch.bfloat16)
    model.config.llmeff_train = info              # the training record travels inside config.json
    model.save_pretrained(out, max_shard_size=14_800_000, safe_serialization=True)  # 4 shards < 15 MB
    (out / "generation_config.json").unlink(missing_ok=True)   # bos/eos/pad are in config.json
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=None, padding_side="left")
    fast.save_pretrained(out)
    if args.save_heldout:
        np.save(out / "heldout_tokens.npy", held_ids)
        (out / "train_log.json").write_text(json.dumps(info, indent=2))
    print("train_log: " + json.dumps({k: v for k, v in info.items() if k != "loss_curve"}), flush=True)
    sizes = sorted((p.stat().st_size for p in out.glob("*.safetensors")), reverse=True)
    log(f"saved to {out} ({len(sizes)} safetensors shard(s), largest {sizes[0] / 1e6:.1f} MB); "
        f"total {time.time() - t_start:.0f} s")
    return 0


def _write_data(folder: Path, corpus, tok, train_ids: np.ndarray, held_ids: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    np.save(tmp / "train_ids.npy", train_ids)
    np.save(tmp / "heldout_ids.npy", held_ids)
    (tmp / "corpus.json").write_text(json.dumps({"stats": corpus.stats, "n_chars": corpus.n_chars}))
    tok.save(str(tmp / "tokenizer.json"))          # written last: its presence marks a complete folder
    for name in ("train_ids.npy", "heldout_ids.npy", "corpus.json", "tokenizer.json"):
        os.replace(tmp / name, folder / name)
    tmp.rmdir()


def _read_data(folder: Path):
    from tokenizers import Tokenizer

    from .corpus import Corpus

    meta = json.loads((folder / "corpus.json").read_text())
    corpus = Corpus(stats=meta["stats"])
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return corpus, tok, np.load(folder / "train_ids.npy"), np.load(folder / "heldout_ids.npy")


if __name__ == "__main__":
    sys.exit(main())
