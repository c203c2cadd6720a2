"""tensorkernels.gathered_ff: Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1) and torch reference vs float64."""
from __future__ import annotations

import os

import pytest
import torch

from tensorkernels import gathered_ff
from tensorkernels.gathered_ff import ACTIVATIONS, gathered_ff_reference


def _can_triton():
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _case(B, S, d, F, k, N, gated, bias, seed=0, device="cpu", dtype=torch.float32, idx_dtype=torch.int32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, d, generator=g) if S else torch.randn(B, d, generator=g)
    wu = torch.randn(F, d, generator=g) / d ** 0.5
    wg = torch.randn(F, d, generator=g) / d ** 0.5 if gated else None
    wd = torch.randn(F, N, generator=g) / k ** 0.5
    bu = torch.randn(F, generator=g) if bias else None
    bg = torch.randn(F, generator=g) if (bias and gated) else None
    idx = torch.stack([torch.randperm(F, generator=g)[:k] for _ in range(B)]).to(idx_dtype)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), idx.to(device), cast(wu), cast(wd), cast(wg), cast(bu), cast(bg)


def _ref64(x, idx, wu, wd, wg, bu, bg, act):
    d = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    return gathered_ff_reference(d(x), idx.cpu(), d(wu), d(wd), d(wg), d(bu), d(bg), act)


SIZES = [(1, 1, 37, 53, 19, 29), (3, 2, 33, 70, 35, 17), (2, 0, 130, 67, 67, 131)]


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("gated", [True, False])
def test_torch_reference_vs_float64(act, gated):
    for B, S, d, F, k, N in SIZES:
        args = _case(B, S, d, F, k, N, gated, bias=True)
        out = gathered_ff(*args, act=act, backend="torch")
        torch.testing.assert_close(out.double(), _ref64(*args, act), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not _can_triton(), reason="needs triton with CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_triton_vs_float64(act, gated, bias):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for i, (B, S, d, F, k, N) in enumerate(SIZES):
        args = _case(B, S, d, F, k, N, gated, bias, seed=i, device=dev,
                     idx_dtype=torch.int64 if i == 1 else torch.int32)
        out = gathered_ff(*args, act=act, backend="triton")
        assert out.shape == ((B, S, N) if S else (B, N)) and out.dtype == torch.float32
        torch.testing.assert_close(out.double().cpu(), _ref64(*args, act), atol=2e-4, rtol=2e-4)


@pytest.mark.skipif(not _can_triton(), reason="needs triton with CUDA or TRITON_INTERPRET=1")
def test_triton_strided_weights_and_duplicate_rows():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, idx, wu, wd, wg, bu, bg = _case(2, 1, 24, 40, 9, 11, True, True, device=dev)
    wu_t = wu.t().contiguous().t()                    # column-major view: same values, other strides
    idx[1] = idx[0]
    out = gathered_ff(x, idx, wu_t, wd, wg, bu, bg, act="silu", backend="triton")
    torch.testing.assert_close(out.double().cpu(), _ref64(x, idx, wu, wd, wg, bu, bg, "silu"), atol=2e-4, rtol=2e-4)
    # the same token and the same experts in two rows of the batch: bit-identical outputs
    x2 = x.clone()
    x2[1] = x2[0]
    out2 = gathered_ff(x2, idx, wu_t, wd, wg, bu, bg, act="silu", backend="triton")
    torch.testing.assert_close(out2[0], out2[1], atol=0, rtol=0)
    torch.testing.assert_close(out2[0], out[0], atol=0, rtol=0)


def test_callable_activation_uses_torch_and_validation():
    x, idx, wu, wd, wg, bu, bg = _case(2, 1, 8, 12, 5, 6, True, False)
    out = gathered_ff(x, idx, wu, wd, wg, act=torch.nn.SiLU())
    torch.testing.assert_close(out, gathered_ff(x, idx, wu, wd, wg, act="silu", backend="torch"))
    with pytest.raises(ValueError):
        gathered_ff(x, idx[:1], wu, wd, wg)
    with pytest.raises(ValueError):
        gathered_ff(x, idx.float(), wu, wd, wg)
    with pytest.raises(ValueError):
        gathered_ff(x, idx, wu, wd[:, :3].t(), wg)


@pytest.mark.gpu
def test_triton_bf16_on_cuda():
    x, idx, wu, wd, wg, bu, bg = _case(8, 1, 512, 1376, 688, 512, True, False, device="cuda", dtype=torch.bfloat16)
    out = gathered_ff(x, idx, wu, wd, wg, act="silu", backend="triton")
    ref = _ref64(x, idx, wu, wd, wg, None, None, "silu")
    torch.testing.assert_close(out.double().cpu(), ref, atol=3e-2, rtol=3e-2)
