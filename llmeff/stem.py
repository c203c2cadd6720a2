"""STEM: token-indexed embedding modules in place of the feed-forward up projection.

STEM ("Scaling Transformers with Embedding Modules", Sadhukhan, Cao, Dong et al.) keeps the gate and down
projections of each gated FF block dense and replaces the up projection by a layer-local embedding table
indexed by the current token id::

    FF_l(x_t) = W_down( act(W_gate x_t) * E_l[token_t] )        E_l: (vocab, d_ff)

No routing and no load balancing: the row is chosen by the token itself. Per token the block reads
``2 * d_model * d_ff`` dense weights and one ``d_ff`` row instead of ``3 * d_model * d_ff`` (a third of
the FF weights and FLOPs are gone); the table's capacity grows with ``vocab * d_ff``, not with FLOPs.
Because a row depends only on the token, the tables can live in CPU memory: the rows a forward needs
are known as soon as its tokens are (:class:`TableOffload`).

Usage::

    from llmeff import stem
    model = LlamaForCausalLM(cfg)                  # fresh Llama-style HF model
    stem.convert(model)                            # every FF: up_proj -> nn.Embedding(vocab, d_ff)
    ... train: model(input_ids=...) as usual ...
    stem.save_pretrained(model, "out/stem")        # config.json (+ "stem" entry) and safetensors
    model = stem.load("out/stem")                  # a STEM model again (plain from_pretrained is not)
    model.generate(...)                            # HF caches work: ids of the new tokens only at decode
    with stem.offload(model): model.generate(...)  # tables in pinned CPU memory, rows copied per step

How the ids reach the FF blocks: HF decoder layers call ``mlp(hidden_states)`` only. :func:`convert`
registers a forward pre-hook on the base model (the module holding the decoder layers, e.g.
``LlamaModel``) that stores that forward's ``input_ids`` ``(B, S)`` in a context shared by the model's
:class:`STEMMLP` blocks, and a forward hook that clears it when the forward ends (``always_call``, so an
exception leaves nothing stale). With a KV cache, a decode forward's ``input_ids`` are the new tokens
only, which is exactly the positions the FF blocks compute; batching and left padding need nothing
more (padding positions read the pad token's row and are masked out by attention like any other pad).
A forward with ``inputs_embeds`` and no ids, or a block called on its own, raises
:class:`~llmeff.errors.MissingTokenIdsError` (pass ``token_ids=`` to the block to call it directly).

The fused ``act(gate) * E[ids]`` is :func:`tensorkernels.gather_act_mul` (Triton on CUDA for inference,
the torch reference, with autograd, for training and on CPU).

Not supported: HF gradient checkpointing (it re-runs the decoder layers during backward, after the forward
has cleared the ids, so the STEM blocks raise :class:`~llmeff.errors.MissingTokenIdsError`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .errors import LLMEffFileNotFoundError, LLMEffValueError, MissingTokenIdsError, UnsupportedModelError
from .models import activation_name, find_layers, find_mlps

__all__ = ["STEMMLP", "convert", "is_stem", "stem_modules", "save_pretrained", "load", "offload", "TableOffload",
           "swap_rows", "copy_rows", "angular_spread", "ff_cost"]


@dataclass
class _Context:
    """Per-model state shared by the STEM blocks: the ids of the running forward and, when the tables
    are offloaded, the rows copied for it."""

    ids: torch.Tensor | None = None           # (B, S) token ids of the current forward
    offload: "TableOffload | None" = None
    rows: torch.Tensor | None = None          # offloaded: (n, L, F) rows on the device, being copied
    row_idx: torch.Tensor | None = None       # offloaded: (B, S) index of each token's row in ``rows``
    ready: Any = None                         # offloaded: CUDA event recorded after the copy
    handles: list = field(default_factory=list)


class STEMMLP(nn.Module):
    """A gated FF block whose up projection is a token-indexed table: ``down(act(gate(x)) * E[ids])``.

    Args:
        hidden_size: ``d_model``.
        intermediate_size: ``d_ff``.
        vocab_size: rows of the table (the model's vocabulary).
        act_fn: the activation module (e.g. HF's ``SiLUActivation``).
        bias: biases on gate and down (the table needs none: a bias would be a constant row offset).
        gate_proj, down_proj: existing ``nn.Linear`` modules to keep (else fresh ones are made).
        table: the ``(vocab, d_ff)`` table to use (else N(0, 1) rows).

    Attributes ``gate_proj`` ``(d_ff, d_model)``, ``down_proj`` ``(d_model, d_ff)``, ``up_embed``
    (``nn.Embedding(vocab, d_ff)``) and ``act_fn``; ``layer_idx`` is the decoder layer it sits in.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, vocab_size: int, act_fn: nn.Module,
                 bias: bool = False, gate_proj: nn.Linear | None = None, down_proj: nn.Linear | None = None,
                 layer_idx: int = 0, backend: str | None = None, table: torch.Tensor | None = None):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.intermediate_size = int(intermediate_size)
        self.vocab_size = int(vocab_size)
        self.gate_proj = gate_proj if gate_proj is not None else nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = down_proj if down_proj is not None else nn.Linear(intermediate_size, hidden_size, bias=bias)
        if table is not None and tuple(table.shape) != (vocab_size, intermediate_size):
            raise LLMEffValueError(f"table must be ({vocab_size}, {intermediate_size}), got {tuple(table.shape)}")
        self.up_embed = nn.Embedding(vocab_size, intermediate_size, _weight=table)   # N(0, 1) when no table
        self.act_fn = act_fn
        self.act_name = activation_name(act_fn)
        self.layer_idx = int(layer_idx)
        self.backend = backend
        self.slot = 0                                 # position of this block in the offload buffer
        self._ctx: _Context | None = None

    def extra_repr(self) -> str:
        return (f"d_model={self.hidden_size}, d_ff={self.intermediate_size}, vocab={self.vocab_size}, "
                f"layer={self.layer_idx}")

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, S, d_model)`` (or ``(N, d_model)``) -> same shape. ``token_ids`` ``x.shape[:-1]``
        overrides the ids the model's pre-hook stored for this forward."""
        ctx = self._ctx
        ids = token_ids if token_ids is not None else (ctx.ids if ctx is not None else None)
        if ids is None:
            raise MissingTokenIdsError(
                f"STEM FF block of layer {self.layer_idx} was called without token ids: call the model with "
                "input_ids= (not inputs_embeds=) after llmeff.stem.convert/load, or pass token_ids= to the block")
        if tuple(ids.shape) != tuple(x.shape[:-1]):
            raise MissingTokenIdsError(
                f"STEM FF block of layer {self.layer_idx}: token ids of shape {tuple(ids.shape)} do not match the "
                f"hidden states {tuple(x.shape)} (expected ids of shape {tuple(x.shape[:-1])}); was the model "
                "called with input_ids of another batch, or the block on a reshaped input?")
        g = self.gate_proj(x)
        act = self.act_name if self.act_name is not None else self.act_fn
        from tensorkernels.stem_gather import gather_act_mul

        if ctx is not None and token_ids is None and ctx.rows is not None:
            if ctx.ready is not None:
                torch.cuda.current_stream(x.device).wait_event(ctx.ready)
            table, idx = ctx.rows[:, self.slot], ctx.row_idx
        else:
            table, idx = self.up_embed.weight, ids
            if table.device != x.device:
                raise LLMEffValueError(
                    f"STEM table of layer {self.layer_idx} is on {table.device} but the hidden states are on "
                    f"{x.device}: move the model to one device, or use llmeff.stem.offload(model) to keep "
                    "the tables in CPU memory")
        h = gather_act_mul(g, idx, table, act=act, backend=self.backend)
        return self.down_proj(h)


