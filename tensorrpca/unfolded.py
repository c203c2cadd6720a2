"""Deep-unfolded, self-supervised tensor RPCA (Dong, Shah, Donegan, Chi, ICASSP 2023).

``K`` iterations of ScaledGD tensor RPCA (:mod:`tensorrpca.scaledgd`) unrolled into a network whose only
trainable parameters are the four hyperparameters of :func:`tensorrpca.rpca`: the spectral-initialisation
threshold ``zeta0``, the first threshold ``zeta1``, the decay ``rho`` (``zeta_{k+1} = rho^k zeta1``) and the
step ``eta``; shared by all layers (default) or one ``(rho_k, eta_k)`` per layer (``per_layer=True``, then
``zeta_k = zeta1 prod_{j<k} rho_j``). They are trained from the observations alone.

Reparameterisation (unconstrained raw parameters, always valid values):
``zeta = exp(theta)`` (> 0), ``rho = sigmoid(theta)`` and ``eta = sigmoid(theta)`` (both in ``(0, 1)``).

Same iteration as :func:`rpca`
    Every layer is :func:`tensorrpca.scaledgd.scaledgd_step` and the initialisation
    :func:`tensorrpca.scaledgd.spectral_init`; there is no second copy of the update. At inference
    (calling the module) the thresholds are hard and exact, and the output is :func:`rpca`'s with the same
    parameters and iteration count (an :class:`~tensorrpca.scaledgd.RPCAResult`).

Differentiable hard thresholding (training only)
    With hard thresholding the residual of a step is ``R = X - Y_g`` with the *gated observation*
    ``Y_g = X + m * (Y - X)``, ``m = 1{|Y - X| <= zeta}``: the step at threshold ``zeta`` equals the
    unthresholded step (``zeta = inf``) applied to ``Y_g``, and likewise the spectral initialisation is the
    HOSVD of ``m_0 * Y``, ``m_0 = 1{|Y| <= zeta0}``. Training replaces the masks by the smooth gate
    ``sigmoid((zeta - |D|) / (tau zeta))`` (temperature ``tau`` annealed during :meth:`UnfoldedRPCA.fit`),
    which is differentiable in ``zeta``, and feeds ``Y_g`` to the same step functions. Soft thresholding is
    already differentiable in ``zeta`` and is trained as is.

Self-supervised loss
    ``||Y - X_K||_1 / ||Y||_1`` (the sparse part should be sparse), optionally averaged over every layer's
    ``X_k``; it needs no ground truth. With ``targets`` (the true low-rank tensors) :meth:`fit` instead
    minimises ``||X_K - X*||_F / ||X*||_F`` (supervised unfolding, for comparison).

Baseline: :func:`random_search` over the same four hyperparameters with the same label-free objective
(evaluated with exact thresholds), for a given number of trials.

Typical use::

    model = UnfoldedRPCA(ranks=(5, 5, 5), n_layers=20)
    model.fit([Y1, Y2, Y3], epochs=40)       # numpy arrays or torch tensors, no labels
    res = model(Y_new)                       # RPCAResult, exact hard thresholding, 20 iterations
    model.save("params.json")
    res = rpca(Y_new, ranks=(5, 5, 5), params=load_params("params.json"))   # run to convergence
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from tensorkernels import threshold_residual, tucker_to_tensor

from .errors import RPCAConvergenceWarning, RPCAFileExistsError, RPCAInputError
from .scaledgd import (
    RPCAParams,
    _apply_mask,
    RPCAResult,
    _to_kind,
    _validate,
    relative_change,
    rpca,
    scaledgd_step,
    spectral_init,
)

__all__ = ["UnfoldedRPCA", "load_params", "random_search", "SearchResult", "label_free_loss"]

_FORMAT = "tensorrpca.UnfoldedRPCA"
_VERSION = 1


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _as_work_tensor(Y, ranks, dtype=None) -> tuple[torch.Tensor, str, list[int]]:
    """Validate like :func:`rpca` and return ``(tensor, kind, ranks)`` (float32/float64, contiguous)."""
    Yt, kind, ranks, _, _ = _prep(Y, ranks, dtype, None)
    return Yt, kind, ranks


def _prep(Y, ranks, dtype, mask):
    """``(tensor, kind, ranks, observed, p)``: :func:`_as_work_tensor` with an optional mask of observed entries
    (as :func:`rpca`'s ``mask``: missing entries become NaN in the returned copy; ``observed``/``p`` are None
    when every entry is observed)."""
    kind, ranks = _validate(Y, ranks)
    Yt = torch.from_numpy(np.ascontiguousarray(Y)) if kind == "numpy" else Y.detach()
    if dtype is not None:
        Yt = Yt.to(dtype)
    elif Yt.dtype not in (torch.float32, torch.float64):
        Yt = Yt.to(torch.float32)
    Yt = Yt.contiguous()
    if mask is None and not bool(torch.isfinite(Yt).all()):
        raise RPCAInputError("an observation contains NaN or inf; replace them (e.g. by 0) or mark them missing "
                             "with a mask first")
    Yt, obs, frac = _apply_mask(Yt, mask)
    return Yt, kind, ranks, obs, frac


def label_free_loss(Y: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Self-supervised loss ``||Y - X||_1 / ||Y||_1`` (scale-free; 0-d tensor, differentiable in ``X``)."""
    return (Y - X).abs().sum() / Y.abs().sum().clamp_min(torch.finfo(Y.dtype).tiny)


