"""Physical forward model: orientations -> polarized-light (PL) image stack of a uniaxial hexagonal material.

Material model (alpha-titanium-like, Laue class 6/mmm): optically uniaxial, the optic axis is the crystal
c-axis ``[0001]``. Orientations are orix-style passive unit quaternions (sample -> crystal), so the c-axis
in the sample frame is ``c = q* [0, 0, 1] q`` (:func:`ebsd.orientation.quat_rotate` of the conjugate). The
microscope looks down the sample ``z`` axis.

Per pixel, with ``c = (cx, cy, cz)``:

* azimuth of the projected optic axis ``psi = atan2(cy, cx)`` (radians, sample frame, from ``x`` towards ``y``);
* inclination from the viewing direction ``eta``, ``sin^2(eta) = cx^2 + cy^2 = 1 - cz^2``;
* effective birefringence (smooth in ``eta``, uniaxial index ellipsoid to first order)
  ``dn(eta) = delta_n * sin^2(eta)`` (dimensionless);
* retardation ``delta = 2 pi dn(eta) t / lambda`` (radians), thickness ``t`` and wavelength ``lambda`` in
  micrometres.

A linear polariser at angle ``theta`` and an analyser at ``theta + beta`` (rotating-stage / rotating-polariser
series; ``beta = pi/2`` is crossed polars) give the textbook retarder-between-polarisers intensity

    I(theta) = I0 * [cos^2(beta) - sin(2(theta - psi)) sin(2(theta + beta - psi)) sin^2(delta / 2)]

which for crossed polars reduces to ``I = I0 sin^2(2(theta - psi)) sin^2(pi dn(eta) t / lambda)``. ``I0``
(dimensionless, 1 = full scale) is the illumination. Crossed polars only see ``psi`` modulo ``pi/2``; a slightly
de-crossed analyser (``beta`` a few degrees off ``pi/2``) sees it modulo ``pi`` (the c-axis is headless
anyway). Both enter only through ``cos 2psi``, ``sin 2psi`` and ``sin^2 eta``, which are quadratic in ``c``:
:func:`pl_from_caxis_tensor` evaluates the model from the (headless, continuous) tensor ``c c^T`` so that it
is differentiable with respect to the EBSD channels of :mod:`diffusion.data`.

Camera: a Gaussian point-spread function of standard deviation ``blur_sigma`` (pixels), then optional
Poisson shot noise at ``photons`` expected counts for ``I = 1`` and Gaussian read noise ``read_noise``
(in units of full scale). Output is float32 in (roughly) ``[0, I0]``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import DiffusionInputError

#: default polariser angles: six rotations over half a turn (radians)
DEFAULT_ANGLES = tuple(k * math.pi / 6 for k in range(6))


def caxis(quaternions: torch.Tensor) -> torch.Tensor:
    """c-axis ``[0001]`` of each orientation in the sample frame: ``(..., 4)`` -> ``(..., 3)`` unit vectors."""
    from ebsd.orientation import quat_conjugate, quat_rotate

    q = torch.as_tensor(quaternions)
    ez = q.new_tensor([0.0, 0.0, 1.0])
    return quat_rotate(quat_conjugate(q), ez)


def pl_from_caxis_tensor(
    cxx_m_cyy: torch.Tensor,
    two_cxcy: torch.Tensor,
    sin2_eta: torch.Tensor,
    angles,
    analyser: float = math.pi / 2,
    delta_n: float = 0.025,
    thickness: float = 11.0,
    wavelength: float = 0.55,
    intensity: float = 1.0,
) -> torch.Tensor:
    """The noiseless, unblurred PL model from the quadratic c-axis quantities.

    Args:
        cxx_m_cyy, two_cxcy, sin2_eta: ``(...)`` tensors ``cx^2 - cy^2``, ``2 cx cy`` and ``cx^2 + cy^2``
            (``= sin^2(eta) cos 2psi``, ``sin^2(eta) sin 2psi``, ``sin^2 eta``).
        angles: polariser angles ``theta`` (radians), a sequence or 1-D tensor of length ``n``.
        analyser: analyser angle relative to the polariser, ``beta`` (radians).
        delta_n, thickness, wavelength: birefringence (dimensionless), thickness and wavelength (micrometres).
        intensity: ``I0``.

    Returns:
        ``(n, ...)`` intensities.
    """
    th = torch.as_tensor(angles, dtype=cxx_m_cyy.dtype, device=cxx_m_cyy.device).reshape(-1, *([1] * cxx_m_cyy.ndim))
    s = sin2_eta.clamp(0.0, 1.0)
    r = torch.sqrt(cxx_m_cyy ** 2 + two_cxcy ** 2).clamp_min(1e-8)
    cos2p, sin2p = cxx_m_cyy / r, two_cxcy / r          # cos 2psi, sin 2psi (undefined where c || z: retard. 0)
    ret = torch.sin(math.pi * delta_n * s * thickness / wavelength) ** 2   # sin^2(delta / 2)
    a1 = torch.sin(2 * th) * cos2p - torch.cos(2 * th) * sin2p          # sin(2(theta - psi))
    b = 2 * (th + analyser)
    a2 = torch.sin(b) * cos2p - torch.cos(b) * sin2p                    # sin(2(theta + beta - psi))
    return intensity * (math.cos(analyser) ** 2 - a1 * a2 * ret)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(..., H, W)`` with reflect padding (``sigma`` in pixels; 0 = none)."""
    if sigma <= 0:
        return img
    rad = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-rad, rad + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    shp = img.shape
    y = img.reshape(-1, 1, *shp[-2:])
    pad = min(rad, shp[-1] - 1, shp[-2] - 1)
    if pad < rad:
        k = k[rad - pad: rad + pad + 1] / k[rad - pad: rad + pad + 1].sum()
        rad = pad
    y = torch.nn.functional.pad(y, (rad, rad, 0, 0), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    y = torch.nn.functional.pad(y, (0, 0, rad, rad), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(shp)


def add_camera_noise(img: torch.Tensor, photons: float | None = None, read_noise: float = 0.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Poisson shot noise at ``photons`` counts per unit intensity (``None``: none) plus Gaussian read
    noise of standard deviation ``read_noise`` (full-scale units)."""
    out = img
    if photons:
        lam = (img.clamp_min(0) * photons).double()
        out = (torch.poisson(lam, generator=generator) / photons).to(img.dtype)
    if read_noise > 0:
        out = out + read_noise * torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
    return out


def pl_images(
    quaternions,
    angles=DEFAULT_ANGLES,
    analyser: float = math.pi / 2,
    delta_n: float = 0.025,
    thickness: float = 11.0,
    wavelength: float = 0.55,
    intensity: float = 1.0,
    blur_sigma: float = 0.0,
    photons: float | None = None,
    read_noise: float = 0.0,
    seed: int | torch.Generator | None = None,
):
    """Simulate a PL stack from an orientation map (equations and units in the module docstring).

    Args:
        quaternions: ``(H, W, 4)`` unit quaternions (numpy or torch), passive, scalar first.
        angles: polariser angles in radians (default: 0, 30, ..., 150 degrees).
        analyser: analyser angle relative to the polariser in radians (``pi/2``: crossed polars).
        delta_n: maximum birefringence ``n_e - n_o`` (dimensionless).
        thickness, wavelength: optical path thickness and wavelength in micrometres (defaults put the
            maximum retardation at half a wave, so intensity grows monotonically with inclination).
        intensity: illumination ``I0``.
        blur_sigma: camera/optics Gaussian PSF, pixels.
        photons: expected photon count at intensity 1 (Poisson noise), ``None`` for none.
        read_noise: Gaussian noise standard deviation (full-scale units).
        seed: int or ``torch.Generator`` for the noise.

    Returns:
        ``(n_angles, H, W)`` float32, same kind (numpy/torch) as ``quaternions``.
    """
    is_np = isinstance(quaternions, np.ndarray)
    q = torch.as_tensor(quaternions, dtype=torch.float32)
    if q.ndim != 3 or q.shape[-1] != 4:
        raise DiffusionInputError(f"quaternions must have shape (H, W, 4), got {tuple(q.shape)}")
    c = caxis(q)
    cx, cy = c[..., 0], c[..., 1]
    img = pl_from_caxis_tensor(cx * cx - cy * cy, 2 * cx * cy, cx * cx + cy * cy, angles, analyser,
                               delta_n, thickness, wavelength, intensity)
    img = gaussian_blur(img, blur_sigma)
    gen = seed
    if not isinstance(seed, torch.Generator) and (photons or read_noise > 0):
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    img = add_camera_noise(img, photons, read_noise, gen if isinstance(gen, torch.Generator) else None)
    img = img.to(torch.float32)
    return img.cpu().numpy() if is_np else img
