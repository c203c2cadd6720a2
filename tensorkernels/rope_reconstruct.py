"""Rebuild selected keys from a low-rank factorisation and apply rotary position embedding, in one pass
(ShadowKV's decode step).

Given the pre-RoPE keys of a sequence factorised as ``K_pre[b] ~= A[b] @ Bf[b]`` (``A``: (T, r), ``Bf``:
(r, Hkv*D), the heads side by side), token indices ``idx[b, h, :]`` to rebuild for key-value head ``h`` and the
rotary position of every token ``positions[b, t]``, return

    out[b, h, n] = rope(A[b, idx[b,h,n]] @ Bf[b, :, h*D:(h+1)*D],  positions[b, idx[b,h,n]])

with the rotate-half RoPE of Llama-style models: for ``j < D/2``, ``theta = pos * inv_freq[j]``,
``c = cos(theta) * s``, ``si = sin(theta) * s`` (``s``: the attention scaling of the RoPE variant, 1 for most),
``out[j] = x[j] c - x[j + D/2] si`` and ``out[j + D/2] = x[j + D/2] c + x[j] si``.

The Triton kernel never materialises the (T, Hkv*D) keys: it reads the r-vectors of the selected rows only.
"""
from __future__ import annotations

import torch

from ._dispatch import resolve_backend


def _check(A, Bf, idx, positions, inv_freq):
    if A.dim() != 3 or Bf.dim() != 3 or idx.dim() != 3 or positions.dim() != 2 or inv_freq.dim() != 1:
        raise ValueError("expected A (B, T, r), Bf (B, r, Hkv*D), idx (B, Hkv, N), positions (B, T), inv_freq (D/2,)")
    B, T, r = A.shape
    if Bf.shape[0] != B or Bf.shape[1] != r:
        raise ValueError(f"Bf must be (B={B}, r={r}, Hkv*D), got {tuple(Bf.shape)}")
    hk = idx.shape[1]
    D = 2 * inv_freq.shape[0]
    if Bf.shape[2] != hk * D:
        raise ValueError(f"Bf's last dim {Bf.shape[2]} != Hkv*D = {hk}*{D}")
    if idx.shape[0] != B or positions.shape != (B, T):
        raise ValueError(f"idx must be (B, Hkv, N) and positions (B, T) with B={B}, T={T}")
    return B, T, r, hk, D


def rope_reconstruct_reference(A, Bf, idx, positions, inv_freq, attention_scaling: float = 1.0):
    """The torch reference (any device/dtype; computes in float32, or float64 for float64 inputs)."""
    B, T, r, hk, D = _check(A, Bf, idx, positions, inv_freq)
    cdt = torch.float64 if A.dtype == torch.float64 else torch.float32
    N = idx.shape[2]
    idx = idx.long()
    rows = torch.gather(A.to(cdt).unsqueeze(1).expand(B, hk, T, r), 2, idx.unsqueeze(-1).expand(B, hk, N, r))
    Bh = Bf.to(cdt).reshape(B, r, hk, D).permute(0, 2, 1, 3)  # (B, hk, r, D)
    x = rows @ Bh  # (B, hk, N, D)
    pos = torch.gather(positions.long().unsqueeze(1).expand(B, hk, T), 2, idx).to(cdt)
    # theta in float32 like transformers' rotary embedding (float64 only for float64 inputs)
    th = pos.unsqueeze(-1) * (inv_freq.double() if cdt == torch.float64 else inv_freq.float())  # (B, hk, N, D/2)
    c, s = torch.cos(th) * attention_scaling, torch.sin(th) * attention_scaling
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return out.to(A.dtype)


def rope_reconstruct(A, Bf, idx, positions, inv_freq, attention_scaling: float = 1.0, backend: str | None = None):
    """Rebuild and rotate the selected keys: (B, Hkv, N, D) in ``A.dtype``; see the module docstring.

    Args:
        A: (B, T, r) left factor (rows: tokens). Bf: (B, r, Hkv*D) right factor.
        idx: (B, Hkv, N) integer token indices per key-value head. positions: (B, T) rotary positions.
        inv_freq: (D/2,) float32 RoPE inverse frequencies. attention_scaling: RoPE output scale.
        backend: see :mod:`tensorkernels`.
    """
    _check(A, Bf, idx, positions, inv_freq)
    if resolve_backend(backend, A, Bf, idx, positions, inv_freq) == "triton":
        from ._triton_rope_reconstruct import triton_rope_reconstruct

        return triton_rope_reconstruct(A, Bf, idx, positions, inv_freq, float(attention_scaling))
    return rope_reconstruct_reference(A, Bf, idx, positions, inv_freq, attention_scaling)
