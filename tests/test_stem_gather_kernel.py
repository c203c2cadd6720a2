"""tensorkernels.gather_act_mul (STEM decode): Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1) and torch
reference against a float64 loop."""
from __future__ import annotations

import os

import pytest
import torch

from tensorkernels import gather_act_mul, gather_rows
from tensorkernels.gathered_ff import ACTIVATIONS
from tensorkernels.stem_gather import gather_act_mul_reference


def _can_triton():
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _loop64(gate, idx, table, act):
    import math

    g, t = gate.double().cpu().reshape(-1, gate.shape[-1]), table.double().cpu()
    i1 = idx.reshape(-1).cpu()
    out = torch.empty_like(g)
    for r in range(g.shape[0]):
        for f in range(g.shape[1]):
            x = g[r, f].item()
            if act == "silu":
                a = x / (1 + math.exp(-x))
            elif act == "gelu":
                a = 0.5 * x * (1 + math.erf(x / math.sqrt(2)))
            elif act == "gelu_tanh":
                a = 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
            else:
                a = max(x, 0.0)
            out[r, f] = a * t[i1[r], f].item()
    return out.reshape(gate.shape)


def _case(shape, F, V, seed=0, device="cpu", dtype=torch.float32, strided=False):
    g = torch.Generator().manual_seed(seed)
    gate = torch.randn(*shape, F, generator=g) * 2
    idx = torch.randint(0, V, shape, generator=g)
    if strided:          # one layer's slice of a token-major (V, L, F) buffer, as the offloaded path uses
        big = torch.randn(V, 3, F, generator=g)
        table = big[:, 1]
    else:
        table = torch.randn(V, F, generator=g)
    return gate.to(device, dtype), idx.to(device), table.to(device=device, dtype=dtype)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_reference_vs_loop(act):
    gate, idx, table = _case((2, 3), 7, 11)
    torch.testing.assert_close(gather_act_mul(gate, idx, table, act=act, backend="torch").double(),
                               _loop64(gate, idx, table, act), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not _can_triton(), reason="needs triton with CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("case", [((1, 1), 37, 13, False), ((2, 5), 130, 9, True), ((4,), 1100, 6, False)])
def test_triton_vs_loop(act, case):
    shape, F, V, strided = case
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gate, idx, table = _case(shape, F, V, device=dev, strided=strided)
    idx = idx.to(torch.int32) if strided else idx
    out = gather_act_mul(gate, idx, table, act=act, backend="triton")
    assert out.shape == gate.shape and out.dtype == gate.dtype
    torch.testing.assert_close(out.double().cpu(), _loop64(gate, idx, table, act), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not _can_triton(), reason="needs triton with CUDA or TRITON_INTERPRET=1")
def test_triton_bf16_and_backend_rules():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gate, idx, table = _case((3,), 64, 5, device=dev, dtype=torch.bfloat16)
    out = gather_act_mul(gate, idx, table, backend="triton")
    assert out.dtype == torch.bfloat16
    # float32 arithmetic, rounded once to bf16
    torch.testing.assert_close(out.double().cpu(), _loop64(gate, idx, table, "silu"), atol=2e-2, rtol=1e-2)
    # the same rows gathered twice give bit-identical outputs (the offload path relies on it)
    idx2 = idx.clone()
    idx2[1] = idx2[0]
    gate2 = gate.clone()
    gate2[1] = gate2[0]
    o2 = gather_act_mul(gate2, idx2, table, backend="triton")
    assert torch.equal(o2[0], o2[1])
    # training needs autograd: forcing the kernel with grad raises, auto falls back to torch
    t = table.float().requires_grad_()
    with pytest.raises(ValueError, match="backward"):
        gather_act_mul(gate.float(), idx, t, backend="triton")
    with torch.no_grad():
        gather_act_mul(gate.float(), idx, t, backend="triton")


def test_reference_gradients_and_errors():
    gate, idx, table = _case((2, 3), 5, 4)
    gate = gate.double().requires_grad_()
    table = table.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda g, t: gather_act_mul(g, idx, t, backend="torch"), (gate, table))
    with pytest.raises(ValueError, match="idx must have shape"):
        gather_act_mul(gate, idx[:, :2], table)
    with pytest.raises(ValueError, match="table must be"):
        gather_act_mul(gate, idx, table[:, :3])
    with pytest.raises(ValueError, match="int32 or int64"):
        gather_act_mul(gate, idx.float(), table)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not _can_triton(), reason="needs triton with CUDA or TRITON_INTERPRET=1"))])
def test_gather_rows(backend):
    dev = "cuda" if (backend == "triton" and torch.cuda.is_available()) else "cpu"
    g = torch.Generator().manual_seed(0)
    big = torch.randn(13, 3, 70, generator=g).to(torch.bfloat16)        # token-major (V, L, F) buffer
    table = big.view(13, 3 * 70)
    if dev == "cuda":
        table = table.pin_memory()                    # the kernel reads pinned host memory directly
    idx = torch.tensor([12, 0, 5, 5, 7], device=dev)
    out = gather_rows(table, idx, backend=backend)
    assert out.device.type == dev and out.dtype == torch.bfloat16
    assert torch.equal(out.cpu(), big.view(13, -1)[[12, 0, 5, 5, 7]])
    buf = torch.full((5, 210), 7.0, dtype=torch.bfloat16, device=dev)
    assert gather_rows(table, idx.to(torch.int32), out=buf, backend=backend) is buf
    assert torch.equal(buf.cpu(), out.cpu())
    with pytest.raises(ValueError, match="unit column stride"):
        gather_rows(big[:, 0].t(), idx, backend=backend)
    with pytest.raises(ValueError, match="out must be"):
        gather_rows(table, idx, out=buf[:4], backend=backend)
