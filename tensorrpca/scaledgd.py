"""Tensor robust PCA by scaled gradient descent on Tucker factors (Dong, Tong, Ma, Chi 2022).

``Y = X* + S*`` with ``X* = G x_1 U_1 ... x_N U_N`` of Tucker ranks ``r`` and ``S*`` sparse.

* :func:`spectral_init`: ``S_{-1} = T_{zeta_0}(Y)``; ``(U, G) = HOSVD_r(Y - S_{-1})``.
* :func:`scaledgd_step`: one iteration from ``(U, G)`` at threshold ``zeta`` and step ``eta``::

      R   = X + T_zeta(Y - X) - Y                 (= -(Y - X) 1{|Y - X| <= zeta} for hard thresholding)
      U_i <- U_i - eta * M_i(R) Ub_i (Ub_i^T Ub_i)^{-1},   Ub_i = (kron_{j != i} U_j) M_i(G)^T
      G   <- G - eta * (R x_j U_j^T, all j) x_j (U_j^T U_j)^{-1}, all j

  ``Ub_i^T Ub_i = M_i(G x_{j != i} U_j^T U_j) M_i(G)^T`` is formed in r-space; the Kronecker product never is.
  The step is a pure function (no in-place ops on its inputs): when anything requires grad it runs on the
  torch reference path, so a deep-unfolded network (issue 6) can learn ``zeta`` and ``eta`` through it.
* :func:`rpca`: spectral init, then steps with ``zeta_{k+1} = rho^k zeta_1`` until the relative change of ``X``
  (computed exactly in r-space, float64) is below ``tol`` or ``max_iter`` is reached.

The residual pass (form ``X``, threshold, contract with ``U_N`` and ``U_{N-1}``) is the only work on full-size
tensors; on CUDA it is one fused Triton kernel that never writes ``X`` or ``R``
(:func:`tensorkernels.rpca_fused.residual_gradients` turns its partial sums into every ``R x_{j != i} U_j^T``).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from tensorkernels import multi_mode_product, residual_contract, threshold_residual, tucker_to_tensor, unfold
from tensorkernels.rpca_fused import gradients_from_contractions, residual_contract_torch, residual_gradients

from . import _init
from .errors import RPCAConvergenceWarning, RPCAInputError


# --------------------------------------------------------------------------------------------- parameters
@dataclass
class RPCAParams:
    """The four hyperparameters of ScaledGD RPCA (the ones a deep-unfolded network learns).

    ``zeta0``: threshold of the spectral initialisation (None: estimated from the data, about ``max|X*|``);
    ``zeta1``: threshold of the first iteration (None: estimated from the initial residual);
    ``rho``: decay of the threshold, ``zeta_{k+1} = rho^k zeta_1``; ``eta``: step size;
    ``zeta0_scale``, ``zeta1_scale``: factors on the data-derived ``zeta0``/``zeta1`` (used only where those
    are None).

    The dataclass defaults are the hand-set ("classic") values, which are also :func:`rpca`'s defaults; the
    learned ones are ``params="learned"`` (:func:`default_params`).
    """

    zeta0: float | None = None
    zeta1: float | None = None
    rho: float = 0.9
    eta: float = 0.5
    zeta0_scale: float = 1.0
    zeta1_scale: float = 1.0

    @classmethod
    def coerce(cls, params: "RPCAParams | Mapping[str, Any] | None") -> "RPCAParams":
        if params is None:
            return cls()
        if isinstance(params, cls):
            return cls(**asdict(params))
        if isinstance(params, Mapping):
            unknown = set(params) - set(_PARAM_NAMES)
            if unknown:
                raise RPCAInputError(f"unknown RPCA parameters {sorted(unknown)}; use {', '.join(_PARAM_NAMES)}")
            return cls(**{k: (float(v) if v is not None else None) for k, v in params.items()})
        raise RPCAInputError(f"params must be an RPCAParams, a dict, 'learned' or 'classic', got {type(params).__name__}")

    def validate(self) -> None:
        for name in ("zeta0", "zeta1"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise RPCAInputError(f"{name} must be a finite number >= 0, got {v}")
        if not (math.isfinite(self.rho) and 0 < self.rho <= 1):
            raise RPCAInputError(f"rho (decay) must be in (0, 1], got {self.rho}")
        if not (math.isfinite(self.eta) and 0 < self.eta < 2):
            raise RPCAInputError(f"eta (step) must be in (0, 2), got {self.eta}")
        for name in ("zeta0_scale", "zeta1_scale"):
            v = getattr(self, name)
            if v is None or not (math.isfinite(v) and v > 0):
                raise RPCAInputError(f"{name} must be a finite number > 0, got {v}")


_PARAM_NAMES = ("zeta0", "zeta1", "rho", "eta", "zeta0_scale", "zeta1_scale")


#: what ``params=None`` means. The learned set reaches 1e-5 more often on held-out problems (33 vs 30 of 40) but
#: needs 10-20 % more iterations where both succeed, stops (at ``tol``) at a larger float32 error, and fails
#: silently on one cell of the test grid where the classic set succeeds (benchmarks/RESULTS.md, "Learned
#: defaults"): it did not win outright, so the hand-set values stay the default.
DEFAULT_PARAMS = "classic"


def default_params(name: str | None = None) -> RPCAParams:
    """Named hyperparameter sets: ``"classic"`` (hand-set: ``rho = 0.9``, ``eta = 0.5``, data-derived
    thresholds unscaled) or ``"learned"`` (learned offline over synthetic problems, see :mod:`tensorrpca._defaults`
    and ``data/rpca_defaults.json``); ``None``: :data:`DEFAULT_PARAMS`. A fresh object each call."""
    name = DEFAULT_PARAMS if name is None else name
    if name == "classic":
        return RPCAParams()
    if name == "learned":
        from ._defaults import LEARNED

        return RPCAParams(**LEARNED) if LEARNED else RPCAParams()
    raise RPCAInputError(f"params must be an RPCAParams, a dict, 'learned' or 'classic', got {name!r}")


def _resolve_params(params) -> RPCAParams:
    """``None`` -> the default set, ``"learned"``/``"classic"`` -> that set; a dict overrides the default set key
    by key; an :class:`RPCAParams` is taken as it is."""
    if params is None or isinstance(params, str):
        return default_params(params)
    if isinstance(params, Mapping):
        given = RPCAParams.coerce(params)  # checks the names
        base = asdict(default_params())
        base.update({k: getattr(given, k) for k in params})
        return RPCAParams(**base)
    return RPCAParams.coerce(params)


@dataclass
class RPCAResult:
    """Output of :func:`rpca`. ``low_rank``/``sparse`` have the kind (numpy/torch), dtype and device of ``Y``;
    ``core``/``factors`` likewise. ``history`` holds one dict per iteration: ``rel_change`` (relative change
    of ``X``) and ``zeta`` (threshold used). ``checks``: what was checked without the truth after stopping
    (``sparse_fraction``, ``zeta_final``, ``likely_wrong``, and ``observed_fraction`` with a mask; see
    :func:`rpca`); ``converged`` is ``False`` when the iteration did not reach ``tol`` *or* a check says the
    answer is likely wrong. ``timings``: seconds per phase with ``profile=True`` (``validate``, ``zeta0``,
    ``spectral_init``, ``zeta1``, ``graph_capture``, ``iterations``, ``final``)."""

    low_rank: Any
    sparse: Any
    core: Any
    factors: list
    n_iter: int
    converged: bool
    history: list[dict] = field(default_factory=list)
    params: RPCAParams = field(default_factory=RPCAParams)
    checks: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def rel_changes(self) -> list[float]:
        return [h["rel_change"] for h in self.history]


# ------------------------------------------------------------------------------------------ algorithm core
def _needs_grad(*objs) -> bool:
    for o in objs:
        if isinstance(o, torch.Tensor) and o.requires_grad:
            return True
        if isinstance(o, (list, tuple)) and _needs_grad(*o):
            return True
    return False


def spectral_init(
    Y: torch.Tensor, ranks: Sequence[int], zeta0: float | torch.Tensor, mode: str = "hard",
    scale: float = 1.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(factors, core)`` of ``HOSVD_r(scale * (Y - T_{zeta0}(Y)))``.

    ``scale``: ``1/p`` for a tensor whose missing entries are set to 0 (``p`` the observed fraction: the
    rescaled observed tensor of tensor completion). Differentiable in ``Y`` (and in ``zeta0`` for soft
    thresholding) through torch's ``eigh``.
    """
    if isinstance(zeta0, torch.Tensor):
        D = -_residual_tensor_zeta(Y, zeta0, mode)  # Y - T(Y) = -(T(Y) - Y)
    else:
        backend = "torch" if _needs_grad(Y) else None
        D = threshold_residual(Y, None, zeta0, mode=mode, out="kept", backend=backend)  # Y - T(Y)
    if scale != 1.0:
        D = D * scale
    return _init.hosvd(D, ranks)


