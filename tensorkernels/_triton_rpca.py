"""Triton kernel for :func:`tensorkernels.rpca_fused.residual_contract`.

Programs ``(p, J-block, I-chunk)``, on a 1-D grid with the J-blocks of a slab adjacent (``GRID_J_FASTEST``; else
the grid ``(P, J / BJ, I-chunks)``). A program owns the slab ``Y[p, i0:i1, j0:j0+BJ]`` and walks it in
``BI x BJ`` tiles: ``X = H[p, i-tile, :] @ U_N[j-block, :]^T`` (a K = r_N dot), ``R`` thresholded in
registers, ``PN`` tile ``= R @ U_N[j-block]`` written (a partial sum over the J-blocks), and
``Q += U_prev[i-tile]^T @ R`` kept in registers and written once (a partial sum over the I-chunks).
Partials are summed by the caller (no atomics, deterministic); where they go is set by strides, so that
:func:`triton_residual_parts` can lay them out for one GEMM over the leading modes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _residual_contract_kernel(
    y_ptr, h_ptr, un_ptr, up_ptr, pn_ptr, q_ptr,
    P, I, J, RN, RP, chunk, zeta_arg, pn_sj, pn_sp, q_sc, q_sp, NJ,
    BI: tl.constexpr, BJ: tl.constexpr, RNP: tl.constexpr, RPP: tl.constexpr,
    SOFT: tl.constexpr, PRECISION: tl.constexpr, CPREC: tl.constexpr, MISSING: tl.constexpr,
    EMULATE_BF16: tl.constexpr, WIDE: tl.constexpr, J_FASTEST: tl.constexpr,
):
    if J_FASTEST:  # 1-D grid, J-block fastest: the NJ programs of one slab run together and share H[p] in L2
        pid = tl.program_id(0)
        pj = pid % NJ
        rest = pid // NJ
        p = (rest % P).to(tl.int64)
        pc = rest // P
    else:
        p = tl.program_id(0).to(tl.int64)
        pj = tl.program_id(1)
        pc = tl.program_id(2)
    offs_j = pj * BJ + tl.arange(0, BJ)
    mask_j = offs_j < J
    offs_rn = tl.arange(0, RNP)
    offs_rp = tl.arange(0, RPP)
    mask_rn = offs_rn < RN
    mask_rp = offs_rp < RP
    # U_N block (BJ, RNP), loaded once
    un = tl.load(un_ptr + offs_j[:, None] * RN + offs_rn[None, :],
                 mask=mask_j[:, None] & mask_rn[None, :], other=0.0)
    unt = tl.trans(un)
    if PRECISION == "fp64":
        acc_t = tl.float64
    else:
        acc_t = tl.float32
    zeta = tl.load(zeta_arg).to(acc_t)  # from memory: exact in fp64, and replayable in a CUDA graph
    q_acc = tl.zeros((RPP, BJ), dtype=acc_t)
    i_start = pc * chunk
    y_base = y_ptr + p * I * J
    h_base = h_ptr + p * I * RN
    pn_base = pn_ptr + pj.to(tl.int64) * pn_sj + p * pn_sp
    for i0 in range(i_start, tl.minimum(i_start + chunk, I), BI):
        offs_i = i0 + tl.arange(0, BI)
        mask_i = offs_i < I
        if WIDE:  # a slab of >= 2^31 entries: row offsets in int64
            rows = offs_i.to(tl.int64)[:, None] * J
        else:
            rows = offs_i[:, None] * J
        y = tl.load(y_base + rows + offs_j[None, :],
                    mask=mask_i[:, None] & mask_j[None, :], other=0.0)
        up = tl.load(up_ptr + offs_i[:, None] * RP + offs_rp[None, :],
                     mask=mask_i[:, None] & mask_rp[None, :], other=0.0)
        h = tl.load(h_base + offs_i[:, None] * RN + offs_rn[None, :],
                    mask=mask_i[:, None] & mask_rn[None, :], other=0.0)
        if PRECISION == "fp64":
            x = tl.dot(h, unt, input_precision="ieee")
        elif PRECISION == "native":
            x = tl.dot(h, unt)
        else:
            x = tl.dot(h.to(tl.float32), unt.to(tl.float32), input_precision=PRECISION)
        d = y.to(acc_t) - x
        if SOFT:
            r = -tl.minimum(tl.maximum(d, -zeta), zeta)
        else:
            r = tl.where(tl.abs(d) <= zeta, -d, 0.0)
        if MISSING:  # NaN entries of Y are missing: no residual there
            r = tl.where(y == y, r, 0.0)
        r = tl.where(mask_i[:, None] & mask_j[None, :], r, 0.0)
        if PRECISION == "fp64":
            pn = tl.dot(r, un, input_precision="ieee")
            q_acc += tl.dot(tl.trans(up), r, input_precision="ieee")
        elif PRECISION == "native":
            rl = r.to(un.dtype)
            pn = tl.dot(rl, un)
            q_acc += tl.dot(tl.trans(up), rl)
        elif CPREC == "bf16":
            # contractions of the residual on bf16 tensor cores (fp32 accumulation): their relative error
            # (~4e-3) scales with R, which goes to 0, so the fixed point is the one of the exact pass
            rb = r.to(tl.bfloat16)
            unb = un.to(tl.bfloat16)
            upb = tl.trans(up.to(tl.bfloat16))
            if EMULATE_BF16:  # Triton's CPU interpreter miscomputes bf16 dots: same rounding, fp32 product
                pn = tl.dot(rb.to(tl.float32), unb.to(tl.float32), input_precision="ieee")
                q_acc += tl.dot(upb.to(tl.float32), rb.to(tl.float32), input_precision="ieee")
            else:
                pn = tl.dot(rb, unb)
                q_acc += tl.dot(upb, rb)
        else:
            pn = tl.dot(r, un.to(tl.float32), input_precision=CPREC)
            q_acc += tl.dot(tl.trans(up.to(tl.float32)), r, input_precision=CPREC)
        tl.store(pn_base + offs_i[:, None] * RN + offs_rn[None, :], pn.to(pn_ptr.dtype.element_ty),
                 mask=mask_i[:, None] & mask_rn[None, :])
    q_base = q_ptr + pc.to(tl.int64) * q_sc + p * q_sp
    tl.store(q_base + offs_rp[:, None] * J + offs_j[None, :], q_acc.to(q_ptr.dtype.element_ty),
             mask=mask_rp[:, None] & mask_j[None, :])


def _config(P: int, I: int, J: int, dtype: torch.dtype, n_sm: int, BI: int | None = None, BJ: int | None = None):
    # measured on an H100 (512^3 fp32, r = 10, benchmarks/_tune_rpca_kernel.py): 32 x 128 tiles with 4 warps
    # 0.89 ms; 32 x 256 with 8 warps 3.6 ms (tf32x3) / 1.2 ms (ieee); 16 x 512 and 64 x 256 exceed shared memory
    BJ = BJ or min(128, max(16, triton.next_power_of_2(J)))
    BI = BI or (32 if dtype != torch.float64 else 16)
    nJ = triton.cdiv(J, BJ)
    # enough programs to fill the device (about 4 per SM); chunks are multiples of BI
    want = max(1, (4 * n_sm) // max(1, P * nJ))
    n_chunks = max(1, min(want, triton.cdiv(I, BI)))
    chunk = triton.cdiv(triton.cdiv(I, n_chunks), BI) * BI
    n_chunks = triton.cdiv(I, chunk)
    return BI, BJ, nJ, chunk, n_chunks


#: default precision of the two contractions ``R U_N`` and ``U_prev^T R`` of fp32 inputs on a GPU with tensor
#: cores: ``"tf32x3"`` (fp32-level, 3 tensor-core passes; the kernel's contract), ``"tf32"`` or ``"bf16"`` (one
#: pass). ``X = H U_N^T`` always keeps ``tf32x3``: an error there moves the fixed point (the iterate would fit a
#: rounded ``X``), while the contractions' relative error (~7e-4 for tf32) multiplies the residual. On exact
#: low-rank + sparse data that residual vanishes at convergence, so the fixed point is the exact pass's; with
#: dense noise it does not (only its projections vanish), and the TF32 error can then stop ``rpca`` short of a
#: small ``tol`` (not measured: set :data:`tensorrpca.scaledgd.STEP_CONTRACT_PRECISION` to ``"tf32x3"`` for
#: fp32-level contractions). ScaledGD asks for ``"tf32"``
#: (:data:`tensorrpca.scaledgd.STEP_CONTRACT_PRECISION`; H100, 512^3: pass 0.42 ms instead of 0.76 ms, result
#: within 1.6e-7 of the tf32x3 one).
CONTRACT_PRECISION = "tf32x3"


#: launch the pass on a 1-D grid with the J-blocks of a slab adjacent (they share ``H[p]``, read once from memory
#: instead of once per J-block); False: the ``(P, J-blocks, I-chunks)`` grid
GRID_J_FASTEST = True

#: a slab ``Y[p]`` of at least this many entries takes int64 row offsets (int32 ones would overflow)
WIDE_ENTRIES = 1 << 31

#: ``(BI, BJ, num_warps[, num_stages])`` used when a call passes no ``config`` (``None``: :func:`_config`'s choice
#: and 4 warps); for tuning (``benchmarks/_tune_rpca_kernel.py``)
DEFAULT_CONFIG = None


def _plan(Y, UN, Uprev, zeta, precision, config, contract_precision):
    """Tile configuration, precisions and the threshold tensor shared by both entry points."""
    P, I, J = Y.shape
    n_sm = torch.cuda.get_device_properties(Y.device).multi_processor_count if Y.is_cuda else 8
    config = config if config is not None else DEFAULT_CONFIG
    bi, bj, num_warps, *stages = config if config is not None else (None, None, 4)
    extra = {"num_stages": stages[0]} if stages else {}
    BI, BJ, nJ, chunk, n_chunks = _config(P, I, J, Y.dtype, n_sm, bi, bj)
    if precision is None:
        # fp32: three-pass TF32 on tensor cores (fp32-level accuracy) on GPUs; exact fp32 in the interpreter
        fp32 = "tf32x3" if (Y.is_cuda and torch.cuda.get_device_capability(Y.device)[0] >= 8) else "ieee"
        precision = {torch.float64: "fp64", torch.float32: fp32}.get(Y.dtype, "native")
    cprec = precision
    if precision == "tf32x3":
        cprec = contract_precision or CONTRACT_PRECISION
        if cprec not in ("tf32x3", "tf32", "bf16"):
            raise ValueError(f"contract_precision must be 'tf32x3', 'tf32' or 'bf16', got {cprec!r}")
    if isinstance(zeta, torch.Tensor):
        zt = zeta.reshape(1).to(device=Y.device, dtype=Y.dtype)
    else:
        zt = torch.full((1,), float(zeta), dtype=Y.dtype, device=Y.device)
    meta = dict(WIDE=I * J >= WIDE_ENTRIES, BI=BI, BJ=BJ, RNP=max(16, triton.next_power_of_2(UN.shape[1])),
                RPP=max(16, triton.next_power_of_2(Uprev.shape[1])), PRECISION=precision, CPREC=cprec,
                EMULATE_BF16=not Y.is_cuda, num_warps=num_warps, **extra)
    meta.update(J_FASTEST=bool(GRID_J_FASTEST))
    return nJ, chunk, n_chunks, zt, meta


def _grid(P, nJ, n_chunks, meta):
    return (P * nJ * n_chunks,) if meta["J_FASTEST"] else (P, nJ, n_chunks)


def triton_residual_contract(Y, H, UN, Uprev, zeta, mode: str, precision: str | None = None,
                             config: tuple | None = None, missing: bool = False,
                             contract_precision: str | None = None):
    """``(PN, Q)`` of shapes ``(P, I, r_N)`` and ``(P, r_prev, J)``: :func:`triton_residual_parts` with its partial
    sums added up. ``zeta``: float, or a 1-element device tensor read by the kernel (so a CUDA graph can replay the
    pass with a new threshold). ``config``: ``(BI, BJ, num_warps[, num_stages])`` override (tuning). ``missing``:
    NaN entries of ``Y`` get a zero residual. ``contract_precision``: see :data:`CONTRACT_PRECISION` (fp32 on GPU
    only)."""
    P, I, J = Y.shape
    RN, RP = UN.shape[1], Uprev.shape[1]
    Z, nJ, nC = triton_residual_parts(Y, H, UN, Uprev, zeta, mode, precision, config, missing, contract_precision)
    pn = Z[:, :nJ * I * RN].reshape(P, nJ, I, RN)
    q = Z[:, nJ * I * RN:].reshape(P, nC, RP, J)
    return (pn[:, 0] if nJ == 1 else pn.sum(1)), (q[:, 0] if nC == 1 else q.sum(1))


def triton_residual_parts(Y, H, UN, Uprev, zeta, mode: str, precision: str | None = None,
                          config: tuple | None = None, missing: bool = False,
                          contract_precision: str | None = None):
    """The fused pass with its partial sums left for the caller, laid out for one GEMM over ``P``.

    Args:
        Y: ``(P, I, J)``; H: ``(P, I, r_N)``; UN: ``(J, r_N)``; Uprev: ``(I, r_prev)``; zeta, mode, missing,
            contract_precision: as :func:`triton_residual_contract`.
    Returns:
        ``(Z, nJ, n_chunks)``: ``Z`` of shape ``(P, nJ * I * r_N + n_chunks * r_prev * J)`` holds, per row ``p``,
        the ``nJ`` J-block partials of ``PN[p]`` (``(I, r_N)`` each) followed by the ``n_chunks`` I-chunk
        partials of ``Q[p]`` (``(r_prev, J)`` each): ``PN`` is the sum of the first blocks, ``Q`` of the others.
    """
    Y, H, UN, Uprev = (t.contiguous() for t in (Y, H, UN, Uprev))
    P, I, J = Y.shape
    RN, RP = UN.shape[1], Uprev.shape[1]
    nJ, chunk, n_chunks, zt, meta = _plan(Y, UN, Uprev, zeta, precision, config, contract_precision)
    L = nJ * I * RN + n_chunks * RP * J
    Z = torch.empty((P, L), dtype=Y.dtype, device=Y.device)
    if Y.numel() == 0:
        return Z.zero_(), nJ, n_chunks
    _residual_contract_kernel[_grid(P, nJ, n_chunks, meta)](
        Y, H, UN, Uprev, Z, Z[:, nJ * I * RN:], P, I, J, RN, RP, chunk, zt, I * RN, L, RP * J, L, nJ,
        SOFT=(mode == "soft"), MISSING=bool(missing), **meta,
    )
    return Z, nJ, n_chunks