# -- conversion ------------------------------------------------------------------------------------------
def stem_modules(model: nn.Module) -> list[STEMMLP]:
    """The :class:`STEMMLP` blocks of ``model`` in layer order (empty for a dense model)."""
    return [m for m in model.modules() if isinstance(m, STEMMLP)]


def is_stem(model: nn.Module) -> bool:
    return bool(stem_modules(model))


def _base_model(model: nn.Module) -> nn.Module:
    path, _ = find_layers(model)
    owner = model
    for part in path.split(".")[:-1]:
        owner = getattr(owner, part)
    return owner


def _vocab_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None)
    if v is None and hasattr(model, "get_input_embeddings"):
        v = model.get_input_embeddings().num_embeddings
    if v is None:
        raise UnsupportedModelError(f"cannot tell the vocabulary size of {type(model).__name__}")
    return int(v)


def _install_context(model: nn.Module) -> _Context:
    ctx = getattr(model, "_stem_ctx", None)
    if ctx is not None:
        return ctx
    ctx = _Context()
    base = _base_model(model)

    def pre(mod, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is None and args and isinstance(args[0], torch.Tensor) and not args[0].is_floating_point():
            ids = args[0]
        ctx.ids = ids if (isinstance(ids, torch.Tensor) and ids.dim() == 2) else None
        if ctx.offload is not None and ctx.ids is not None:
            ctx.offload._prepare(ctx, ctx.ids)
        return None

    def post(mod, args, kwargs, out):
        ctx.ids = None
        ctx.rows = ctx.row_idx = ctx.ready = None
        return None

    ctx.handles.append(base.register_forward_pre_hook(pre, with_kwargs=True))
    ctx.handles.append(base.register_forward_hook(post, with_kwargs=True, always_call=True))
    object.__setattr__(model, "_stem_ctx", ctx)       # plain attribute: not a submodule, not in state_dict
    for m in stem_modules(model):
        m._ctx = ctx
    return ctx


def default_table_std(model: nn.Module) -> float:
    """Initial std of a fresh table: the std of a freshly initialised dense up projection's *outputs* on
    RMS-normalised inputs (``initializer_range * sqrt(d_model)``), so the block starts at the dense scale."""
    cfg = model.config
    return float(getattr(cfg, "initializer_range", 0.02)) * math.sqrt(cfg.hidden_size)


@torch.no_grad()
def _dense_means(model: nn.Module, specs, calibration_ids: torch.Tensor, vocab: int,
                 batch: int = 8) -> list[torch.Tensor]:
    """Per layer, the mean of the dense up projection's output over the calibration positions holding
    each token (``(vocab, d_ff)``); tokens never seen get the mean over all positions."""
    sums = [torch.zeros(vocab, s.d_ff, dtype=torch.float64) for s in specs]
    counts = torch.zeros(vocab, dtype=torch.float64)
    cal = calibration_ids.reshape(-1, calibration_ids.shape[-1]).long().cpu()
    counts.index_add_(0, cal.reshape(-1), torch.ones(cal.numel(), dtype=torch.float64))
    hooks = []
    cur: dict[str, torch.Tensor] = {}                 # the ids of the batch being run

    def mk(i, spec):
        def hook(mod, args):
            x = args[0]
            u = torch.nn.functional.linear(x, spec.w_in(), spec.b_in()).reshape(-1, spec.d_ff)
            sums[i].index_add_(0, cur["ids"], u.double().cpu())
        return hook

    for i, s in enumerate(specs):
        hooks.append(s.module.register_forward_pre_hook(mk(i, s)))
    try:
        dev = next(model.parameters()).device
        for b in range(0, cal.shape[0], batch):
            chunk = cal[b:b + batch]
            cur["ids"] = chunk.reshape(-1)
            model(input_ids=chunk.to(dev), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    out = []
    seen = counts > 0
    for s in sums:
        mean_all = s.sum(0) / counts.sum().clamp_min(1)
        m = torch.where(seen[:, None], s / counts.clamp_min(1)[:, None], mean_all[None, :])
        out.append(m)
    return out


def convert(model: nn.Module, layers: Sequence[int] | None = None, init: str = "fresh",
            std: float | None = None, calibration_ids: torch.Tensor | None = None, seed: int = 0,
            backend: str | None = None) -> nn.Module:
    """Replace the up projection of the FF blocks of a Llama-style HF model by token-indexed tables (in place).

    Args:
        model: a HF causal LM (or its base model) with gated FF blocks ``gate_proj``/``up_proj``/
            ``down_proj`` (Llama, Mistral, Qwen2/3, Gemma).
        layers: decoder layers to convert (default: all).
        init: ``"fresh"`` (tables ~ N(0, ``std``): a new STEM model for training; gate and down are kept
            as they are) or ``"dense"`` (a *trained* dense model: row ``v`` of layer ``l`` is the mean of the
            dense up projection's output over the positions of ``calibration_ids`` holding token ``v``, the
            best constant per token in least squares; unseen tokens get the overall mean). A converted
            trained model is **not** the dense model: the up projection no longer sees the context, only the
            token, so quality drops until the model is trained further (fine-tuned) as a STEM model.
        std: std of ``"fresh"`` tables (default :func:`default_table_std`).
        calibration_ids: ``(N, S)`` token ids for ``init="dense"``.
        seed: seed of the ``"fresh"`` initialisation.
        backend: kernel backend of the fused gather (see :mod:`tensorkernels`).

    Returns the same ``model``, with ``model.config.stem = {"layers": [...]}`` recorded for saving.
    Raises :class:`~llmeff.errors.UnsupportedModelError` for FF blocks without a separate ``up_proj``.
    """
    if init not in ("fresh", "dense"):
        raise LLMEffValueError(f"init must be 'fresh' or 'dense', got {init!r}")
    if is_stem(model):
        raise LLMEffValueError("the model already has STEM blocks (convert it once)")
    specs = find_mlps(model)
    chosen = list(range(len(specs))) if layers is None else sorted({int(i) for i in layers})
    for i in chosen:
        if not 0 <= i < len(specs):
            raise LLMEffValueError(f"layer {i} out of range: the model has {len(specs)} FF blocks")
        s = specs[i]
        if s.kind != "gated" or s.fused or s.owner_is_layer or s.conv1d:
            raise UnsupportedModelError(
                f"{s.name} ({type(s.module).__name__}) is not a gated FF with separate gate_proj/up_proj/down_proj; "
                "STEM replaces up_proj of Llama-style blocks (Llama, Mistral, Qwen2/3, Gemma)")
    vocab = _vocab_size(model)
    if init == "dense":
        if calibration_ids is None:
            raise LLMEffValueError("init='dense' needs calibration_ids (N, S) token ids")
        means = _dense_means(model, [specs[i] for i in chosen], calibration_ids, vocab)
    path, layer_list = find_layers(model)
    sd = std if std is not None else default_table_std(model)
    for k, i in enumerate(chosen):
        s = specs[i]
        up = s.up
        dev = up.weight.device
        if init == "dense":
            w = means[k].to(device=dev, dtype=up.weight.dtype)
        else:                                     # drawn on the weights' device (fast for big tables on GPU)
            g = torch.Generator(device=dev).manual_seed(int(seed) * 1000003 + i)
            w = torch.randn(vocab, s.d_ff, generator=g, device=dev, dtype=up.weight.dtype).mul_(sd)
        mlp = STEMMLP(s.d_model, s.d_ff, vocab, s.act, bias=s.gate.bias is not None, gate_proj=s.gate,
                      down_proj=s.down, layer_idx=i, backend=backend, table=w)
        del up
        attr = s.name.rsplit(".", 1)[-1]
        setattr(layer_list[i], attr, mlp)
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg.stem = {"layers": chosen, "init": init, "mlp_attr": specs[chosen[0]].name.rsplit(".", 1)[-1]
                    if chosen else "mlp"}
    _install_context(model)
    return model


# -- save / load -----------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, path, overwrite: bool = False, max_shard_size: int | str = "5GB",
                    tokenizer=None) -> Path:
    """Save a STEM model: ``config.json`` (with the ``stem`` entry) and safetensors shard(s) (tied weights
    saved once), written to a temporary folder then renamed. Load it with :func:`load` (a plain
    ``from_pretrained`` would build dense FF blocks and drop the tables)."""
    path = Path(path)
    occupied = (path.is_dir() and any(path.iterdir())) or (path.exists() and not path.is_dir())
    if occupied:
        if not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it")
    if not is_stem(model) or not hasattr(model, "save_pretrained"):
        raise LLMEffValueError("save_pretrained needs a HF model converted by llmeff.stem.convert")
    off = getattr(getattr(model, "_stem_ctx", None), "offload", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if off is not None:                       # views into the (V, L, F) buffer: save contiguous copies
            with off._contiguous_tables():
                model.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=True)
        else:
            model.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path, device=None, dtype=None) -> nn.Module:
    """Load a model saved by :func:`save_pretrained` (or by ``llmeff.lm.train_small_lm --arch stem``)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise LLMEffFileNotFoundError(f"{path / 'config.json'} not found: not a saved model folder")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LLMEffFileNotFoundError(f"no *.safetensors in {path}")
    cfg = AutoConfig.from_pretrained(path)
    st = getattr(cfg, "stem", None)
    if not st:
        raise LLMEffValueError(f"{path} holds a dense model (config.json has no 'stem' entry); use "
                               "transformers' from_pretrained for it")
    model = AutoModelForCausalLM.from_config(cfg)
    convert(model, layers=st["layers"], std=0.0)
    sd = {}
    for f in files:
        sd.update(load_file(str(f)))
    res = model.load_state_dict(sd, strict=False, assign=True)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    missing = [k for k in res.missing_keys if not (tied and k.endswith("lm_head.weight"))]
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or res.unexpected_keys:
        raise LLMEffValueError(f"{path}: checkpoint does not match the STEM model: missing {missing[:5]}, "
                               f"unexpected {res.unexpected_keys[:5]}")
    if tied:
        model.tie_weights()
    if dtype is not None:
        model.to(dtype)
    if device is not None:
        model.to(device)
    model.eval()
    return model


# -- offloaded tables -----------------------------------------------------------------------------------
class TableOffload:
    """STEM tables in (pinned) CPU memory; each forward's rows are copied to the GPU on a side stream.

    All tables are packed token-major into one ``(vocab, L, d_ff)`` pinned CPU buffer, so a token's rows of
    every layer are one contiguous ``L * d_ff`` block. At the start of each forward of the base model (its
    pre-hook, as soon as the step's token ids are known: the sampled token at decode, the whole prompt at
    prefill) the rows of every token of the step are fetched to the GPU in one go on a side stream; the
    first STEM block waits for them with a stream event, so the fetch overlaps the embedding and the first
    attention block. Two ways to fetch (``mode``):

    * ``"device"`` (default on CUDA when it works): a gather kernel (:func:`tensorkernels.gather_rows`)
      launched on the side stream reads the indexed rows straight from the pinned buffer over PCIe (a pinned
      buffer is addressable from kernels under unified virtual addressing). The ids never leave the GPU: no
      host synchronisation, so ``generate``'s CPU can keep queueing steps ahead of the GPU as it does with
      the tables on the GPU. At attach a two-row probe checks that the kernel reads the pinned buffer
      correctly; if not, ``"host"`` is used with a warning.
    * ``"host"``: the step's ids are read on the host (one device sync per forward), the distinct ids'
      rows gathered on the CPU into a pinned staging buffer and copied with one asynchronous copy. The
      sync stops the CPU from running ahead of the GPU: 0.65x-0.96x of on-GPU decode speed at a 1B shape on
      an H100 (two runs; ``benchmarks/RESULTS.md``), vs 1.03x for ``"device"``.

    The blocks compute exactly what they compute with the tables on the GPU (same rows, same kernel):
    logits are bit-identical. Use :func:`offload` (a context manager that restores the tables on exit).
    Move the model to its device *before* offloading; ``model.to()`` while offloaded is not supported.
    """

    def __init__(self, model: nn.Module, pin: bool | None = None, mode: str = "auto"):
        self.model = model
        self.mods = stem_modules(model)
        if not self.mods:
            raise LLMEffValueError("offload needs a STEM model (llmeff.stem.convert / load)")
        self.ctx = _install_context(model)
        w0 = self.mods[0].up_embed.weight
        self.device = w0.device
        self.pin = (torch.cuda.is_available() if pin is None else bool(pin))
        if mode not in ("auto", "device", "host"):
            raise LLMEffValueError(f"mode must be 'auto', 'device' or 'host', got {mode!r}")
        self.requested_mode = mode
        self.mode = "host"
        self._arange = None
        self.attached = False
        self._stream = None
        self._staging: list[list] = []            # [pinned tensor, event | None]
        self._turn = 0
        self._zero = None

    def attach(self) -> "TableOffload":
        if self.attached:
            return self
        if self.ctx.offload is not None:
            raise LLMEffValueError("the model's tables are already offloaded")
        V, F = self.mods[0].up_embed.weight.shape
        for m in self.mods:
            if tuple(m.up_embed.weight.shape) != (V, F):
                raise LLMEffValueError("offload needs every STEM table of one shape (vocab, d_ff)")
        dt = self.mods[0].up_embed.weight.dtype
        big = torch.empty((V, len(self.mods), F), dtype=dt, pin_memory=self.pin)
        with torch.no_grad():
            for j, m in enumerate(self.mods):
                big[:, j].copy_(m.up_embed.weight.detach().to("cpu"))
                m.slot = j
        self.buffer = big
        self._orig = [m.up_embed.weight for m in self.mods]
        for j, m in enumerate(self.mods):
            m.up_embed.weight = nn.Parameter(big[:, j], requires_grad=False)
        self._orig = [(p.device, p.requires_grad) for p in self._orig]   # drop the GPU copies
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.ctx.offload = self
        self.attached = True
        try:
            self.mode = self._choose_mode()
        except BaseException:
            self.detach()                         # tables back where they were
            raise
        return self

    def _choose_mode(self) -> str:
        if self.requested_mode == "host" or self.device.type != "cuda" or not self.pin:
            if self.requested_mode == "device":
                raise LLMEffValueError("mode='device' needs a CUDA model and pinned tables")
            return "host"
        from tensorkernels import gather_rows, triton_available

        V = self.buffer.shape[0]
        flat = self.buffer.view(V, -1)
        probe = torch.tensor([V - 1, 0], device=self.device)
        why = None
        if not triton_available():
            why = "triton is not installed"
        else:
            try:
                got = gather_rows(flat, probe, backend="triton")
                torch.cuda.synchronize(self.device)
                if not torch.equal(got.cpu(), flat[[V - 1, 0]]):
                    why = "the gather kernel read wrong values from the pinned buffer"
            except Exception as exc:              # e.g. pinned memory not addressable from kernels here
                why = f"{type(exc).__name__}: {exc}"
        if why is None:
            return "device"
        if self.requested_mode == "device":
            raise LLMEffValueError(f"mode='device' unavailable: {why}")
        warnings.warn(f"STEM offload: rows are gathered on the host (one device sync per step) because {why}",
                      stacklevel=3)
        return "host"

    def detach(self) -> None:
        """Put the tables back on their device as ordinary parameters."""
        if not self.attached:
            return
        with torch.no_grad():
            for m, (dev, rg) in zip(self.mods, self._orig):
                m.up_embed.weight = nn.Parameter(m.up_embed.weight.detach().to(dev).contiguous(), requires_grad=rg)
        self.buffer = None
        self._staging.clear()
        self.ctx.offload = None
        self.ctx.rows = self.ctx.row_idx = self.ctx.ready = None
        self.attached = False

    def __enter__(self) -> "TableOffload":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def table_bytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size() if self.buffer is not None else 0

    class _Contig:
        def __init__(self, off):
            self.off = off

        def __enter__(self):
            self.saved = [m.up_embed.weight for m in self.off.mods]
            for m in self.off.mods:
                m.up_embed.weight = nn.Parameter(m.up_embed.weight.detach().contiguous(), requires_grad=False)

        def __exit__(self, *exc):
            for m, p in zip(self.off.mods, self.saved):
                m.up_embed.weight = p

    def _contiguous_tables(self):
        return TableOffload._Contig(self)

    def _stage(self, n: int) -> torch.Tensor:
        """A pinned ``(>= n, L, F)`` staging buffer not in use by an unfinished copy (two in turn)."""
        while len(self._staging) < 2:
            self._staging.append([None, None])
        slot = self._staging[self._turn]
        self._turn ^= 1
        if slot[1] is not None:
            slot[1].synchronize()                 # the copy that last read it is finished
        buf = slot[0]
        if buf is None or buf.shape[0] < n:
            cap = max(n, 8 if buf is None else 2 * buf.shape[0])
            buf = torch.empty((cap,) + tuple(self.buffer.shape[1:]), dtype=self.buffer.dtype, pin_memory=self.pin)
            slot[0] = buf
        return buf, slot

    #: the device mode gathers one ``(layers, d_ff)`` block per token (no de-duplication): above this many bytes
    #: (a long or batched prefill) a forward takes the host path, which copies each distinct token's rows once
    DEVICE_GATHER_MAX_BYTES = 1 << 30

    def _prepare(self, ctx: _Context, ids: torch.Tensor) -> None:
        _, L, F = self.buffer.shape
        if (self.mode == "device" and ids.is_cuda
                and ids.numel() * L * F * self.buffer.element_size() <= self.DEVICE_GATHER_MAX_BYTES):
            return self._prepare_device(ctx, ids)
        ids_cpu = ids.detach().to("cpu")                       # one sync: the step's tokens
        flat = ids_cpu.reshape(-1)
        single = flat.numel() == 1
        if single:
            uniq, inv = flat, torch.zeros(ids_cpu.shape, dtype=torch.long)
        else:
            uniq, inv = torch.unique(flat, return_inverse=True)
            inv = inv.reshape(ids_cpu.shape)
        n = uniq.numel()
        buf, slot = self._stage(n)
        torch.index_select(self.buffer, 0, uniq, out=buf[:n])
        dev = ids.device
        if dev.type != "cuda":
            ctx.rows, ctx.row_idx, ctx.ready = buf[:n].clone().to(dev), inv.to(dev), None
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=dev)
        cur = torch.cuda.current_stream(dev)
        rows = torch.empty((n,) + tuple(self.buffer.shape[1:]), dtype=self.buffer.dtype, device=dev)
        if single:                                  # decode at batch 1: the one row, index 0
            if self._zero is None or self._zero.device != dev:
                self._zero = torch.zeros((1, 1), dtype=torch.long, device=dev)
            row_idx = self._zero
        else:
            row_idx = torch.empty(inv.shape, dtype=torch.long, device=dev)
        self._stream.wait_stream(cur)
        with torch.cuda.stream(self._stream):
            rows.copy_(buf[:n], non_blocking=True)
            if not single:
                row_idx.copy_(inv.pin_memory() if self.pin else inv, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(self._stream)
        rows.record_stream(self._stream)
        if not single:
            row_idx.record_stream(self._stream)
        slot[1] = ev
        ctx.rows, ctx.row_idx, ctx.ready = rows, row_idx, ev

    def _prepare_device(self, ctx: _Context, ids: torch.Tensor) -> None:
        """Fetch every token's rows with the gather kernel on the side stream (no host sync)."""
        from tensorkernels import gather_rows

        dev = ids.device
        flat = ids.detach().reshape(-1)
        R = flat.numel()
        V, L, F = self.buffer.shape
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=dev)
        if self._arange is None or self._arange.numel() < R:
            self._arange = torch.arange(max(R, 64), device=dev)
        cur = torch.cuda.current_stream(dev)
        rows = torch.empty((R, L, F), dtype=self.buffer.dtype, device=dev)
        self._stream.wait_stream(cur)                 # the ids are written on the current stream
        with torch.cuda.stream(self._stream):
            gather_rows(self.buffer.view(V, L * F), flat, rows.view(R, L * F), backend="triton")
            ev = torch.cuda.Event()
            ev.record(self._stream)
        rows.record_stream(self._stream)
        flat.record_stream(self._stream)
        ctx.rows, ctx.row_idx, ctx.ready = rows, self._arange[:R].view(ids.shape), ev