def _residual_tensor_zeta(D: torch.Tensor, zeta: torch.Tensor, mode: str) -> torch.Tensor:
    """``T_zeta(D) - D`` with a tensor ``zeta`` (autograd flows to ``zeta`` for soft thresholding)."""
    if mode == "hard":
        return torch.where(D.abs() <= zeta, -D, torch.zeros_like(D))
    return -torch.minimum(torch.maximum(D, -zeta), zeta)


#: precision of the fused pass's two contractions of the residual in a step (fp32 on a GPU with tensor cores; see
#: ``tensorkernels._triton_rpca.CONTRACT_PRECISION``): one TF32 pass. Their error scales with the residual, which
#: vanishes at convergence on exact low-rank + sparse data (H100, 512^3: 0.42 ms per pass instead of 0.76 ms,
#: result within 1.6e-7 of tf32x3); with dense noise it does not, and a small ``tol`` may then need ``"tf32x3"``
#: here (set this module attribute; not measured on noisy data).
STEP_CONTRACT_PRECISION = "tf32"


def _as3(T: torch.Tensor) -> torch.Tensor:
    """View an order-N tensor as ``(P, I_{N-1}, I_N)``."""
    return T.reshape(-1, T.shape[-2], T.shape[-1])


def residual_contractions(
    Y: torch.Tensor, factors: Sequence[torch.Tensor], core: torch.Tensor, zeta, mode: str = "hard",
    backend: str | None = None, missing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R x_N U_N^T, R x_{N-1} U_{N-1}^T)`` for the thresholded residual ``R`` at the current ``X``.

    Shapes ``(I_1..I_{N-1}, r_N)`` and ``(I_1..I_{N-2}, r_{N-1}, I_N)``. ``missing``: NaN entries of ``Y`` are
    missing and contribute no residual.
    """
    N = Y.ndim
    H = multi_mode_product(core, list(factors[:-1]), modes=list(range(N - 1)),
                           backend="torch" if _needs_grad(core, factors) else backend)
    UN, Up = factors[-1], factors[-2]
    if _needs_grad(Y, factors, core, zeta):
        X = torch.matmul(_as3(H), UN.t())
        zt = zeta if isinstance(zeta, torch.Tensor) else torch.as_tensor(zeta, dtype=Y.dtype, device=Y.device)
        R = _residual_tensor_zeta(_as3(Y) - X, zt, mode)
        if missing:
            R = torch.where(_as3(Y).isnan(), torch.zeros_like(R), R)
        PN, Q = torch.matmul(R, UN), torch.matmul(Up.t(), R)
    else:
        zeta = zeta if isinstance(zeta, torch.Tensor) else float(zeta)  # a device tensor: no host sync
        PN, Q = residual_contract(_as3(Y), _as3(H), UN, Up, zeta, mode=mode, backend=backend, missing=missing,
                                  contract_precision=STEP_CONTRACT_PRECISION)
    return PN.reshape(*Y.shape[:-1], UN.shape[1]), Q.reshape(*Y.shape[:-2], Up.shape[1], Y.shape[-1])


def scaledgd_step(
    Y: torch.Tensor,
    factors: Sequence[torch.Tensor],
    core: torch.Tensor,
    zeta,
    eta,
    mode: str = "hard",
    backend: str | None = None,
    observed_fraction: float | None = None,
    _pre=None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One ScaledGD iteration; returns new ``(factors, core)`` (inputs are not modified).

    Args:
        Y: observed tensor ``(I_1, ..., I_N)``, ``N >= 2``.
        factors: ``U_i`` of shape ``(I_i, r_i)``; core: ``G`` of shape ``(r_1, ..., r_N)``.
        zeta: threshold for this iteration (float or 0-d tensor; a tensor that requires grad selects the
            differentiable torch path); eta: step size (float or tensor).
        mode: ``"hard"`` or ``"soft"`` thresholding. backend: kernel backend (see :mod:`tensorkernels`).
        observed_fraction: ``p`` when some entries are missing (NaN in ``Y``): the residual is taken on the
            observed entries only and rescaled by ``1/p`` (as in the analysis of ScaledGD for tensor
            completion). ``None``: every entry is observed.
        _pre: internal (the captured step): a callable returning :func:`_rspace_precond` of ``(factors, core)``,
            called after the residual pass, on the batched path only.
    """
    N = Y.ndim
    factors = list(factors)
    missing = observed_fraction is not None
    # T_i = R x_{j != i} U_j^T; core gradient C = R x_all U^T
    if _needs_grad(Y, factors, core, zeta, eta):
        PN, Q = residual_contractions(Y, factors, core, zeta, mode=mode, backend=backend, missing=missing)
        if missing:
            PN, Q = PN / observed_fraction, Q / observed_fraction
        T = gradients_from_contractions(PN, Q, factors)
        C = _core_gradient(T[-1], factors[-1])
    else:
        T = residual_gradients(Y, core, factors, zeta, mode=mode, backend=backend, missing=missing,
                               contract_precision=STEP_CONTRACT_PRECISION)
        C = _core_gradient(T[-1], factors[-1])
        scale = 1.0 if not missing else 1.0 / observed_fraction
        if _stackable(factors):  # _pre: the graph body's side stream, joined only now
            return _rspace_stacked(T, C, factors, core, eta, scale, pre=_pre() if _pre is not None else None)
        if missing:
            T, C = [t * scale for t in T], C * scale
    # small tensors only from here on
    small = "torch"
    W = [U.t() @ U for U in factors]  # U_i^T U_i
    eye = [torch.eye(w.shape[0], dtype=w.dtype, device=w.device) for w in W]
    new_factors = []
    for i in range(N):
        Gi = unfold(core, i)
        grad = unfold(T[i], i) @ Gi.t()  # M_i(R) Ub_i, (I_i, r_i)
        GW = multi_mode_product(core, [W[j] for j in range(N) if j != i],
                                modes=[j for j in range(N) if j != i], backend=small)
        gram = unfold(GW, i) @ Gi.t()  # Ub_i^T Ub_i, (r_i, r_i)
        step = torch.linalg.solve_ex(gram, grad.t())[0].t()
        new_factors.append(factors[i] - eta * step)
    Winv = [torch.linalg.solve_ex(W[i], eye[i])[0] for i in range(N)]
    new_core = core - eta * multi_mode_product(C, Winv, backend=small)
    return new_factors, new_core


