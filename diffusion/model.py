"""The multimodal diffusion prior and its inverse-problem front ends.

:class:`MultimodalDiffusion` holds a ``diffusers`` ``UNet2DModel`` trained (``diffusion/train.py``) as an
unconditional DDPM prior over images ``concat(EBSD channels, PL channels)`` (layout: :mod:`diffusion.data`)
and solves inverse problems by posterior sampling (:mod:`diffusion.posterior`) with measurement operators
(:mod:`diffusion.operators`):

* :meth:`~MultimodalDiffusion.super_resolve`: low-resolution EBSD (point-sampled every ``scale`` pixels) +
  a full-resolution (possibly noisy, possibly misregistered) PL stack -> full-resolution orientations;
* :meth:`~MultimodalDiffusion.denoise_pl`: noisy PL (+ optional sparse EBSD) -> clean PL;
* :meth:`~MultimodalDiffusion.grain_boundaries`: PL (+ optional low-res EBSD) -> boundary map of the
  sampled EBSD.

Misregistration: before sampling, the PL stack predicted by the physics model from the (bicubic-upsampled
channels of the) low-resolution EBSD is matched to the observed PL over a grid of shifts (``+-max_shift``
pixels, 0.5 px steps) and rotations (``+-max_rotation`` degrees, 1 degree steps) by normalised
cross-correlation; the best ``(dy, dx, angle)`` becomes a :class:`~diffusion.operators.Warp` inside the PL
measurement, so samples are produced on the EBSD grid. Refinement (``refine_registration=True``, default):
after sampling, the shift is searched again on a finer local grid (0.25 px steps, +-0.5 px around the first
estimate, rotation kept) with the much sharper PL prediction from the posterior mean snapped to the measured
orientations, and the refined estimate is used by the projection only (no re-sampling). The samples were drawn
with the first estimate, so their EBSD follows the PL warped by it: the refinement cannot undo a grid-step
error of the first estimate (on held-out sections it left every such error in place), but it rejects
spurious small estimates on registered PL and resolves sub-step shifts (numbers: ``super_resolve``).

Inference-time scaling: ``n_samples`` posterior samples are drawn in parallel (one batch); each is scored
by measurement consistency (RMS residual / sigma of every measurement plus the physics check: PL predicted
from the sampled EBSD vs the observed PL) and either the best (``combine="best"``) or the mean of the
better half (``combine="mean"``, channel space, then decoded) is returned.

Projection (super-resolution, ``project=True``): each output pixel takes one of the nearby measured
low-resolution orientations (:func:`snap_to_lowres`), the one that is closest (channel space) to the mean of
all posterior samples and whose physically rendered PL best matches the observed PL (weight ``pl_weight``),
as the projection step of slice recovery does, so orientations inside grains are the measured ones. On
held-out sections the PL term alone (no diffusion) already beats nearest/bicubic; the diffusion samples
improve on it further (``benchmarks/diffusion_tasks.py`` reports both).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import EBSD_CHANNELS, PLConfig, channels_to_quat, pl_channels, pl_from_model, pl_to_model, quat_to_channels
from .errors import CheckpointError, DiffusionInputError
from .operators import Identity, Mask, Measurement, Subsample, Warp, estimate_noise_sigma, warp
from .posterior import consistency, sample

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "diffusion"
_NCC_BORDER = 4   # registration ignores this many border pixels (the warp invents them)


def _ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised cross-correlation of two tensors of the same shape."""
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-12))


def _diffusers():
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "diffusion models need the optional 'diffusers' package: "
            'pip install "ebsd-tensor-toolkit[diffusion]"'
        ) from exc
    return diffusers


