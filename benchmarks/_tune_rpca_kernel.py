"""Tuning helper for the fused RPCA residual pass (CUDA only): block configurations of the pass that forms ``X``
from the core (``triton_residual_parts``, what ScaledGD runs) against the older pass that reads ``H``, each alone
and inside the captured ScaledGD step. Prints one line per configuration; not a recorded benchmark.

    python benchmarks/_tune_rpca_kernel.py [--size 512] [--configs "32,128,4;16,256,4,3;..."]
"""
import argparse
import sys

import torch

sys.path.insert(0, "benchmarks")
from gpu_rpca import bench, maxrel  # noqa: E402

import tensorkernels._triton_rpca as tr  # noqa: E402
from tensorkernels import multi_mode_product  # noqa: E402
from tensorkernels.rpca_fused import residual_gradients  # noqa: E402
from tensorrpca.scaledgd import _GraphStep, spectral_init  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--rank", type=int, default=10)
ap.add_argument("--configs", default="32,128,4;32,128,4,2;32,128,4,4;64,128,4;64,128,8;16,256,4;16,256,8;"
                                     "32,256,8;16,512,8;16,512,8,2;32,64,4;64,64,4")
a = ap.parse_args()
n, r = a.size, a.rank
torch.backends.cuda.matmul.allow_tf32 = False
p = synthetic_rpca((n, n, n), (r, r, r), kappa=5, alpha=0.1, seed=0, dtype=torch.float32, device="cuda")
Y = p.Y
f, c = spectral_init(Y, (r, r, r), 1.25 * float(p.low_rank.abs().max()))
zeta = 0.3 * float(p.low_rank.abs().max())
zt = torch.tensor([zeta], device="cuda")
ref = residual_gradients(Y.double(), c.double(), [U.double() for U in f], zeta, backend="torch")
H = multi_mode_product(c, f[:-1], modes=[0, 1], backend="torch")
Gp = (f[0] @ c.reshape(r, -1)).reshape(n, r, r)
nbytes = Y.numel() * 4
dst = torch.empty_like(Y)
t_copy = bench(lambda: dst.copy_(Y))
del dst
floor = nbytes / (2 * nbytes / t_copy)
print(f"{torch.cuda.get_device_name(0)}: {n}^3, rank {r}; floor {floor * 1e3:.4f} ms", flush=True)
print(f"{'config':18s} {'parts ms':>9s} {'grads ms':>9s} {'old ms':>8s} {'step ms':>8s} {'x floor':>7s} err", flush=True)
for spec in a.configs.split(";"):
    cfg = tuple(int(x) for x in spec.split(","))
    tr.DEFAULT_CONFIG = cfg
    try:
        t_parts = bench(lambda: tr.triton_residual_parts(Y, Gp, f[2], f[1], zt, "hard", contract_precision="tf32"))
        t_grads = bench(lambda: residual_gradients(Y, c, f, zt, contract_precision="tf32"))
        t_old = bench(lambda: tr.triton_residual_contract(Y, H, f[2], f[1], zt, "hard", contract_precision="tf32"))
        got = residual_gradients(Y, c, f, zt, contract_precision="tf32")
        e = max(maxrel(g, w) for g, w in zip(got, ref))
        gs = _GraphStep(Y, f, c, zeta, 0.5, "hard", None)
        t_step = bench(lambda: [gs.graph.replay() for _ in range(20)], warmup=1, repeat=5) / 20
        del gs
        print(f"{spec:18s} {t_parts * 1e3:9.4f} {t_grads * 1e3:9.4f} {t_old * 1e3:8.4f} {t_step * 1e3:8.4f} "
              f"{t_step / floor:7.2f} {e:.1e}", flush=True)
    except Exception as exc:
        print(f"{spec:18s} FAILED {type(exc).__name__}: {str(exc)[:150]}", flush=True)
tr.DEFAULT_CONFIG = None