def _stackable(factors) -> bool:
    """All factors of one shape (a cube at equal ranks): the r-space update can run batched over the modes."""
    return len(factors) >= 2 and all(U.shape == factors[0].shape for U in factors)


def _core_gradient(T_last: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``C = T_N x_N U_N^T`` as one plain GEMM ``(r_1..r_{N-1}, I_N) @ U_N`` (on an H100 the GEMM with the small
    dimension leading, ``U_1^T @ M_1(T_1)``, took ~50 us more at 512^3, rank 10)."""
    return (T_last.reshape(-1, U.shape[0]) @ U).reshape(*T_last.shape[:-1], U.shape[1])


#: the batched r-space path forms the Kronecker product of the other modes' ``U_j^T U_j`` (``r^(N-1)`` square)
#: up to this many entries per mode (else the grams go through per-mode products)
KRON_MAX_ENTRIES = 1 << 20


def _as_stacked(factors) -> torch.Tensor:
    """The ``(N, I, r)`` stack of ``factors``: the tensor they are views of when they are its ``unbind`` (as the
    factors of :class:`_GraphStep` and of :func:`_rspace_stacked`'s result are; no copy), else a new stack."""
    b = factors[0]._base
    if (b is not None and b.ndim == 3 and b.shape[0] == len(factors) and b.is_contiguous()
            and all(U._base is b and U.shape == b.shape[1:] and U.stride() == b.stride()[1:]
                    and U.data_ptr() == b.data_ptr() + i * b.stride(0) * b.element_size()
                    for i, U in enumerate(factors))):
        return b
    return torch.stack(factors)


def _kron_others(W: torch.Tensor) -> torch.Tensor | None:
    """``K_i = kron(W_j, j != i in order)`` for each mode ``i`` of ``W`` ``(N, r, r)``: ``(N, r^(N-1), r^(N-1))``,
    so that ``M_i(G x_{j != i} W_j) = M_i(G) K_i^T`` (row-major unfolding)."""
    N, r = W.shape[0], W.shape[1]
    if r ** (2 * (N - 1)) > KRON_MAX_ENTRIES:
        return None
    others = [[j for j in range(N) if j != i] for i in range(N)]
    # stacks of views, not W[list]: a list index is a host-to-device copy, which a CUDA graph cannot capture
    K = torch.stack([W[o[0]] for o in others])  # (N, r, r)
    for k in range(1, N - 1):
        Wk = torch.stack([W[o[k]] for o in others])
        n = K.shape[1]
        K = (K[:, :, None, :, None] * Wk[:, None, :, None, :]).reshape(N, n * r, n * r)
    return K


def _rspace_precond(factors, core):
    """What the batched r-space update needs from the iterate alone (not from the residual): the stacked factors
    ``Us`` ``(N, I, r)``, the stacked core unfoldings ``Gst`` ``(N, r, r^(N-1))`` and the ``2N`` inverses
    ``[(Ub_i^T Ub_i)^{-1}, (U_i^T U_i)^{-1}]`` ``(2N, r, r)``, where ``Ub_i^T Ub_i = M_i(G) K_i^T M_i(G)^T``. The
    captured step computes it on a side stream, beside the residual pass."""
    N = core.ndim
    Us = _as_stacked(factors)  # (N, I, r)
    # the unfoldings, stacked: one copy kernel each (stack of the moved views, then a free reshape)
    Gst = torch.stack([core.movedim(i, 0) for i in range(N)]).reshape(N, core.shape[0], -1)  # (N, r, r^(N-1))
    W = torch.bmm(Us.transpose(1, 2), Us)  # U_i^T U_i
    K = _kron_others(W)
    if K is not None:
        grams = torch.bmm(torch.bmm(Gst, K.transpose(1, 2)), Gst.transpose(1, 2))
    else:
        grams = torch.stack([
            unfold(multi_mode_product(core, [W[j] for j in range(N) if j != i],
                                      modes=[j for j in range(N) if j != i], backend="torch"), i) @ Gst[i].t()
            for i in range(N)])
    inv = torch.linalg.inv_ex(torch.cat([grams, W]))[0]
    return Us, Gst, inv


def _rspace_stacked(T, C, factors, core, eta, scale: float, pre=None):
    """The r-space part of :func:`scaledgd_step` for factors of one shape ``(I, r)``: the same update, batched
    over the modes: the ``N`` factor gradients and the ``N`` grams ``Ub_i^T Ub_i = M_i(G) K_i^T M_i(G)^T`` as
    batched products, the ``N`` factor preconditioners and the ``N`` core ones ``(U_i^T U_i)^{-1}`` inverted in
    one call, the factor updates as one ``baddbmm`` (on a GPU every small op is a kernel launch; this path has
    about a third of the launches of the per-mode loop). ``scale``: ``1/p`` with missing entries (the
    rescaling of the residual, applied to the step instead). ``pre``: :func:`_rspace_precond` of
    ``(factors, core)``, if already computed."""
    N = core.ndim
    Us, Gst, inv = pre if pre is not None else _rspace_precond(factors, core)
    MT = torch.stack([T[i].movedim(i, 0) for i in range(N)]).reshape(N, Us.shape[1], -1)  # M_i(T_i)
    grads = torch.bmm(MT, Gst.transpose(1, 2))  # M_i(R) Ub_i
    e = eta * scale
    dcore = multi_mode_product(C, list(inv[N:].unbind(0)), backend="torch")
    if isinstance(e, torch.Tensor):
        new_Us = Us - e * torch.bmm(grads, inv[:N].transpose(1, 2))
        new_core = core - e * dcore
    else:  # one fused kernel each
        new_Us = torch.baddbmm(Us, grads, inv[:N].transpose(1, 2), alpha=-e)
        new_core = torch.add(core, dcore, alpha=-e)
    return list(new_Us.unbind(0)), new_core


def tucker_inner(core_a, factors_a, core_b, factors_b) -> torch.Tensor:
    """``<X_a, X_b>`` of two Tucker tensors, in float64, without forming either."""
    Ms = [Ua.double().t() @ Ub.double() for Ua, Ub in zip(factors_a, factors_b)]
    return (multi_mode_product(core_b.double(), Ms, backend="torch") * core_a.double()).sum()


def relative_change(old: tuple, new: tuple) -> torch.Tensor:
    """``||X_new - X_old||_F / ||X_old||_F`` for Tucker ``(factors, core)`` pairs, exact in r-space (float64)."""
    (fo, co), (fn, cn) = old, new
    if _stackable(list(fo) + list(fn)) and 2 * co.ndim <= len(_LETTERS) and not _needs_grad(fo, co, fn, cn):
        aa, bb, ab = _inner_products_stacked(list(fo), co, list(fn), cn)
    else:
        aa = tucker_inner(co, fo, co, fo)
        bb = tucker_inner(cn, fn, cn, fn)
        ab = tucker_inner(co, fo, cn, fn)
    return (aa + bb - 2 * ab).clamp_min(0).sqrt() / aa.sqrt().clamp_min(torch.finfo(torch.float64).tiny)


_LETTERS = "abcdefghijklmnopqrstuvwxyABCDEFGHIJKLMNOPQRSTUVWXYZ"  # einsum indices ("z": the batch)


def _inner_products_stacked(fo, co, fn, cn):
    """``(<X_o, X_o>, <X_n, X_n>, <X_o, X_n>)`` (float64) for factors of one shape, as one batched contraction
    (a handful of kernels, where three :func:`tucker_inner` calls take ~45)."""
    N = co.ndim
    Uo, Un = _as_stacked(fo).double(), _as_stacked(fn).double()
    r = Uo.shape[2]
    Ms = torch.bmm(torch.cat([Uo, Un, Uo]).transpose(1, 2), torch.cat([Uo, Un, Un])).view(3, N, r, r)  # U_a^T U_b
    ca = torch.stack([co, cn, co]).double()
    cb = torch.stack([co, cn, cn]).double()
    a, b = _LETTERS[:N], _LETTERS[N:2 * N]
    eq = f"z{a}," + ",".join(f"z{a[j]}{b[j]}" for j in range(N)) + f",z{b}->z"
    return torch.einsum(eq, ca, *[Ms[:, j] for j in range(N)], cb).unbind(0)


#: the captured step computes the previous step's relative change and the r-space preconditioners of the current
#: iterate on a side stream, beside the residual pass (False: all on one stream; an A/B switch for
#: benchmarks/_tune_rpca_kernel.py)
OVERLAP_CHANGE = True
#: (with OVERLAP_CHANGE) the r-space preconditioners too
OVERLAP_PRECOND = True


class _GraphStep:
    """One ScaledGD step plus the relative change of the step before it, captured in a CUDA graph and replayed
    per iteration.

    The threshold lives in a device tensor that the fused kernel reads at run time, so one capture serves
    every iteration of the schedule; the step writes the new iterate back into static buffers, which also keep
    the two iterates before it (``_groups``: current, previous, the one before). Removes the launch overhead of
    the small r-space ops (~45 kernels per step on the batched path), which otherwise exceeds the full-size pass.

    The relative change is off the step's critical path: replay ``j`` runs step ``j`` and, on a side stream
    beside it, the change of step ``j - 1`` (previous -> current iterate, both already there), so the change's
    ~17 tiny kernels overlap the full-size pass instead of following the step. :meth:`drive` runs the stopping
    rule two replays ahead of the host (the GPU never idles on it) and rolls the speculative steps back: the result
    and the history are those of stepping one at a time.

    ``capture=False`` (or a CPU tensor) runs the same body eagerly, with the same buffers and bookkeeping."""

    def __init__(self, Y, factors, core, zeta, eta, mode, backend, observed_fraction=None, capture=True):
        self._buffers(factors, core)
        self.zeta = torch.full((1,), float(zeta), dtype=Y.dtype, device=Y.device)
        self.launched = self._start = 0  # replays queued; the first one whose change may be read is _start + 1
        self._side = torch.cuda.Stream(Y.device) if (capture and Y.is_cuda) else None
        run = lambda: self._body(Y, eta, mode, backend, observed_fraction)  # noqa: E731
        if self._side is None:
            self.graph, self._run = None, run
            self._outs = [None] * 3
            return
        saved = [t.clone() for t in self._cur()]  # queued before the side stream waits: ordered
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):  # warm up (compiles kernels, allocates workspaces) off the graph
            run()
        torch.cuda.current_stream().wait_stream(s)
        for g in self._groups:
            _copy_all(g, saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.change = run()  # the graph keeps no reference to Y (a cached graph must not pin it)
        self._host = [torch.empty((), dtype=self.change.dtype, pin_memory=True) for _ in range(3)]
        self._events = [torch.cuda.Event() for _ in range(3)]

    def reset(self, factors, core, zeta) -> None:
        """Start again from ``(factors, core)`` at threshold ``zeta`` (a cached graph serving a new call)."""
        new = [_as_stacked(factors), core] if self._stacked else list(factors) + [core]
        for g in self._groups:  # (into the stacked buffers, if so)
            _copy_all(g, new)
        self.zeta.fill_(float(zeta))
        self.launched = self._start = 0

    def _buffers(self, factors, core) -> None:
        """The static buffers of the current, the previous and the one-before iterate (``_groups``). Factors of one
        shape are views of one ``(N, I, r)`` buffer each (``_stacked``), so the batched step and the relative change
        stack nothing. ``f, c``: the current iterate; ``f_prev, c_prev``: the previous one."""
        self._stacked = _stackable(factors)
        if self._stacked:
            self._groups = [[torch.stack(list(factors)), core.clone()] for _ in range(3)]
            (self.f, self.f_prev), (self.c, self.c_prev) = ([list(g[0].unbind(0)) for g in self._groups[:2]],
                                                            [g[1] for g in self._groups[:2]])
        else:
            self._groups = [[U.clone() for U in factors] + [core.clone()] for _ in range(3)]
            (self.f, self.f_prev), (self.c, self.c_prev) = ([g[:-1] for g in self._groups[:2]],
                                                            [g[-1] for g in self._groups[:2]])

    def _cur(self) -> list:
        """The buffers of the current iterate (the stacked factors and the core, or each factor and the core)."""
        return self._groups[0]

    def _body(self, Y, eta, mode, backend, observed_fraction):
        side = self._side if OVERLAP_CHANGE else None
        main = torch.cuda.current_stream() if side is not None else None
        pre = None
        if side is not None:  # on a side stream, beside the residual pass: what needs only the current iterate
            side.wait_stream(main)
            with torch.cuda.stream(side):
                change = relative_change((self.f_prev, self.c_prev), (self.f, self.c))  # of the previous step
                if self._stacked and OVERLAP_PRECOND:
                    pre_t = _rspace_precond(self.f, self.c)
                    pre = lambda: (main.wait_stream(side), pre_t)[1]  # noqa: E731 (joined after the pass)
        else:
            change = relative_change((self.f_prev, self.c_prev), (self.f, self.c))
        new_f, new_c = scaledgd_step(Y, self.f, self.c, self.zeta, eta, mode=mode, backend=backend,
                                     observed_fraction=observed_fraction, _pre=pre)
        if side is not None:
            main.wait_stream(side)
        cur, prev, before = self._groups
        _copy_all(before, prev)
        _copy_all(prev, cur)
        _copy_all(cur, [_as_stacked(new_f), new_c] if self._stacked else list(new_f) + [new_c])
        return change

    def launch(self, zeta: float) -> int:
        """Queue replay ``j`` (returned): step ``j`` at threshold ``zeta``, and the change of step ``j - 1``
        (copied to pinned host memory behind it). No sync."""
        j = self.launched
        self.launched += 1
        self.zeta.fill_(zeta)
        if self.graph is None:
            self._outs[j % 3] = self._run()
            return j
        self.graph.replay()
        self._host[j % 3].copy_(self.change, non_blocking=True)
        self._events[j % 3].record()
        return j

    def read(self, j: int) -> float:
        """Wait for replay ``j`` and return the relative change of step ``j - 1`` it computed (``j`` after the
        first replay since the start, the last reset or rollback; at most two replays launched after it)."""
        if not (self._start + 1 <= j < self.launched <= j + 3):
            raise ValueError(f"replay {j} cannot be read: {self.launched} launched (keep at most 2 ahead)")
        if self.graph is None:
            return float(self._outs[j % 3])
        self._events[j % 3].synchronize()
        return float(self._host[j % 3])

    def rollback(self, n: int) -> None:
        """Undo the last ``n`` (1 or 2) queued steps (stream-ordered after them). The iterate then restarts as
        after :meth:`reset` (previous = current, so the next replay's change is 0 and is not read), and the changes
        of the replays before cannot be read any more."""
        if n not in (1, 2):
            raise ValueError(f"can roll back 1 or 2 steps, not {n}")
        _copy_all(self._cur(), self._groups[n])
        for g in self._groups[1:]:
            _copy_all(g, self._cur())
        self._start = self.launched

    def drive(self, zeta_at, max_iter: int, record) -> int:
        """Run steps ``k = 0, 1, ...`` at thresholds ``zeta_at(k)``; after each, ``record(change_k, zeta_at(k))``
        books it and returns True to stop. Replay ``k + 2`` is queued before step ``k``'s change (computed by
        replay ``k + 1``) is read; at the end the speculative steps are rolled back, so the buffers hold the
        iterate after the last recorded step, as stepping one at a time would. Returns the number of recorded
        steps."""
        max_iter = int(max_iter)
        if max_iter <= 0:
            return 0
        base = self.launched  # replays numbered from here (a graph may have been replayed before)
        self.launch(zeta_at(0))
        self.launch(zeta_at(1))  # replay max_iter at most: it only serves the last step's change
        k = 0
        for k in range(max_iter):
            if k + 2 <= max_iter:
                self.launch(zeta_at(k + 2))
            if record(self.read(base + k + 1), zeta_at(k)):
                break
        self.rollback(self.launched - base - (k + 1))
        return k + 1


def _copy_all(dst: list, src: list) -> None:
    """``d.copy_(s)`` for each pair, as one multi-tensor kernel where torch has it (one launch, not 2N + 2)."""
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # pragma: no cover - older torch
        for d, s_ in zip(dst, src):
            d.copy_(s_)


#: how many captured iteration graphs :func:`rpca` keeps for reuse (0: none). A graph is reused when a later call
#: has the same working tensor (same storage address, shape and dtype: passing the same CUDA tensor again), the
#: same factor/core shapes, threshold mode, backend, step size and observed fraction. It then skips the capture
#: (H100, 512^3: 10-14 ms). The cache holds the graph's workspaces (a few tensors of the size of ``Y x_N U_N^T``
#: and the fused pass's partial sums, ~75 MB at 512^3, rank 10), never ``Y`` itself; :func:`clear_graph_cache`
#: frees them.
GRAPH_CACHE_SIZE = 1
_GRAPH_CACHE: "dict[tuple, _GraphStep]" = {}


def clear_graph_cache() -> None:
    """Drop the captured CUDA graphs :func:`rpca` keeps for reuse (and their GPU workspaces)."""
    _GRAPH_CACHE.clear()


def _graph_key(Y, factors, core, eta, mode, backend, observed_fraction):
    import tensorkernels._triton_rpca as tr

    switches = (OVERLAP_CHANGE, OVERLAP_PRECOND, tr.GRID_J_FASTEST, tr.DEFAULT_CONFIG, tr.CONTRACT_PRECISION)
    return switches + (Y.data_ptr(), tuple(Y.shape), Y.dtype, str(Y.device), tuple(tuple(U.shape) for U in factors),
            tuple(core.shape), mode, backend, float(eta), observed_fraction, STEP_CONTRACT_PRECISION,
            torch.cuda.current_stream(Y.device).cuda_stream, torch.get_float32_matmul_precision(),
            torch.backends.cuda.matmul.allow_tf32)


def _make_graph_step(Y, factors, core, zeta, eta, mode, backend, want, observed_fraction=None):
    if want is False or not Y.is_cuda:
        return None
    from tensorkernels import resolve_backend

    if resolve_backend(backend, Y) != "triton":
        return None
    key = _graph_key(Y, factors, core, eta, mode, backend, observed_fraction)
    cached = _GRAPH_CACHE.pop(key, None)  # out of the cache while in use: a concurrent call captures its own
    if cached is not None:
        cached.reset(factors, core, zeta)
        return cached
    try:
        gs = _GraphStep(Y, factors, core, zeta, eta, mode, backend, observed_fraction=observed_fraction)
        gs.cache_key = key
        return gs
    except Exception as exc:  # capture unsupported here: run eagerly
        if want:
            raise
        warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running eagerly",
                      RuntimeWarning, stacklevel=3)
        return None


def _release_graph(graph) -> None:
    """Put a graph whose call is done (its results copied out) back into the cache, most recent last."""
    key = getattr(graph, "cache_key", None)
    if key is None or GRAPH_CACHE_SIZE <= 0:
        return
    _GRAPH_CACHE.pop(key, None)
    while len(_GRAPH_CACHE) >= GRAPH_CACHE_SIZE:
        _GRAPH_CACHE.pop(next(iter(_GRAPH_CACHE)))
    _GRAPH_CACHE[key] = graph


# ----------------------------------------------------------------------------------------------- checks
def _validate(Y, ranks):
    if isinstance(Y, np.ndarray):
        kind = "numpy"
    elif isinstance(Y, torch.Tensor):
        kind = "torch"
    else:
        raise RPCAInputError(f"Y must be a numpy array or a torch tensor, got {type(Y).__name__}")
    if Y.ndim < 2:
        raise RPCAInputError(f"Y must have order >= 2 (a matrix or a tensor), got shape {tuple(Y.shape)}")
    dt = Y.dtype
    is_float = (np.issubdtype(dt, np.floating) if kind == "numpy" else (dt.is_floating_point))
    if not is_float:
        raise RPCAInputError(f"Y must have a real floating dtype (float32/float64), got {dt}; cast it first")
    if Y.size == 0 if kind == "numpy" else Y.numel() == 0:
        raise RPCAInputError(f"Y is empty, shape {tuple(Y.shape)}")
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        ranks = [int(ranks)] * Y.ndim
    try:
        given = list(ranks)
    except TypeError:
        raise RPCAInputError(f"ranks must be an int or one int per mode, got {ranks!r}") from None
    if not all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in given):
        raise RPCAInputError(f"ranks must be integers, got {given!r}")
    ranks = [int(r) for r in given]
    if len(ranks) != Y.ndim:
        raise RPCAInputError(f"need one rank per mode: Y has order {Y.ndim}, got ranks {ranks}")
    for i, (r, n) in enumerate(zip(ranks, Y.shape)):
        if not 1 <= r <= n:
            raise RPCAInputError(f"rank {r} of mode {i} must be between 1 and the dimension {n}")
        others = int(np.prod([ranks[k] for k in range(len(ranks)) if k != i]))
        if r > others:
            raise RPCAInputError(
                f"rank {r} of mode {i} exceeds the product of the other ranks ({others}): no Tucker tensor "
                "has such ranks; lower it"
            )
    return kind, ranks