@dataclass
class ModelConfig:
    """Architecture + schedule + data model of a checkpoint (stored as ``config.json``)."""

    size: int = 64
    ebsd_channels: int = EBSD_CHANNELS
    block_out_channels: tuple = (64, 96, 128, 128)
    layers_per_block: int = 1
    attention: tuple = (False, False, True, False)   # per resolution level
    attention_head_dim: int = 32
    norm_num_groups: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    pl: PLConfig = field(default_factory=PLConfig)
    symmetry: str = "6/mmm"
    train_info: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.ebsd_channels + len(self.pl.angles)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pl"] = self.pl.to_dict()
        d["block_out_channels"] = list(self.block_out_channels)
        d["attention"] = list(self.attention)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["pl"] = PLConfig.from_dict(d.get("pl", {}))
        d["block_out_channels"] = tuple(d["block_out_channels"])
        d["attention"] = tuple(d["attention"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def tiny(cls) -> "ModelConfig":
        """A very small network for CPU tests."""
        return cls(size=16, block_out_channels=(16, 32), layers_per_block=1, attention=(False, True),
                   attention_head_dim=8, norm_num_groups=8, num_train_timesteps=100)


def build_unet(cfg: ModelConfig):
    diffusers = _diffusers()
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return diffusers.UNet2DModel(
        sample_size=cfg.size, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        down_block_types=down, up_block_types=up, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def training_scheduler(cfg: ModelConfig):
    """The ``diffusers`` ``DDPMScheduler`` used for training (its ``alphas_cumprod`` drive sampling)."""
    return _diffusers().DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                      prediction_type="epsilon", clip_sample=True)


@dataclass
class EnhanceResult:
    """Output of :meth:`MultimodalDiffusion.super_resolve` (and the EBSD part of the other tasks).

    Attributes:
        quaternions: ``(H, W, 4)`` the combined estimate (numpy if the input was numpy).
        pl: ``(n_angles, H, W)`` the PL channels of the combined estimate, intensities in ``[0, 1]``.
        samples: ``(n_samples, C, H, W)`` every posterior sample (model channels, torch, CPU).
        scores: ``(n_samples,)`` total measurement-consistency score (lower is better).
        consistency: ``(n_samples, M)`` per-measurement RMS residual / sigma.
        chosen: indices of the samples combined.
        registration: ``{"dy", "dx", "angle_deg"}`` estimated PL -> EBSD misregistration, the one used by the
            projection (the refined estimate with ``refine_registration=True``).
        seconds: wall time of the sampling.
        projection_pl: ``(n_angles, H, W)`` observed PL (model units) mapped onto the EBSD grid with
            ``registration``, used by the projection.
        registration_initial: the first estimate (from the bicubic-upsampled EBSD), the one the sampler used;
            equal to ``registration`` without refinement.
    """

    quaternions: object
    pl: object
    samples: torch.Tensor
    scores: torch.Tensor
    consistency: torch.Tensor
    chosen: list
    registration: dict
    seconds: float
    projection_pl: object = None
    registration_initial: dict | None = None

    @property
    def diagnostics(self) -> list[dict]:
        return [{"score": float(self.scores[i]), "consistency": self.consistency[i].tolist(),
                 "chosen": i in self.chosen} for i in range(len(self.scores))]


class MultimodalDiffusion:
    """Unconditional diffusion prior over joint EBSD + PL images, used by posterior sampling."""

    def __init__(self, config: ModelConfig | None = None, unet=None, device=None):
        self.config = config or ModelConfig()
        self.unet = unet if unet is not None else build_unet(self.config)
        self.unet.eval().requires_grad_(False)
        if device is not None:
            self.unet.to(device)
        self.alphas_cumprod = training_scheduler(self.config).alphas_cumprod.clone()

    # ---------------------------------------------------------------- persistence
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device) -> "MultimodalDiffusion":
        self.unet.to(device)
        return self

    def save(self, path, overwrite: bool = False, half: bool = True) -> Path:
        """Write ``model.safetensors`` (fp16 when ``half``) and ``config.json`` into directory ``path``
        (atomic: temporary files, then rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        wt, cf = path / "model.safetensors", path / "config.json"
        if not overwrite and (wt.exists() or cf.exists()):
            raise FileExistsError(f"{path} already holds a checkpoint; pass overwrite=True to replace it")
        sd = {k: (v.half() if half and v.is_floating_point() else v).contiguous().cpu()
              for k, v in self.unet.state_dict().items()}
        save_file(sd, str(wt) + ".tmp", metadata={"format": "pt"})
        cf.with_suffix(".json.tmp").write_text(json.dumps(self.config.to_dict(), indent=2))
        os.replace(str(wt) + ".tmp", wt)
        os.replace(cf.with_suffix(".json.tmp"), cf)
        return path

    @classmethod
    def load(cls, path=None, device=None) -> "MultimodalDiffusion":
        """Load a checkpoint directory (default: the bundled ``data/diffusion/``), no network access."""
        from safetensors.torch import load_file

        path = Path(path) if path is not None else DATA_DIR
        wt, cf = path / "model.safetensors", path / "config.json"
        if not wt.is_file() or not cf.is_file():
            raise CheckpointError(
                f"no checkpoint in {path}: expected model.safetensors and config.json "
                "(train one with `python -m diffusion.train --out DIR`)")
        try:
            cfg = ModelConfig.from_dict(json.loads(cf.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{cf}: not a valid diffusion config ({exc})") from exc
        model = cls(cfg)
        sd = {k: v.float() for k, v in load_file(str(wt)).items()}
        missing, unexpected = model.unet.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{wt} does not match {cf}: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if device is not None:
            model.to(device)
        return model

    # ---------------------------------------------------------------- sampling
    def _gen(self, seed):
        if isinstance(seed, torch.Generator):
            return seed
        return torch.Generator().manual_seed(0 if seed is None else int(seed))

    def sample(self, n: int = 1, measurements=(), size=None, steps: int = 50, seed=0, **kw) -> torch.Tensor:
        """``n`` samples ``(n, C, H, W)`` (unconditional without measurements)."""
        H, W = (size, size) if isinstance(size, int) or size is None else size
        H = H or self.config.size
        W = W or self.config.size
        return sample(self.unet, self.alphas_cumprod, (n, self.config.channels, H, W), measurements, steps=steps,
                      generator=self._gen(seed), device=self.device, **kw).cpu()

    def _pl_in(self, pl, H=None, W=None) -> torch.Tensor:
        p = torch.as_tensor(np.asarray(pl) if not isinstance(pl, torch.Tensor) else pl, dtype=torch.float32)
        n = len(self.config.pl.angles)
        if p.ndim != 3 or p.shape[0] != n:
            raise DiffusionInputError(f"pl must have shape ({n}, H, W) (one image per polariser angle "
                                      f"{[round(math.degrees(a)) for a in self.config.pl.angles]} deg), got {tuple(p.shape)}")
        if H is not None and tuple(p.shape[1:]) != (H, W):
            raise DiffusionInputError(f"pl is {tuple(p.shape[1:])} but the output grid is {(H, W)}")
        return p

    @staticmethod
    def _quats_in(q, name) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(q) if not isinstance(q, torch.Tensor) else q, dtype=torch.float32)
        if t.ndim != 3 or t.shape[-1] != 4:
            raise DiffusionInputError(f"{name} must have shape (h, w, 4) quaternions, got {tuple(t.shape)}")
        return t

    def register(self, ebsd_channels_hr: torch.Tensor, pl_model: torch.Tensor, max_shift: float = 2.0,
                 max_rotation: float = 2.0, min_gain: float = 0.01, shift_step: float = 0.5,
                 angle_step: float = 1.0, center: dict | None = None, limit: tuple | None = None) -> dict:
        """Estimate the misregistration of PL relative to the EBSD grid (see module docstring). A non-zero
        estimate is kept only when it raises the correlation by more than ``min_gain`` over no warp (the
        prediction from upsampled low-resolution EBSD is crude, so tiny gains are noise).

        Args:
            ebsd_channels_hr: ``(9, H, W)`` EBSD channels on the output grid (float32).
            pl_model: ``(n_angles, H, W)`` observed PL in model units (``[-1, 1]``).
            max_shift, max_rotation: search half-ranges (pixels, degrees) around ``center``.
            shift_step, angle_step: grid steps (pixels, degrees).
            center: ``{"dy", "dx", "angle_deg"}`` to search around (default: no warp).
            limit: ``(max_abs_shift, max_abs_angle)`` (pixels, degrees): grid points with a larger ``|dy|``,
                ``|dx|`` or ``|angle|`` are skipped.

        Returns ``{"dy", "dx", "angle_deg"}`` such that ``warp(PL_true, (dy, dx), angle)`` is the observed PL."""
        from .pl import gaussian_blur

        pred = pl_channels(ebsd_channels_hr[None], self.config.pl)
        obs = gaussian_blur(pl_model[None], 1.0)
        ncc = _ncc
        m = _NCC_BORDER
        zero = {"dy": 0.0, "dx": 0.0, "angle_deg": 0.0}
        if not (shift_step > 0 and angle_step > 0):
            raise DiffusionInputError(f"register: shift_step and angle_step must be > 0, got {shift_step}, {angle_step}")
        if center is not None and set(center) != set(zero):
            raise DiffusionInputError(f"register: center must have the keys dy, dx, angle_deg, got {sorted(center)}")
        if max_shift <= 0 and max_rotation <= 0:
            return zero
        s0 = ncc(pred[..., m:-m, m:-m], obs[..., m:-m, m:-m])
        best = (s0, 0.0, 0.0, 0.0)
        c = center or zero
        shifts = np.arange(-max_shift, max_shift + 1e-9, shift_step) if max_shift > 0 else np.zeros(1)
        angles = np.arange(-max_rotation, max_rotation + 1e-9, angle_step) if max_rotation > 0 else np.zeros(1)
        lim = limit or (math.inf, math.inf)
        for ang in angles + c["angle_deg"]:
            for dy in shifts + c["dy"]:
                for dx in shifts + c["dx"]:
                    if abs(dy) > lim[0] + 1e-9 or abs(dx) > lim[0] + 1e-9 or abs(ang) > lim[1] + 1e-9:
                        continue
                    w = warp(pred, (float(dy), float(dx)), math.radians(float(ang)))
                    s = ncc(w[..., m:-m, m:-m], obs[..., m:-m, m:-m])
                    if s > best[0] + 1e-6:
                        best = (s, float(dy), float(dx), float(ang))
        if best[0] - s0 <= min_gain:
            return zero
        return {"dy": best[1], "dx": best[2], "angle_deg": best[3]}

    def _finish(self, x, meas, extra_pl_obs, combine, n_keep, t0, registration, is_np) -> EnhanceResult:
        cons = consistency(x, meas)
        scores = cons.sum(1)
        if extra_pl_obs is not None:  # physics check: PL predicted from the sampled EBSD vs observed PL
            op, y, sig = extra_pl_obs
            pred = pl_channels(x[:, :EBSD_CHANNELS], self.config.pl)
            r = (op(torch.cat((x[:, :EBSD_CHANNELS], pred), 1)) - y).flatten(1).pow(2).mean(1).sqrt() / sig
            cons = torch.cat((cons, r[:, None]), 1)
            scores = scores + r
        est, chosen = combine_samples(x, scores, combine, n_keep)
        q = channels_to_quat(est[:EBSD_CHANNELS])
        pl = pl_from_model(est[EBSD_CHANNELS:]).clamp(0, 1)
        if is_np:
            q, pl = q.numpy(), pl.numpy()
        return EnhanceResult(q, pl, x, scores, cons, chosen, registration, time.perf_counter() - t0)

    def super_resolve(self, ebsd_low_res, pl, scale: int = 4, n_samples: int = 4, seed=0, steps: int = 50,
                      pl_sigma: float | None = None, ebsd_sigma: float = 0.02, guide_sigma: float | None = 0.3,
                      max_shift: float = 2.0, max_rotation: float = 2.0, combine: str = "mean",
                      method: str = "dds", project: bool = True, pl_mode: str = "prox", pl_weight: float = 8.0,
                      refine_registration: bool = True, progress: bool = False, **kw) -> EnhanceResult:
        """EBSD super-resolution with PL.

        Args:
            ebsd_low_res: ``(h, w, 4)`` quaternions measured every ``scale`` pixels of the output grid (pixel
                ``(i, j)`` is output pixel ``(scale i + scale // 2, scale j + scale // 2)``).
            pl: ``(n_angles, scale h, scale w)`` PL intensities in ``[0, 1]`` (noisy and/or misregistered ok).
            n_samples: parallel posterior samples (inference-time scaling).
            pl_sigma: PL noise level in intensity units; ``None`` estimates it from the data.
            ebsd_sigma: EBSD channel noise (model units).
            guide_sigma: when set, the bicubic upsampling of the EBSD channels is an extra, weak measurement
                with this sigma (helps the sampler spread the sparse EBSD points over grains).
            max_shift, max_rotation: misregistration search range (pixels, degrees); 0 disables.
            combine: ``"mean"`` (average of the better half) or ``"best"``.
            pl_mode: how the PL enters the sampler: ``"prox"`` (proximal data consistency) or ``"replace"``
                (noise-level-matched replacement, :mod:`diffusion.posterior`).
            project: snap every pixel to the nearby measured orientation (:func:`snap_to_lowres`) closest to
                the mean of all samples and whose physically rendered PL best matches the observed PL
                (weight ``pl_weight``); ``False`` returns the decoded sampled channels.
            refine_registration: with ``project`` and ``max_shift > 0``, re-estimate the shift after sampling
                on a finer local grid (0.25 px steps, +-0.5 px around the first estimate, within
                ``max_shift``; the rotation stays the first estimate's, or becomes 0 when no warp fits about as
                well, ``min_gain`` of :meth:`register`) against the PL predicted from the posterior mean snapped
                to the measured orientations, and project with it (one extra 25-point search, no re-sampling;
                module docstring). The refined estimate is kept only when that prediction matches the observed
                PL better than the bicubic one did (otherwise, e.g. with too few ``steps``, the first estimate
                is kept). ``res.registration`` is the estimate used, ``res.registration_initial`` the first
                one; sampling and scores always use the first. Measured on 16 held-out 64x64 sections
                (``steps=50, n_samples=4``, PL read noise 0.05): mean misorientation 7.951 -> 7.863 deg with PL
                warped by (1.5, -1, 1 deg) (first-estimate grid-step errors unchanged), 8.149 -> 7.955 with
                (0.75, -0.25, 0.5 deg), 6.988 -> 6.741 on registered PL (3 spurious estimates rejected); no
                effect at ``steps=10`` (the check rejects the blurry posterior).

        Returns:
            :class:`EnhanceResult` with ``.quaternions (H, W, 4)``.
        """
        is_np = isinstance(ebsd_low_res, np.ndarray)
        ql = self._quats_in(ebsd_low_res, "ebsd_low_res")
        h, w = ql.shape[:2]
        H, W = h * scale, w * scale
        p = self._pl_in(pl, H, W)
        t0 = time.perf_counter()
        E = EBSD_CHANNELS
        C = self.config.channels
        lr = quat_to_channels(ql)[None]
        up = F.interpolate(lr, size=(H, W), mode="bicubic", align_corners=False).clamp(-1, 1)
        # bicubic resampling of point samples located at scale*i + scale//2: align by a sub-pixel shift
        off = (scale // 2) - (scale - 1) / 2
        if off:
            up = warp(up, (off, off), 0.0)
        pm = pl_to_model(p)
        reg = self.register(up[0], pm, max_shift, max_rotation)
        s_pl = 2 * (pl_sigma if pl_sigma is not None else estimate_noise_sigma(p))
        s_pl = max(s_pl, 0.02)
        pl_chans = list(range(E, C))
        pl_op = Warp((reg["dy"], reg["dx"]), math.radians(reg["angle_deg"]), channels=pl_chans) \
            if any(reg[k] for k in reg) else Identity(pl_chans)
        meas = [Measurement(Subsample(scale, channels=slice(0, E)), lr, ebsd_sigma),
                Measurement(pl_op, pm[None], s_pl, pl_mode if isinstance(pl_op, Identity) else "prox")]
        guide = [Measurement(Identity(slice(0, E)), up, guide_sigma)] if guide_sigma else []
        x = sample(self.unet, self.alphas_cumprod, (n_samples, C, H, W), meas + guide, steps=steps,
                   generator=self._gen(seed), method=method, device=self.device, progress=progress, **kw).cpu()
        res = self._finish(x, meas, (pl_op, pm[None], s_pl), combine, None, t0, reg, False)
        res.registration_initial = dict(reg)
        if project and refine_registration and max_shift > 0:
            reg = self._refine_registration(x, ql, scale, up[0], pm, reg, max_shift, max_rotation)
            res.registration = reg
        if project:
            obs = pm
            if any(reg[k] for k in reg):   # undo the estimated misregistration (small angles: negate both)
                obs = warp(pm[None], (-reg["dy"], -reg["dx"]), -math.radians(reg["angle_deg"]))[0]
            res.projection_pl = obs
            res.quaternions = snap_to_lowres(x.mean(0), ql, scale, pl=obs, pl_config=self.config.pl,
                                             pl_weight=pl_weight)
        if is_np:
            res.quaternions, res.pl = res.quaternions.numpy(), res.pl.numpy()
        return res

    def _refine_registration(self, x, ql, scale, up, pm, reg0, max_shift, max_rotation) -> dict:
        """Refined misregistration (see ``super_resolve``'s ``refine_registration``): local 0.25 px shift search
        around ``reg0`` (rotation kept) with the posterior mean snapped to the measured orientations; kept only
        when that prediction fits the observed PL (NCC at its estimate) better than the bicubic prediction ``up``
        fits it at ``reg0``. (A 0.5 degree rotation grid as well was measured: it traded rotation for shift on
        sections with an on-grid warp, 6 of 16 worse, so the rotation is not refined.)"""
        sharp = quat_to_channels(snap_to_lowres(x.mean(0), ql, scale))
        reg = self.register(sharp, pm, min(max_shift, 0.5), 0.0, shift_step=0.25, center=reg0,
                            limit=(max_shift, max(max_rotation, abs(reg0["angle_deg"]))))
        if self._fit(sharp, pm, reg) <= self._fit(up, pm, reg0):
            return dict(reg0)
        return reg

    def _fit(self, ebsd_channels_hr, pl_model, reg) -> float:
        """NCC (as in :meth:`register`) of the PL predicted from ``ebsd_channels_hr`` warped by ``reg`` and the
        observed PL."""
        from .pl import gaussian_blur

        pred = warp(pl_channels(ebsd_channels_hr[None], self.config.pl), (reg["dy"], reg["dx"]),
                    math.radians(reg["angle_deg"]))
        obs = gaussian_blur(pl_model[None], 1.0)
        m = _NCC_BORDER
        return _ncc(pred[..., m:-m, m:-m], obs[..., m:-m, m:-m])

    def denoise_pl(self, pl_noisy, ebsd_sparse=None, n_samples: int = 4, seed=0, steps: int = 50,
                   pl_sigma: float | None = None, ebsd_sigma: float = 0.02, method: str = "dds",
                   pl_mode: str = "replace", progress: bool = False, **kw):
        """Denoise a PL stack ``(n_angles, H, W)`` (intensities), optionally helped by sparse EBSD.

        Args:
            ebsd_sparse: ``None``, or ``(H, W, 4)`` quaternions with NaN where not measured.
            pl_sigma: noise level (intensity units); ``None`` estimates it.
            pl_mode: ``"replace"`` (default; noise-level-matched replacement) or ``"prox"``.

        Returns:
            ``(n_angles, H, W)`` float32 denoised PL (average of the posterior samples; numpy in, numpy out).
            The full :class:`EnhanceResult` is available as ``self.last_result``.
        """
        is_np = isinstance(pl_noisy, np.ndarray)
        p = self._pl_in(pl_noisy)
        H, W = p.shape[1:]
        E, C = EBSD_CHANNELS, self.config.channels
        t0 = time.perf_counter()
        s_pl = max(2 * (pl_sigma if pl_sigma is not None else estimate_noise_sigma(p)), 0.01)
        meas = [Measurement(Identity(list(range(E, C))), pl_to_model(p)[None], s_pl, pl_mode)]
        if ebsd_sparse is not None:
            qs = self._quats_in(ebsd_sparse, "ebsd_sparse")
            known = torch.isfinite(qs).all(-1)
            ch = quat_to_channels(torch.where(known[..., None], qs, qs.new_tensor([1.0, 0, 0, 0])))[None]
            meas.append(Measurement(Mask(known.float(), channels=slice(0, E)), ch * known, ebsd_sigma))
        x = sample(self.unet, self.alphas_cumprod, (n_samples, C, H, W), meas, steps=steps,
                   generator=self._gen(seed), method=method, device=self.device, progress=progress, **kw).cpu()
        res = self._finish(x, meas, None, "mean", n_samples, t0, {"dy": 0.0, "dx": 0.0, "angle_deg": 0.0}, False)
        self.last_result = res
        out = res.pl.to(torch.float32)
        return out.numpy() if is_np else out

    def grain_boundaries(self, pl, ebsd_low_res=None, scale: int = 4, threshold_deg: float | None = None,
                         n_samples: int = 8, seed=0, steps: int = 50, criterion: str = "pl-edges",
                         median: int = 3, **kw):
        """Boundary map ``(H, W)`` bool.

        With ``ebsd_low_res`` the samples come from :meth:`super_resolve`; a pixel is on a boundary when its
        misorientation to the right or lower neighbour exceeds ``threshold_deg`` (default 5) in at least half
        of the chosen samples.

        Without, the samples come from :meth:`denoise_pl` (the same call, so ``self.last_result`` holds them)
        and :func:`pl_only_boundaries` turns them into a map with ``criterion``:

        * ``"pl-edges"`` (default): Sobel gradient magnitude of the posterior-mean PL stack, Otsu threshold;
        * ``"caxis"``: boundaries of the sampled EBSD (channels median-filtered over ``median x median``
          pixels, then the angle between neighbouring headless c-axes modulo the PL-invisible tilt sign above
          ``threshold_deg``, default 15), in at least half of the samples. PL cannot see rotations about the
          c-axis, so neither criterion finds boundaries between grains that share their c-axis.
        """
        is_np = isinstance(pl, np.ndarray)
        if ebsd_low_res is not None:
            res = self.super_resolve(ebsd_low_res, pl, scale=scale, n_samples=n_samples, seed=seed, steps=steps,
                                     combine="mean", **kw)
            thr = 5.0 if threshold_deg is None else threshold_deg
            maps = [boundary_map(channels_to_quat(s[:EBSD_CHANNELS]), thr, self.config.symmetry)
                    for s in res.samples[res.chosen]]
            b = torch.stack(maps).float().mean(0) >= 0.5
        else:
            self.denoise_pl(torch.as_tensor(np.asarray(pl) if not isinstance(pl, torch.Tensor) else pl),
                            n_samples=n_samples, seed=seed, steps=steps, **kw)
            res = self.last_result
            b = pl_only_boundaries(res.samples[res.chosen], criterion,
                                   15.0 if threshold_deg is None else threshold_deg, median)
        self.last_result = res
        return b.numpy() if is_np else b


def median_filter_channels(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Per-channel ``size x size`` median filter of ``(..., H, W)`` (replicated borders; 0 or 1 = unchanged).
    ``size``: an odd integer (a window centred on each pixel); an even or negative one raises
    ``DiffusionInputError``."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0 or (size > 1 and size % 2 == 0):
        raise DiffusionInputError(f"the median filter size must be an odd integer (a window centred on each pixel: "
                                  f"3, 5, ...; 0 or 1 for none), got {size!r}")
    if size <= 1:
        return x
    r = size // 2
    shp = x.shape
    y = F.pad(x.reshape(-1, 1, *shp[-2:]), (r, r, r, r), mode="replicate")
    y = F.unfold(y, size)                                   # (N, size^2, H*W)
    return y.median(dim=1).values.reshape(shp)


def sobel_magnitude(img: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of ``(C, H, W)`` summed in quadrature over channels -> ``(H, W)``
    (replicated borders; kernels ``[1, 2, 1] / 4`` x ``[1, 0, -1]``)."""
    k = img.new_tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 4
    y = F.pad(img[:, None].float(), (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(y, k.view(1, 1, 3, 3))
    gy = F.conv2d(y, k.t().reshape(1, 1, 3, 3))
    return (gx ** 2 + gy ** 2).sum((0, 1)).sqrt()


def otsu_threshold(v: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of the values ``v`` (maximises the between-class variance over ``bins`` levels)."""
    v = v.flatten().double()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return hi
    hist = torch.histc(v, bins, lo, hi)
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)
    w1 = hist.sum() - w0
    m0 = (hist * centres).cumsum(0)
    mu0 = m0 / w0.clamp_min(1e-12)
    mu1 = (m0[-1] - m0) / w1.clamp_min(1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(torch.argmax(between[:-1]))])


def pl_only_boundaries(samples: torch.Tensor, criterion: str = "pl-edges", threshold_deg: float = 15.0,
                       median: int = 3) -> torch.Tensor:
    """Boundary map ``(H, W)`` bool from PL-conditioned posterior samples ``(n, C, H, W)`` (model channels):
    ``"pl-edges"`` (Sobel magnitude of the posterior-mean PL, Otsu threshold) or ``"caxis"`` (median-filtered
    sampled EBSD, :func:`caxis_boundary_map` at ``threshold_deg``, majority over samples)."""
    if criterion == "pl-edges":
        g = sobel_magnitude(pl_from_model(samples[:, EBSD_CHANNELS:].mean(0)))
        return g > otsu_threshold(g)
    if criterion == "caxis":
        xs = median_filter_channels(samples[:, :EBSD_CHANNELS], median)
        return torch.stack([caxis_boundary_map(s, threshold_deg) for s in xs]).float().mean(0) >= 0.5
    raise DiffusionInputError(f"criterion must be 'pl-edges' or 'caxis', got {criterion!r}")


def snap_to_lowres(channels: torch.Tensor, lr_quats: torch.Tensor, scale: int, radius: int = 1, pl=None,
                   pl_config: PLConfig | None = None, pl_weight: float = 8.0, pl_blur: float = 1.0) -> torch.Tensor:
    """Projection onto the measured orientations: every output pixel takes the low-resolution measurement,
    among the ``(2 radius + 1)^2`` nearest on the coarse grid, that minimises

        ||e(candidate) - channels||^2 + pl_weight * ||P(candidate) - G * pl||^2

    (sums over channels at that pixel): ``e`` are the EBSD channels, ``channels (9, H, W)`` the (mean) sampled
    EBSD, ``P`` the noiseless, unblurred PL forward model (:func:`diffusion.data.pl_channels`, model units)
    of the candidate orientation, ``pl (n_angles, H, W)`` the observed PL in model units on the EBSD grid and
    ``G`` a Gaussian of ``pl_blur`` pixels (noise suppression). ``pl=None`` drops the PL term. Returns
    ``(H, W, 4)`` quaternions. The diffusion sample and the physics decide where boundaries run; the
    orientations themselves are the measured ones (exact inside grains that the coarse grid hit)."""
    from .pl import gaussian_blur

    lr_ch = quat_to_channels(lr_quats)
    H, W = channels.shape[-2:]
    pad_c = F.pad(lr_ch[None], (radius,) * 4, mode="replicate")[0]
    pad_q = F.pad(lr_quats.permute(2, 0, 1)[None], (radius,) * 4, mode="replicate")[0]
    h, w = lr_quats.shape[:2]
    best_d = torch.full((H, W), float("inf"))
    out = torch.zeros(4, H, W)
    use_pl = pl is not None and pl_weight > 0
    if use_pl:
        pad_p = pl_channels(pad_c[None], pl_config or PLConfig(), blur=False)[0]
        obs = gaussian_blur(torch.as_tensor(pl, dtype=torch.float32)[None], pl_blur)[0]

    def up(t):
        t = t.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
        return F.pad(t, (0, W - t.shape[-1], 0, H - t.shape[-2]), mode="replicate") if t.shape[-2:] != (H, W) else t

    for di in range(2 * radius + 1):
        for dj in range(2 * radius + 1):
            cand_c = up(pad_c[:, di:di + h, dj:dj + w])
            d = (cand_c - channels[:EBSD_CHANNELS]).pow(2).sum(0)
            if use_pl:
                d = d + pl_weight * (up(pad_p[:, di:di + h, dj:dj + w]) - obs).pow(2).sum(0)
            better = d < best_d
            best_d = torch.where(better, d, best_d)
            out = torch.where(better[None], up(pad_q[:, di:di + h, dj:dj + w]), out)
    return out.permute(1, 2, 0).contiguous()


def combine_samples(samples: torch.Tensor, scores: torch.Tensor, combine: str = "mean", n_keep: int | None = None):
    """Inference-time scaling: ``(n, C, H, W)`` samples and their ``(n,)`` consistency scores (lower is
    better) -> ``(combined (C, H, W), chosen indices)``: the best sample (``"best"``) or the channel-space
    mean of the ``n_keep`` best (``"mean"``, default the better half)."""
    order = torch.argsort(scores).tolist()
    if combine == "best":
        chosen = order[:1]
    elif combine == "mean":
        chosen = order[: max(1, n_keep or (len(order) + 1) // 2)]
    else:
        raise DiffusionInputError(f"combine must be 'best' or 'mean', got {combine!r}")
    return samples[chosen].mean(0), chosen


def caxis_boundary_map(channels: torch.Tensor, threshold_deg: float = 5.0) -> torch.Tensor:
    """``(H, W)`` bool from EBSD channels ``(9, H, W)``, using only what PL can see: the angle between the
    headless c-axes of a pixel and its right or lower neighbour above ``threshold_deg``, where the c-axis is
    also taken modulo the mirror ``cz -> -cz`` (PL depends on ``cx^2 - cy^2``, ``cx cy`` and ``cz^2`` only,
    so a PL-conditioned sample may pick either tilt sign independently in different parts of a grain)."""
    from .data import channels_to_caxis

    c = channels_to_caxis(channels[:EBSD_CHANNELS])
    thr = math.cos(math.radians(threshold_deg))

    def differs(a, b):
        bm = b * b.new_tensor([1.0, 1.0, -1.0])
        return torch.maximum((a * b).sum(-1).abs(), (a * bm).sum(-1).abs()) < thr

    out = torch.zeros(c.shape[:2], dtype=torch.bool)
    out[:, :-1] |= differs(c[:, :-1], c[:, 1:])
    out[:-1, :] |= differs(c[:-1], c[1:])
    return out


def boundary_map(quaternions, threshold_deg: float = 5.0, symmetry: str = "6/mmm"):
    """``(H, W)`` bool: misorientation to the right or lower neighbour above ``threshold_deg``."""
    from ebsd.orientation import misorientation_angle

    is_np = isinstance(quaternions, np.ndarray)
    q = torch.as_tensor(quaternions, dtype=torch.float32)
    thr = math.radians(threshold_deg)
    b = torch.zeros(q.shape[:2], dtype=torch.bool)
    b[:, :-1] |= misorientation_angle(q[:, :-1], q[:, 1:], symmetry) > thr
    b[:-1, :] |= misorientation_angle(q[:-1, :], q[1:, :], symmetry) > thr
    return b.numpy() if is_np else b
