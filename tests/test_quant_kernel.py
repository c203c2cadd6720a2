"""tensorkernels.quant: Triton (interpreter on CPU) and torch reference vs an independent float64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tensorkernels._dispatch import triton_available
from tensorkernels.quant import dequantize_sum, packed_width, quantize_pack

BACKENDS = ["torch"] + (["triton"] if triton_available() else [])
# Triton runs on CUDA tensors on a GPU machine, and on CPU tensors in its interpreter (conftest sets
# TRITON_INTERPRET=1 when there is no CUDA); the torch backend runs where the tensors are.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _ref_codes(x, cs, cz, rs, bits):
    """float64 numpy reference of the unpacked codes (round half to even, like torch/numpy)."""
    s = cs[None, :] * (rs[:, None] if rs is not None else 1.0)
    return np.clip(np.round(x / s + cz[None, :]), 0, 2 ** bits - 1).astype(np.int64)


def _ref_unpack(p, D, bits):
    p = p.astype(np.int64)
    if bits == 8:
        return p[..., :D]
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), np.int64)
    out[..., 0::2] = p & 15
    out[..., 1::2] = p >> 4
    return out[..., :D]


def _inputs(N, D, bits, row, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)) * rng.uniform(0.5, 3, size=D)
    if row:
        cs = np.ones(D)
        cz = np.full(D, 2.0 ** (bits - 1))
        rs = np.abs(x).max(1) / (2 ** (bits - 1) - 1)
    else:
        lo, hi = x.min(0) * 0.8 - 0.1, x.max(0) * 0.8 + 0.1     # clipped ranges exercise the clamp
        cs = (hi - lo) / (2 ** bits - 1)
        cz = -lo / cs
        rs = None
    return x, cs, cz, rs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("N,D", [(3, 7), (5, 33), (1, 1)])
@pytest.mark.parametrize("row", [True, False])
def test_quantize_pack_matches_float64(backend, bits, N, D, row):
    x, cs, cz, rs = _inputs(N, D, bits, row, seed=N * 100 + D + bits)
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=DEV)  # noqa: E731
    p = quantize_pack(t(x), t(cs), t(cz), t(rs) if rs is not None else None, bits=bits, backend=backend).cpu()
    assert p.dtype == torch.uint8 and tuple(p.shape) == (N, packed_width(D, bits))
    got = _ref_unpack(p.numpy(), D, bits)
    ref = _ref_codes(x, cs, cz, rs, bits)
    # float32 vs float64 rounding may differ only at exact .5 boundaries: at most one code step, rarely
    diff = np.abs(got - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02
    if bits == 4 and D % 2:
        assert (p.numpy()[:, -1] >> 4 == 0).all()          # odd tail: high nibble empty


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("W,N,D", [(2, 3, 7), (3, 4, 33)])
@pytest.mark.parametrize("row", [True, False])
def test_dequantize_sum_matches_float64(backend, bits, W, N, D, row):
    rng = np.random.default_rng(W * 7 + D)
    codes = rng.integers(0, 2 ** bits, size=(W, N, D))
    cs = rng.uniform(0.01, 0.2, size=D)
    cz = rng.uniform(0, 2 ** bits - 1, size=D)
    rs = rng.uniform(0.5, 2.0, size=(W, N)) if row else None
    if bits == 8:
        packed = codes.astype(np.uint8)
    else:
        pc = np.concatenate([codes, np.zeros((W, N, D % 2), np.int64)], -1)
        packed = (pc[..., 0::2] | (pc[..., 1::2] << 4)).astype(np.uint8)
    ref = ((codes - cz) * cs * (rs[..., None] if rs is not None else 1.0)).sum(0)
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=DEV)  # noqa: E731
    got = dequantize_sum(torch.from_numpy(packed).to(DEV), t(cs), t(cz), D, t(rs) if rs is not None else None,
                         bits=bits, backend=backend).cpu()
    assert got.dtype == torch.float32 and tuple(got.shape) == (N, D)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_error_bound(backend):
    """|x - dequant(quant(x))| <= scale / 2 inside the range (symmetric per-token int4)."""
    x, cs, cz, rs = _inputs(6, 19, 4, True, seed=3)
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=DEV)  # noqa: E731
    p = quantize_pack(t(x), t(cs), t(cz), t(rs), bits=4, backend=backend)
    xr = dequantize_sum(p, t(cs), t(cz), 19, t(rs), bits=4, backend=backend).cpu().numpy()
    assert (np.abs(xr - x) <= rs[:, None] / 2 + 1e-5).all()


def test_bad_inputs():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="bits"):
        quantize_pack(x, torch.ones(4), torch.zeros(4), bits=3)
    with pytest.raises(ValueError, match="col_scale"):
        quantize_pack(x, torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match="bytes"):
        dequantize_sum(torch.zeros(1, 2, 3, dtype=torch.uint8), torch.ones(4), torch.zeros(4), 4)