def _to_kind(T: torch.Tensor, kind: str, device, dtype):
    if kind == "numpy":
        return T.detach().cpu().numpy().astype(dtype, copy=False)
    return T.to(device=device, dtype=dtype)


def _as_mask(mask, shape, device) -> torch.Tensor:
    """A boolean torch mask of ``shape`` on ``device`` (True = observed), or RPCAInputError."""
    if isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_:
            raise RPCAInputError(f"mask must be boolean (True = observed), got dtype {mask.dtype}; "
                                 "use mask=(array != 0) or similar")
        m = torch.from_numpy(np.ascontiguousarray(mask))
    elif isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise RPCAInputError(f"mask must be boolean (True = observed), got dtype {mask.dtype}")
        m = mask.detach()
    else:
        raise RPCAInputError(f"mask must be a boolean numpy array or torch tensor, got {type(mask).__name__}")
    if tuple(m.shape) != tuple(shape):
        raise RPCAInputError(f"mask has shape {tuple(m.shape)}, Y has shape {tuple(shape)}: they must agree")
    return m.to(device)


def _apply_mask(Yt: torch.Tensor, mask) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    """``(Y_work, observed, p)``: checks ``Y`` (finite where observed) and the mask. With missing entries,
    ``Y_work`` is a copy with NaN there (the fused pass gives them no residual), ``observed`` the boolean mask
    and ``p`` the observed fraction; with none (no mask, or an all-True one), ``(Yt, None, None)``."""
    obs = None
    frac_obs = None
    if mask is not None:
        obs = _as_mask(mask, Yt.shape, Yt.device)
        n_obs = int(obs.sum())
        if n_obs == 0:
            raise RPCAInputError("mask marks no entry as observed; nothing to fit")
        if n_obs == obs.numel():
            obs = None  # all observed: exactly the unmasked problem
        else:
            frac_obs = n_obs / obs.numel()
    if obs is None:
        if not bool(torch.isfinite(Yt).all()):
            raise RPCAInputError("Y contains NaN or inf; replace them (e.g. by 0, as gross errors) or mark them "
                                 "missing with mask=")
        return Yt, None, None
    if bool((~torch.isfinite(Yt) & obs).any()):
        raise RPCAInputError("Y contains NaN or inf at observed entries (mask True); mark them missing in the "
                             "mask or replace them")
    return Yt.masked_fill(~obs, float("nan")), obs, frac_obs  # a copy: missing entries are NaN


