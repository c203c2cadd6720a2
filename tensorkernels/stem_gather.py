"""Gather-activate-multiply for STEM feed-forward blocks: ``h = act(gate) * table[idx]``.

In a STEM FF block (token-indexed embedding modules in place of the up projection) the intermediate
activation of token ``t`` is ``act(W_gate x_t) * E[token_t]``. With the gate pre-activations ``gate``
``(..., F)`` computed by a dense matmul, :func:`gather_act_mul` fuses the row gather from the table, the
activation and the product:

    ``h[r, f] = act(gate[r, f]) * table[idx[r], f]``

``table`` is ``(V, F)`` with any row stride (e.g. one layer's ``(V, F)`` slice of a token-major
``(V, L, F)`` buffer), ``idx`` holds one row number per gate row (``gate.shape[:-1]``). The Triton kernel
reads each gathered row once and writes ``h`` once (the torch reference materialises ``table[idx]`` and
``act(gate)`` first: three passes and two temporaries). Arithmetic is float32 in the kernel, rounded once
to ``gate.dtype``; the torch reference rounds after the activation too (as torch's own ops do), so the two
agree to the dtype's rounding, not bit for bit.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend
from .gathered_ff import ACTIVATIONS, _act_torch


def gather_act_mul_reference(gate: torch.Tensor, idx: torch.Tensor, table: torch.Tensor,
                             act="silu") -> torch.Tensor:
    """The torch reference (any device, differentiable in ``gate`` and ``table``)."""
    f = (lambda t: _act_torch(act, t)) if isinstance(act, str) else act
    rows = torch.nn.functional.embedding(idx.long(), table)
    return f(gate) * rows.to(gate.dtype)


def _check(gate, idx, table):
    if gate.dim() < 1:
        raise ValueError("gate must have at least one dimension (..., F)")
    if tuple(idx.shape) != tuple(gate.shape[:-1]):
        raise ValueError(f"idx must have shape gate.shape[:-1] = {tuple(gate.shape[:-1])}, got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be int32 or int64, got {idx.dtype}")
    if table.dim() != 2 or table.shape[1] != gate.shape[-1]:
        raise ValueError(f"table must be (V, {gate.shape[-1]}), got {tuple(table.shape)}")


def gather_act_mul(gate: torch.Tensor, idx: torch.Tensor, table: torch.Tensor, act="silu",
                   backend: str | None = None) -> torch.Tensor:
    """``act(gate) * table[idx]`` (see the module docstring).

    Args:
        gate: ``(..., F)`` gate pre-activations.
        idx: ``gate.shape[:-1]`` int32/int64 row numbers in ``[0, V)`` (not checked on the device: an
            out-of-range index is undefined behaviour in the Triton kernel, an error in torch).
        table: ``(V, F)`` rows (any strides; rows with unit column stride are fastest), any float dtype.
        act: ``"silu"``, ``"gelu"``, ``"gelu_tanh"``, ``"relu"`` or a callable (torch path only).
        backend: see :mod:`tensorkernels`. ``"auto"`` takes the torch path whenever autograd would need
            it (grad enabled and ``gate`` or ``table`` requiring grad): the kernel has no backward.

    Returns:
        ``(..., F)`` in ``gate.dtype``.
    """
    _check(gate, idx, table)
    choice = resolve_backend(backend, gate, idx, table)
    needs_grad = torch.is_grad_enabled() and (gate.requires_grad or table.requires_grad)
    if choice == "triton" and (needs_grad or not isinstance(act, str)):
        if backend == "triton":
            raise ValueError("backend='triton' has no backward and needs act given by name, one of "
                             + ", ".join(ACTIVATIONS) + " (call it under torch.no_grad())")
        choice = "torch"
    if choice == "triton":
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        from ._triton_stem_gather import triton_gather_act_mul

        return triton_gather_act_mul(gate, idx, table, act)
    return gather_act_mul_reference(gate, idx, table, act)


def gather_rows_reference(table: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``table[idx]`` (torch): ``table`` ``(V, W)``, ``idx`` ``(R,)`` -> ``(R, W)`` on ``table``'s device."""
    rows = table.index_select(0, idx.to(table.device).long())
    if out is None:
        return rows
    out.copy_(rows)
    return out


def gather_rows(table: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None = None,
                backend: str | None = None) -> torch.Tensor:
    """Rows ``table[idx]`` written to ``out`` ``(R, W)`` (allocated on ``idx``'s device when ``None``).

    The Triton kernel reads ``table`` through its pointer, so ``table`` may live in **pinned CPU memory** while
    ``idx`` and ``out`` are on the GPU: with unified virtual addressing a pinned (``cudaHostAlloc``) buffer is
    addressable from kernels, and the kernel pulls exactly the indexed rows over PCIe, no host synchronisation
    (the ids never leave the GPU). This is how :class:`llmeff.stem.TableOffload` fetches a step's STEM rows.
    ``backend="auto"`` takes the kernel when ``idx`` and ``out`` are on CUDA and ``table`` is on CUDA or
    pinned; the torch reference otherwise (which needs ``idx`` on ``table``'s device or copies it there).
    """
    if table.dim() != 2 or table.stride(1) != 1:
        raise ValueError(f"table must be (V, W) with unit column stride, got shape {tuple(table.shape)} "
                         f"strides {table.stride()}")
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"idx must be (R,) int32/int64, got {tuple(idx.shape)} {idx.dtype}")
    R, W = idx.shape[0], table.shape[1]
    if out is None:
        out = torch.empty((R, W), dtype=table.dtype, device=idx.device)
    if tuple(out.shape) != (R, W) or out.stride(1) != 1 or out.dtype != table.dtype:
        raise ValueError(f"out must be ({R}, {W}) {table.dtype} with unit column stride")
    host_ok = table.is_cuda or (table.device.type == "cpu" and table.is_pinned())
    choice = resolve_backend(backend, idx, out) if host_ok else resolve_backend(backend, idx, out, table)
    if choice == "triton":
        from ._triton_stem_gather import triton_gather_rows

        return triton_gather_rows(table, idx, out)
    return gather_rows_reference(table, idx, out)
