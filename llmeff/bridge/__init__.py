"""Bridge: interdependent parallel generations (Dong, Brandfonbrener, ..., Chi, Sankararaman, 2025).

When ``N`` responses are sampled for one prompt, the batch of hidden states ``(N, T, D)`` is treated as one
tensor: after the FF block of a decoder layer (i.e. on the layer's output), a **Bridge block** lets the ``N``
samples of a group attend to each other *at the same position* ``t``::

    x   = RMSNorm(h)                                   h: (G, N, T, D), one group per prompt
    q, k, v = x W_q^T, x W_k^T, x W_v^T                 (.., r), split into heads of r / H
    a[g, i, t] = sum_j softmax_j(q[g,i,t] . k[g,j,t] / sqrt(r/H)) v[g,j,t]     (j over valid samples)
    h' = h + a W_o^T                                    W_o: (D, r), **zero at init**

Keys are masked for padding (a prompt's left padding, a finished response's tail), so a group never sees
another prompt (groups are disjoint) nor a completed generation; a position whose own token is padding gets
no update. Each step's Bridge attention uses only the current position, so decoding needs no extra cache:
the KV cache of the base model is all there is. With ``W_o = 0`` the residual add is ``h + 0``, so an
untrained Bridge gives exactly the base model's logits (bit-identical).

Usage::

    from llmeff import bridge
    br = bridge.add_blocks(model, rank=32, heads=4)       # hooks on an unmodified HF Llama; base frozen
    out = bridge.generate(model, prompt_ids, n=8, max_new_tokens=16, eos_token_id=2, pad_token_id=0)
    with bridge.groups(model, n=4):                        # plain forward: batch = consecutive groups of 4
        logits = model(input_ids=ids, attention_mask=mask).logits
    br.remove()                                            # hooks gone, requires_grad restored

The Bridge parameters live in the :class:`Bridge` handle (an ``nn.Module`` that is *not* a submodule of the
model, so ``model.state_dict()`` and ``save_pretrained`` are unchanged): give ``br.parameters()`` to the
optimizer, move it with ``br.to(device)``, save it with :func:`save`.

Outside a :func:`groups` block the whole batch is one group (the paper's setting: a batch is the ``N``
responses of one prompt). Tasks, rewards, SFT and GRPO for the benchmark: :mod:`llmeff.bridge.tasks`,
:mod:`llmeff.bridge.rl`.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _hooks
from ..errors import LLMEffFileNotFoundError, LLMEffValueError, UnsupportedModelError
from ..models import cache_keyword, find_layers, output_cache

__all__ = ["BridgeBlock", "Bridge", "add_blocks", "get", "groups", "generate", "GenerateOutput", "save", "load",
           "position_ids_from_mask"]

_ATTR = "_llmeff_bridge"


class BridgeBlock(nn.Module):
    """One Bridge block: RMSNorm, attention across the samples of a group at each position, output projection.

    Args:
        d_model: hidden width ``D`` of the model.
        rank: inner width ``r`` of the q/k/v projections (a multiple of ``heads``).
        heads: attention heads (head width ``r / heads``).
        eps: RMSNorm epsilon.
    Parameters: ``norm`` ``(D,)`` (ones), ``q, k, v`` ``(r, D)`` (normal, std ``D**-0.5``), ``o`` ``(D, r)``
    (**zeros**): ``3 r D + r D + D`` in all.
    """

    def __init__(self, d_model: int, rank: int, heads: int = 4, eps: float = 1e-5, generator=None,
                 device=None, dtype=torch.float32):
        super().__init__()
        if rank < 1 or heads < 1 or rank % heads:
            raise LLMEffValueError(f"rank ({rank}) must be a positive multiple of heads ({heads})")
        self.d_model, self.rank, self.heads, self.eps = d_model, rank, heads, eps
        kw = dict(device=device, dtype=dtype)
        self.norm = nn.Parameter(torch.ones(d_model, **kw))
        std = d_model ** -0.5
        self.q = nn.Parameter((torch.randn(rank, d_model, generator=generator) * std).to(**kw))
        self.k = nn.Parameter((torch.randn(rank, d_model, generator=generator) * std).to(**kw))
        self.v = nn.Parameter((torch.randn(rank, d_model, generator=generator) * std).to(**kw))
        self.o = nn.Parameter(torch.zeros(d_model, rank, **kw))

    def forward(self, h: torch.Tensor, n: int, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` ``(B, S, D)`` with ``B = G * n`` (consecutive groups of ``n``); ``valid`` ``(B, S)`` bool (real
        tokens) or ``None``. Returns the update ``(B, S, D)`` in ``h.dtype`` (zero where ``valid`` is false)."""
        B, S, D = h.shape
        if n < 1 or B % n:
            raise LLMEffValueError(f"batch of {B} sequences is not a whole number of groups of {n}; pass n that "
                                   "divides the batch (bridge.groups(model, n))")
        G, H, dh = B // n, self.heads, self.rank // self.heads
        wdt = self.q.dtype
        x = h.to(wdt)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm
        q = nn.functional.linear(x, self.q).view(G, n, S, H, dh)
        k = nn.functional.linear(x, self.k).view(G, n, S, H, dh)
        v = nn.functional.linear(x, self.v).view(G, n, S, H, dh)
        scores = torch.einsum("gishd,gjshd->gshij", q.float(), k.float()) / math.sqrt(dh)   # (G, S, H, n, n)
        if valid is not None:
            vm = valid.view(G, n, S)
            v = torch.where(vm[..., None, None], v, torch.zeros((), dtype=v.dtype, device=v.device))
            km = vm.permute(0, 2, 1)[:, :, None, None, :]                                   # (G, S, 1, 1, n)
            scores = scores.masked_fill(~km, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        if valid is not None:
            p = torch.nan_to_num(p, nan=0.0)       # a position where the whole group is padding
        a = torch.einsum("gshij,gjshd->gishd", p.to(v.dtype), v).reshape(B, S, self.rank)
        out = nn.functional.linear(a, self.o)
        if valid is not None:
            out = torch.where(valid[..., None], out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out.to(h.dtype)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class _State:
    n: int | None = None                  # group size; None: the whole batch is one group
    mask: torch.Tensor | None = None      # (B, S) bool real tokens of the current forward, or None


class Bridge(nn.Module):
    """The Bridge blocks of one model and the hooks that apply them (see :func:`add_blocks`).

    Attributes:
        blocks: ``nn.ModuleDict`` ``{str(layer_index): BridgeBlock}``.
        layers: the decoder-layer indices after which a block runs.
        group_override: when set, the group size used whatever :func:`groups` says (``1``: each sample attends
            only to itself, i.e. the blocks become per-token adapters without interaction: a control).
    """

    def __init__(self, model: nn.Module, blocks: dict[int, BridgeBlock], freeze_base: bool):
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): b for i, b in blocks.items()})
        self.layers = sorted(blocks)
        object.__setattr__(self, "model", model)       # not a submodule: the model's tree stays unchanged
        self.state = _State()
        self._handles: list = []
        self._requires_grad: list[tuple[nn.Parameter, bool]] = []
        self.enabled = True
        self.group_override: int | None = None   # e.g. 1: every sample alone (a control without interaction)
        self._warned = False
        if freeze_base:
            for p in model.parameters():
                self._requires_grad.append((p, p.requires_grad))
                p.requires_grad_(False)
        path, layer_list = find_layers(model)
        base = model
        for part in path.split(".")[:-1]:      # the module that holds the layers sees every forward's mask
            base = getattr(base, part)
        self._handles.append(base.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
        for i in self.layers:
            self._handles.append(layer_list[i].register_forward_hook(self._layer_hook(i)))
        object.__setattr__(model, _ATTR, self)

    # -- hooks ---------------------------------------------------------------------------------------------
    def _model_pre_hook(self, mod, args, kwargs):
        shape = _hooks.batch_shape(args, kwargs)
        self.state.mask = _hooks.token_mask(args, kwargs, shape)
        return None

    def _layer_hook(self, i: int):
        block = self.blocks[str(i)]

        def hook(mod, args, out):
            if not self.enabled:
                return None
            h = out[0] if isinstance(out, tuple) else out
            if not isinstance(h, torch.Tensor) or h.dim() != 3:
                return None
            B, S, _ = h.shape
            n = self.group_override or self.state.n or B
            if self.group_override is None and self.state.n is None and B > 1 and not self._warned:
                import warnings

                warnings.warn(f"Bridge: no bridge.groups(model, n) block is active, so the whole batch of {B} "
                              "sequences is treated as one group (the N samples of one prompt); wrap the call in "
                              "`with bridge.groups(model, n):` when the batch holds several prompts", stacklevel=2)
                self._warned = True
            mask = self.state.mask
            if mask is not None and tuple(mask.shape) != (B, S):
                mask = None
            h2 = h + block(h, n, mask)
            return (h2, *out[1:]) if isinstance(out, tuple) else h2

        return hook

    # -- public --------------------------------------------------------------------------------------------
    def n_params(self) -> int:
        """Number of Bridge parameters."""
        return sum(p.numel() for p in self.parameters())

    def share(self) -> float:
        """Bridge parameters as a fraction of the base model's parameters."""
        return self.n_params() / sum(p.numel() for p in self.model.parameters())

    def remove(self) -> None:
        """Remove the hooks and restore the base parameters' ``requires_grad`` (the weights were never touched)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for p, r in self._requires_grad:
            p.requires_grad_(r)
        self._requires_grad = []
        if getattr(self.model, _ATTR, None) is self:
            object.__delattr__(self.model, _ATTR)

    @contextmanager
    def disabled(self):
        """Run the model without its Bridge blocks (independent generations) inside the block."""
        old = self.enabled
        self.enabled = False
        try:
            yield self
        finally:
            self.enabled = old


def get(model: nn.Module) -> Bridge | None:
    """The :class:`Bridge` attached to ``model`` by :func:`add_blocks`, or ``None``."""
    return getattr(model, _ATTR, None)


def add_blocks(model: nn.Module, rank: int | None = None, heads: int = 4, every: int = 1,
               extra_frac: float = 0.04, freeze_base: bool = True, seed: int = 0) -> Bridge:
    """Insert a Bridge block after the FF block of every ``every``-th decoder layer of ``model``.

    Args:
        model: a HF causal LM (or its base model) with ``model.layers`` / ``model.model.layers`` decoder
            layers (Llama, Mistral, Qwen, Gemma, Phi-3 layouts).
        rank: inner width of each block's q/k/v (a multiple of ``heads``). ``None``: chosen so the blocks add
            about ``extra_frac`` of the base model's parameters (rounded to a multiple of ``heads``).
        heads: attention heads per block.
        every: a block after layers ``every-1, 2*every-1, ...`` (``1``: after every layer).
        extra_frac: target parameter share when ``rank`` is ``None`` (the paper adds 2.8-5.1 %).
        freeze_base: set ``requires_grad=False`` on every base parameter (restored by :meth:`Bridge.remove`).
        seed: seed of the q/k/v initialisation (``o`` is zero, so the model is unchanged until trained).

    Returns:
        the :class:`Bridge` handle (float32 blocks on the model's device).
    """
    if get(model) is not None:
        raise LLMEffValueError("this model already has Bridge blocks; call .remove() on bridge.get(model) first")
    if every < 1:
        raise LLMEffValueError(f"every must be >= 1, got {every}")
    _, layer_list = find_layers(model)
    cfg = getattr(model, "config", None)
    d = getattr(cfg, "hidden_size", None)
    if d is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no config.hidden_size; Bridge needs a Llama-style "
                                    "HF model")
    idx = [i for i in range(len(layer_list)) if (i + 1) % every == 0]
    if not idx:
        raise LLMEffValueError(f"every={every} leaves no layer of the {len(layer_list)} for a Bridge block")
    if rank is None:
        if not 0 < extra_frac < 1:
            raise LLMEffValueError(f"extra_frac must be in (0, 1), got {extra_frac}")
        n_base = sum(p.numel() for p in model.parameters())
        r = extra_frac * n_base / (len(idx) * 4 * d)
        rank = max(heads, int(round(r / heads)) * heads)
    p0 = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    blocks = {i: BridgeBlock(d, rank, heads, eps=float(getattr(cfg, "rms_norm_eps", 1e-5)), generator=g,
                             device=p0.device) for i in idx}
    return Bridge(model, blocks, freeze_base)


@contextmanager
def groups(model: nn.Module, n: int):
    """Inside the block, every forward of ``model`` treats its batch as consecutive groups of ``n`` samples
    (rows ``[0, n)``, ``[n, 2n)``, ...): the Bridge attention never crosses groups. A model without Bridge
    blocks is unaffected. Nested blocks restore the outer ``n`` on exit."""
    if int(n) < 1:
        raise LLMEffValueError(f"group size n must be >= 1, got {n}")
    br = get(model)
    if br is None:
        yield None
        return
    old = br.state.n
    br.state.n = int(n)
    try:
        yield br
    finally:
        br.state.n = old


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions ``(B, T)`` of the real tokens of a 0/1 mask: ``cumsum - 1`` (padding gets the last real
    position before it, or 0): the positions :func:`generate` uses, so a teacher-forced forward matches it."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


@dataclass
class GenerateOutput:
    """What :func:`generate` returns. Row ``p * n + i`` is sample ``i`` of prompt ``p``.

    Attributes:
        sequences: ``(P*n, L + R)`` prompt (left-padded) then response token ids.
        attention_mask: ``(P*n, L + R)`` 1 for real tokens (prompt and response up to and including EOS).
        responses: ``(P*n, R)`` response token ids (``pad_token_id`` after EOS).
        response_mask: ``(P*n, R)`` 1 up to and including the EOS token.
        prompt_len: ``L``.
        logits: ``(P*n, R, V)`` float32 logits of each generated position (``return_logits=True``), else None.
    """

    sequences: Any
    attention_mask: Any
    responses: Any
    response_mask: Any
    prompt_len: int
    logits: Any = None


@torch.no_grad()
def generate(model: nn.Module, prompt_ids, n: int = 8, max_new_tokens: int = 16, attention_mask=None,
             temperature: float = 1.0, top_k: int | None = None, eos_token_id: int | None = None,
             pad_token_id: int = 0, seed: int | None = None, use_cache: bool = True,
             return_logits: bool = False, autocast: bool | None = None) -> GenerateOutput:
    """Sample ``n`` interdependent responses per prompt (independent ones when ``model`` has no Bridge).

    Args:
        prompt_ids: ``(P, L)`` token ids (torch or numpy), **left**-padded when lengths differ.
        n: responses per prompt; each prompt's ``n`` samples form one Bridge group.
        attention_mask: ``(P, L)`` 1 for real prompt tokens (default: all ones).
        temperature: sampling temperature; ``0`` is greedy.
        top_k: sample among the ``top_k`` most likely tokens (``None``: all).
        eos_token_id: a sample that emits it is finished: later steps feed ``pad_token_id`` with mask 0, so
            Bridge attention stops seeing it (the paper masks completed generations).
        seed: seed of the sampling generator (on the model's device).
        use_cache: use the KV cache (default). ``False`` recomputes the whole sequence each step (a check).
        return_logits: also return each step's logits.
        autocast: bf16 autocast (default: on CUDA).

    Returns:
        :class:`GenerateOutput` (numpy arrays when ``prompt_ids`` was numpy).
    """
    import numpy as np

    as_np = isinstance(prompt_ids, np.ndarray)
    dev = next(model.parameters()).device
    ids = torch.as_tensor(prompt_ids).to(dev).long()
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise LLMEffValueError(f"prompt_ids must be (P, L) with L >= 1, got shape {tuple(ids.shape)}")
    if int(n) < 1 or max_new_tokens < 1:
        raise LLMEffValueError(f"n and max_new_tokens must be >= 1, got n={n}, max_new_tokens={max_new_tokens}")
    am = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).to(dev).long()
    if am.shape != ids.shape:
        raise LLMEffValueError(f"attention_mask {tuple(am.shape)} does not match prompt_ids {tuple(ids.shape)}")
    if bool((am[:, -1] == 0).any()):
        raise LLMEffValueError("prompts must be left-padded (the last column of attention_mask is 0 for some "
                               "prompt); pad on the left")
    n = int(n)
    ids = ids.repeat_interleave(n, 0)
    am = am.repeat_interleave(n, 0)
    B, L = ids.shape
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item()))
    ac = (dev.type == "cuda") if autocast is None else bool(autocast)
    kw = cache_keyword(model)
    seq, mask = ids, am
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    outs, out_mask, logit_list = [], [], []
    cache = None
    with groups(model, n), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=ac):
        for step in range(max_new_tokens):
            pos = position_ids_from_mask(mask)
            if use_cache and cache is not None:
                o = model(input_ids=seq[:, -1:], attention_mask=mask, position_ids=pos[:, -1:], use_cache=True,
                          **{kw: cache})
            else:
                o = model(input_ids=seq, attention_mask=mask, position_ids=pos, use_cache=use_cache)
            if use_cache:
                cache = output_cache(o)
            logits = o.logits[:, -1].float()
            if return_logits:
                logit_list.append(logits)
            tok = _sample(logits, temperature, top_k, gen)
            live = ~done
            tok = torch.where(live, tok, torch.full_like(tok, pad_token_id))
            outs.append(tok)
            out_mask.append(live.long())
            seq = torch.cat([seq, tok[:, None]], 1)
            mask = torch.cat([mask, live.long()[:, None]], 1)
            if eos_token_id is not None:
                done = done | (tok == eos_token_id)
                if bool(done.all()):
                    break
    resp = torch.stack(outs, 1)
    rmask = torch.stack(out_mask, 1)
    res = GenerateOutput(seq, mask, resp, rmask, L, torch.stack(logit_list, 1) if return_logits else None)
    if as_np:
        for f in ("sequences", "attention_mask", "responses", "response_mask", "logits"):
            v = getattr(res, f)
            if v is not None:
                setattr(res, f, v.cpu().numpy())
    return res


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    lg = logits / temperature
    if top_k is not None and 0 < top_k < lg.shape[-1]:
        kth = lg.topk(top_k, dim=-1).values[:, -1:]
        lg = lg.masked_fill(lg < kth, float("-inf"))
    return torch.multinomial(torch.softmax(lg, -1), 1, generator=gen)[:, 0]


# -- save / load ---------------------------------------------------------------------------------------------
def save(br: Bridge, path, meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``path/bridge.safetensors`` (float32 block weights) and ``path/bridge.json`` (layers, rank,
    heads, ``meta``). Refuses to overwrite existing files unless ``overwrite=True``; writes to temporary files
    then renames."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tf, jf = path / "bridge.safetensors", path / "bridge.json"
    if not overwrite and (tf.exists() or jf.exists()):
        raise LLMEffValueError(f"{path} already holds a Bridge; pass overwrite=True to replace it")
    tensors = {f"blocks.{k}.{n}": p.detach().float().cpu().contiguous() for k, b in br.blocks.items()
               for n, p in b.named_parameters()}
    b0 = next(iter(br.blocks.values()))
    info = {"format": "llmeff.bridge/1", "layers": br.layers, "rank": b0.rank, "heads": b0.heads,
            "d_model": b0.d_model, "eps": b0.eps, "params": br.n_params(), "meta": meta or {}}
    save_file(tensors, str(tf) + ".tmp")
    os.replace(str(tf) + ".tmp", tf)
    (path / "bridge.json.tmp").write_text(json.dumps(info, indent=1))
    os.replace(path / "bridge.json.tmp", jf)
    return path


def load(model: nn.Module, path, freeze_base: bool = True) -> Bridge:
    """Attach the Bridge saved by :func:`save` in ``path`` to ``model``; returns the handle."""
    from safetensors.torch import load_file

    path = Path(path)
    tf, jf = path / "bridge.safetensors", path / "bridge.json"
    if not tf.is_file() or not jf.is_file():
        raise LLMEffFileNotFoundError(f"{path} has no bridge.json / bridge.safetensors (written by bridge.save)")
    info = json.loads(jf.read_text())
    t = load_file(str(tf))
    d = getattr(getattr(model, "config", None), "hidden_size", None)
    if d != info["d_model"]:
        raise LLMEffValueError(f"saved Bridge is for hidden size {info['d_model']}, the model has {d}")
    layers = info["layers"]
    every = layers[0] + 1
    if layers != [i for i in range(len(find_layers(model)[1])) if (i + 1) % every == 0]:
        raise LLMEffValueError(f"saved Bridge has blocks after layers {layers}, which does not fit this model")
    br = add_blocks(model, rank=info["rank"], heads=info["heads"], every=every, freeze_base=freeze_base)
    try:
        with torch.no_grad():
            for k, b in br.blocks.items():
                for name, p in b.named_parameters():
                    key = f"blocks.{k}.{name}"
                    if key not in t or t[key].shape != p.shape:
                        raise LLMEffValueError(f"{tf} has no tensor {key} of shape {tuple(p.shape)} "
                                               f"(got {tuple(t[key].shape) if key in t else 'none'}): not a file "
                                               "written by bridge.save for this configuration")
                    p.copy_(t[key])
    except Exception:
        br.remove()  # leave the model as it was: no hooks, base weights' requires_grad restored
        raise
    return br