class _Timer:
    """Phase timings for ``rpca(..., profile=True)`` (synchronises CUDA at each mark; a no-op otherwise)."""

    def __init__(self, on: bool, device):
        self.on, self.cuda = on, on and torch.device(device).type == "cuda"
        self.times: dict[str, float] = {}
        self._t = self._now() if on else 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def mark(self, name: str) -> None:
        if self.on:
            t = self._now()
            self.times[name] = self.times.get(name, 0.0) + (t - self._t)
            self._t = t


# ------------------------------------------------------------------------------------------------- driver
def rpca(
    Y,
    ranks: Sequence[int] | int = (5, 5, 5),
    sparsity: float | None = None,
    max_iter: int = 200,
    tol: float = 1e-7,
    step: float | None = None,
    decay: float | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    *,
    params: RPCAParams | Mapping[str, Any] | str | None = None,
    threshold: str = "hard",
    backend: str | None = None,
    cuda_graph: bool | None = None,
    mask=None,
    callback=None,
    profile: bool = False,
) -> RPCAResult:
    """Tensor robust PCA: split ``Y`` into a low-Tucker-rank part and a sparse part.

    Args:
        Y: numpy array or torch tensor of order ``N >= 2``, real floating dtype, finite (on observed entries).
        ranks: Tucker ranks ``(r_1, ..., r_N)`` (an int means the same rank for every mode).
        sparsity: optional estimate of the fraction of corrupted entries (in ``[0, 0.5)``); only used to
            sharpen the data-derived default ``zeta1``.
        max_iter: iteration limit. tol: stop when the relative change of ``X`` is below ``max(tol, 4 eps)``
            (``eps`` of the working dtype).
        step: step size ``eta``; decay: threshold decay ``rho``. Both override ``params``.
        device: where to compute (default: where ``Y`` is); results come back on ``Y``'s device.
        progress: show a tqdm bar.
        params: ``None``/``"classic"`` (default: the hand-set ``rho = 0.9``, ``eta = 0.5``), ``"learned"``
            (learned offline over a broad family of synthetic problems, ``data/rpca_defaults.json``: reaches
            1e-5 more often on held-out problems, in more iterations; see :data:`DEFAULT_PARAMS`), a dict
            (overrides the defaults key by key) or an :class:`RPCAParams` (taken as it is). Keys: ``zeta0``, ``zeta1``, ``rho``, ``eta``, ``zeta0_scale``, ``zeta1_scale``;
            unset thresholds are estimated from the data (times their scale).
        threshold: ``"hard"`` (default) or ``"soft"``.
        backend: kernel backend for the full-size pass (``None``: Triton on CUDA, torch elsewhere).
        cuda_graph: replay each iteration from a captured CUDA graph (``None``: on CUDA with the Triton backend,
            falling back to eager execution if capture fails; ``False``: never).
        mask: optional boolean array/tensor shaped like ``Y``, True where ``Y`` was observed. Unobserved entries
            are missing, not corrupted: their values (NaN allowed) are ignored, the residual is taken on observed
            entries only and rescaled by the observed fraction ``p``, and the spectral initialisation starts from
            the rescaled observed tensor (ScaledGD for tensor completion + RPCA). ``low_rank`` fills them in;
            ``sparse`` is 0 there. An all-True mask gives exactly the result without one.
        callback: ``callback(k, factors, core)`` after iteration ``k`` (1-based; runs the iterations eagerly).
        profile: record phase timings in ``result.timings`` (seconds; synchronises CUDA between phases).

    Returns:
        :class:`RPCAResult`.

    After stopping, the answer is checked without the truth: when the sparse part holds more than half of the
    (observed) entries (``MAX_SPARSE_FRACTION``; a sparse corruption cannot), the low-rank fit is likely wrong:
    ``converged`` is set to ``False`` and an :class:`~tensorrpca.errors.RPCAConvergenceWarning` says what to try
    (larger ranks, ``sparsity=``, a slower decay or larger ``zeta1``, or stopping earlier on noisy data).
    ``result.checks`` holds the numbers.

    Raises:
        RPCAInputError (a ``ValueError``): bad order, ranks, dtype, NaN/inf, mask or parameters.

    Warns:
        RPCAConvergenceWarning: stopped at ``max_iter``, diverged, or the answer failed the checks above.
    """
    kind, ranks = _validate(Y, ranks)
    if threshold not in ("hard", "soft"):
        raise RPCAInputError(f"threshold must be 'hard' or 'soft', got {threshold!r}")
    if sparsity is not None and not 0 <= sparsity < 0.5:
        raise RPCAInputError(f"sparsity must be in [0, 0.5), got {sparsity}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise RPCAInputError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    try:
        tol_ok = math.isfinite(float(tol)) and float(tol) >= 0
    except (TypeError, ValueError):
        tol_ok = False
    if not tol_ok:
        raise RPCAInputError(f"tol must be a finite number >= 0, got {tol!r}")
    p = _resolve_params(params)
    if step is not None:
        p.eta = float(step)
    if decay is not None:
        p.rho = float(decay)
    p.validate()

    in_dtype = Y.dtype
    in_device = Y.device if kind == "torch" else None
    Yt = torch.from_numpy(np.ascontiguousarray(Y)) if kind == "numpy" else Y.detach()
    if device is not None:
        Yt = Yt.to(device)
    timer = _Timer(profile, Yt.device)
    work_dtype = Yt.dtype if Yt.dtype in (torch.float32, torch.float64) else torch.float32
    Yt = Yt.to(work_dtype).contiguous()
    Yt, obs, frac_obs = _apply_mask(Yt, mask)
    timer.mark("validate")

    scale = 1.0 if frac_obs is None else 1.0 / frac_obs
    Yinit = Yt if obs is None else Yt.nan_to_num(0.0)  # the observed tensor (missing = 0), rescaled below
    amax = float(torch.linalg.vector_norm(Yinit, ord=float("inf")))
    shift = _range_shift(amax, work_dtype)
    if shift:  # extreme magnitudes: work on 2^shift * Y (exact), answer scaled back below
        Yt = _ldexp(Yt, shift)
        Yinit = Yt if obs is None else _ldexp(Yinit, shift)
        amax = _ldexp(amax, shift)
        p.zeta0 = None if p.zeta0 is None else _ldexp(p.zeta0, shift)
        p.zeta1 = None if p.zeta1 is None else _ldexp(p.zeta1, shift)
    if p.zeta0 is None:
        p.zeta0 = p.zeta0_scale * _init.default_zeta0(Yinit, ranks, scale=scale, zmax=amax)
    timer.mark("zeta0")
    factors, core = spectral_init(Yinit, ranks, p.zeta0, mode=threshold, scale=scale)
    del Yinit
    timer.mark("spectral_init")
    if p.zeta1 is None:
        X0 = tucker_to_tensor(core, factors, backend=backend)
        p.zeta1 = p.zeta1_scale * _init.default_zeta1(Yt, X0, sparsity)
        if frac_obs is not None:  # the rescaled initial estimate errs with heavier tails than the MAD sees
            p.zeta1 *= _init.MISSING_ZETA1_MULT
        del X0
    timer.mark("zeta1")
    tol_eff = max(float(tol), 4 * torch.finfo(work_dtype).eps)

    history: list[dict] = []
    converged = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(max_iter), desc="rpca", unit="it")

    def record(change: float, zeta: float) -> bool:
        """Book one iteration; True when the iteration must stop (converged or diverged)."""
        nonlocal converged
        history.append({"rel_change": change, "zeta": zeta})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(rel_change=f"{change:.2e}")
        if not math.isfinite(change):
            warnings.warn("rpca diverged (non-finite iterate); try a smaller step or larger zeta1",
                          RPCAConvergenceWarning, stacklevel=3)
            return True
        if change < tol_eff:
            converged = True
            return True
        return False

    zeta_at = lambda k: p.zeta1 * p.rho**k  # noqa: E731
    try:
        if not bool(core.abs().max() > 0):  # Y thresholds to zero: X = 0 is the answer
            converged = True
        else:
            graph = None
            if int(max_iter) > 0 and callback is None:
                graph = _make_graph_step(Yt, factors, core, p.zeta1, p.eta, threshold, backend, cuda_graph,
                                         observed_fraction=frac_obs)
            timer.mark("graph_capture")
            if graph is not None:  # pipelined, two replays ahead of the stopping rule (see _GraphStep.drive)
                graph.drive(zeta_at, max_iter, record)
                # copies: the graph's buffers are reused by a later call (GRAPH_CACHE_SIZE)
                factors, core = [U.clone() for U in graph.f], graph.c.clone()
                _release_graph(graph)
            else:
                for k in range(int(max_iter)):
                    zeta = zeta_at(k)
                    new = scaledgd_step(Yt, factors, core, zeta, p.eta, mode=threshold, backend=backend,
                                        observed_fraction=frac_obs)
                    change = float(relative_change((factors, core), new))
                    factors, core = new
                    if callback is not None:
                        callback(k + 1, factors, core if not shift else _ldexp(core, -shift))
                    if record(change, zeta):
                        break
    finally:
        if bar is not None:
            bar.close()
    timer.mark("iterations")
    if not converged and max_iter > 0 and history and math.isfinite(history[-1]["rel_change"]):
        warnings.warn(
            f"rpca stopped at max_iter={max_iter} with relative change {history[-1]['rel_change']:.2e} > tol",
            RPCAConvergenceWarning, stacklevel=2,
        )
    X = tucker_to_tensor(core, factors, backend=backend)
    zeta_final = p.zeta1 * p.rho ** len(history)
    S = threshold_residual(Yt, X, zeta_final, mode=threshold, out="sparse", backend=backend)
    if obs is not None:
        S.masked_fill_(~obs, 0)
    if shift:  # back to the units of Y
        X, S, core = _ldexp(X, -shift), _ldexp(S, -shift), _ldexp(core, -shift)
        p.zeta0, p.zeta1, zeta_final = (_ldexp(v, -shift) for v in (p.zeta0, p.zeta1, zeta_final))
        for h in history:
            h["zeta"] = _ldexp(h["zeta"], -shift)
    checks = _check_answer(S, zeta_final, history, ranks, n_entries=None if obs is None else int(obs.sum()))
    if checks.get("likely_wrong"):
        converged = False
        warnings.warn(checks["message"], RPCAConvergenceWarning, stacklevel=2)
    if frac_obs is not None:
        checks["observed_fraction"] = frac_obs
    out_dtype = in_dtype
    conv = lambda T: _to_kind(T, kind, in_device, out_dtype)  # noqa: E731
    result = RPCAResult(
        low_rank=conv(X), sparse=conv(S), core=conv(core), factors=[conv(U) for U in factors],
        n_iter=len(history), converged=converged, history=history, params=p, checks=checks,
    )
    timer.mark("final")
    result.timings = timer.times
    return result