def _smooth_gate(D: torch.Tensor, zeta: torch.Tensor, tau: float) -> torch.Tensor:
    """Smooth ``1{|D| <= zeta}``: ``sigmoid((zeta - |D|) / (tau zeta))``."""
    return torch.sigmoid((zeta - D.abs()) / (tau * zeta))


def _rpca_init(Yt: torch.Tensor, ranks, zeta0, zeta1, mode: str, mask=None):
    """Spectral initialisation and thresholds exactly as :func:`rpca` makes them (it is called with
    ``max_iter=0``): ``(factors, core, zeta0, zeta1)``; ``None`` thresholds are data-derived (unscaled: the
    classic estimates, whatever rpca's defaults are)."""
    res = rpca(Yt, ranks, max_iter=0, params=RPCAParams(zeta0=zeta0, zeta1=zeta1), threshold=mode, mask=mask)
    return list(res.factors), res.core, float(res.params.zeta0), float(res.params.zeta1)


# -------------------------------------------------------------------------------------------------- model
class UnfoldedRPCA(nn.Module):
    """``n_layers`` ScaledGD iterations with learnable hyperparameters.

    Args:
        ranks: Tucker ranks ``(r_1, ..., r_N)`` (an int: the same for every mode).
        n_layers: number of unrolled iterations ``K`` (>= 1).
        per_layer: one ``(rho_k, eta_k)`` per layer instead of one shared pair.
        params: initial values (:class:`RPCAParams` or dict; per-layer ``rho``/``eta`` may be lists of length
            ``n_layers``). ``zeta0``/``zeta1`` left ``None`` are data-derived: per input (exactly as
            :func:`rpca`) until :meth:`fit` sets them from the training data (geometric mean of the
            data-derived values). ``rho`` and ``eta`` must lie in ``(0, 1)``; defaults 0.9 and 0.5.
        threshold: ``"hard"`` (default) or ``"soft"``.

    Calling the module, ``model(Y)``, runs the exact iteration and returns an :class:`RPCAResult` (numpy in,
    numpy out; torch in, torch out, on ``Y``'s device and dtype).
    """

    def __init__(
        self,
        ranks: Sequence[int] | int,
        n_layers: int = 20,
        per_layer: bool = False,
        params: RPCAParams | Mapping[str, Any] | None = None,
        threshold: str = "hard",
    ):
        super().__init__()
        if int(n_layers) < 1:
            raise RPCAInputError(f"n_layers must be >= 1, got {n_layers}")
        if threshold not in ("hard", "soft"):
            raise RPCAInputError(f"threshold must be 'hard' or 'soft', got {threshold!r}")
        self.ranks = ranks if isinstance(ranks, (int, np.integer)) else [int(r) for r in ranks]
        self.n_layers = int(n_layers)
        self.per_layer = bool(per_layer)
        self.threshold = threshold
        n = self.n_layers if self.per_layer else 1
        self.log_zeta0 = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.log_zeta1 = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.logit_rho = nn.Parameter(torch.full((n,), _logit(0.9), dtype=torch.float64))
        self.logit_eta = nn.Parameter(torch.zeros((n,), dtype=torch.float64))
        # which of zeta0, zeta1 hold a value (else: data-derived per input)
        self.register_buffer("zeta_set", torch.zeros(2, dtype=torch.bool))
        self.fit_history: list[dict] = []
        if params is not None:
            self.set_params(params)

    # ---------------------------------------------------------------------------------- parameters
    def set_params(self, params: RPCAParams | Mapping[str, Any]) -> "UnfoldedRPCA":
        """Set the hyperparameters (values, not raw parameters); ``None`` thresholds become data-derived."""
        if isinstance(params, RPCAParams):
            params = {"zeta0": params.zeta0, "zeta1": params.zeta1, "rho": params.rho, "eta": params.eta}
        if not isinstance(params, Mapping):
            raise RPCAInputError(f"params must be an RPCAParams or a dict, got {type(params).__name__}")
        unknown = set(params) - {"zeta0", "zeta1", "rho", "eta"}
        if unknown:
            raise RPCAInputError(f"unknown RPCA parameters {sorted(unknown)}; use zeta0, zeta1, rho, eta")
        with torch.no_grad():
            for i, name in enumerate(("zeta0", "zeta1")):
                if name not in params:
                    continue
                v = params[name]
                if v is None:
                    self.zeta_set[i] = False
                    continue
                v = float(v)
                if not (math.isfinite(v) and v > 0):
                    raise RPCAInputError(f"{name} must be a finite number > 0 for UnfoldedRPCA, got {v}")
                getattr(self, "log_" + name).fill_(math.log(v))
                self.zeta_set[i] = True
            for name in ("rho", "eta"):
                if name not in params or params[name] is None:
                    continue
                raw = getattr(self, "logit_" + name)
                vals = np.atleast_1d(np.asarray(params[name], dtype=np.float64))
                if vals.size not in (1, raw.numel()):
                    raise RPCAInputError(
                        f"{name} has {vals.size} values; the model has {raw.numel()} "
                        f"({'per_layer' if self.per_layer else 'shared'}, n_layers={self.n_layers})"
                    )
                if not np.all(np.isfinite(vals) & (vals > 0) & (vals < 1)):
                    raise RPCAInputError(f"{name} must lie strictly between 0 and 1 for UnfoldedRPCA, got {vals}")
                raw.copy_(torch.as_tensor(np.log(vals) - np.log1p(-vals)).expand_as(raw))
        return self

    def _values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(zeta0, zeta1, rho, eta)`` as differentiable tensors (``rho``/``eta`` shaped ``(1,)`` or ``(K,)``)."""
        return self.log_zeta0.exp(), self.log_zeta1.exp(), torch.sigmoid(self.logit_rho), torch.sigmoid(self.logit_eta)

    def hyperparameters(self) -> dict[str, Any]:
        """Current values: ``zeta0``, ``zeta1`` (float or None when data-derived), ``rho``, ``eta`` (float,
        or a list per layer)."""
        z0, z1, rho, eta = (t.detach().cpu() for t in self._values())
        conv = (lambda t: [float(x) for x in t]) if self.per_layer else (lambda t: float(t[0]))
        return {
            "zeta0": float(z0) if bool(self.zeta_set[0]) else None,
            "zeta1": float(z1) if bool(self.zeta_set[1]) else None,
            "rho": conv(rho),
            "eta": conv(eta),
        }

    def params(self) -> RPCAParams:
        """The learned hyperparameters as :class:`RPCAParams`, for ``rpca(Y, ranks, params=...)``.

        Raises RPCAInputError for a per-layer model (its schedule is not a ``(rho, eta)`` pair: call the module).
        """
        if self.per_layer:
            raise RPCAInputError("a per_layer model has one (rho, eta) per layer, which rpca cannot take; "
                                 "call the model itself (model(Y, n_iter=...)) or train with per_layer=False")
        return RPCAParams(**self.hyperparameters())

    def _schedule(self, n_iter: int, z1: float, rho: list[float], eta: list[float]) -> tuple[list, list, float]:
        """Per-iteration ``(zetas, etas)`` and the threshold after the last iteration, as Python floats
        (shared: ``zeta_k = zeta1 rho^k`` exactly as :func:`rpca`)."""
        if not self.per_layer:
            zetas = [z1 * rho[0] ** k for k in range(n_iter + 1)]
            return zetas[:-1], [eta[0]] * n_iter, zetas[-1]
        zetas, etas, z = [], [], z1
        for k in range(n_iter):
            j = min(k, self.n_layers - 1)
            zetas.append(z)
            etas.append(eta[j])
            z = z * rho[j]
        return zetas, etas, z

    # ------------------------------------------------------------------------------------ inference
    def forward(
        self,
        Y,
        n_iter: int | None = None,
        tol: float | None = None,
        callback: Callable[[int, list, torch.Tensor], None] | None = None,
        progress: bool = False,
        mask=None,
    ) -> RPCAResult:
        """Run the exact (hard or soft) iteration with the current hyperparameters.

        Args:
            Y: numpy array or torch tensor of order ``N >= 2`` (as :func:`rpca`).
            n_iter: iterations (default ``n_layers``; more continue the schedule with the last layer's
                ``rho``/``eta``).
            tol: stop early when the relative change of ``X`` is below ``max(tol, 4 eps)`` (default: never,
                run all ``n_iter``).
            callback: ``callback(k, factors, core)`` after iteration ``k`` (1-based), e.g. to track an error.
            progress: tqdm bar.
            mask: optional boolean array/tensor shaped like ``Y``, True where observed (as :func:`rpca`'s:
                missing entries are ignored, the residual is taken on observed ones and rescaled).

        Returns:
            :class:`RPCAResult` (``params`` holds the values used; for a per-layer model ``rho``/``eta`` are
            the first layer's).
        """
        n_iter = self.n_layers if n_iter is None else int(n_iter)
        if n_iter < 0:
            raise RPCAInputError(f"n_iter must be >= 0, got {n_iter}")
        in_dtype = Y.dtype
        Yt, kind, ranks, obs, frac = _prep(Y, self.ranks, None, mask)
        in_device = Y.device if kind == "torch" else None
        hp = self.hyperparameters()
        rho = hp["rho"] if self.per_layer else [hp["rho"]]
        eta = hp["eta"] if self.per_layer else [hp["eta"]]
        mode = self.threshold
        with torch.no_grad():
            factors, core, z0, z1 = _rpca_init(Yt, ranks, hp["zeta0"], hp["zeta1"], mode, mask=obs)
            zetas, etas, zeta_final = self._schedule(n_iter, z1, rho, eta)
            tol_eff = None if tol is None else max(float(tol), 4 * torch.finfo(Yt.dtype).eps)
            history: list[dict] = []
            converged = False
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=n_iter, desc="unfolded rpca", unit="it")
            try:
                if not bool(core.abs().max() > 0):
                    converged = True
                else:
                    for k in range(n_iter):
                        new = scaledgd_step(Yt, factors, core, zetas[k], etas[k], mode=mode,
                                            observed_fraction=frac)
                        change = float(relative_change((factors, core), new))
                        factors, core = new
                        history.append({"rel_change": change, "zeta": zetas[k]})
                        if callback is not None:
                            callback(k + 1, factors, core)
                        if bar is not None:
                            bar.update(1)
                        if not math.isfinite(change):
                            warnings.warn("unfolded rpca diverged (non-finite iterate)", RPCAConvergenceWarning,
                                          stacklevel=2)
                            break
                        if tol_eff is not None and change < tol_eff:
                            converged = True
                            break
            finally:
                if bar is not None:
                    bar.close()
            zeta_final = zetas[len(history)] if len(history) < n_iter else zeta_final
            X = tucker_to_tensor(core, factors)
            S = threshold_residual(Yt, X, zeta_final, mode=mode, out="sparse")
            if obs is not None:
                S.masked_fill_(~obs, 0)
        conv = lambda T: _to_kind(T, kind, in_device, in_dtype)  # noqa: E731
        used = RPCAParams(zeta0=float(z0), zeta1=float(z1), rho=float(rho[0]), eta=float(eta[0]))
        return RPCAResult(
            low_rank=conv(X), sparse=conv(S), core=conv(core), factors=[conv(U) for U in factors],
            n_iter=len(history), converged=converged, history=history, params=used,
        )

    # ----------------------------------------------------------------------------- differentiable path
    def unroll(self, Y: torch.Tensor, temperature: float | None = 0.1, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The differentiable network: ``[X_1, ..., X_K]`` (dense low-rank estimates after each layer).

        Args:
            Y: torch tensor (float64 recommended), validated by the caller.
            temperature: gate temperature ``tau`` of the smooth hard-threshold surrogate (relative to
                ``zeta``); ``None`` uses exact masks (then only ``eta`` gets gradients). Ignored for soft
                thresholding, which is differentiable as is.
            mask: optional boolean tensor shaped like ``Y`` (True = observed); entries of ``Y`` where it is
                False are ignored (they may be NaN). Every layer then steps on the gated observation
                ``Y_g = X + m (D - T(D)) / p`` (``D = Y - X``, ``m`` the mask, ``p`` the observed fraction),
                whose residual is the thresholded one on observed entries rescaled by ``1/p``, as in
                :func:`rpca`.
        Raises RPCAInputError when a data-derived threshold is still unset (call :meth:`fit` or
        :meth:`set_params` first).
        """
        if not bool(self.zeta_set.all()):
            raise RPCAInputError("zeta0/zeta1 are data-derived (unset); call fit() or set_params() first")
        z0, z1, rho, eta = self._values()
        z0, z1, rho, eta = (t.to(device=Y.device, dtype=Y.dtype) for t in (z0, z1, rho, eta))
        smooth = self.threshold == "hard" and temperature is not None
        inf = math.inf
        if mask is not None:
            return self._unroll_masked(Y, mask, z0, z1, rho, eta, temperature)
        if smooth:
            factors, core = spectral_init(Y * _smooth_gate(Y, z0, temperature), self.ranks_for(Y), inf)
        else:
            factors, core = spectral_init(Y, self.ranks_for(Y), z0 if self.threshold == "soft" else float(z0),
                                          mode=self.threshold)
        zeta = z1
        outs: list[torch.Tensor] = []
        for k in range(self.n_layers):
            j = k if self.per_layer else 0
            if smooth:
                X = outs[-1] if outs else tucker_to_tensor(core, factors, backend="torch")
                D = Y - X
                Yg = X + _smooth_gate(D, zeta, temperature) * D  # gated observation
                factors, core = scaledgd_step(Yg, factors, core, inf, eta[j], mode="hard")
            else:
                zk = zeta if self.threshold == "soft" else float(zeta)
                factors, core = scaledgd_step(Y, factors, core, zk, eta[j], mode=self.threshold)
            outs.append(tucker_to_tensor(core, factors, backend="torch"))
            zeta = zeta * rho[j]
        return outs

    def _kept(self, D, zeta, temperature):
        """``D - T_zeta(D)``: what the threshold lets through (smooth gate for hard thresholding in training)."""
        if self.threshold == "soft":
            return torch.clamp(D, -zeta, zeta)
        if temperature is not None:
            return _smooth_gate(D, zeta, temperature) * D
        return torch.where(D.abs() <= zeta, D, torch.zeros_like(D))

    def _unroll_masked(self, Y, mask, z0, z1, rho, eta, temperature):
        from .scaledgd import _as_mask

        m = _as_mask(mask, tuple(Y.shape), Y.device)  # numpy or torch, boolean only (as rpca and forward check)
        p = float(m.sum()) / m.numel()
        if p == 0:
            raise RPCAInputError("mask marks no entry as observed; nothing to fit")
        mf = m.to(Y.dtype)
        Y0 = torch.where(m, Y, torch.zeros_like(Y))  # the observed tensor, missing = 0 (no NaN in the graph)
        inf = math.inf
        factors, core = spectral_init(self._kept(Y0, z0, temperature), self.ranks_for(Y), inf, scale=1.0 / p)
        zeta = z1
        outs: list[torch.Tensor] = []
        for k in range(self.n_layers):
            j = k if self.per_layer else 0
            X = outs[-1] if outs else tucker_to_tensor(core, factors, backend="torch")
            Yg = X + mf * self._kept(Y0 - X, zeta, temperature) / p  # gated, rescaled observation
            factors, core = scaledgd_step(Yg, factors, core, inf, eta[j], mode="hard")
            outs.append(tucker_to_tensor(core, factors, backend="torch"))
            zeta = zeta * rho[j]
        return outs

    def ranks_for(self, Y) -> list[int]:
        return _validate(Y, self.ranks)[1]

    # ------------------------------------------------------------------------------------------ training
    def _loss(self, Y, target, tau, layers, mask=None) -> torch.Tensor:
        Xs = self.unroll(Y, temperature=tau, mask=mask)
        use = Xs if layers == "all" else Xs[-1:]
        if target is None and mask is not None:  # label-free loss on the observed entries
            Y0 = torch.where(mask, Y, torch.zeros_like(Y))
            terms = [label_free_loss(Y0, torch.where(mask, X, torch.zeros_like(X))) for X in use]
        elif target is None:
            terms = [label_free_loss(Y, X) for X in use]
        else:
            nt = target.norm().clamp_min(torch.finfo(Y.dtype).tiny)
            terms = [(X - target).norm() / nt for X in use]
        return torch.stack(terms).mean()

    def init_from_data(self, observations: Sequence, masks: Sequence | None = None) -> "UnfoldedRPCA":
        """Set unset ``zeta0``/``zeta1`` to the geometric mean of :func:`rpca`'s data-derived values over
        ``observations`` (what training starts from); ``masks``: one boolean mask of observed entries (or None)
        per observation."""
        masks = _masks_for(observations, masks)
        obs = [_prep(Y, self.ranks, torch.float64, m)[::3] for Y, m in zip(observations, masks)]
        if bool(self.zeta_set.all()):
            return self
        z0s, z1s = [], []
        hp = self.hyperparameters()
        for Yt, m in obs:
            _, _, z0, z1 = _rpca_init(Yt, self.ranks_for(Yt), hp["zeta0"], hp["zeta1"], self.threshold, mask=m)
            z0s.append(z0)
            z1s.append(z1)
        gm = lambda v: float(np.exp(np.mean(np.log(np.maximum(v, 1e-300)))))  # noqa: E731
        self.set_params({k: gm(v) for k, v, s in (("zeta0", z0s, 0), ("zeta1", z1s, 1)) if not bool(self.zeta_set[s])})
        return self

    def objective(self, observations: Sequence, n_iter: int | None = None, masks: Sequence | None = None) -> float:
        """Mean exact label-free loss ``||Y - X||_1 / ||Y||_1`` over ``observations`` after ``n_iter``
        (default ``n_layers``) exact iterations (on the observed entries, with ``masks``)."""
        vals = []
        for Y, m in zip(observations, _masks_for(observations, masks)):
            Yt, _, _, obs, _ = _prep(Y, self.ranks, torch.float64, m)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RPCAConvergenceWarning)
                X = self.forward(Yt, n_iter=n_iter, mask=obs).low_rank
            if obs is not None:
                Yt, X = torch.where(obs, Yt, 0.0), torch.where(obs, X, 0.0)
            v = float(label_free_loss(Yt, X))
            vals.append(v if math.isfinite(v) else math.inf)
        return float(np.mean(vals))

    def fit(
        self,
        observations: Sequence,
        epochs: int = 40,
        *,
        targets: Sequence | None = None,
        masks: Sequence | None = None,
        lr: float = 0.05,
        layers: str = "last",
        temperature: tuple[float, float] | float = (0.3, 0.03),
        seed: int | None = 0,
        progress: bool = True,
        callback: Callable[[dict], None] | None = None,
    ) -> "UnfoldedRPCA":
        """Learn the hyperparameters from a few observations (Adam, one step per observation).

        Args:
            observations: list of tensors/arrays of one kind (same order; shapes may differ), e.g. 1 to 10.
            epochs: passes over the observations.
            targets: optional list of the true low-rank tensors (supervised mode: loss
                ``||X - X*||_F / ||X*||_F``); default self-supervised (``||Y - X||_1 / ||Y||_1``).
            masks: optional list, one boolean mask of observed entries (or None) per observation; the layers
                and the label-free loss then use observed entries only (see :meth:`unroll`).
            lr: Adam learning rate on the raw (log / logit) parameters.
            layers: ``"last"`` (loss on ``X_K``) or ``"all"`` (mean over every layer's ``X_k``).
            temperature: gate temperature ``tau`` of the smooth hard threshold, a float or ``(start, end)``
                annealed geometrically over the epochs.
            seed: order of the observations in each epoch.
            progress: tqdm bar over the epochs (on by default; ``progress=False`` silences it).
            callback: called with each epoch's record.

        Returns:
            ``self``; ``self.fit_history`` holds one record per epoch (``loss``, ``tau``, the values, ``time``).
        """
        if isinstance(observations, (np.ndarray, torch.Tensor)):
            raise RPCAInputError("observations must be a list of tensors/arrays (wrap a single one: [Y])")
        masks = _masks_for(observations, masks)
        prepped = [_prep(Y, self.ranks, torch.float64, m) for Y, m in zip(observations, masks)]
        obs = [q[0] for q in prepped]
        obs_masks = [q[3] for q in prepped]
        if not obs:
            raise RPCAInputError("need at least one observation")
        if len({o.ndim for o in obs}) != 1:
            raise RPCAInputError("all observations must have the same order")
        tg = None
        if targets is not None:
            if len(targets) != len(obs):
                raise RPCAInputError(f"got {len(targets)} targets for {len(obs)} observations")
            tg = []
            for Y, T in zip(obs, targets):
                Tt = _as_work_tensor(T, self.ranks, torch.float64)[0]
                if Tt.shape != Y.shape:
                    raise RPCAInputError(f"target shape {tuple(Tt.shape)} != observation shape {tuple(Y.shape)}")
                tg.append(Tt)
        if layers not in ("last", "all"):
            raise RPCAInputError(f"layers must be 'last' or 'all', got {layers!r}")
        if int(epochs) < 0:
            raise RPCAInputError(f"epochs must be >= 0, got {epochs}")
        t_start, t_end = (temperature, temperature) if np.isscalar(temperature) else tuple(temperature)
        if not (t_start > 0 and t_end > 0):
            raise RPCAInputError(f"temperature must be > 0, got {temperature}")
        self.init_from_data(obs, obs_masks)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(epochs), desc="fit unfolded rpca", unit="epoch")
        t0 = time.perf_counter()
        try:
            for ep in range(int(epochs)):
                frac = ep / max(1, int(epochs) - 1)
                tau = float(t_start * (t_end / t_start) ** frac)
                losses, skipped = [], 0
                for i in torch.randperm(len(obs), generator=gen).tolist():
                    opt.zero_grad(set_to_none=True)
                    loss = self._loss(obs[i], None if tg is None else tg[i], tau, layers, mask=obs_masks[i])
                    if not torch.isfinite(loss):
                        skipped += 1
                        continue
                    loss.backward()
                    grads = [p.grad for p in self.parameters() if p.grad is not None]
                    if not all(bool(torch.isfinite(g).all()) for g in grads):
                        skipped += 1
                        continue
                    opt.step()
                    losses.append(float(loss.detach()))
                rec = {"epoch": ep + 1, "loss": float(np.mean(losses)) if losses else math.nan, "tau": tau,
                       "skipped": skipped, "time": time.perf_counter() - t0, **self.hyperparameters()}
                self.fit_history.append(rec)
                if callback is not None:
                    callback(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4g}")
        finally:
            if bar is not None:
                bar.close()
        return self

    # ------------------------------------------------------------------------------------------- I/O
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT, "version": _VERSION, "ranks": self.ranks, "n_layers": self.n_layers,
            "per_layer": self.per_layer, "threshold": self.threshold, "params": self.hyperparameters(),
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the hyperparameters (and the model shape) as JSON to ``path`` and return it; ``params`` can
        go straight to ``rpca(..., params=...)`` for a shared model. Written to a temporary sibling, then
        moved into place with :func:`os.replace` (a crash leaves the old file or none, never half a file).

        Raises :class:`~tensorrpca.errors.RPCAFileExistsError` (also a ``FileExistsError``) if ``path``
        exists and ``overwrite`` is False, or if ``path`` is a folder."""
        import tempfile

        path = Path(path)
        if path.is_dir():
            raise RPCAFileExistsError(f"{path} is a folder; give UnfoldedRPCA.save a file name such as "
                                      f"{path / 'unfolded_rpca.json'}")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise RPCAFileExistsError(f"{path} already exists; pass overwrite=True to replace it "
                                      "(or choose another file name)")
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it 0600; give it a plain open()'s permissions
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UnfoldedRPCA":
        """Rebuild a model from :meth:`save`'s JSON."""
        d = _read_json(path)
        return cls(d["ranks"], n_layers=d["n_layers"], per_layer=d["per_layer"], params=d["params"],
                   threshold=d.get("threshold", "hard"))

    def extra_repr(self) -> str:
        return (f"ranks={self.ranks}, n_layers={self.n_layers}, per_layer={self.per_layer}, "
                f"threshold={self.threshold!r}, params={self.hyperparameters()}")


