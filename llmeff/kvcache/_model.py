"""Small private helpers to find the pieces of a HF decoder that the cache policies hook.

(Private to :mod:`llmeff.kvcache`; another helper may later provide shared model helpers, at which point
these can defer to them.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedModelError


@dataclass
class AttentionInfo:
    """One self-attention module of the decoder."""

    module: nn.Module
    layer_idx: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


def attention_modules(model: nn.Module) -> list[AttentionInfo]:
    """The decoder's self-attention modules, in layer order.

    A module qualifies when it has ``layer_idx``, ``head_dim``, ``num_key_value_groups`` and ``k_proj`` (the
    functional-attention layout of Llama, Mistral, Qwen2/3, Gemma, Phi-3 style models in transformers 5.x).
    """
    found: list[AttentionInfo] = []
    for mod in model.modules():
        if all(hasattr(mod, a) for a in ("layer_idx", "head_dim", "num_key_value_groups", "k_proj")):
            kv_out = mod.k_proj.out_features
            num_kv = kv_out // mod.head_dim
            found.append(AttentionInfo(mod, int(mod.layer_idx), num_kv * mod.num_key_value_groups, num_kv,
                                       int(mod.head_dim)))
    if not found:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no self-attention modules with q/k/v projections and a layer_idx were found; "
            "llmeff.kvcache supports Llama-, Mistral-, Qwen2/3-, Gemma- and Phi-3-style decoders in transformers 5.x"
        )
    found.sort(key=lambda a: a.layer_idx)
    return found


def rotary_embedding(model: nn.Module) -> nn.Module | None:
    """The model's rotary-embedding module (the one holding ``inv_freq``), or None."""
    for mod in model.modules():
        if hasattr(mod, "inv_freq") and isinstance(getattr(mod, "inv_freq"), torch.Tensor):
            return mod
    return None


def rope_params(model: nn.Module) -> tuple[torch.Tensor, float]:
    """``(inv_freq (D/2,) float32, attention_scaling)`` of the model's RoPE."""
    rot = rotary_embedding(model)
    if rot is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no rotary embedding (inv_freq); ShadowKV needs RoPE")
    return rot.inv_freq.detach().float(), float(getattr(rot, "attention_scaling", 1.0))
