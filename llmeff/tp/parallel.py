"""A small tensor-parallel wrapper for Llama-style HF models in plain ``torch.distributed``.

Every rank holds the full model when :func:`shard` is called (load it on each rank, same seed/weights);
:func:`shard` slices it in place (Megatron layout):

* column-parallel (output rows split): ``q_proj``, ``k_proj``, ``v_proj`` by whole heads (``num_heads``
  and ``num_kv_heads`` must be divisible by the world size), ``gate_proj`` and ``up_proj`` by FF neurons;
* row-parallel (input columns split): ``o_proj`` and ``down_proj``; their partial sums ``(B, S, d)`` are
  reduced by the layer's communication codec (:mod:`llmeff.tp.codecs`), one codec instance per layer
  site (``"L{i}.o"``, ``"L{i}.down"``), so calibrated codecs keep per-site ranges;
* embeddings, norms and the LM head stay replicated (every rank computes the same logits).

Attention reshapes with ``-1`` heads in transformers 5.x, so a sliced ``q/k/v`` just yields fewer heads per
rank; the GQA ratio is unchanged. Biases of row-parallel layers are added once, after the reduction.

Usage (each of ``W`` processes, after ``dist.init_process_group``)::

    from llmeff import tp
    model = AutoModelForCausalLM.from_pretrained(path)         # full weights on every rank
    tpm = tp.shard(model, codec="ours")                         # rank/world from the default group
    tp.calibrate(tpm, calib_ids)                                # only codecs that need it ("ours")
    logits = model(input_ids=ids).logits                        # identical on every rank
    tpm.bits_per_value(), tpm.stats()                           # communication accounting
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..errors import LLMEffValueError, UnsupportedModelError
from ..models import find_layers, find_mlps
from .codecs import Codec, CommStats, make_codec


class RowParallelLinear(nn.Module):
    """``y = reduce(x_shard @ W_shard^T) + b`` with ``W_shard = W[:, cols]`` (this rank's input columns)."""

    def __init__(self, linear: nn.Linear, cols: slice, codec: Codec, site: str):
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach()[:, cols].contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.in_features = self.weight.shape[1]
        self.out_features = self.weight.shape[0]
        self.codec = codec
        self.site = site
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.linear(x, self.weight)
        if self.calibrating:                          # exact fp32 sum; record this rank's partial sums
            self.codec.observe(y)
            y32 = y.float()
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(y32)
            y = y32.to(y.dtype)
        else:
            y = self.codec.reduce(y)
        return y if self.bias is None else y + self.bias


def _column_slice(linear: nn.Linear, rows: slice) -> nn.Linear:
    out = nn.Linear(linear.in_features, rows.stop - rows.start, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            out.bias.copy_(linear.bias[rows])
    out.weight.requires_grad_(False)
    return out


@dataclass
class TPModel:
    """Handle returned by :func:`shard`: the (modified) model, rank, world and the codec per site."""

    model: nn.Module
    rank: int
    world: int
    codecs: dict = field(default_factory=dict)          # site -> Codec
    rows: dict = field(default_factory=dict)            # site -> RowParallelLinear

    def stats(self) -> CommStats:
        """Communication summed over every site."""
        tot = CommStats()
        for c in self.codecs.values():
            s = c.stats
            tot.calls += s.calls
            tot.values += s.values
            tot.payload_bytes += s.payload_bytes
            tot.wire_bytes += s.wire_bytes
            tot.seconds += s.seconds
        return tot

    def bits_per_value(self) -> float:
        return self.stats().bits_per_value

    def reset_stats(self) -> None:
        for c in self.codecs.values():
            c.stats = CommStats()


def check_world(config, world: int) -> None:
    """Check, from a ``transformers`` config alone (before any process starts), that the model's query and
    key-value heads and its FF width split evenly over ``world`` ranks, as :func:`shard` needs.

    Raises:
        LLMEffValueError: naming the sizes and the world size.
    """
    cfg = getattr(config, "get_text_config", lambda: config)()
    nq = getattr(cfg, "num_attention_heads", None)
    nkv = getattr(cfg, "num_key_value_heads", None) or nq
    dff = getattr(cfg, "intermediate_size", None)
    if nq is not None and (nq % world or nkv % world):
        raise LLMEffValueError(f"{nq} query / {nkv} key-value heads cannot be split over {world} ranks; use a "
                               f"world size that divides both")
    if dff is not None and dff % world:
        raise LLMEffValueError(f"FF width {dff} is not divisible by the world size {world}")


def shard(model: nn.Module, codec: str | Callable[[str], Codec] = "bf16", rank: int | None = None,
          world: int | None = None, backend: str | None = None, **codec_kw) -> TPModel:
    """Slice ``model`` (a Llama-style ``*ForCausalLM``) in place for tensor parallelism.

    Args:
        codec: a codec name (:data:`llmeff.tp.codecs.CODECS`) or a factory ``site -> Codec``.
        rank, world: default: from the initialised default process group (``0, 1`` without one).
        backend: kernel backend of the quantize/dequantize kernels (see :mod:`tensorkernels`).
        codec_kw: passed to :func:`make_codec`.
    """
    if rank is None or world is None:
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
    _, layers = find_layers(model)
    specs = find_mlps(model)
    factory = codec if callable(codec) else (lambda site: make_codec(codec, backend=backend, **codec_kw))
    tpm = TPModel(model, rank, world)
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        spec = specs[i]
        if attn is None or not all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
            raise UnsupportedModelError(f"layer {i} has no q/k/v/o projections (Llama-style attention needed)")
        if spec.kind != "gated" or spec.fused or spec.conv1d:
            raise UnsupportedModelError("tensor parallelism here supports gated FFs with separate "
                                        "gate_proj/up_proj/down_proj (Llama, Mistral, Qwen2/3)")
        hd = attn.head_dim
        nq = attn.q_proj.out_features // hd
        nkv = attn.k_proj.out_features // hd
        if nq % world or nkv % world:
            raise LLMEffValueError(f"{nq} query / {nkv} key-value heads cannot be split over {world} ranks")
        dff = spec.d_ff
        if dff % world:
            raise LLMEffValueError(f"FF width {dff} is not divisible by the world size {world}")
        qs = slice(rank * nq // world * hd, (rank + 1) * nq // world * hd)
        ks = slice(rank * nkv // world * hd, (rank + 1) * nkv // world * hd)
        fs = slice(rank * dff // world, (rank + 1) * dff // world)
        attn.q_proj = _column_slice(attn.q_proj, qs)
        attn.k_proj = _column_slice(attn.k_proj, ks)
        attn.v_proj = _column_slice(attn.v_proj, ks)
        for site, owner, attr, cols in ((f"L{i}.o", attn, "o_proj", qs), (f"L{i}.down", spec.module, "down_proj", fs)):
            c = factory(site)
            rp = RowParallelLinear(getattr(owner, attr), cols, c, site)
            setattr(owner, attr, rp)
            tpm.codecs[site] = c
            tpm.rows[site] = rp
        spec.module.gate_proj = _column_slice(spec.module.gate_proj, fs)
        spec.module.up_proj = _column_slice(spec.module.up_proj, fs)
    return tpm


@torch.no_grad()
def calibrate(tpm: TPModel, batches, forward: Callable | None = None) -> None:
    """Record per-feature ranges of every site's partial sums over ``batches`` (``(B, S)`` token-id
    tensors), then fix them (ranges shared across ranks). A no-op for codecs that need no calibration.
    All ranks must call it with the same number of batches."""
    if not any(c.needs_calibration for c in tpm.codecs.values()):
        return
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    for rp in tpm.rows.values():
        rp.calibrating = True
    try:
        for ids in batches:
            (forward or (lambda t: tpm.model(input_ids=t, use_cache=False)))(ids)
    finally:
        for rp in tpm.rows.values():
            rp.calibrating = False
    for c in tpm.codecs.values():
        c.finalize()
