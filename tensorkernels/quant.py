"""Affine integer quantization with packing, and dequantize-and-sum over ranks (low-bit TP communication).

Codes (unsigned, ``bits`` in ``{4, 8}``)::

    s[n, d] = col_scale[d] * row_scale[n]            (row_scale = 1 when None)
    q[n, d] = clamp(round(x[n, d] / s[n, d] + col_zero[d]), 0, 2**bits - 1)
    x_hat   = (q - col_zero[d]) * s[n, d]

Symmetric per-token quantization (naive int4/int8) is ``col_scale = 1``, ``col_zero = 2**(bits-1)``,
``row_scale = absmax / (2**(bits-1) - 1)``; per-feature calibrated asymmetric ranges ``[lo, hi]`` are
``col_scale = (hi - lo) / (2**bits - 1)``, ``col_zero = -lo / col_scale`` and no row scale.

Packing: int8 codes are one byte each; int4 codes two per byte, column ``2j`` in the low nibble and
``2j+1`` in the high nibble (an odd last column leaves the high nibble 0). Packed rows are
``ceil(D * bits / 8)`` bytes.

* :func:`quantize_pack` ``(N, D)`` float -> ``(N, ceil(D*bits/8))`` uint8.
* :func:`dequantize_sum` ``(W, N, bytes)`` uint8 (+ per-rank row scales ``(W, N)``) -> ``(N, D)`` float32,
  the sum over the ``W`` ranks' dequantized payloads (the local half of a quantized all-reduce done as an
  all-gather). Summation is in rank order, so every rank gets bit-identical results.

Triton kernels on CUDA (or under ``TRITON_INTERPRET=1``), torch references everywhere (``backend=``).
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend

BITS = (4, 8)


def _check(bits: int, D: int, col_scale, col_zero) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    for name, t in (("col_scale", col_scale), ("col_zero", col_zero)):
        if t.dim() != 1 or t.shape[0] != D:
            raise ValueError(f"{name} must have shape ({D},), got {tuple(t.shape)}")


def packed_width(D: int, bits: int) -> int:
    """Bytes per packed row of ``D`` codes."""
    return (D * bits + 7) // 8


def quantize_reference(x, col_scale, col_zero, row_scale=None, bits: int = 4) -> torch.Tensor:
    """Unpacked codes ``(N, D)`` uint8 (torch reference; float32 arithmetic)."""
    s = col_scale.float().unsqueeze(0)
    if row_scale is not None:
        s = s * row_scale.float().unsqueeze(1)
    q = torch.round(x.float() / s + col_zero.float().unsqueeze(0))
    return q.clamp_(0, 2 ** bits - 1).to(torch.uint8)


def pack_reference(q: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 8:
        return q.contiguous()
    N, D = q.shape
    if D % 2:
        q = torch.cat([q, torch.zeros(N, 1, dtype=q.dtype, device=q.device)], 1)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_reference(p: torch.Tensor, D: int, bits: int) -> torch.Tensor:
    if bits == 8:
        return p[..., :D]
    lo, hi = p & 15, p >> 4
    return torch.stack([lo, hi], -1).reshape(*p.shape[:-1], -1)[..., :D]


def quantize_pack(x: torch.Tensor, col_scale: torch.Tensor, col_zero: torch.Tensor,
                  row_scale: torch.Tensor | None = None, bits: int = 4, backend: str | None = None) -> torch.Tensor:
    """Quantize ``x`` ``(N, D)`` (any float dtype) and pack: ``(N, packed_width(D, bits))`` uint8.

    Args:
        col_scale, col_zero: ``(D,)`` float32 per-feature scale (> 0) and zero point (in code units).
        row_scale: optional ``(N,)`` float32 per-token scale (> 0), multiplied into ``col_scale``.
        bits: 4 or 8.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (tokens, features), got shape {tuple(x.shape)}")
    N, D = x.shape
    _check(bits, D, col_scale, col_zero)
    if row_scale is not None and tuple(row_scale.shape) != (N,):
        raise ValueError(f"row_scale must have shape ({N},), got {tuple(row_scale.shape)}")
    ts = [x, col_scale, col_zero] + ([row_scale] if row_scale is not None else [])
    if resolve_backend(backend, *ts) == "triton":
        from ._triton_quant import triton_quantize_pack

        return triton_quantize_pack(x, col_scale, col_zero, row_scale, bits)
    return pack_reference(quantize_reference(x, col_scale, col_zero, row_scale, bits), bits)


def dequantize_sum(packed: torch.Tensor, col_scale: torch.Tensor, col_zero: torch.Tensor, D: int,
                   row_scale: torch.Tensor | None = None, bits: int = 4, backend: str | None = None) -> torch.Tensor:
    """``sum_w dequantize(packed[w])``: ``(N, D)`` float32.

    Args:
        packed: ``(W, N, packed_width(D, bits))`` uint8 (or ``(N, bytes)`` for one payload).
        col_scale, col_zero: ``(D,)`` float32, shared by every rank.
        row_scale: ``(W, N)`` float32 per-rank per-token scales (or ``(N,)`` for one payload), or ``None``.
    """
    if packed.dim() == 2:
        packed = packed.unsqueeze(0)
        row_scale = row_scale.unsqueeze(0) if row_scale is not None else None
    if packed.dim() != 3 or packed.dtype != torch.uint8:
        raise ValueError(f"packed must be uint8 (W, N, bytes), got {packed.dtype} {tuple(packed.shape)}")
    W, N, nb = packed.shape
    _check(bits, D, col_scale, col_zero)
    if nb != packed_width(D, bits):
        raise ValueError(f"packed rows have {nb} bytes, {D} codes of {bits} bits need {packed_width(D, bits)}")
    if row_scale is not None and tuple(row_scale.shape) != (W, N):
        raise ValueError(f"row_scale must have shape ({W}, {N}), got {tuple(row_scale.shape)}")
    ts = [packed, col_scale, col_zero] + ([row_scale] if row_scale is not None else [])
    if resolve_backend(backend, *ts) == "triton":
        from ._triton_quant import triton_dequantize_sum

        return triton_dequantize_sum(packed, col_scale, col_zero, D, row_scale, bits)
    q = unpack_reference(packed, D, bits).float()                       # (W, N, D)
    s = col_scale.float().view(1, 1, D)
    if row_scale is not None:
        s = s * row_scale.float().unsqueeze(-1)
    y = (q - col_zero.float().view(1, 1, D)) * s
    out = y[0].clone()
    for w in range(1, W):
        out += y[w]
    return out
