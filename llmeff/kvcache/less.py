"""LESS, "Get More with LESS" (Dong, Yang, Zhang, Wang, Chi, Chen, ICML 2024): a constant-size low-rank state
beside an eviction cache, so evicted tokens can still be attended to.

Per key-value head the state is ``H`` (R x D) and ``z`` (R). Every evicted token folds in:
``H += psi(k)^T v``, ``z += psi(k)``. At decode, for a query ``q`` of a head in that group,

    out = [phi(q) H + sum_kept exp(q.k s) v] / [phi(q) z + sum_kept exp(q.k s)],     s = 1/sqrt(D)

computed in log space: the state is one "virtual token" with logit ``log(phi(q).z)`` and value
``phi(q) H / phi(q).z`` inside the same softmax as the kept tokens (so a zero state gives exactly the eviction
policy). ``phi`` (per query head) and ``psi`` (per key-value head) are 2-layer GELU MLPs D -> hidden -> R with
absolute values; ``psi`` adds an R x R mixing term whose learned scale starts at ~1e-4. They are trained per layer
with the model frozen (:mod:`llmeff.kvcache.train_less`).

Saved format: a folder with ``less_maps.safetensors`` (``layers.<i>.<param>``) and ``less_config.json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import LLMEffFileNotFoundError, LLMEffValueError
from .base import EvictionPolicy, KVPolicy

_NEG = torch.finfo(torch.float32).min


def _mlp(x, w1, b1, w2, b2):
    """Per-head 2-layer GELU MLP: x (B, h, n, D), w1 (h, D, E), b1 (h, E), w2 (h, E, R), b2 (h, R) -> (B, h, n, R)."""
    h = torch.nn.functional.gelu(torch.einsum("bhnd,hde->bhne", x, w1) + b1[None, :, None, :])
    return torch.einsum("bhne,her->bhnr", h, w2) + b2[None, :, None, :]


class LESSMaps(nn.Module):
    """The learned maps of one attention layer: ``phi`` (per query head) and ``psi`` (per key-value head)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, rank: int = 8, hidden: int | None = None,
                 mix_scale: float = 1e-4, seed: int = 0):
        super().__init__()
        if num_heads % num_kv_heads:
            raise LLMEffValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        H, Hk, D, R = num_heads, num_kv_heads, head_dim, int(rank)
        E = int(hidden) if hidden else head_dim
        self.config = {"num_heads": H, "num_kv_heads": Hk, "head_dim": D, "rank": R, "hidden": E}
        g = torch.Generator().manual_seed(seed)

        def rnd(*shape, std):
            return nn.Parameter(torch.randn(*shape, generator=g) * std)

        self.phi_w1 = rnd(H, D, E, std=D ** -0.5)
        self.phi_b1 = nn.Parameter(torch.zeros(H, E))
        self.phi_w2 = rnd(H, E, R, std=E ** -0.5)
        self.phi_b2 = nn.Parameter(torch.zeros(H, R))
        self.psi_w1 = rnd(Hk, D, E, std=D ** -0.5)
        self.psi_b1 = nn.Parameter(torch.zeros(Hk, E))
        self.psi_w2 = rnd(Hk, E, R, std=0.01 * E ** -0.5)  # the state starts near zero (= the eviction policy)
        self.psi_b2 = nn.Parameter(torch.zeros(Hk, R))
        self.psi_mix = rnd(Hk, R, R, std=R ** -0.5)
        self.psi_mix_scale = nn.Parameter(torch.full((Hk,), float(mix_scale)))
        # learned per key-value head log-scale of psi (natural log, starts at 0 = unscaled): one parameter that
        # moves the state's total mass against the kept tokens' exp-logit mass
        self.psi_log_scale = nn.Parameter(torch.zeros(Hk))

    @property
    def rank(self) -> int:
        return self.config["rank"]

    def phi(self, q: torch.Tensor) -> torch.Tensor:
        """(B, H, n, D) -> (B, H, n, R) float32, >= 0."""
        return _mlp(q.float(), self.phi_w1, self.phi_b1, self.phi_w2, self.phi_b2).abs()

    def psi(self, k: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, n, D) -> (B, Hkv, n, R) float32, >= 0."""
        g = _mlp(k.float(), self.psi_w1, self.psi_b1, self.psi_w2, self.psi_b2)
        mix = torch.einsum("bhnr,hrs->bhns", g, self.psi_mix) * self.psi_mix_scale[None, :, None, None]
        return (g + mix).abs() * self.psi_log_scale.exp()[None, :, None, None]

    def state_terms(self, qg: torch.Tensor, Hs: torch.Tensor, z: torch.Tensor, num_heads: int):
        """The state's virtual token for grouped query rows ``qg`` (B, Hkv, G*n, D): logit (B, Hkv, G*n, 1) and
        value (B, Hkv, G*n, D), both float32."""
        B, hk, gn, D = qg.shape
        phi = self.phi(qg.reshape(B, num_heads, gn * hk // num_heads, D)).reshape(B, hk, gn, -1)
        a = (phi * z[:, :, None, :]).sum(-1, keepdim=True)
        pos = a > 0
        logit = torch.where(pos, torch.log(a.clamp_min(1e-38)), torch.full_like(a, _NEG))
        val = (phi @ Hs) / a.clamp_min(1e-38)
        return logit, torch.where(pos, val, torch.zeros_like(val))

    def zero_(self) -> "LESSMaps":
        """Make ``psi`` identically zero (the state stays zero: LESS then equals its eviction policy)."""
        with torch.no_grad():
            self.psi_w2.zero_()
            self.psi_b2.zero_()
        return self


class LESS(KVPolicy):
    """An eviction policy (``base``: :class:`~llmeff.kvcache.StreamingLLM`, :class:`~llmeff.kvcache.H2O`...) plus
    the LESS low-rank state per layer. ``maps``: ``{layer_idx: LESSMaps}`` (trained; :meth:`load`)."""

    name = "less"

    def __init__(self, base: EvictionPolicy, maps: dict[int, LESSMaps] | None = None, info: dict | None = None):
        if not isinstance(base, EvictionPolicy):
            raise LLMEffValueError(f"LESS wraps an eviction policy (StreamingLLM, H2O...), got {type(base).__name__}")
        self.base = base
        self.maps = dict(maps or {})
        self.info = dict(info or {})

    # the eviction side is the base policy's
    @property
    def budget(self):
        return self.base.budget

    def make_layer(self, info, ctx):
        from ._layers import EvictionLayer

        maps = self.maps.get(info.layer_idx)
        if maps is None:
            raise LLMEffValueError(
                f"LESS has no trained maps for layer {info.layer_idx} (it has {sorted(self.maps)}); train them with "
                "`python -m llmeff.kvcache.train_less` and load with LESS.load(path)")
        c = maps.config
        if (c["num_heads"], c["num_kv_heads"], c["head_dim"]) != (info.num_heads, info.num_kv_heads, info.head_dim):
            raise LLMEffValueError(f"LESS maps of layer {info.layer_idx} were trained for heads/kv heads/head dim "
                                   f"{c['num_heads']}/{c['num_kv_heads']}/{c['head_dim']}, the model has "
                                   f"{info.num_heads}/{info.num_kv_heads}/{info.head_dim}")
        dev = next(info.module.parameters()).device
        maps.to(dev)
        return EvictionLayer(self, info, ctx, less_maps=maps)

    @classmethod
    def untrained(cls, base: EvictionPolicy, model, rank: int = 8, hidden: int | None = None, seed: int = 0,
                  zero: bool = False) -> "LESS":
        """Fresh maps for every attention layer of ``model`` (``zero=True``: a state that stays zero)."""
        from ._model import attention_modules

        maps = {}
        for a in attention_modules(model):
            m = LESSMaps(a.num_heads, a.num_kv_heads, a.head_dim, rank=rank, hidden=hidden, seed=seed + a.layer_idx)
            maps[a.layer_idx] = m.zero_() if zero else m
        return cls(base, maps)

    def state_bytes_per_head(self) -> int:
        """float32 bytes of the state per sequence and key-value head: R*(D+1)*4."""
        m = next(iter(self.maps.values()))
        return m.config["rank"] * (m.config["head_dim"] + 1) * 4

    def describe(self) -> dict:
        d = {"policy": self.name, "base": self.base.describe(), "budget": self.budget}
        if self.maps:
            d["rank"] = next(iter(self.maps.values())).rank
        return d

    # ---- save / load --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``less_maps.safetensors`` + ``less_config.json`` into folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        if (path / "less_maps.safetensors").exists() and not overwrite:
            raise FileExistsError(f"{path}/less_maps.safetensors exists; pass overwrite=True")
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"layers.{i}.{n}": p.detach().float().cpu().contiguous()
                   for i, m in self.maps.items() for n, p in m.named_parameters()}
        cfg = {"format": "llmeff-less-1", "base": self.base.describe(),
               "layers": {str(i): m.config for i, m in self.maps.items()}, "info": self.info}
        tmp = path / "less_maps.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, path / "less_maps.safetensors")
        tmpj = path / "less_config.json.tmp"
        tmpj.write_text(json.dumps(cfg, indent=2))
        os.replace(tmpj, path / "less_config.json")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, base: EvictionPolicy | None = None) -> "LESS":
        """Load maps saved by :meth:`save`. ``base`` defaults to the eviction policy they were trained with."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_p, w_p = path / "less_config.json", path / "less_maps.safetensors"
        if not cfg_p.is_file() or not w_p.is_file():
            raise LLMEffFileNotFoundError(
                f"{path}: expected less_config.json and less_maps.safetensors (LESS.save output, e.g. from "
                "`llmeff kvcache train-less --out DIR`)")
        cfg = json.loads(cfg_p.read_text())
        if cfg.get("format") != "llmeff-less-1":
            raise LLMEffValueError(f"{cfg_p}: unknown format {cfg.get('format')!r}; expected 'llmeff-less-1'")
        tensors = load_file(str(w_p))
        maps = {}
        for key, c in cfg["layers"].items():
            i = int(key)
            m = LESSMaps(c["num_heads"], c["num_kv_heads"], c["head_dim"], rank=c["rank"], hidden=c["hidden"])
            # psi_log_scale came later: older files lack it (its default 0 reproduces them)
            sd = {n: tensors.get(f"layers.{i}.{n}", p.detach() if n == "psi_log_scale" else None)
                  for n, p in m.named_parameters()}
            missing = [n for n, t in sd.items() if t is None]
            if missing:
                raise LLMEffValueError(f"{w_p}: layer {i} lacks {missing}; re-save the maps with LESS.save")
            m.load_state_dict(sd)
            maps[i] = m
        if base is None:
            base = policy_from_description(cfg["base"])
        return cls(base, maps, info=cfg.get("info"))


