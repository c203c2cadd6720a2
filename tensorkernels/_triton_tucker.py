"""Triton mode product: ``out[a, j, b] = sum_i M[j, i] * T[a, i, b]`` without any permute copies."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._dispatch import interpreting


@triton.jit
def _mode_product_kernel(
    t_ptr, m_ptr, o_ptr, I, J, B,
    stride_ta, stride_ti, stride_mj, stride_mi, stride_oa, stride_oj,
    BJ: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr,
):
    a = tl.program_id(0).to(tl.int64)
    pj = tl.program_id(1)
    pb = tl.program_id(2)
    offs_j = pj * BJ + tl.arange(0, BJ)
    offs_b = pb * BB + tl.arange(0, BB)
    acc = tl.zeros((BJ, BB), dtype=tl.float32 if PRECISION != "fp64" else tl.float64)
    for k0 in range(0, I, BK):
        offs_k = k0 + tl.arange(0, BK)
        m = tl.load(
            m_ptr + offs_j[:, None] * stride_mj + offs_k[None, :] * stride_mi,
            mask=(offs_j[:, None] < J) & (offs_k[None, :] < I), other=0.0,
        )
        t = tl.load(
            t_ptr + a * stride_ta + offs_k[:, None] * stride_ti + offs_b[None, :],
            mask=(offs_k[:, None] < I) & (offs_b[None, :] < B), other=0.0,
        )
        if PRECISION == "fp64":
            acc += tl.dot(m, t, input_precision="ieee")
        elif PRECISION == "ieee":
            acc += tl.dot(m.to(tl.float32), t.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(m, t, out_dtype=tl.float32)
    tl.store(
        o_ptr + a * stride_oa + offs_j[:, None] * stride_oj + offs_b[None, :],
        acc.to(o_ptr.dtype.element_ty),
        mask=(offs_j[:, None] < J) & (offs_b[None, :] < B),
    )


def triton_mode_product(T: torch.Tensor, M: torch.Tensor, mode: int) -> torch.Tensor:
    shape = T.shape
    A = 1
    for s in shape[:mode]:
        A *= s
    B = 1
    for s in shape[mode + 1 :]:
        B *= s
    I = shape[mode]
    J = M.shape[0]
    out = torch.empty(*shape[:mode], J, *shape[mode + 1 :], dtype=T.dtype, device=T.device)
    if out.numel() == 0:
        return out
    T3 = T.reshape(A, I, B)
    if T.dtype == torch.float64:
        precision = "fp64"
    elif T.dtype == torch.float32:
        precision = "ieee"
    elif interpreting():
        precision = "ieee"  # Triton's CPU interpreter computes bf16 dots wrongly (seen with triton 3.9)
    else:
        precision = "native"  # bf16/fp16 operands, fp32 accumulation
    BJ = 16 if J <= 16 else (32 if J <= 32 else 64)
    BB = 128 if B >= 128 else max(16, triton.next_power_of_2(B))
    BK = 16 if I <= 16 else 32
    grid = (A, triton.cdiv(J, BJ), triton.cdiv(B, BB))
    _mode_product_kernel[grid](
        T3, M, out, I, J, B,
        T3.stride(0), T3.stride(1), M.stride(0), M.stride(1), J * B, B,
        BJ=BJ, BB=BB, BK=BK, PRECISION=precision, num_warps=4,
    )
    return out