def offload(model: nn.Module, pin: bool | None = None, mode: str = "auto") -> TableOffload:
    """Move the STEM tables of ``model`` to (pinned) CPU memory, attached; a context manager restoring them
    on exit. ``mode``: ``"auto"``, ``"device"`` or ``"host"`` (see :class:`TableOffload`)."""
    return TableOffload(model, pin=pin, mode=mode).attach()


# -- editing, analysis, cost -------------------------------------------------------------------------------
def _layers_sel(mods: list[STEMMLP], layers) -> list[STEMMLP]:
    if layers is None:
        return mods
    want = {int(i) for i in layers}
    return [m for m in mods if m.layer_idx in want]


@torch.no_grad()
def swap_rows(model: nn.Module, a: int, b: int, layers: Sequence[int] | None = None) -> None:
    """Swap the table rows of tokens ``a`` and ``b`` in the STEM blocks of ``layers`` (default: all), in place.
    Only forwards containing ``a`` or ``b`` change: every other token's computation reads other rows."""
    for m in _layers_sel(stem_modules(model), layers):
        w = m.up_embed.weight
        ra, rb = w[a].clone(), w[b].clone()
        w[a].copy_(rb)
        w[b].copy_(ra)


@torch.no_grad()
def copy_rows(model: nn.Module, src: int, dst: int, layers: Sequence[int] | None = None) -> None:
    """Overwrite token ``dst``'s rows with token ``src``'s in the STEM blocks of ``layers`` (default: all)."""
    for m in _layers_sel(stem_modules(model), layers):
        w = m.up_embed.weight
        w[dst].copy_(w[src])


