"""GRIFFIN: training-free, calibration-free FF expert selection from the prompt (Dong, Chen, Chi, COLM 2024).

Within one sequence the feed-forward activations *flock*: the neurons that matter for the prompt keep
mattering for the tokens generated after it. In the prompt (prefill) pass, per FF block, the full
intermediate activation ``Z`` (``act(x W_gate^T) * (x W_up^T)`` for gated FFs, ``act(x W_in^T + b)`` for
plain ones; ``S x d_ff`` per sequence) is computed as usual; each token's row is normalised to unit l2
norm; neuron ``j`` is scored by the l2 norm of its column over the prompt's real tokens (left padding is
excluded through the attention mask); the top ``k = density * d_ff`` neurons are kept. The prompt's output
uses the full FF; every later token (decode) uses only the kept neurons: gate/up rows and down columns.

Usage (kvpress-style: hooks on an unmodified HF model)::

    from llmeff import griffin
    with griffin.apply(model, density=0.5):          # restores the model exactly on exit
        out = model.generate(**inputs, max_new_tokens=64)

    handle = griffin.apply(model, density=0.5)       # permanent until detached
    ...; handle.detach()

Selections: ``"griffin"`` (the method), ``"magnitude"`` (static: ``||W_gate[j]|| * ||W_up[j]||``, plain FFs
``||W_in[j]|| * ||W_out[:, j]||``), ``"random"`` (static, seeded), ``"sample"`` (per sequence, ``k``
neurons sampled without replacement with probability proportional to the GRIFFIN score, seeded).

Phases are told apart by the cache position (:mod:`llmeff._hooks`), not by the number of new tokens, so
a teacher-forced continuation passed after the prompt is a decode step too. Decode paths:

* batch 1, or ``batch_experts="shared"``, or a static selection: the kept rows/columns are copied
  (``index_select``) once after the prefill into buffers allocated once at attach time, and each decode
  step is two dense matmuls on the sliced weights. The buffers keep their addresses, so a compiled /
  CUDA-graph decode step does not recompile or re-record per prompt.
* batch > 1 with per-sequence experts (``batch_experts="per_sequence"``, default): the gathered FF of
  :func:`tensorkernels.gathered_ff` (Triton on CUDA: gate/up rows and down columns indexed per sequence,
  activation and product fused; torch reference elsewhere).

Under ``torch.compile`` tracing or CUDA-graph capture no device value is read: a traced forward is a
decode step when a prefill already selected experts (the eager prefill of ``generate``), so the decode
graph has no data-dependent branch and no per-token recompilation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from . import _hooks
from .errors import LLMEffValueError
from .models import FFSpec, activation_name, find_mlps

SELECTIONS = ("griffin", "magnitude", "random", "sample")
BATCH_EXPERTS = ("per_sequence", "shared")


def griffin_scores(z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """GRIFFIN neuron scores ``(B, d_ff)`` (float32) from prefill activations ``z`` ``(B, S, d_ff)``.

    Each token's row is normalised to unit l2 norm; neuron ``j``'s score is the l2 norm of column ``j``
    over the tokens where ``mask`` ``(B, S)`` is true (all tokens when ``None``).
    """
    z = z.float()
    sq = z * z
    w = sq / sq.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    if mask is not None:
        w = w * mask.to(w.dtype).unsqueeze(-1)
    return w.sum(1).sqrt()


@dataclass
class _SharedState:
    phase: str = "prefill"
    selected: bool = False          # some FF has experts ready for decode
    shape: tuple[int, int] | None = None
    mask: torch.Tensor | None = None


@dataclass
class _FF:
    spec: FFSpec
    k: int
    act_name: str | None
    static_idx: torch.Tensor | None = None     # magnitude / random
    mode: str = "none"                          # "none" (full FF), "shared", "per_seq"
    w_in_s: torch.Tensor | None = None          # (k or 2k, d): [gate; up] rows for gated
    b_in_s: torch.Tensor | None = None
    w_out_s: torch.Tensor | None = None         # (d, k)
    idx: torch.Tensor | None = None             # per-sequence (B, k) int32
    last_idx: torch.Tensor | None = None        # (B, k) or (1, k) of the last selection
    w_up_rows: torch.Tensor | None = None       # per-sequence path: (d_ff, d) row-major views/copies
    w_gate_rows: torch.Tensor | None = None
    w_down_t: torch.Tensor | None = None        # (d_ff, d_out) transposed copy
    handles: list = field(default_factory=list)
    patched: list = field(default_factory=list)  # (module, had_instance_forward, old)


class Griffin:
    """GRIFFIN on ``model``; attach with :meth:`attach` (or :func:`apply`), undo with :meth:`detach`.

    Args:
        model: a HF causal LM (or its base model) of a supported family (:data:`llmeff.models.SUPPORTED`).
        density: fraction of FF neurons kept in decode, in ``(0, 1]`` (1 keeps the model unchanged).
        per_layer: optional per-layer densities: a sequence (one per layer) or ``{layer_idx: density}``
            overriding ``density`` for those layers.
        selection: ``"griffin"``, ``"magnitude"``, ``"random"`` or ``"sample"``.
        seed: seed of ``"random"`` and ``"sample"``.
        batch_experts: ``"per_sequence"`` (each sequence of a batch keeps its own experts) or ``"shared"``
            (one set per batch from the summed squared scores of all its real prompt tokens).
        backend: kernel backend of the per-sequence path (see :mod:`tensorkernels`).
    """

    def __init__(self, model: nn.Module, density: float = 0.5, per_layer: Sequence[float] | dict | None = None,
                 selection: str = "griffin", seed: int = 0, batch_experts: str = "per_sequence",
                 backend: str | None = None):
        if selection not in SELECTIONS:
            raise LLMEffValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if batch_experts not in BATCH_EXPERTS:
            raise LLMEffValueError(f"batch_experts must be one of {BATCH_EXPERTS}, got {batch_experts!r}")
        self.model = model
        self.selection = selection
        self.seed = int(seed)
        self.batch_experts = batch_experts
        self.backend = backend
        specs = find_mlps(model)
        dens = [float(density)] * len(specs)
        if per_layer is not None:
            if isinstance(per_layer, dict):
                for i, v in per_layer.items():
                    dens[int(i)] = float(v)
            else:
                if len(per_layer) != len(specs):
                    raise LLMEffValueError(f"per_layer has {len(per_layer)} densities, the model {len(specs)} layers")
                dens = [float(v) for v in per_layer]
        for d in dens:
            if not (0.0 < d <= 1.0):
                raise LLMEffValueError(f"density must be in (0, 1], got {d}")
        self.densities = dens
        self.ffs = [_FF(s, max(1, min(s.d_ff, int(round(d * s.d_ff)))), activation_name(s.act))
                    for s, d in zip(specs, dens)]
        self.state = _SharedState()
        self._model_handle = None
        self.attached = False

    # -- public --------------------------------------------------------------------------------------
    def attach(self) -> "Griffin":
        """Install the hooks (idempotent). Parameters are never modified."""
        if self.attached:
            return self
        with torch.no_grad():
            for i, ff in enumerate(self.ffs):
                if ff.k >= ff.spec.d_ff:
                    continue                     # density 1: this FF is left exactly as it is
                self._alloc(ff)
                if self.selection in ("magnitude", "random"):
                    ff.static_idx = self._static_idx(ff, i)
                    self._fill_shared(ff, ff.static_idx)
                    ff.last_idx = ff.static_idx.unsqueeze(0)
                    ff.mode = "shared"
                    self.state.selected = True
                else:
                    hook_mod = ff.spec.down
                    ff.handles.append(hook_mod.register_forward_pre_hook(self._make_capture(ff, i)))
                self._patch(ff)
        self._model_handle = self.model.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True)
        self.attached = True
        return self

    def detach(self) -> None:
        """Remove every hook and buffer: the model is bit-identical to before :meth:`attach`."""
        if not self.attached:
            return
        if self._model_handle is not None:
            self._model_handle.remove()
            self._model_handle = None
        for ff in self.ffs:
            for h in ff.handles:
                h.remove()
            ff.handles.clear()
            for mod, had, old in reversed(ff.patched):
                if had:
                    mod.forward = old
                else:
                    try:
                        del mod.forward
                    except AttributeError:
                        pass
            ff.patched.clear()
            ff.w_in_s = ff.b_in_s = ff.w_out_s = ff.idx = None
            ff.w_up_rows = ff.w_gate_rows = ff.w_down_t = None
            ff.mode = "none"
        self.state = _SharedState()
        self.attached = False

    def reset(self) -> None:
        """Forget the experts of the last prompt (the next forward is treated as a fresh prefill)."""
        for ff in self.ffs:
            if ff.static_idx is None:
                ff.mode = "none"
        self.state.selected = any(ff.mode != "none" for ff in self.ffs)
        self.state.phase = "prefill"

    @property
    def experts(self) -> list[torch.Tensor | None]:
        """Per layer, the kept neuron indices of the last prefill: ``(B, k)`` (``(1, k)`` when shared);
        ``None`` for layers left dense."""
        return [ff.last_idx for ff in self.ffs]

    def __enter__(self) -> "Griffin":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- set-up --------------------------------------------------------------------------------------
    def _alloc(self, ff: _FF) -> None:
        s = ff.spec
        w_in = s.w_in()
        dev, dt = w_in.device, w_in.dtype
        rows = 2 * ff.k if s.kind == "gated" else ff.k
        ff.w_in_s = torch.empty(rows, s.d_model, device=dev, dtype=dt)
        has_b_in = s.b_in() is not None or (s.kind == "gated" and s.b_gate() is not None)
        ff.b_in_s = torch.zeros(rows, device=dev, dtype=dt) if has_b_in else None
        w_out = s.w_out()
        ff.w_out_s = torch.empty(w_out.shape[0], ff.k, device=w_out.device, dtype=w_out.dtype)
        for t in (ff.w_in_s, ff.b_in_s, ff.w_out_s):
            if t is not None:
                try:
                    torch._dynamo.mark_static_address(t)
                except Exception:  # pragma: no cover
                    pass

    def _static_idx(self, ff: _FF, layer: int) -> torch.Tensor:
        s = ff.spec
        dev = s.w_in().device
        if self.selection == "random":
            g = torch.Generator().manual_seed(self.seed * 100003 + layer)
            idx = torch.randperm(s.d_ff, generator=g)[: ff.k]
        else:
            score = s.w_in().float().norm(dim=1)
            if s.kind == "gated":
                score = score * s.w_gate().float().norm(dim=1)
            else:
                score = score * s.w_out().float().norm(dim=0)
            idx = torch.topk(score, ff.k).indices
        return idx.sort().values.to(dev)

    def _fill_shared(self, ff: _FF, idx: torch.Tensor) -> None:
        s, k = ff.spec, ff.k
        idx = idx.to(ff.w_in_s.device)
        if s.kind == "gated":
            ff.w_in_s[:k].copy_(s.w_gate().index_select(0, idx))
            ff.w_in_s[k:].copy_(s.w_in().index_select(0, idx))
            if ff.b_in_s is not None:
                bg, bu = s.b_gate(), s.b_in()
                ff.b_in_s[:k].copy_(bg[idx] if bg is not None else 0)
                ff.b_in_s[k:].copy_(bu[idx] if bu is not None else 0)
        else:
            ff.w_in_s.copy_(s.w_in().index_select(0, idx))
            if ff.b_in_s is not None:
                ff.b_in_s.copy_(s.b_in()[idx])
        ff.w_out_s.copy_(s.w_out().index_select(1, idx))

    def _prepare_per_seq(self, ff: _FF) -> None:
        s = ff.spec
        if ff.w_down_t is not None:
            return
        w_in = s.w_in()
        ff.w_up_rows = w_in if w_in.is_contiguous() else w_in.contiguous()
        if s.kind == "gated":
            wg = s.w_gate()
            ff.w_gate_rows = wg if wg.is_contiguous() else wg.contiguous()
        w_out = s.w_out()                      # (d, d_ff)
        wt = w_out.t()
        ff.w_down_t = wt if wt.is_contiguous() else wt.contiguous()

    # -- hooks ---------------------------------------------------------------------------------------
    def _model_pre_hook(self, mod, args, kwargs):
        if _hooks.tracing():
            return None
        st = self.state
        if _hooks.is_prefill(args, kwargs):
            st.phase = "prefill"
            st.shape = _hooks.batch_shape(args, kwargs)
            st.mask = _hooks.token_mask(args, kwargs, st.shape)
        else:
            st.phase = "decode"
        return None

    def _make_capture(self, ff: _FF, layer: int):
        def capture(mod, args):
            st = self.state
            if _hooks.tracing() or st.phase != "prefill":
                return None
            z = args[0]
            with torch.no_grad():
                if z.dim() == 2:                 # OPT flattens tokens: (B*S, d_ff)
                    if st.shape is None or st.shape[0] * st.shape[1] != z.shape[0]:
                        return None
                    z = z.reshape(st.shape[0], st.shape[1], -1)
                elif z.dim() != 3:
                    return None
                mask = st.mask if (st.mask is not None and tuple(st.mask.shape) == tuple(z.shape[:2])) else None
                self._select(ff, layer, griffin_scores(z, mask))
            return None

        return capture

    def _select(self, ff: _FF, layer: int, scores: torch.Tensor) -> None:
        B = scores.shape[0]
        shared = B == 1 or self.batch_experts == "shared"
        if shared and B > 1:
            scores = scores.pow(2).sum(0, keepdim=True).sqrt()
        if self.selection == "sample":
            g = torch.Generator().manual_seed(self.seed * 100003 + layer)
            p = scores.double().cpu().clamp_min(0) + 1e-12
            idx = torch.multinomial(p, ff.k, replacement=False, generator=g).to(scores.device)
        else:
            idx = torch.topk(scores, ff.k, dim=-1).indices
        idx = idx.sort(dim=-1).values
        ff.last_idx = idx
        if shared:
            self._fill_shared(ff, idx[0])
            ff.mode = "shared"
        else:
            self._prepare_per_seq(ff)
            ff.idx = idx.to(torch.int32).contiguous()
            ff.mode = "per_seq"
        self.state.selected = True

    def _decoding(self, ff: _FF) -> bool:
        if ff.mode == "none":
            return False
        if torch.compiler.is_compiling():
            return True
        if _hooks.tracing():
            return True
        return self.state.phase == "decode"

    def _patch(self, ff: _FF) -> None:
        s = ff.spec
        if s.owner_is_layer:                     # OPT: fc1 / fc2 on the decoder layer
            self._set_forward(ff, s.up, self._make_in_forward(ff, s.up))
            self._set_forward(ff, s.down, self._make_out_forward(ff, s.down))
        else:
            self._set_forward(ff, s.module, self._make_ff_forward(ff, s.module))

    def _set_forward(self, ff: _FF, mod: nn.Module, fn) -> None:
        had = "forward" in mod.__dict__
        ff.patched.append((mod, had, mod.__dict__.get("forward")))
        mod.forward = fn

    def _make_ff_forward(self, ff: _FF, mod: nn.Module):
        orig = type(mod).forward.__get__(mod) if "forward" not in mod.__dict__ else mod.__dict__["forward"]
        s = ff.spec
        k = ff.k
        gated = s.kind == "gated"
        act = s.act
        down_bias = s.b_out()
        dropout = getattr(mod, "dropout", None) if s.conv1d else None

        def forward(x, *args, **kwargs):
            if not self._decoding(ff):
                return orig(x, *args, **kwargs)
            if ff.mode == "shared":
                h = torch.nn.functional.linear(x, ff.w_in_s, ff.b_in_s)
                if gated:
                    h = act(h[..., :k]) * h[..., k:]
                else:
                    h = act(h)
                y = torch.nn.functional.linear(h, ff.w_out_s, down_bias)
            else:
                y = self._per_seq(ff, x)
                if down_bias is not None:
                    y = y + down_bias
            if dropout is not None:
                y = dropout(y)
            return y

        return forward

    def _per_seq(self, ff: _FF, x: torch.Tensor) -> torch.Tensor:
        from tensorkernels.gathered_ff import gathered_ff

        s = ff.spec
        squeeze = x.dim() == 2
        x3 = x.unsqueeze(1) if squeeze else x
        if x3.shape[0] != ff.idx.shape[0]:
            raise LLMEffValueError(
                f"GRIFFIN selected experts for a batch of {ff.idx.shape[0]} sequences but the decode step has "
                f"{x3.shape[0]}; call .reset() (or run a new prefill) when the batch changes"
            )
        from tensorkernels import resolve_backend

        backend = self.backend
        use_triton = resolve_backend(backend, x3) == "triton"
        act = ff.act_name if (use_triton and ff.act_name is not None) else s.act
        y = gathered_ff(x3, ff.idx, ff.w_up_rows, ff.w_down_t, ff.w_gate_rows,
                        s.b_in(), s.b_gate(), act=act, backend=backend)
        return y.squeeze(1) if squeeze else y

    def _make_in_forward(self, ff: _FF, mod: nn.Module):       # OPT fc1
        orig = type(mod).forward.__get__(mod)
        s = ff.spec

        def forward(x):
            if not self._decoding(ff):
                return orig(x)
            if ff.mode == "shared":
                return torch.nn.functional.linear(x, ff.w_in_s, ff.b_in_s)
            B = ff.idx.shape[0]
            x3 = x.reshape(B, -1, x.shape[-1])
            idx = ff.idx.long()
            u = torch.einsum("bsd,bkd->bsk", x3, s.w_in()[idx])
            if s.b_in() is not None:
                u = u + s.b_in()[idx].unsqueeze(1)
            return u.reshape(-1, ff.k)

        return forward

    def _make_out_forward(self, ff: _FF, mod: nn.Module):      # OPT fc2
        orig = type(mod).forward.__get__(mod)
        s = ff.spec

        def forward(h):
            if not self._decoding(ff):
                return orig(h)
            if ff.mode == "shared":
                return torch.nn.functional.linear(h, ff.w_out_s, s.b_out())
            B = ff.idx.shape[0]
            h3 = h.reshape(B, -1, h.shape[-1])
            w = s.w_out().t()[ff.idx.long()]                   # (B, k, d)
            y = torch.einsum("bsk,bkd->bsd", h3, w)
            if s.b_out() is not None:
                y = y + s.b_out()
            return y.reshape(-1, y.shape[-1])

        return forward


def apply(model: nn.Module, density: float = 0.5, per_layer: Sequence[float] | dict | None = None,
          selection: str = "griffin", seed: int = 0, batch_experts: str = "per_sequence",
          backend: str | None = None, permanent: bool = False) -> Griffin:
    """Attach GRIFFIN to ``model`` and return the :class:`Griffin` handle.

    Use it as a context manager (``with griffin.apply(model): ...`` restores the model bit-exactly on
    exit) or keep it (``h = griffin.apply(model, permanent=True)``; ``h.detach()`` later). ``permanent``
    only documents intent: the hooks stay until :meth:`Griffin.detach` or the end of a ``with`` block.
    See :class:`Griffin` for the arguments.
    """
    return Griffin(model, density=density, per_layer=per_layer, selection=selection, seed=seed,
                   batch_experts=batch_experts, backend=backend).attach()


@torch.no_grad()
def flocking(model: nn.Module, input_ids: torch.Tensor, prompt_len: int, density: float = 0.5,
             attention_mask: torch.Tensor | None = None) -> dict[str, Any]:
    """Measure flocking on a dense forward over ``prompt + continuation`` (``input_ids`` ``(B, T)``).

    Per layer and sequence, the top-``k`` GRIFFIN set of the prompt tokens (positions ``< prompt_len``)
    is compared with the top-``k`` set of the continuation tokens (the same score over positions
    ``>= prompt_len``): ``overlap = |A & B| / k`` (``density`` expected by chance). Also returned: the
    share of the continuation's normalised squared activation mass that falls on the prompt's set
    (``mass``; ``density`` expected for uniform activations).
    """
    specs = find_mlps(model)
    zs: list[torch.Tensor | None] = [None] * len(specs)
    B, T = input_ids.shape

    def mk(i):
        def hook(mod, args):
            z = args[0]
            zs[i] = z.reshape(B, T, -1).float() if z.dim() == 2 else z.float()
        return hook

    hs = [s.down.register_forward_pre_hook(mk(i)) for i, s in enumerate(specs)]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    mask = attention_mask.bool() if attention_mask is not None else torch.ones(B, T, dtype=torch.bool,
                                                                               device=input_ids.device)
    pm = mask.clone()
    pm[:, prompt_len:] = False
    cm = mask.clone()
    cm[:, :prompt_len] = False
    overlaps, masses = [], []
    for z in zs:
        k = max(1, int(round(density * z.shape[-1])))
        sp = griffin_scores(z, pm)
        sc = griffin_scores(z, cm)
        a = torch.zeros_like(sp, dtype=torch.bool).scatter_(1, sp.topk(k, dim=-1).indices, True)
        b = torch.zeros_like(sc, dtype=torch.bool).scatter_(1, sc.topk(k, dim=-1).indices, True)
        overlaps.append(((a & b).sum(-1).float() / k).mean().item())
        m2 = sc.pow(2)
        masses.append(((m2 * a).sum(-1) / m2.sum(-1).clamp_min(1e-30)).mean().item())
    return {"overlap": sum(overlaps) / len(overlaps), "mass": sum(masses) / len(masses),
            "overlap_per_layer": overlaps, "mass_per_layer": masses, "chance": density}
