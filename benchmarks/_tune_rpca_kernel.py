"""Tuning helper for the ScaledGD step on CUDA: variants of the fused residual pass (``X`` from ``H`` or formed from
the core; with or without the third contraction ``V``) alone, and whole captured steps with the r-space end as
batched torch ops or as one kernel. Prints one line per variant; not a recorded benchmark.

    python benchmarks/_tune_rpca_kernel.py [--size 512]
"""
import argparse
import json
import sys
import warnings

import torch

sys.path.insert(0, "benchmarks")
from gpu_rpca import bench  # noqa: E402

import tensorkernels._triton_rpca as tr  # noqa: E402
import tensorkernels._triton_rspace as trs  # noqa: E402
import tensorkernels.rpca_fused as rf  # noqa: E402
import tensorrpca.scaledgd as sg  # noqa: E402
from tensorkernels import multi_mode_product  # noqa: E402
from tensorrpca.synthetic import synthetic_rpca  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, default=512)
ap.add_argument("--rank", type=int, default=10)
ap.add_argument("--configs", default="-")
ap.add_argument("--variant-out", default=None, help="write the fastest step variant's switches here (JSON)")
a = ap.parse_args()
n, r = a.size, a.rank
torch.backends.cuda.matmul.allow_tf32 = False
p = synthetic_rpca((n, n, n), (r, r, r), kappa=5, alpha=0.1, seed=0, dtype=torch.float32, device="cuda")
Y = p.Y
f, c = sg.spectral_init(Y, (r, r, r), 1.25 * float(p.low_rank.abs().max()))
zeta = 0.3 * float(p.low_rank.abs().max())
zt = torch.tensor([zeta], device="cuda")
H = multi_mode_product(c, f[:-1], modes=[0, 1], backend="torch")
Gp = (f[0] @ c.reshape(r, -1)).reshape(n, r, r)
nbytes = Y.numel() * 4
dst = torch.empty_like(Y)
t_copy = bench(lambda: dst.copy_(Y))
del dst
floor = nbytes / (2 * nbytes / t_copy)
K = 20
print(f"{torch.cuda.get_device_name(0)}: {n}^3, rank {r}; floor {floor * 1e3:.4f} ms; times: {K} back-to-back calls",
      flush=True)


def per_call(fn):
    return bench(lambda: [fn() for _ in range(K)], warmup=1, repeat=5) / K


print("-- the pass alone (ms per call)", flush=True)
for spec in a.configs.split(";"):
    tr.DEFAULT_CONFIG = None if spec == "-" else tuple(int(x) for x in spec.split(","))
    row = [f"{spec:14s}"]
    try:
        row.append(f"old(H) {per_call(lambda: tr.triton_residual_contract(Y, H, f[2], f[1], zt, 'hard', contract_precision='tf32')) * 1e3:.4f}")
        for fh, wv in ((False, False), (False, True), (True, False), (True, True)):
            t = per_call(lambda: tr.triton_residual_parts(Y, Gp if fh else H, f[2], f[1], zt, "hard",
                                                          contract_precision="tf32", fuse_h=fh, want_v=wv))
            row.append(f"parts fuse_h={int(fh)} v={int(wv)} {t * 1e3:.4f}")
    except Exception as exc:
        row.append(f"FAILED {type(exc).__name__}: {str(exc)[:200]}")
    print("  ".join(row), flush=True)
tr.DEFAULT_CONFIG = None

print("-- captured step (ms per replay; x floor)", flush=True)
variants = [(fh, wv, tail, bi) for fh in (False, True) for wv in (False, True) for tail, bi in ((False, 0),)]
variants += [(True, True, True, 128)]
best = None
for fh, wv, tail, bi in variants:
    rf.FUSE_H, rf.WANT_V, sg.RSPACE_KERNEL, sg.CHANGE_KERNEL = fh, wv, tail, False
    trs.BLOCK_I = bi or 128
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gs = sg._GraphStep(Y, f, c, zeta, 0.5, "hard", None)
        t = bench(lambda: [gs.graph.replay() for _ in range(K)], warmup=1, repeat=5) / K
        del gs
        print(f"fuse_h={int(fh)} v={int(wv)} tail_kernel={int(tail)} BI={bi}: {t * 1e3:.4f} ms  {t / floor:.2f}x",
              flush=True)
        if best is None or t < best[0]:
            best = (t, {"FUSE_H": fh, "WANT_V": wv, "RSPACE_KERNEL": tail, "BLOCK_I": bi or 128})
    except Exception as exc:
        print(f"fuse_h={int(fh)} v={int(wv)} tail={int(tail)} FAILED {type(exc).__name__}: {str(exc)[:200]}")
# the change kernel alone vs the torch change
sg.CHANGE_KERNEL = True
fo, co = [U.clone() for U in f], c.clone()
fn_, cn = [U * 1.001 for U in f], c * 0.999
trs.BLOCK_I = 128
change_t = {}
for ck in (True, False):
    sg.CHANGE_KERNEL = ck
    change_t[ck] = t = per_call(lambda: sg.relative_change((fo, co), (fn_, cn)))
    print(f"relative change, kernel={int(ck)}: {t * 1e3:.4f} ms", flush=True)
if a.variant_out and best is not None:
    sw = dict(best[1], CHANGE_KERNEL=False)
    if not sw["RSPACE_KERNEL"]:  # the torch r-space end: is the change kernel faster than the torch change?
        sw["CHANGE_KERNEL"] = bool(change_t[True] < change_t[False])
    with open(a.variant_out, "w") as fh_:
        json.dump({"switches": sw, "step_ms": best[0] * 1e3, "floor_ms": floor * 1e3}, fh_)
    print("fastest:", sw, f"{best[0] * 1e3:.4f} ms", flush=True)
