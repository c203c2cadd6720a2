"""Triton kernels for the r-space end of a ScaledGD step on an order-3 cube (ranks <= 16), one program each.

* :func:`triton_tucker_relative_change`: the float64 cross-Gram matrices ``U_a^T U_b`` of two iterates' factors
  (walked in ``BI``-row chunks), the three inner products ``<G_a, G_b x_1 M_1 x_2 M_2 x_3 M_3>`` on the
  zero-padded ``(RP, RP, RP)`` cores in registers, and the relative change: one launch where the torch path
  takes about 25.
* :func:`triton_rspace_tail`: everything of a step after the factor gradients (Grams, preconditioners, both
  updates, the relative change): one launch where the batched torch path takes about 45.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _grams(uo_ptr, un_ptr, I, R, BI: tl.constexpr, RP: tl.constexpr):
    """``(Uo^T Uo, Un^T Un, Uo^T Un)`` in float64 for one mode (``(I, R)`` row-major factors)."""
    offs_r = tl.arange(0, RP)
    mask_r = offs_r < R
    oo = tl.zeros((RP, RP), dtype=tl.float64)
    nn = tl.zeros((RP, RP), dtype=tl.float64)
    on = tl.zeros((RP, RP), dtype=tl.float64)
    for i0 in range(0, I, BI):
        offs_i = i0 + tl.arange(0, BI)
        m = (offs_i < I)[:, None] & mask_r[None, :]
        uo = tl.load(uo_ptr + offs_i[:, None] * R + offs_r[None, :], mask=m, other=0.0).to(tl.float64)
        un = tl.load(un_ptr + offs_i[:, None] * R + offs_r[None, :], mask=m, other=0.0).to(tl.float64)
        uot = tl.trans(uo)
        oo += tl.dot(uot, uo, input_precision="ieee")
        nn += tl.dot(tl.trans(un), un, input_precision="ieee")
        on += tl.dot(uot, un, input_precision="ieee")
    return oo, nn, on


@triton.jit
def _gram1(u_ptr, I, R, BI: tl.constexpr, RP: tl.constexpr):
    """``U^T U`` in float64 (``(I, R)`` row-major)."""
    offs_r = tl.arange(0, RP)
    mask_r = offs_r < R
    acc = tl.zeros((RP, RP), dtype=tl.float64)
    for i0 in range(0, I, BI):
        offs_i = i0 + tl.arange(0, BI)
        m = (offs_i < I)[:, None] & mask_r[None, :]
        u = tl.load(u_ptr + offs_i[:, None] * R + offs_r[None, :], mask=m, other=0.0).to(tl.float64)
        acc += tl.dot(tl.trans(u), u, input_precision="ieee")
    return acc


@triton.jit
def _contract3(G, M0, M1, M2, RP: tl.constexpr):
    """``G x_1 M0 x_2 M1 x_3 M2`` for a ``(RP, RP, RP)`` tensor and ``(RP, RP)`` matrices (float64)."""
    T = tl.reshape(tl.dot(M0, tl.reshape(G, (RP, RP * RP)), input_precision="ieee"), (RP, RP, RP))
    T = tl.reshape(tl.dot(tl.reshape(T, (RP * RP, RP)), tl.trans(M2), input_precision="ieee"), (RP, RP, RP))
    T = tl.reshape(tl.permute(T, (0, 2, 1)), (RP * RP, RP))
    T = tl.reshape(tl.dot(T, tl.trans(M1), input_precision="ieee"), (RP, RP, RP))
    return tl.permute(T, (0, 2, 1))


@triton.jit
def _tucker_change_kernel(uo_ptr, un_ptr, co_ptr, cn_ptr, out_ptr, I, R, BI: tl.constexpr, RP: tl.constexpr):
    oo0, nn0, on0 = _grams(uo_ptr, un_ptr, I, R, BI, RP)
    oo1, nn1, on1 = _grams(uo_ptr + I * R, un_ptr + I * R, I, R, BI, RP)
    oo2, nn2, on2 = _grams(uo_ptr + 2 * I * R, un_ptr + 2 * I * R, I, R, BI, RP)
    a = tl.arange(0, RP)
    m = (a < R)[:, None, None] & (a < R)[None, :, None] & (a < R)[None, None, :]
    offs = a[:, None, None] * R * R + a[None, :, None] * R + a[None, None, :]
    go = tl.load(co_ptr + offs, mask=m, other=0.0).to(tl.float64)
    gn = tl.load(cn_ptr + offs, mask=m, other=0.0).to(tl.float64)
    aa = tl.sum(tl.reshape(go * _contract3(go, oo0, oo1, oo2, RP), (RP * RP * RP,)), axis=0)
    bb = tl.sum(tl.reshape(gn * _contract3(gn, nn0, nn1, nn2, RP), (RP * RP * RP,)), axis=0)
    ab = tl.sum(tl.reshape(go * _contract3(gn, on0, on1, on2, RP), (RP * RP * RP,)), axis=0)
    d2 = tl.maximum(aa + bb - 2.0 * ab, 0.0)
    tl.store(out_ptr, tl.sqrt(d2) / tl.maximum(tl.sqrt(aa), 2.2250738585072014e-308))


#: largest rank the kernel takes (the padded cores live in registers)
MAX_RANK = 16
#: rows of a factor per chunk in the kernels' walks over ``I``
BLOCK_I = 128


def triton_tucker_relative_change(Uo: torch.Tensor, co: torch.Tensor, Un: torch.Tensor, cn: torch.Tensor) -> torch.Tensor:
    """``Uo``, ``Un``: ``(3, I, r)`` stacked factors; ``co``, ``cn``: ``(r, r, r)`` cores; one dtype/device.
    Returns a 0-d float64 tensor on the device."""
    Uo, Un, co, cn = (t.contiguous() for t in (Uo, Un, co, cn))
    I, R = Uo.shape[1], Uo.shape[2]
    out = torch.empty((), dtype=torch.float64, device=Uo.device)
    RP = max(16, triton.next_power_of_2(R))
    _tucker_change_kernel[(1,)](Uo, Un, co, cn, out, I, R, BI=BLOCK_I, RP=RP, num_warps=8)
    return out


@triton.jit
def _gram(x, y, MODE: tl.constexpr, RP: tl.constexpr):
    """``M_MODE(x) M_MODE(y)^T`` for two ``(RP, RP, RP)`` tensors."""
    if MODE == 0:
        return tl.dot(tl.reshape(x, (RP, RP * RP)), tl.trans(tl.reshape(y, (RP, RP * RP))), input_precision="ieee")
    elif MODE == 1:
        xp = tl.reshape(tl.permute(x, (1, 0, 2)), (RP, RP * RP))
        yp = tl.reshape(tl.permute(y, (1, 0, 2)), (RP, RP * RP))
        return tl.dot(xp, tl.trans(yp), input_precision="ieee")
    else:
        return tl.dot(tl.trans(tl.reshape(x, (RP * RP, RP))), tl.reshape(y, (RP * RP, RP)), input_precision="ieee")


@triton.jit
def _spd_inverse(A, R, RP: tl.constexpr):
    """Inverse of the leading ``R x R`` block of ``A`` (``(RP, RP)``, symmetric positive definite), by Gauss-Jordan
    elimination without pivoting (stable for SPD matrices); the padding becomes the identity."""
    rows = tl.arange(0, RP)[:, None]
    cols = tl.arange(0, RP)[None, :]
    pad = (rows >= R) | (cols >= R)
    eye = tl.where(rows == cols, 1.0, 0.0).to(A.dtype)
    A = tl.where(pad, eye, A)
    B = eye
    for k in range(0, RP):
        ra = tl.sum(tl.where(rows == k, A, 0.0), axis=0)  # row k of A, (RP,)
        rb = tl.sum(tl.where(rows == k, B, 0.0), axis=0)
        piv = tl.sum(tl.where(tl.arange(0, RP) == k, ra, 0.0), axis=0)
        ra = ra / piv
        rb = rb / piv
        ck = tl.sum(tl.where(cols == k, A, 0.0), axis=1)  # column k of A, (RP,)
        ck = tl.where(tl.arange(0, RP) == k, 0.0, ck)
        A = tl.where(rows == k, ra[None, :], A - ck[:, None] * ra[None, :])
        B = tl.where(rows == k, rb[None, :], B - ck[:, None] * rb[None, :])
    return B


@triton.jit
def _load3(ptr, R, RP: tl.constexpr):
    a = tl.arange(0, RP)
    m = (a < R)[:, None, None] & (a < R)[None, :, None] & (a < R)[None, None, :]
    offs = a[:, None, None] * R * R + a[None, :, None] * R + a[None, None, :]
    return tl.load(ptr + offs, mask=m, other=0.0).to(tl.float64)


@triton.jit
def _update_factor(u_ptr, g_ptr, o_ptr, inv, e, I, R, BI: tl.constexpr, RP: tl.constexpr):
    """``U_new = U - e * grad @ inv^T`` in ``BI``-row chunks (stored in ``U``'s dtype); returns the float64
    ``(U^T U_new, U_new^T U_new)`` of the stored values (for the relative change)."""
    offs_r = tl.arange(0, RP)
    mask_r = offs_r < R
    on = tl.zeros((RP, RP), dtype=tl.float64)
    nn = tl.zeros((RP, RP), dtype=tl.float64)
    invt = tl.trans(inv)
    for i0 in range(0, I, BI):
        offs_i = i0 + tl.arange(0, BI)
        m = (offs_i < I)[:, None] & mask_r[None, :]
        ptrs = offs_i[:, None] * R + offs_r[None, :]
        u = tl.load(u_ptr + ptrs, mask=m, other=0.0)
        g = tl.load(g_ptr + ptrs, mask=m, other=0.0).to(tl.float64)
        new = u.to(tl.float64) - e * tl.dot(g, invt, input_precision="ieee")
        new_s = new.to(o_ptr.dtype.element_ty)
        tl.store(o_ptr + ptrs, new_s, mask=m)
        new = tl.where(m, new_s.to(tl.float64), 0.0)
        on += tl.dot(tl.trans(u.to(tl.float64)), new, input_precision="ieee")
        nn += tl.dot(tl.trans(new), new, input_precision="ieee")
    return on, nn


@triton.jit
def _rspace_tail_kernel(us_ptr, g_ptr, gr_ptr, c_ptr, nus_ptr, ng_ptr, ch_ptr, e_ptr, I, R,
                        BI: tl.constexpr, RP: tl.constexpr):
    e = tl.load(e_ptr)  # float64 in memory (a float kernel argument would be float32)
    # U_m^T U_m (float64; the old iterate's Gram for the relative change too)
    w0 = _gram1(us_ptr, I, R, BI, RP)
    w1 = _gram1(us_ptr + I * R, I, R, BI, RP)
    w2 = _gram1(us_ptr + 2 * I * R, I, R, BI, RP)
    G = _load3(g_ptr, R, RP)
    rows = tl.arange(0, RP)[:, None]
    cols = tl.arange(0, RP)[None, :]
    eye = tl.where(rows == cols, 1.0, 0.0).to(tl.float64)
    # Ub_m^T Ub_m = M_m(G x_{j != m} W_j) M_m(G)^T
    gram0 = _gram(_contract3(G, eye, w1, w2, RP), G, 0, RP)
    gram1 = _gram(_contract3(G, w0, eye, w2, RP), G, 1, RP)
    gram2 = _gram(_contract3(G, w0, w1, eye, RP), G, 2, RP)
    on0, nn0 = _update_factor(us_ptr, gr_ptr, nus_ptr, _spd_inverse(gram0, R, RP), e, I, R, BI, RP)
    on1, nn1 = _update_factor(us_ptr + I * R, gr_ptr + I * R, nus_ptr + I * R, _spd_inverse(gram1, R, RP), e,
                              I, R, BI, RP)
    on2, nn2 = _update_factor(us_ptr + 2 * I * R, gr_ptr + 2 * I * R, nus_ptr + 2 * I * R,
                              _spd_inverse(gram2, R, RP), e, I, R, BI, RP)
    # G_new = G - e * C x_j (U_j^T U_j)^{-1}
    C = _load3(c_ptr, R, RP)
    dG = _contract3(C, _spd_inverse(w0, R, RP), _spd_inverse(w1, R, RP), _spd_inverse(w2, R, RP), RP)
    a = tl.arange(0, RP)
    m = (a < R)[:, None, None] & (a < R)[None, :, None] & (a < R)[None, None, :]
    offs = a[:, None, None] * R * R + a[None, :, None] * R + a[None, None, :]
    Gn = (G - e * dG).to(ng_ptr.dtype.element_ty)
    tl.store(ng_ptr + offs, Gn, mask=m)
    Gn = tl.where(m, Gn.to(tl.float64), 0.0)
    # relative change of X (float64, from the stored iterates)
    aa = tl.sum(tl.reshape(G * _contract3(G, w0, w1, w2, RP), (RP * RP * RP,)), axis=0)
    bb = tl.sum(tl.reshape(Gn * _contract3(Gn, nn0, nn1, nn2, RP), (RP * RP * RP,)), axis=0)
    ab = tl.sum(tl.reshape(G * _contract3(Gn, on0, on1, on2, RP), (RP * RP * RP,)), axis=0)
    d2 = tl.maximum(aa + bb - 2.0 * ab, 0.0)
    tl.store(ch_ptr, tl.sqrt(d2) / tl.maximum(tl.sqrt(aa), 2.2250738585072014e-308))


def triton_rspace_tail(Us: torch.Tensor, G: torch.Tensor, grads: torch.Tensor, C: torch.Tensor, e):
    """The r-space end of a ScaledGD step on an order-3 cube (ranks <= :data:`MAX_RANK`), in one program:

    ``U_m <- U_m - e grads_m (Ub_m^T Ub_m)^{-1}`` with ``Ub_m^T Ub_m = M_m(G x_{j != m} U_j^T U_j) M_m(G)^T``,
    ``G <- G - e C x_j (U_j^T U_j)^{-1}``, and the float64 relative change of ``X`` between the two iterates.
    Inside the kernel every product is float64 (the results are stored in the inputs' dtype); the inverses are
    Gauss-Jordan without pivoting, as the matrices are symmetric positive definite.

    Args:
        Us: ``(3, I, r)`` stacked factors; G: ``(r, r, r)``; grads: ``(3, I, r)`` (``M_m(T_m) M_m(G)^T``);
            C: ``(r, r, r)`` core gradient; e: step (a float, or a one-element tensor on the device).
    Returns:
        ``(Us_new, G_new, change)``, ``change`` a 0-d float64 tensor.
    """
    Us, G, grads, C = (t.contiguous() for t in (Us, G, grads, C))
    I, R = Us.shape[1], Us.shape[2]
    new_Us, new_G = torch.empty_like(Us), torch.empty_like(G)
    change = torch.empty((), dtype=torch.float64, device=Us.device)
    if isinstance(e, torch.Tensor):
        e_t = e.reshape(1).to(device=Us.device, dtype=torch.float64)
    else:
        e_t = torch.full((1,), float(e), dtype=torch.float64, device=Us.device)
    _rspace_tail_kernel[(1,)](Us, G, grads, C, new_Us, new_G, change, e_t, I, R,
                              BI=BLOCK_I, RP=max(16, triton.next_power_of_2(R)), num_warps=8)
    return new_Us, new_G, change
