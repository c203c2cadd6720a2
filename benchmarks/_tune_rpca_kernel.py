"""Tuning helper for the ScaledGD step on CUDA: the fused residual pass with its partial sums summed in the call
(``triton_residual_contract``) and laid out for one GEMM (``triton_residual_parts``, what ScaledGD runs), alone per
block configuration, and the captured step. Prints one line per configuration; not a recorded benchmark.

    python benchmarks/_tune_rpca_kernel.py [--size 512] [--configs="-;serial:pgrid:-;64,64,4;32,128,4,2"]
"""
import argparse
import sys
import warnings

import torch

sys.path.insert(0, "benchmarks")
from gpu_rpca import bench  # noqa: E402

import tensorkernels._triton_rpca as tr  # noqa: E402
import tensorrpca.scaledgd as sg  # noqa: E402
from tensorkernels import multi_mode_product  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--rank", type=int, default=10)
ap.add_argument("--configs", default="-;64,64,4;32,128,4,2;32,64,4",
                help="BI,BJ,warps[,stages]; '-': the default (pass it as --configs='-;...': a value starting with '-' "
                "needs the '='); "
                "'serial:' clears tensorrpca.scaledgd.OVERLAP_CHANGE, 'nopre:' OVERLAP_PRECOND, 'pgrid:' "
                "tensorkernels._triton_rpca.GRID_J_FASTEST")
a = ap.parse_args()
n, r = a.size, a.rank
torch.backends.cuda.matmul.allow_tf32 = False
p = synthetic_rpca((n, n, n), (r, r, r), kappa=5, alpha=0.1, seed=0, dtype=torch.float32, device="cuda")
Y = p.Y
f, c = sg.spectral_init(Y, (r, r, r), 1.25 * float(p.low_rank.abs().max()))
zeta = 0.3 * float(p.low_rank.abs().max())
zt = torch.tensor([zeta], device="cuda")
H = multi_mode_product(c, f[:-1], modes=[0, 1], backend="torch")
nbytes = Y.numel() * 4
dst = torch.empty_like(Y)
t_copy = bench(lambda: dst.copy_(Y))
del dst
floor = nbytes / (2 * nbytes / t_copy)
K = 20
print(f"{torch.cuda.get_device_name(0)}: {n}^3, rank {r}; floor {floor * 1e3:.4f} ms; times per call over {K} "
      "back-to-back calls", flush=True)


def per_call(fn):
    return bench(lambda: [fn() for _ in range(K)], warmup=1, repeat=5) / K


for spec in a.configs.split(";"):
    sg.OVERLAP_CHANGE = "serial:" not in spec
    sg.OVERLAP_PRECOND = "nopre:" not in spec
    tr.GRID_J_FASTEST = "pgrid:" not in spec
    cfg = spec
    for tag in ("serial:", "nopre:", "pgrid:"):
        cfg = cfg.replace(tag, "")
    tr.DEFAULT_CONFIG = None if cfg == "-" else tuple(int(x) for x in cfg.split(","))
    try:
        t_sum = per_call(lambda: tr.triton_residual_contract(Y, H, f[2], f[1], zt, "hard", contract_precision="tf32"))
        t_parts = per_call(lambda: tr.triton_residual_parts(Y, H, f[2], f[1], zt, "hard", contract_precision="tf32"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gs = sg._GraphStep(Y, f, c, zeta, 0.5, "hard", None)
        t_step = bench(lambda: [gs.graph.replay() for _ in range(K)], warmup=1, repeat=5) / K
        del gs
        print(f"{spec:14s} pass (sums in the call) {t_sum * 1e3:.4f} ms  pass (partials for one GEMM) "
              f"{t_parts * 1e3:.4f} ms  captured step {t_step * 1e3:.4f} ms = {t_step / floor:.2f}x floor", flush=True)
    except Exception as exc:
        print(f"{spec:14s} FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
tr.DEFAULT_CONFIG = None
tr.GRID_J_FASTEST = True
sg.OVERLAP_CHANGE = True
sg.OVERLAP_PRECOND = True