def _ldexp(x, k: int):
    """``x * 2^k`` (a tensor or a float), exact; in two factors so that neither overflows the dtype (``k`` up
    to the width of float64's exponent range)."""
    a = k // 2
    if isinstance(x, torch.Tensor):
        return x * 2.0 ** a * 2.0 ** (k - a)
    return math.ldexp(float(x), k)


def _range_shift(amax: float, dtype: torch.dtype) -> int:
    """``k`` such that ``2^k Y`` is safe to fit (0 for ordinary magnitudes). The initialisation forms Gram-like
    products of the entries (``max|Y|^2`` times an unfolding's length), which overflow float32 from about
    ``max|Y| = 1e17`` and underflow to 0 below about ``1e-19``; outside ``[2^(minexp/4), 2^(maxexp/4)]`` (float32:
    ``2.3e-10 .. 4.3e9``) ``Y`` is scaled by a power of two into ``[0.5, 1)``, which is exact, and the answer back."""
    fi = np.finfo(np.float32 if dtype == torch.float32 else np.float64)
    if amax == 0 or 2.0 ** (fi.minexp // 4) <= amax <= 2.0 ** (fi.maxexp // 4):
        return 0
    return -math.frexp(amax)[1]


#: Largest share of entries the sparse part may hold before the answer is called likely wrong. Robust PCA's model
#: is a *sparse* corruption (identifiable only below one half; ``sparsity`` must be < 0.5 for the same reason).
MAX_SPARSE_FRACTION = 0.5


def _check_answer(S: torch.Tensor, zeta_final: float, history: list, ranks, n_entries: int | None = None) -> dict:
    """Checks that need no ground truth, run after the iteration stops.

    The one that decides: the share of non-zero entries of the sparse part ``S = T_zeta(Y - X)`` at the final
    threshold. When the low-rank fit is wrong (ranks too low for the data, a weak component lost at high
    condition number, or the threshold decayed faster than the fit improved), its residual exceeds the final
    threshold on most entries and ``S`` swallows them: on the default grid's silent failures ``S`` held 98-99.6 %
    of the entries (true corruption 5-30 %), on every success exactly the corrupted share. Dense noise in ``Y``
    does the same once the threshold has decayed to the noise level; the split is then not low-rank + sparse
    either. Returns ``{"sparse_fraction", "zeta_final", "likely_wrong", "message"}`` (empty when no iteration ran).
    ``n_entries``: how many entries were observed (with missing ones; default all of ``S``).
    """
    if not history or not math.isfinite(history[-1]["rel_change"]):
        return {}
    frac = float(torch.count_nonzero(S)) / max(S.numel() if n_entries is None else n_entries, 1)
    out = {"sparse_fraction": frac, "zeta_final": float(zeta_final), "likely_wrong": frac > MAX_SPARSE_FRACTION}
    if out["likely_wrong"]:
        out["message"] = (
            f"rpca's answer is likely wrong: the sparse part holds {frac:.1%} of the entries (robust PCA assumes a "
            f"sparse corruption, < {MAX_SPARSE_FRACTION:.0%}); the final threshold {zeta_final:.3g} fell below the "
            f"low-rank fit's residual on most entries, so converged=False. Try: larger ranks than {list(ranks)} "
            "(a weak component may be missing); sparsity=<expected corrupted share> to sharpen zeta1; a slower "
            "threshold decay (decay=0.95) or a larger zeta1 (params={'zeta1': ...}); if Y carries dense noise, a "
            "larger tol or a smaller max_iter stops before the threshold reaches the noise level."
        )
    return out
