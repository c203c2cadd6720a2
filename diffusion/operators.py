"""Pluggable measurement operators ``y = A(x) + n`` on model images ``x (B, C, H, W)``.

Each operator reads a subset of channels (``channels``, a slice or index list; the EBSD channels are
``0:9`` and the PL channels ``9:`` in the layout of :mod:`diffusion.data`) and maps them to a measurement.
Linear operators implement :meth:`Operator.adjoint` exactly (checked by ``<A x, y> == <x, A^T y>`` in the
tests); the adjoint returns a full ``(B, C, H, W)`` image, zero outside ``channels``.

A :class:`Measurement` pairs an operator with observed data ``y`` and a noise level ``sigma`` (standard
deviation in the model's ``[-1, 1]`` units); the posterior samplers of :mod:`diffusion.posterior` minimise
``sum_m ||y_m - A_m(x)||^2 / (2 sigma_m^2)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import DiffusionInputError


def _chan(channels, C: int) -> list[int]:
    if isinstance(channels, slice):
        return list(range(C))[channels]
    return [int(c) for c in channels]


class Operator:
    """Base class. ``linear`` operators have an exact :meth:`adjoint`; ``norm2`` bounds ``||A||^2``."""

    linear = True
    norm2 = 1.0

    def __init__(self, channels=slice(None)):
        self.channels = channels

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, _chan(self.channels, x.shape[1])]

    def embed(self, z: torch.Tensor, like_shape, like: torch.Tensor) -> torch.Tensor:
        out = like.new_zeros(like_shape)
        out[:, _chan(self.channels, like_shape[1])] = z
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def adjoint(self, y: torch.Tensor, x_shape) -> torch.Tensor:
        """``A^T y`` as a ``x_shape`` image. Generic version: vector-Jacobian product of the forward map
        (exact for linear operators); subclasses override with closed forms."""
        x = torch.zeros(x_shape, dtype=y.dtype, device=y.device, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return g


class Identity(Operator):
    """``A x = x[channels]`` (e.g. a full PL stack observed with noise)."""

    def forward(self, x):
        return self.select(x)

    def adjoint(self, y, x_shape):
        return self.embed(y, x_shape, y)


class Subsample(Operator):
    """Point sampling on a coarse grid, as an EBSD scan with a ``scale`` times larger step:
    ``(A x)[i, j] = x[scale i + offset, scale j + offset]`` (``offset`` defaults to ``scale // 2``).
    Adjoint: zero-insertion. ``A A^T = I``."""

    def __init__(self, scale: int, channels=slice(None), offset: int | None = None):
        super().__init__(channels)
        self.scale = int(scale)
        self.offset = self.scale // 2 if offset is None else int(offset)

    def forward(self, x):
        s, o = self.scale, self.offset
        return self.select(x)[..., o::s, o::s][..., : x.shape[-2] // s, : x.shape[-1] // s]

    def adjoint(self, y, x_shape):
        s, o = self.scale, self.offset
        z = y.new_zeros((*y.shape[:2], *x_shape[-2:]))
        z[..., o::s, o::s][..., : y.shape[-2], : y.shape[-1]] = y
        return self.embed(z, x_shape, y)


class AvgPool(Operator):
    """Box averaging over ``scale x scale`` blocks (a detector that integrates over the coarse pixel).
    Adjoint: replicate and divide by ``scale^2``; ``||A||^2 = 1 / scale^2``."""

    def __init__(self, scale: int, channels=slice(None)):
        super().__init__(channels)
        self.scale = int(scale)
        self.norm2 = 1.0 / self.scale ** 2

    def forward(self, x):
        return F.avg_pool2d(self.select(x), self.scale)

    def adjoint(self, y, x_shape):
        s = self.scale
        z = y.repeat_interleave(s, -2).repeat_interleave(s, -1) / (s * s)
        pad_h, pad_w = x_shape[-2] - z.shape[-2], x_shape[-1] - z.shape[-1]
        z = F.pad(z, (0, pad_w, 0, pad_h))
        return self.embed(z, x_shape, y)


class Mask(Operator):
    """Sparse sampling: ``A x = mask * x[channels]`` with a ``(H, W)`` or ``(B, 1, H, W)`` 0/1 mask
    (self-adjoint)."""

    def __init__(self, mask: torch.Tensor, channels=slice(None)):
        super().__init__(channels)
        m = torch.as_tensor(mask, dtype=torch.float32)
        self.mask = m.view(1, 1, *m.shape) if m.ndim == 2 else m

    def forward(self, x):
        return self.select(x) * self.mask.to(x)

    def adjoint(self, y, x_shape):
        return self.embed(y * self.mask.to(y), x_shape, y)


class Warp(Operator):
    """Rigid misregistration: rotate by ``angle`` (radians, about the image centre) and shift by
    ``(dy, dx)`` pixels, bilinear (``grid_sample``). Linear in ``x``; the adjoint is the generic exact
    vector-Jacobian product. Used to model a PL image that is not registered with the EBSD grid."""

    def __init__(self, shift=(0.0, 0.0), angle: float = 0.0, channels=slice(None)):
        super().__init__(channels)
        self.shift = (float(shift[0]), float(shift[1]))
        self.angle = float(angle)

    def forward(self, x):
        z = self.select(x)
        return warp(z, self.shift, self.angle)


def warp(img: torch.Tensor, shift=(0.0, 0.0), angle: float = 0.0) -> torch.Tensor:
    """Sample ``img (B, C, H, W)`` at rotated/shifted positions: output pixel ``p`` takes the value of
    ``img`` at ``R(angle) (p - centre) + centre - shift`` (so a positive shift moves content down/right).
    Border pixels are replicated."""
    B, C, H, W = img.shape
    dy, dx = shift
    ca, sa = math.cos(angle), math.sin(angle)
    # normalised coordinates (align_corners=False): u = (2 p + 1) / N - 1
    theta = img.new_tensor([[ca, -sa * H / W, -2 * dx / W], [sa * W / H, ca, -2 * dy / H]])
    grid = F.affine_grid(theta.expand(B, 2, 3), (B, C, H, W), align_corners=False)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)


class PLForward(Operator):
    """Nonlinear physics operator: EBSD channels ``0:9`` -> PL stack (model scale) with the PL model of
    :mod:`diffusion.pl` (see :func:`diffusion.data.pl_channels`). Differentiable; no adjoint."""

    linear = False

    def __init__(self, pl_config, channels=slice(0, 9)):
        super().__init__(channels)
        self.cfg = pl_config
        self.norm2 = 4.0

    def forward(self, x):
        from .data import pl_channels

        return pl_channels(self.select(x), self.cfg)

    def adjoint(self, y, x_shape):  # pragma: no cover - guarded
        raise DiffusionInputError("PLForward is nonlinear: it has no adjoint (use its Jacobian)")


@dataclass
class Measurement:
    """Observed data ``y`` of ``operator`` with Gaussian noise of standard deviation ``sigma`` (model units)."""

    operator: Operator
    y: torch.Tensor
    sigma: float = 0.05
    #: ``"prox"``: enforced by the proximal step of :mod:`diffusion.posterior`; ``"replace"`` (selection
    #: operators :class:`Identity` / :class:`Mask` only): noise-level-matched replacement of the observed
    #: channels of ``x_t`` while the diffusion noise exceeds ``sigma``
    mode: str = "prox"

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.y.to(x) - self.operator(x)

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample ``||y - A x||^2 / (2 sigma^2)`` ``(B,)``."""
        r = self.residual(x)
        return r.flatten(1).pow(2).sum(1) / (2 * self.sigma ** 2)

    def rmse(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample root-mean-square residual ``(B,)`` (the measurement-consistency score)."""
        r = self.residual(x)
        return r.flatten(1).pow(2).mean(1).sqrt()


def add_noise(y: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian measurement noise ``y + sigma * n``."""
    return y + sigma * torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)


def estimate_noise_sigma(img: torch.Tensor) -> float:
    """Robust noise standard deviation of ``(..., H, W)`` images: median absolute diagonal difference
    ``(x00 - x01 - x10 + x11) / 2`` (variance ``sigma^2`` for white noise, ~0 on piecewise-smooth signal)
    divided by 0.6745."""
    d = (img[..., :-1, :-1] - img[..., :-1, 1:] - img[..., 1:, :-1] + img[..., 1:, 1:]) / 2
    return float(d.abs().flatten().median() / 0.6745)
