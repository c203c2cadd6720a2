"""Gathered feed-forward (FF) for per-sequence expert sets: the GRIFFIN decode step.

For a batch of ``B`` sequences, sequence ``b`` keeps its own ``k`` FF neurons ``idx[b]``. With
``x`` of shape ``(B, S, d)`` (``S`` new tokens per sequence, usually 1):

* gated (``w_gate`` given):  ``h[b,s,t] = act(x[b,s] . w_gate[idx[b,t]] + b_gate) * (x[b,s] . w_up[idx[b,t]] + b_up)``
* plain:                     ``h[b,s,t] = act(x[b,s] . w_up[idx[b,t]] + b_up)``
* output:                    ``y[b,s] = sum_t h[b,s,t] * w_down_t[idx[b,t]]``

``w_up``/``w_gate`` are ``(d_ff, d)`` (``nn.Linear`` layout, rows = neurons), ``w_down_t`` is the
down projection **transposed**, ``(d_ff, d_out)``, so that both matrices are read by gathered *rows*
(coalesced). The output bias of the down projection is not included (add it outside).

The Triton path is two kernels: (1) gathered gate/up rows, dot products, activation and product fused in
registers, ``h`` kept in float32; (2) gathered rows of ``w_down_t`` weighted by ``h``. Weight bytes read:
``B * k`` rows of each matrix, so at batch 1 it reads ``k / d_ff`` of the dense FF; sequences do not share
reads (see ``benchmarks/griffin.py`` for what that costs at batch 8).
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


def _act_torch(name: str, t: torch.Tensor) -> torch.Tensor:
    if name == "silu":
        return torch.nn.functional.silu(t)
    if name == "gelu":
        return torch.nn.functional.gelu(t)
    if name == "gelu_tanh":
        return torch.nn.functional.gelu(t, approximate="tanh")
    if name == "relu":
        return torch.relu(t)
    raise ValueError(f"act must be one of {ACTIVATIONS} or a callable, got {name!r}")


def gathered_ff_reference(x, idx, w_up, w_down_t, w_gate=None, b_up=None, b_gate=None, act="silu"):
    """The torch reference (any device/dtype): gathers ``(B, k, d)`` weight copies, then batched matmuls.

    ``act`` is a name from :data:`ACTIVATIONS` or any elementwise callable (e.g. the model's own module).
    """
    squeeze = x.dim() == 2
    xs = x.unsqueeze(1) if squeeze else x
    idx = idx.long()
    f = (lambda t: _act_torch(act, t)) if isinstance(act, str) else act
    wu = w_up[idx]                                    # (B, k, d)
    u = torch.einsum("bsd,bkd->bsk", xs, wu)
    if b_up is not None:
        u = u + b_up[idx].unsqueeze(1)
    if w_gate is not None:
        g = torch.einsum("bsd,bkd->bsk", xs, w_gate[idx])
        if b_gate is not None:
            g = g + b_gate[idx].unsqueeze(1)
        h = f(g) * u
    else:
        h = f(u)
    y = torch.einsum("bsk,bkn->bsn", h, w_down_t[idx])
    return y.squeeze(1) if squeeze else y


def _check(x, idx, w_up, w_down_t, w_gate, b_up, b_gate):
    if x.dim() not in (2, 3):
        raise ValueError(f"x must be (B, d) or (B, S, d), got {tuple(x.shape)}")
    B, d = x.shape[0], x.shape[-1]
    if idx.dim() != 2 or idx.shape[0] != B:
        raise ValueError(f"idx must be (B, k) with B={B}, got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be int32 or int64, got {idx.dtype}")
    if w_up.dim() != 2 or w_up.shape[1] != d:
        raise ValueError(f"w_up must be (d_ff, {d}), got {tuple(w_up.shape)}")
    d_ff = w_up.shape[0]
    if w_gate is not None and tuple(w_gate.shape) != tuple(w_up.shape):
        raise ValueError(f"w_gate must be shaped like w_up {tuple(w_up.shape)}, got {tuple(w_gate.shape)}")
    if w_down_t.dim() != 2 or w_down_t.shape[0] != d_ff:
        raise ValueError(f"w_down_t must be (d_ff={d_ff}, d_out), got {tuple(w_down_t.shape)}")
    for nm, b in (("b_up", b_up), ("b_gate", b_gate)):
        if b is not None and tuple(b.shape) != (d_ff,):
            raise ValueError(f"{nm} must be ({d_ff},), got {tuple(b.shape)}")


def gathered_ff(
    x: torch.Tensor,
    idx: torch.Tensor,
    w_up: torch.Tensor,
    w_down_t: torch.Tensor,
    w_gate: torch.Tensor | None = None,
    b_up: torch.Tensor | None = None,
    b_gate: torch.Tensor | None = None,
    act="silu",
    backend: str | None = None,
) -> torch.Tensor:
    """Per-sequence gathered FF (see the module docstring for the equations).

    Args:
        x: ``(B, d)`` or ``(B, S, d)`` activations.
        idx: ``(B, k)`` int32/int64 neuron indices per sequence, each in ``[0, d_ff)``.
        w_up: ``(d_ff, d)`` up (or plain input) weight; any strides (rows contiguous is fastest).
        w_down_t: ``(d_ff, d_out)`` transposed down weight.
        w_gate: ``(d_ff, d)`` gate weight for gated FFs, else ``None``.
        b_up, b_gate: optional ``(d_ff,)`` biases.
        act: ``"silu"``, ``"gelu"``, ``"gelu_tanh"``, ``"relu"``, or a callable (torch backend only; with
            ``backend="auto"`` a callable selects the torch path).
        backend: see :mod:`tensorkernels`.

    Returns:
        ``(B, d_out)`` or ``(B, S, d_out)`` in ``x.dtype``.
    """
    _check(x, idx, w_up, w_down_t, w_gate, b_up, b_gate)
    tensors = [t for t in (x, idx, w_up, w_down_t, w_gate, b_up, b_gate) if t is not None]
    choice = resolve_backend(backend, *tensors)
    if choice == "triton" and not isinstance(act, str):
        if backend == "triton":
            raise ValueError("backend='triton' needs act given by name, one of " + ", ".join(ACTIVATIONS))
        choice = "torch"
    if choice == "triton":
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        from ._triton_gathered_ff import triton_gathered_ff

        return triton_gathered_ff(x, idx, w_up, w_down_t, w_gate, b_up, b_gate, act)
    return gathered_ff_reference(x, idx, w_up, w_down_t, w_gate, b_up, b_gate, act)