def _masks_for(observations, masks) -> list:
    if masks is None:
        return [None] * len(observations)
    if len(masks) != len(observations):
        raise RPCAInputError(f"got {len(masks)} masks for {len(observations)} observations")
    return list(masks)


def _read_json(path) -> dict:
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RPCAInputError(f"cannot read learned RPCA parameters from {path}: {exc}") from exc
    if not isinstance(d, dict) or d.get("format") != _FORMAT or "params" not in d:
        raise RPCAInputError(f"{path} is not an UnfoldedRPCA parameter file (format {_FORMAT!r})")
    return d


def load_params(path: str | os.PathLike) -> RPCAParams:
    """The hyperparameters saved by :meth:`UnfoldedRPCA.save`, as :class:`RPCAParams` for :func:`rpca`."""
    d = _read_json(path)
    if d.get("per_layer"):
        raise RPCAInputError(f"{path} holds a per-layer schedule; load it with UnfoldedRPCA.load(path)")
    return RPCAParams.coerce(d["params"])


# ---------------------------------------------------------------------------------------- search baseline
@dataclass
class SearchResult:
    """Best hyperparameters found by :func:`random_search` and every trial (``params``, ``objective``)."""

    params: RPCAParams
    objective: float
    trials: list[dict] = field(default_factory=list)
    time: float = 0.0


