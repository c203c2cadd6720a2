"""Tuning helper for the fused RPCA residual pass (CUDA only): time block configs and precisions."""
import sys, torch
sys.path.insert(0, "benchmarks")
from gpu_rpca import bench, maxrel
from tensorkernels._triton_rpca import triton_residual_contract
from tensorkernels.rpca_fused import residual_contract_torch
n, r = 512, 10
g = torch.Generator(device="cuda").manual_seed(0)
Y = torch.randn(n, n, n, device="cuda", generator=g)
H = torch.randn(n, n, r, device="cuda", generator=g) * 0.3
UN = torch.randn(n, r, device="cuda", generator=g) * 0.1
Up = torch.randn(n, r, device="cuda", generator=g) * 0.1
ref = residual_contract_torch(*(t.double() for t in (Y, H, UN, Up)), 1.0)
zt = torch.tensor([1.0], device="cuda")
for prec in ["tf32x3", "ieee"]:
    for cfg in [None, (16, 512, 8), (64, 128, 4), (32, 128, 4), (64, 256, 8)]:
        try:
            f = lambda: triton_residual_contract(Y, H, UN, Up, zt, "hard", precision=prec, config=cfg)
            out = f()
            e = max(maxrel(out[0], ref[0]), maxrel(out[1], ref[1]))
            t = bench(f, repeat=10)
            print(f"{prec:7s} {str(cfg):16s} {t*1e3:7.3f} ms  err {e:.1e}", flush=True)
        except Exception as exc:
            print(prec, cfg, "FAILED", str(exc)[:100], flush=True)