def policy_from_description(d: dict) -> EvictionPolicy:
    """Rebuild an eviction policy from its ``describe()`` dictionary."""
    from .h2o import H2O
    from .streaming import StreamingLLM

    if d.get("policy") == "streaming":
        return StreamingLLM(window=d["window"], sink=d["sink"])
    if d.get("policy") == "h2o":
        return H2O(d["budget"], recent=d["recent"])
    raise LLMEffValueError(f"cannot rebuild eviction policy from {d}")


# ---- training-time pieces (parallel over a whole sequence) ----------------------------------------------------
def keep_masks(policy: EvictionPolicy, logits: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """Which keys each query sees under ``policy`` when every token is decoded one at a time.

    ``logits``: (B, H, T, T) pre-softmax attention scores (causal part used). Returns (B, Hkv, T, T) bool: row t is
    the kept set after token t-1 plus token t, exactly as :class:`~llmeff.kvcache._layers.EvictionLayer` does.
    """
    from .h2o import H2O
    from .streaming import StreamingLLM

    B, H, T, _ = logits.shape
    dev = logits.device
    t = torch.arange(T, device=dev)
    causal = t[None, :] <= t[:, None]
    if isinstance(policy, StreamingLLM):
        m = causal & ((t[None, :] < policy.sink) | (t[None, :] >= t[:, None] - policy.window))
        return m[None, None].expand(B, num_kv_heads, T, T)
    if isinstance(policy, H2O):
        G = H // num_kv_heads
        lg = logits.float().reshape(B, num_kv_heads, G, T, T)
        alive = torch.zeros(B, num_kv_heads, T, dtype=torch.bool, device=dev)
        scores = torch.zeros(B, num_kv_heads, T, device=dev)
        rows = torch.zeros(B, num_kv_heads, T, T, dtype=torch.bool, device=dev)
        inf = torch.tensor(float("inf"), device=dev)
        for s in range(T):
            alive[..., s] = True
            rows[:, :, s] = alive
            p = torch.softmax(lg[:, :, :, s, :].masked_fill(~alive[:, :, None, :], _NEG), dim=-1)
            scores += p.masked_fill(~alive[:, :, None, :], 0.0).sum(2)
            if s + 1 > policy.budget:
                prio = policy.priority(t.expand(B, num_kv_heads, T), scores, s + 1)
                prio = torch.where(alive, prio, inf)
                victim = prio.argmin(-1, keepdim=True)
                alive.scatter_(2, victim, False)
        return rows
    raise LLMEffValueError(f"LESS training knows StreamingLLM and H2O masks, not {type(policy).__name__}")


def less_attention(q, k, v, keep, maps: LESSMaps, scaling: float) -> torch.Tensor:
    """LESS attention output for every query of a sequence, in parallel: (B, H, T, D).

    q (B, H, T, D); k, v (B, Hkv, T, D); keep (B, Hkv, T, T) from :func:`keep_masks`. Kept keys enter with their
    logits ``q.k s``, evicted ones (causal, not kept) with ``log(phi(q).psi(k))`` -- the same sums as the state.
    """
    B, H, T, D = q.shape
    hk = k.shape[1]
    G = H // hk
    qg = q.reshape(B, hk, G * T, D)
    lg = (qg.float() @ k.float().transpose(-1, -2)) * scaling  # (B, hk, G*T, T)
    phi = maps.phi(q).reshape(B, hk, G * T, -1)
    psi = maps.psi(k)
    lin = torch.log((phi @ psi.transpose(-1, -2)).clamp_min(1e-30))
    keep_r = keep.unsqueeze(2).expand(B, hk, G, T, T).reshape(B, hk, G * T, T)
    t = torch.arange(T, device=q.device)
    causal = (t[None, :] <= t[:, None]).repeat(G, 1)[None, None]
    logits = torch.where(keep_r, lg, torch.where(causal, lin, torch.full_like(lg, _NEG)))
    p = torch.softmax(logits, dim=-1)
    return (p @ v.float()).reshape(B, H, T, D)