@torch.no_grad()
def angular_spread(vectors: torch.Tensor, max_rows: int = 4096, seed: int = 0) -> dict[str, float]:
    """Mean pairwise cosine (and mean |cosine|) between distinct rows of ``vectors`` ``(N, D)``.

    Rows of zero norm are dropped; above ``max_rows`` a seeded random subset is used. A small mean
    |cosine| means a large angular spread (rows point in many directions).
    """
    v = vectors.detach().double().cpu()
    v = v[v.norm(dim=1) > 0]
    if v.shape[0] > max_rows:
        g = torch.Generator().manual_seed(seed)
        v = v[torch.randperm(v.shape[0], generator=g)[:max_rows]]
    n = v.shape[0]
    if n < 2:
        raise LLMEffValueError("angular_spread needs at least two non-zero rows")
    u = v / v.norm(dim=1, keepdim=True)
    c = u @ u.T
    off = ~torch.eye(n, dtype=torch.bool)
    vals = c[off]
    return {"mean_cos": vals.mean().item(), "mean_abs_cos": vals.abs().mean().item(),
            "mean_angle_deg": torch.rad2deg(torch.arccos(vals.clamp(-1, 1))).mean().item(), "rows": n}


def ff_cost(d_model: int, d_ff: int, arch: str = "dense", dtype_bytes: int = 2) -> dict[str, int]:
    """Per token and FF block: FLOPs (multiply-add = 2) and weight bytes read at batch-1 decode.

    dense: gate, up, down matmuls (``6 d d_ff`` FLOPs) + activation product (``d_ff``); reads
    ``3 d d_ff`` weights. stem: gate and down (``4 d d_ff``) + product (``d_ff``); reads ``2 d d_ff``
    weights and one ``d_ff`` table row. Parameters: dense ``3 d d_ff``; stem ``2 d d_ff + vocab d_ff``
    (not counted here: see the benchmark)."""
    if arch == "dense":
        return {"flops": 6 * d_model * d_ff + d_ff, "bytes": 3 * d_model * d_ff * dtype_bytes}
    if arch == "stem":
        return {"flops": 4 * d_model * d_ff + d_ff, "bytes": (2 * d_model * d_ff + d_ff) * dtype_bytes}
    raise LLMEffValueError(f"arch must be 'dense' or 'stem', got {arch!r}")
