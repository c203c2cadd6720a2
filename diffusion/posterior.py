"""Posterior sampling with an unconditional diffusion prior and measurement operators.

Two documented samplers over a DDIM schedule (``eta = 0``: deterministic given the initial noise, so a
seed fixes the result):

``method="dds"`` (default; decomposed diffusion sampling, Chung, Lee & Ye, ICLR 2024, with a Bayesian
proximal step). At each step ``t`` the network gives ``eps``; Tweedie's estimate is
``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``. We treat ``x0`` as a Gaussian prior guess with variance
``gamma_t = rho * (1 - abar_t) / abar_t`` (capped at ``gamma_max``) and replace it by the proximal point

    x0' = argmin_x ||x - x0||^2 / (2 gamma_t) + sum_m ||y_m - A_m(x)||^2 / (2 sigma_m^2)

(``n_prox`` gradient steps of size ``1 / (1/gamma_t + sum_m ||A_m||^2 / sigma_m^2)``, which is the exact
minimiser after one step for selection operators such as masks, point sampling and identities). Then
``x_{t-1} = sqrt(abar_{t-1}) x0' + sqrt(1 - abar_{t-1}) eps``. Early on (large ``gamma_t``) measurements
dominate; late, the prior does, so noisy measurements are not copied.

``method="dps"`` (diffusion posterior sampling, Chung et al., ICLR 2023): the DDIM update from the
unmodified ``x0`` minus ``zeta * grad_{x_t} ||y - A(x0(x_t))|| `` through the network (slower: one backward
pass per step).

Measurements with ``mode="replace"`` (selection operators: identity, mask) are not used in the proximal step
but by noise-level-matched replacement (as in ILVR / RePaint, with measurement noise): writing
``sigma_t = sqrt((1 - abar_t) / abar_t)``, ``y + sqrt(sigma_t^2 - sigma_y^2) n`` is distributed like
``x0 + sigma_t n`` when ``y = x0 + sigma_y n'``, so while ``sigma_t > sigma_y`` the observed channels of
``x_t`` are replaced by ``sqrt(abar_t) (y + sqrt(sigma_t^2 - sigma_y^2) n)``; below ``sigma_y`` the prior
alone finishes the denoising. This is the right treatment of a noisy, fully observed modality (PL
denoising): the measurement noise is never copied into the sample.

Both return the final ``x0`` of every sample.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .operators import Measurement


def _timesteps(num_train: int, steps: int) -> list[int]:
    step = num_train // steps
    return list(range(num_train - 1, -1, -step))[:steps]


def prox(x0: torch.Tensor, measurements: Sequence[Measurement], gamma: float, n_prox: int = 2) -> torch.Tensor:
    """Proximal data-consistency step (see module docstring)."""
    if not measurements:
        return x0
    lip = 1.0 / gamma + sum(m.operator.norm2 / m.sigma ** 2 for m in measurements)
    eta = 1.0 / lip
    x = x0.detach().clone()
    for _ in range(n_prox):
        x.requires_grad_(True)
        with torch.enable_grad():
            f = ((x - x0) ** 2).sum() / (2 * gamma) + sum(m.nll(x).sum() for m in measurements)
            (g,) = torch.autograd.grad(f, x)
        x = (x - eta * g).detach()
    return x


@torch.no_grad()
def sample(
    unet,
    alphas_cumprod: torch.Tensor,
    shape,
    measurements: Sequence[Measurement] = (),
    steps: int = 50,
    generator: torch.Generator | None = None,
    method: str = "dds",
    rho: float = 1.0,
    gamma_max: float = 1.0,
    n_prox: int = 2,
    zeta: float = 1.0,
    clip: float = 1.0,
    device=None,
    dtype=torch.float32,
    progress: bool = False,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``shape[0]`` posterior samples ``(B, C, H, W)`` (see module docstring for the methods).

    Args:
        unet: a ``diffusers`` ``UNet2DModel`` predicting the noise ``eps``.
        alphas_cumprod: ``(T,)`` cumulative products of the training schedule.
        measurements: the data; empty for unconditional samples.
        generator: CPU ``torch.Generator`` for the initial noise (reproducible on any device).
    """
    if method not in ("dds", "dps"):
        raise ValueError(f"method must be 'dds' or 'dps', got {method!r}")
    device = device or next(unet.parameters()).device
    ac = alphas_cumprod.to(torch.float64)
    ts = _timesteps(len(ac), steps)
    x = x_init if x_init is not None else torch.randn(shape, generator=generator, dtype=torch.float32)
    x = x.to(device=device, dtype=torch.float32)
    meas = [Measurement(m.operator, m.y.to(device), m.sigma) for m in measurements if m.mode == "prox"]
    repl = [Measurement(m.operator, m.y.to(device), m.sigma, "replace") for m in measurements if m.mode == "replace"]
    it = ts
    if progress:
        from tqdm import tqdm

        it = tqdm(ts, desc="sampling")
    x0 = x
    for i, t in enumerate(it):
        a_t = float(ac[t])
        a_prev = float(ac[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        tt = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
        if method == "dps" and meas:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                eps = unet(xg.to(dtype), tt).sample.float()
                x0 = (xg - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
                nrm = sum(m.nll(x0).sum() * 2 * m.sigma ** 2 for m in meas).clamp_min(1e-12).sqrt()
                (g,) = torch.autograd.grad(nrm, xg)
            eps, x0 = eps.detach(), x0.detach().clamp(-clip, clip)
            x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps - zeta * g
        else:
            eps = unet(x.to(dtype), tt).sample.float()
            x0 = ((x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5).clamp(-clip, clip)
            if meas:
                gamma = min(gamma_max, rho * (1 - a_t) / a_t)
                x0 = prox(x0, meas, gamma, n_prox)
            x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        if repl and i + 1 < len(ts):
            x = _replace(x, repl, a_prev, generator)
    return x0.clamp(-clip, clip)


def _replace(x: torch.Tensor, repl: Sequence[Measurement], a: float, generator) -> torch.Tensor:
    """Noise-level-matched replacement of the observed channels (see module docstring)."""
    sig_t2 = (1 - a) / a
    for m in repl:
        if sig_t2 <= m.sigma ** 2:
            continue
        y = m.y.expand(x.shape[0], *m.y.shape[1:])
        n = torch.randn(y.shape, generator=generator, dtype=torch.float32).to(x.device)
        obs = a ** 0.5 * (y + (sig_t2 - m.sigma ** 2) ** 0.5 * n)
        mask = m.operator.adjoint(torch.ones_like(y), x.shape) > 0   # observed entries
        x = torch.where(mask, m.operator.adjoint(obs, x.shape), x)
    return x


def consistency(x: torch.Tensor, measurements: Sequence[Measurement]) -> torch.Tensor:
    """``(B, M)`` root-mean-square residual of each sample against each measurement, divided by its sigma."""
    measurements = list(measurements)
    if not measurements:
        return x.new_zeros((x.shape[0], 0))
    return torch.stack([m.rmse(x) / m.sigma for m in measurements], dim=1)
