"""tensorkernels.rope_reconstruct: Triton (interpreter on CPU) and torch reference vs float64 on small odd sizes."""
from __future__ import annotations

import pytest
import torch

from conftest import triton_ok
from tensorkernels import rope_reconstruct
from tensorkernels.rope_reconstruct import rope_reconstruct_reference


def _float64_truth(A, Bf, idx, pos, inv_freq, s):
    """Independent float64 computation: full keys, rotate-half RoPE, then gather."""
    B, T, r = A.shape
    hk, D = idx.shape[1], 2 * inv_freq.shape[0]
    K = (A.double() @ Bf.double()).view(B, T, hk, D).permute(0, 2, 1, 3)  # (B, hk, T, D)
    th = pos.double()[:, None, :, None] * inv_freq.double()
    emb = torch.cat([th, th], -1)
    rot = torch.cat([-K[..., D // 2 :], K[..., : D // 2]], -1)
    R = K * emb.cos() * s + rot * emb.sin() * s
    return torch.gather(R, 2, idx.long().unsqueeze(-1).expand(*idx.shape, D))


def _case(B, T, r, hk, D, N, dtype, seed=0, max_pos=50):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, T, r, generator=g, dtype=torch.float64).to(dtype)
    Bf = torch.randn(B, r, hk * D, generator=g, dtype=torch.float64).to(dtype)
    idx = torch.randint(0, T, (B, hk, N), generator=g)
    pos = torch.randint(0, max_pos, (B, T), generator=g)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    return A, Bf, idx, pos, inv_freq


SIZES = [(1, 7, 3, 1, 6, 5), (2, 37, 11, 3, 10, 13), (3, 19, 17, 2, 22, 33)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", [1.0, 0.75])
def test_reference_matches_float64(size, scale):
    A, Bf, idx, pos, f = _case(*size, torch.float64)
    truth = _float64_truth(A, Bf, idx, pos, f, scale)
    out = rope_reconstruct(A, Bf, idx, pos, f, scale, backend="torch")
    assert torch.allclose(out, truth, atol=1e-12, rtol=1e-12)
    out32 = rope_reconstruct_reference(A.float(), Bf.float(), idx, pos, f.float(), scale)
    assert torch.allclose(out32.double(), truth, atol=2e-4 * truth.abs().max().item())


@pytest.mark.skipif(not triton_ok(), reason="triton not installed")
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_matches_float64(size, dtype):
    A, Bf, idx, pos, f = _case(*size, dtype, seed=1)
    truth = _float64_truth(A, Bf, idx, pos, f, 0.9)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU tensors run in Triton's interpreter
    args = [t.to(dev) for t in (A, Bf, idx, pos, f if dtype == torch.float64 else f.float())]
    out = rope_reconstruct(*args, 0.9, backend="triton").cpu()
    assert out.dtype == dtype and out.shape == truth.shape
    tol = 1e-10 if dtype == torch.float64 else 2e-5 * truth.abs().max().item()
    assert torch.allclose(out.double(), truth, atol=tol, rtol=0)


@pytest.mark.skipif(not triton_ok(), reason="triton not installed")
def test_triton_non_contiguous_and_int32_inputs():
    A, Bf, idx, pos, f = _case(2, 21, 9, 2, 8, 7, torch.float32, seed=2)
    At = A.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other strides
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    out = rope_reconstruct(At.to(dev), Bf.to(dev), idx.to(torch.int32).to(dev), pos.to(torch.int32).to(dev),
                           f.float().to(dev), backend="triton").cpu()
    ref = rope_reconstruct(A, Bf, idx, pos, f.float(), backend="torch")
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_cuda_matches_reference(dtype):
    A, Bf, idx, pos, f = _case(2, 300, 160, 8, 128, 256, torch.float32, seed=3, max_pos=32768)
    A, Bf = (A / 10).to("cuda", dtype), (Bf / 10).to("cuda", dtype)
    idx, pos, f = idx.cuda(), pos.cuda(), f.float().cuda()
    out = rope_reconstruct(A, Bf, idx, pos, f, backend="triton")
    ref = rope_reconstruct(A, Bf, idx, pos, f, backend="torch")
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    assert torch.allclose(out.float(), ref.float(), atol=tol * ref.float().abs().max().item())


def test_shape_errors():
    A, Bf, idx, pos, f = _case(1, 7, 3, 1, 6, 5, torch.float32)
    with pytest.raises(ValueError):
        rope_reconstruct(A, Bf[:, :, :-1], idx, pos, f.float())
    with pytest.raises(ValueError):
        rope_reconstruct(A, Bf, idx, pos[:, :-1], f.float())
