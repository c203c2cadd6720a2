"""SFT and RLVR (GRPO) for the Bridge benchmark, and held-out evaluation of response sets.

* :func:`sft`: teacher-forced cross-entropy on the answer tokens of :mod:`llmeff.bridge.tasks` problems
  (stops on a wall-clock budget, a step count, or once sampled accuracy reaches ``stop_acc``).
* :func:`grpo_step`: one on-policy GRPO step: ``n`` responses per prompt from :func:`llmeff.bridge.generate`
  (interdependent when the model has Bridge blocks), reward 1/0 from the exact checker, group-normalised
  advantages ``(r - mean_group) / (std_group + eps)``, loss ``-sum A_i log pi(token) / #tokens`` over the
  response tokens. One update per batch, so the importance ratio is 1 and no clipping is needed. The
  log-probabilities are recomputed by a teacher-forced forward with the *same* groups, masks and positions as
  the sampling, so with Bridge each sample's log-probability depends on the others, as in generation.
* :func:`evaluate`: :func:`llmeff.bridge.tasks.set_metrics` at several widths ``N``.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from . import generate, groups, position_ids_from_mask
from .tasks import EOS, MAX_ANSWER, PAD, CharTokenizer, Problem, sample_problems, set_metrics, sft_batch


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def answer_logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, T, V)`` (float32) of a left-padded batch with positions from the mask."""
    pos = position_ids_from_mask(mask)
    with _autocast(ids.device):
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits.float()


def sft(model: nn.Module, tok: CharTokenizer, seconds: float = 60.0, max_steps: int | None = None,
        batch: int = 256, lr: float = 2e-3, warmup: int = 100, seed: int = 0, stop_acc: float | None = None,
        check_every: int = 250, check_problems: int = 256, log=print) -> dict:
    """Supervised warm-up of ``model`` (all its trainable parameters) on the task mix.

    Stops at ``seconds`` of wall-clock time, after ``max_steps``, or at a check (every ``check_every`` steps)
    where the sampled (temperature 1) accuracy on ``check_problems`` fixed training-side problems reaches
    ``stop_acc``. Learning rate: linear warm-up, then cosine over ``max_steps`` (or the time budget).
    Returns the training record."""
    dev = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    check = sample_problems(check_problems, np.random.default_rng(seed + 999))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    t0 = time.time()
    step, losses, checks = 0, [], []
    model.train()
    while True:
        el = time.time() - t0
        if el >= seconds or (max_steps is not None and step >= max_steps):
            break
        frac = step / max_steps if max_steps else el / max(seconds, 1e-9)
        cur = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = cur
        ids, mask, lmask = sft_batch(tok, sample_problems(batch, rng), rng, dev)
        logits = answer_logits(model, ids[:, :-1], mask[:, :-1])
        tgt = ids[:, 1:]
        lm = lmask[:, 1:]
        loss = nn.functional.cross_entropy(logits[lm], tgt[lm])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            losses.append((step, round(time.time() - t0, 1), round(loss.item(), 4)))
        if stop_acc is not None and step % check_every == 0:
            acc = evaluate(model, tok, check, widths=(1,), seed=seed + step, log=None)[1]["accuracy"]
            model.train()
            checks.append((step, round(acc, 4)))
            log(f"sft step {step}: loss {loss.item():.3f}, sampled accuracy {acc:.3f} ({time.time() - t0:.0f} s)")
            if acc >= stop_acc:
                break
    model.eval()
    return {"steps": step, "seconds": round(time.time() - t0, 1), "loss_curve": losses, "checks": checks,
            "final_loss": losses[-1][2] if losses else None}


def response_logprobs(model: nn.Module, out, n: int) -> torch.Tensor:
    """Log-probabilities ``(B, R)`` of the sampled response tokens of ``out`` (a
    :class:`llmeff.bridge.GenerateOutput`), recomputed with gradients under ``groups(model, n)`` with the
    generation's masks and positions; zero where the response mask is 0."""
    seq, mask, L = out.sequences, out.attention_mask, out.prompt_len
    with groups(model, n):
        logits = answer_logits(model, seq[:, :-1], mask[:, :-1])
    lp = torch.log_softmax(logits[:, L - 1:], -1)
    tok = out.responses
    got = lp.gather(-1, tok[..., None])[..., 0]
    return got * out.response_mask.to(got.dtype)


def grpo_step(model: nn.Module, opt: torch.optim.Optimizer, params: list[torch.Tensor], tok: CharTokenizer,
              problems: list[Problem], n: int = 4, temperature: float = 1.0, seed: int = 0,
              eps: float = 1e-4, max_grad_norm: float = 1.0) -> dict:
    """One GRPO step on ``problems`` with ``n`` responses each; updates ``params`` through ``opt``.

    Returns ``{"reward": mean reward, "loss": float, "tokens": response tokens, "mixed": share of groups
    with both correct and wrong responses}``."""
    dev = next(model.parameters()).device
    ids, am = tok.batch_prompts([p.prompt for p in problems], dev)
    model.eval()
    out = generate(model, ids, n=n, attention_mask=am, max_new_tokens=MAX_ANSWER, temperature=temperature,
                   eos_token_id=EOS, pad_token_id=PAD, seed=seed)
    texts = [tok.decode(r) for r in out.responses.cpu()]
    r = torch.tensor([problems[i // n].reward(t) for i, t in enumerate(texts)], device=dev).view(-1, n)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + eps)).reshape(-1)
    rm = out.response_mask.float()
    logp = response_logprobs(model, out, n)
    loss = -(adv[:, None] * logp * rm).sum() / rm.sum().clamp_min(1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    mixed = ((r.min(1).values == 0) & (r.max(1).values == 1)).float().mean().item()
    return {"reward": r.mean().item(), "loss": loss.item(), "tokens": int(rm.sum().item()), "mixed": mixed}


@torch.no_grad()
def sample_sets(model: nn.Module, tok: CharTokenizer, problems: list[Problem], n: int, temperature: float = 1.0,
                seed: int = 0, max_batch: int = 2048) -> list[list[str]]:
    """``n`` decoded responses per problem (one Bridge group each), in batches of at most ``max_batch``
    sequences."""
    dev = next(model.parameters()).device
    per = max(1, max_batch // n)
    texts: list[list[str]] = []
    for c in range(0, len(problems), per):
        chunk = problems[c:c + per]
        ids, am = tok.batch_prompts([p.prompt for p in chunk], dev)
        out = generate(model, ids, n=n, attention_mask=am, max_new_tokens=MAX_ANSWER, temperature=temperature,
                       eos_token_id=EOS, pad_token_id=PAD, seed=seed + c)
        dec = [tok.decode(r) for r in out.responses.cpu()]
        texts += [dec[i * n:(i + 1) * n] for i in range(len(chunk))]
    return texts


def evaluate(model: nn.Module, tok: CharTokenizer, problems: list[Problem], widths=(1, 2, 4, 8, 16),
             temperature: float = 1.0, seed: int = 0, max_batch: int = 2048, log=print) -> dict:
    """``{N: set_metrics(...)}`` for each width ``N`` in ``widths`` (sets of ``N`` interdependent responses
    when the model has Bridge blocks, independent ones otherwise)."""
    model.eval()
    res = {}
    for N in widths:
        texts = sample_sets(model, tok, problems, N, temperature, seed=seed + 7919 * N, max_batch=max_batch)
        res[N] = set_metrics(problems, texts)
        if log:
            log(f"  N={N}: " + ", ".join(f"{k} {v:.3f}" for k, v in res[N].items() if isinstance(v, float)))
    return res
