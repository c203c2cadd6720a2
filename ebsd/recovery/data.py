"""Self-supervised training samples for the slice-recovery transformer, from synthetic volumes only.

A worker makes synthetic volumes (:func:`ebsd.synthetic.synthetic_volume`: random grain size, elongation,
twins, acquisition noise, a few unindexed voxels), keeps a small pool of them, and cuts batches of windows
``(Zw, T, T)`` out of them, with random flips/transposes in-plane. In each window a run of 1, 2 or 3
consecutive slices is hidden (mostly in the middle, with ``context`` known slices each side, as at
inference; sometimes off-centre). The target is the noise-free orientation field.

A batch is a dict of CPU tensors:
    ``q``      (B, Zw, T, T, 4) noisy input quaternions (arbitrary content where masked)
    ``mask``   (B, Zw, T, T) bool, True = hidden from the network (missing slice or unindexed voxel)
    ``hidden`` (B, Zw, T, T) bool, True on the hidden slices (where the loss counts fully)
    ``target`` (B, Zw, T, T, 4) clean quaternions
and ``symmetry`` (str). Seeds: batch stream ``seed`` gives volume seeds ``seed * 1_000_003 + k``; the
benchmark uses seeds below :data:`HELD_OUT_SEED_LIMIT`, which training never uses (it refuses such seeds).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

# volume seeds for held-out evaluation live in [0, HELD_OUT_SEED_LIMIT); training seeds are >= it
HELD_OUT_SEED_LIMIT = 1_000_000
#: seeds [VALIDATION_SEED_BASE, TRAIN_SEED_BASE): validation volumes (choosing the projection weights)
VALIDATION_SEED_BASE = 1_000_000
TRAIN_SEED_BASE = 10_000_000


@dataclass
class SampleConfig:
    tile: int = 48
    context: int = 2
    gaps: tuple[int, ...] = (1, 1, 2, 3)
    volume_shape: tuple[int, int, int] = (20, 80, 80)
    grain_size: tuple[float, float] = (4.0, 18.0)
    noise_deg: tuple[float, float] = (0.0, 2.0)
    unindexed: tuple[float, float] = (0.0, 0.04)
    twin_probability: float = 0.4
    elongation_probability: float = 0.4
    symmetries: tuple[str, ...] = ("m-3m",)
    pool: int = 4
    off_centre_probability: float = 0.3
    # realism (ebsd.recovery.realism; zero ranges give the first wave's flat grains)
    gradient_deg: tuple[float, float] = (0.0, 0.0)
    misindexed: tuple[float, float] = (0.0, 0.0)
    z_ratio: tuple[float, float] = (1.0, 1.0)
    extra: dict = field(default_factory=dict)


def make_volume(seed: int, cfg: SampleConfig):
    """One random synthetic training volume and its truth (clean quaternions)."""
    from ..synthetic import synthetic_volume

    if seed < HELD_OUT_SEED_LIMIT:
        raise ValueError(f"seed {seed} is reserved for held-out evaluation (< {HELD_OUT_SEED_LIMIT})")
    rng = random.Random(seed)
    sym = rng.choice(cfg.symmetries)
    gs = math.exp(rng.uniform(math.log(cfg.grain_size[0]), math.log(cfg.grain_size[1])))
    elong = (1.0, 1.0, 1.0)
    if rng.random() < cfg.elongation_probability:
        elong = (rng.uniform(0.6, 1.0), rng.uniform(1.0, 2.0), rng.uniform(0.6, 1.5))
    zr = math.exp(rng.uniform(math.log(cfg.z_ratio[0]), math.log(cfg.z_ratio[1])))
    elong = (elong[0] / zr, elong[1], elong[2])  # sections zr in-plane steps apart: grains shorter along z
    vol, truth = synthetic_volume(
        cfg.volume_shape, gs, sym, seed,
        size_spread=rng.uniform(0.1, 0.5), elongation=elong,
        twins=rng.uniform(0.2, 0.6) if sym == "m-3m" and rng.random() < cfg.twin_probability else 0.0,
        noise_deg=rng.uniform(*cfg.noise_deg), unindexed_fraction=rng.uniform(*cfg.unindexed),
        return_truth=True,
    )
    q, clean = vol.quaternions, truth.clean_quaternions
    grad, mis = rng.uniform(*cfg.gradient_deg), rng.uniform(*cfg.misindexed)
    if grad > 0 or mis > 0:
        from .realism import add_realism

        q, clean, _ = add_realism(q, clean, vol.valid, sym, seed, gradient_deg=grad,
                                  gradient_length=rng.uniform(4.0, 16.0), misindexed=mis, z_ratio=zr)
    return q, vol.valid, clean, sym


class SampleStream:
    """An endless, reproducible stream of training batches (see the module docstring)."""

    def __init__(self, cfg: SampleConfig, batch_size: int, seed: int):
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.k = 0
        self.pool: list = []

    def _new_volume(self):
        v = make_volume(TRAIN_SEED_BASE + self.seed * 1_000_003 + self.k, self.cfg)
        self.k += 1
        return v

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        cfg, rng = self.cfg, self.rng
        while len(self.pool) < cfg.pool:
            self.pool.append(self._new_volume())
        self.pool[rng.randrange(cfg.pool)] = self._new_volume()  # refresh one volume per batch
        sym = self.pool[0][3]
        pool = [p for p in self.pool if p[3] == sym]
        g = rng.choice(cfg.gaps)
        Zw, T = g + 2 * cfg.context, cfg.tile
        qs, vs, ts, hs = [], [], [], []
        for _ in range(self.batch_size):
            q, valid, clean, _ = rng.choice(pool)
            Z, Y, X = valid.shape
            z = rng.randrange(Z - Zw + 1)
            y = rng.randrange(Y - T + 1)
            x = rng.randrange(X - T + 1)
            sl = (slice(z, z + Zw), slice(y, y + T), slice(x, x + T))
            qq, vv, cc = q[sl], valid[sl], clean[sl]
            if rng.random() < 0.5:
                qq, vv, cc = qq.flip(0), vv.flip(0), cc.flip(0)
            if rng.random() < 0.5:
                qq, vv, cc = qq.flip(1), vv.flip(1), cc.flip(1)
            if rng.random() < 0.5:
                qq, vv, cc = qq.flip(2), vv.flip(2), cc.flip(2)
            if rng.random() < 0.5:
                qq, vv, cc = qq.transpose(1, 2), vv.transpose(1, 2), cc.transpose(1, 2)
            start = cfg.context
            if rng.random() < cfg.off_centre_probability:
                start = rng.randint(1, Zw - g - 1)
            hid = torch.zeros(Zw, T, T, dtype=torch.bool)
            hid[start:start + g] = True
            qs.append(qq); vs.append(vv); ts.append(cc); hs.append(hid)
        hidden = torch.stack(hs)
        valid = torch.stack(vs)
        return {"q": torch.stack(qs).contiguous(), "mask": hidden | ~valid, "hidden": hidden,
                "target": torch.stack(ts).contiguous(), "symmetry": sym}


class SampleDataset(torch.utils.data.IterableDataset):
    """:class:`SampleStream` for a ``torch.utils.data.DataLoader`` (``batch_size=None``); worker ``i`` of
    ``n`` uses stream seed ``seed * 1000 + i``, so every worker makes different volumes."""

    def __init__(self, cfg: SampleConfig, batch_size: int, seed: int):
        self.cfg, self.batch_size, self.seed = cfg, batch_size, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        torch.set_num_threads(1)
        return SampleStream(self.cfg, self.batch_size, self.seed * 1000 + wid)
