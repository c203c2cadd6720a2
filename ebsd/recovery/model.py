"""The slice-recovery network: a small 3-D axial transformer over voxel tokens.

Each voxel of a ``(Z, Y, X)`` window becomes a token: its orientation, reduced to the fundamental zone and
mapped to cubochoric coordinates (continuous, bounded), embedded linearly; voxels of missing slices (and
unindexed voxels) get a learned mask token instead, so their content never reaches the network. Each block
attends along z, then y, then x (the other two axes folded into the batch), then applies an MLP, all pre-norm
with residuals; learned positional embeddings per axis. A linear head predicts a unit quaternion per voxel for
the whole window; :func:`symmetric_quaternion_loss` compares it to the truth up to crystal symmetry.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..orientation import CUBOCHORIC_HALF_EDGE, quat_to_cubochoric, reduce_to_fundamental_zone
from ._common import cos_half_misorientation, symmetry_operators


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`SliceRecoveryTransformer` (stored in the checkpoint's config.json)."""

    d_model: int = 80
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    max_z: int = 32
    max_xy: int = 64
    dropout: float = 0.0


class _AxialAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.heads = heads
        self.dropout = dropout

    def forward(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        # x: (B, Z, Y, X, D); attend along ``axis`` (1, 2 or 3)
        xt = x.movedim(axis, 3)  # (B, a, b, L, D)
        B, a, b, L, D = xt.shape
        h = self.norm(xt).reshape(B * a * b, L, D)
        qkv = self.qkv(h).reshape(B * a * b, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=self.dropout if self.training else 0.0)
        out = self.proj(out.transpose(1, 2).reshape(B, a, b, L, D))
        return x + out.movedim(3, axis)


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.att = nn.ModuleList(_AxialAttention(d, cfg.heads, cfg.dropout) for _ in range(3))
        hidden = int(round(d * cfg.mlp_ratio))
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, x: torch.Tensor, keep_z: slice | None = None) -> torch.Tensor:
        x = self.att[0](x, 1)
        if keep_z is not None:  # y/x attention and the MLP do not mix slices: skip the unwanted ones
            x = x[:, keep_z]
        for axis, att in zip((2, 3), self.att[1:]):
            x = att(x, axis)
        return x + self.mlp(x)