def random_search(
    observations: Sequence,
    ranks: Sequence[int] | int,
    n_layers: int = 20,
    n_trials: int = 60,
    *,
    seed: int | None = 0,
    zeta_range: float = 4.0,
    rho_range: tuple[float, float] = (0.5, 0.99),
    eta_range: tuple[float, float] = (0.1, 0.99),
    threshold: str = "hard",
    max_seconds: float | None = None,
    progress: bool = False,
) -> SearchResult:
    """Random search over ``(zeta0, zeta1, rho, eta)`` minimising the exact label-free objective
    (:meth:`UnfoldedRPCA.objective`: mean ``||Y - X_K||_1 / ||Y||_1`` after ``n_layers`` iterations).

    The first trial is :func:`rpca`'s data-derived defaults (geometric mean over the observations, as
    :meth:`UnfoldedRPCA.fit` starts from); the others draw ``zeta0``, ``zeta1`` log-uniformly within a factor
    ``zeta_range`` of those, ``rho`` and ``eta`` uniformly in their ranges. Each trial costs one exact
    forward pass per observation (a training epoch of :meth:`UnfoldedRPCA.fit` costs about three).
    ``max_seconds``: also stop (after at least one trial) once this much wall time is spent, e.g. the
    training time of the model it is compared with.
    """
    if int(n_trials) < 1:
        raise RPCAInputError(f"n_trials must be >= 1, got {n_trials}")
    t0 = time.perf_counter()
    model = UnfoldedRPCA(ranks, n_layers=n_layers, threshold=threshold)
    obs = [_as_work_tensor(Y, ranks, torch.float64)[0] for Y in observations]
    model.init_from_data(obs)
    base = model.hyperparameters()
    rng = np.random.default_rng(seed)
    lz = math.log(zeta_range)
    trials = []
    best = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(n_trials), desc="random search", unit="trial")
    for t in range(int(n_trials)):
        if t == 0:
            cand = dict(base)
        else:
            cand = {
                "zeta0": base["zeta0"] * math.exp(rng.uniform(-lz, lz)),
                "zeta1": base["zeta1"] * math.exp(rng.uniform(-lz, lz)),
                "rho": float(rng.uniform(*rho_range)),
                "eta": float(rng.uniform(*eta_range)),
            }
        model.set_params(cand)
        obj = model.objective(obs)
        trials.append({"params": cand, "objective": obj})
        if best is None or obj < best[1]:
            best = (cand, obj)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(best=f"{best[1]:.4g}")
        if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
            break
    if bar is not None:
        bar.close()
    return SearchResult(params=RPCAParams(**best[0]), objective=best[1], trials=trials,
                        time=time.perf_counter() - t0)
