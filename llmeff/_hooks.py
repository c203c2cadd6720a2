"""Helpers for hooks on unmodified HF models: which phase a forward is in, batch shape, attention mask.

The phase is read from the **cache position**, never from the number of new tokens: a forward whose
KV cache is empty (or that has no cache at all) is a *prefill*; a forward that continues a non-empty
cache is a *decode* step, whatever its length (one token, several speculative tokens, or a
teacher-forced continuation). transformers 5.x passes the cache as ``cache=`` (>= 5.2x) or
``past_key_values=``, and some versions also pass ``cache_position``; all are understood.

While ``torch.compile`` traces, or a CUDA graph is being captured, the phase cannot be read without a
device sync; :func:`tracing` tells callers to decide from their own Python state instead (see
:mod:`llmeff.griffin`).
"""
from __future__ import annotations

from typing import Any

import torch


def tracing() -> bool:
    """True under ``torch.compile`` tracing or CUDA-graph capture (no data-dependent host code allowed)."""
    if torch.compiler.is_compiling():
        return True
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            return bool(torch.cuda.is_current_stream_capturing())
        except Exception:  # pragma: no cover
            return False
    return False


def get_cache(kwargs: dict[str, Any]) -> Any:
    for key in ("cache", "past_key_values"):
        c = kwargs.get(key)
        if c is not None:
            return c
    return None


def past_length(args: tuple, kwargs: dict[str, Any]) -> int | torch.Tensor:
    """Number of tokens already in the cache before this forward (0: prefill). May be a 0-d tensor
    (static caches); converting it to a Python number syncs the device."""
    cache = get_cache(kwargs)
    if cache is not None:
        if hasattr(cache, "get_seq_length"):
            return cache.get_seq_length()
        if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuples
            return cache[0][0].shape[-2]
    cp = kwargs.get("cache_position")
    if isinstance(cp, torch.Tensor) and cp.numel() > 0:
        return cp.reshape(-1)[0]
    return 0


def is_prefill(args: tuple, kwargs: dict[str, Any]) -> bool:
    """True when this forward starts at cache position 0 (eager code only: may sync)."""
    p = past_length(args, kwargs)
    if isinstance(p, torch.Tensor):
        return bool(p.item() == 0)
    return int(p) == 0


def batch_shape(args: tuple, kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """``(batch, new tokens)`` of a causal-LM forward call, from ``input_ids`` or ``inputs_embeds``."""
    ids = kwargs.get("input_ids")
    if ids is None and args and isinstance(args[0], torch.Tensor):
        ids = args[0]
    if ids is not None and ids.dim() >= 2:
        return int(ids.shape[0]), int(ids.shape[1])
    emb = kwargs.get("inputs_embeds")
    if emb is not None and emb.dim() == 3:
        return int(emb.shape[0]), int(emb.shape[1])
    return None


def token_mask(args: tuple, kwargs: dict[str, Any], shape: tuple[int, int] | None) -> torch.Tensor | None:
    """``(B, S)`` bool mask of the real (non-padding) new tokens, from a 2-D ``attention_mask``
    (its last ``S`` columns), or ``None`` when every token counts."""
    am = kwargs.get("attention_mask")
    if am is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
        am = args[1]
    if not isinstance(am, torch.Tensor) or am.dim() != 2 or shape is None:
        return None
    B, S = shape
    if am.shape[0] != B or am.shape[1] < S:
        return None
    return am[:, -S:].bool()