class SliceRecoveryTransformer(nn.Module):
    """Axial transformer predicting orientations for a masked ``(Z, Y, X)`` window.

    ``forward(cubo, mask)``:
        cubo: ``(B, Z, Y, X, 3)`` cubochoric coordinates of fundamental-zone orientations (see
            :func:`prepare_input`), divided by the cube half edge so they lie in ``[-1, 1]``.
        mask: ``(B, Z, Y, X)`` bool, True where the voxel is missing / untrusted (its ``cubo`` is ignored).
        keep_z: optional slice of z to return (e.g. the missing slices); the same values as
            ``forward(...)[:, keep_z]``, computed with less work (the last block skips the other slices).
    returns ``(B, Z, Y, X, 4)`` unit quaternions (scalar first), for every voxel of the window.
    ``Z <= max_z`` and ``Y, X <= max_xy``.
    """

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or ModelConfig(**kwargs)
        self.config = cfg
        self.inference_settings: dict = {}  # overrides of ebsd.recovery.api.DEFAULT_INFERENCE
        d = cfg.d_model
        if d % cfg.heads:
            raise ValueError(f"d_model={d} must be divisible by heads={cfg.heads}")
        self.embed = nn.Linear(3, d)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.pos_z = nn.Parameter(torch.zeros(cfg.max_z, d))
        self.pos_y = nn.Parameter(torch.zeros(cfg.max_xy, d))
        self.pos_x = nn.Parameter(torch.zeros(cfg.max_xy, d))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 4)
        for p in (self.mask_token, self.pos_z, self.pos_y, self.pos_x):
            nn.init.normal_(p, std=0.02)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, cubo: torch.Tensor, mask: torch.Tensor, keep_z: slice | None = None) -> torch.Tensor:
        B, Z, Y, X, _ = cubo.shape
        cfg = self.config
        if Z > cfg.max_z or Y > cfg.max_xy or X > cfg.max_xy:
            raise ValueError(f"window {(Z, Y, X)} exceeds the model's maximum ({cfg.max_z}, {cfg.max_xy}, {cfg.max_xy})")
        cubo = torch.where(mask.unsqueeze(-1), torch.zeros_like(cubo), cubo)  # masked content never enters
        h = self.embed(cubo)
        h = torch.where(mask.unsqueeze(-1), self.mask_token.to(h.dtype), h)
        h = h + self.pos_z[:Z, None, None] + self.pos_y[None, :Y, None] + self.pos_x[None, None, :X]
        for i, blk in enumerate(self.blocks):
            h = blk(h, keep_z if i == len(self.blocks) - 1 else None)
        q = self.head(self.norm(h)).float()
        return q / q.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path, extra: dict | None = None, overwrite: bool = False) -> Path:
        """Write ``model.safetensors`` (float32 weights) + ``config.json`` (``{"model": ModelConfig, ...extra}``)
        into ``directory`` (created if needed) and return it.

        Each file is written to a temporary sibling and moved into place with :func:`os.replace`, so a crash
        never leaves a half-written checkpoint under the final names. If either file already exists and
        ``overwrite`` is False, :class:`~ebsd.errors.EBSDFileExistsError` (also a ``FileExistsError``) is
        raised before anything is written."""
        from safetensors.torch import save_file

        from ..errors import EBSDFileExistsError
        from ..io._atomic import atomic_file, check_overwrite

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise EBSDFileExistsError(f"{directory} is a file, not a folder: give save() a folder for the checkpoint")
        weights, config = directory / "model.safetensors", directory / "config.json"
        for target in (weights, config):  # refuse before writing either file
            check_overwrite(target, overwrite)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        cfg = json.dumps({"model": asdict(self.config), **(extra or {})}, indent=2, default=str)
        with atomic_file(weights, overwrite=overwrite) as tmp:
            save_file(state, str(tmp))
        with atomic_file(config, overwrite=overwrite) as tmp:
            tmp.write_text(cfg)
        return directory


def load_model(path: str | Path, device=None) -> SliceRecoveryTransformer:
    """Load a checkpoint: a directory holding ``model.safetensors`` + ``config.json``, or the
    ``.safetensors`` file itself (its ``config.json`` beside it). No network access. Returns the model in
    eval mode on ``device`` (CPU by default), with the checkpoint's inference settings (tile, overlap,
    context, projection parameters) as ``model.inference_settings``."""
    from safetensors.torch import load_file

    from ..errors import EBSDValueError

    path = Path(path)
    weights = path / "model.safetensors" if path.is_dir() else path
    config = weights.parent / "config.json"
    if not weights.is_file() or not config.is_file():
        raise EBSDValueError(
            f"no slice-recovery checkpoint at {path}: expected model.safetensors and config.json there "
            "(train one with `python -m ebsd.train_recovery --out DIR`)"
        )
    cfg = json.loads(config.read_text())
    model = SliceRecoveryTransformer(ModelConfig(**cfg["model"]))
    model.load_state_dict(load_file(str(weights)))
    model.inference_settings = dict(cfg.get("inference", {}))
    model.eval()
    return model.to(device) if device is not None else model


def prepare_input(q: torch.Tensor, symmetry: str) -> torch.Tensor:
    """Quaternions ``(..., 4)`` -> network input ``(..., 3)``: fundamental-zone reduction, cubochoric
    coordinates, scaled to ``[-1, 1]``. Symmetry-equivalent inputs give the same result."""
    fz = reduce_to_fundamental_zone(q, symmetry)
    return (quat_to_cubochoric(fz) / CUBOCHORIC_HALF_EDGE).to(q.dtype)


def symmetric_quaternion_loss(pred: torch.Tensor, truth: torch.Tensor, symmetry: str,
                              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetry-aware loss ``1 - max_s |<pred, s truth>|`` (0 when equivalent; ~ theta^2 / 8 for a small
    misorientation theta), averaged with ``weight`` ``(...)`` (e.g. 1 on masked voxels, small on visible)."""
    ops = symmetry_operators(symmetry, pred)
    loss = 1.0 - cos_half_misorientation(pred.float(), truth.float(), ops)
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-8)
