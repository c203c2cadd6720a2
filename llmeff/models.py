"""Find the decoder layers and feed-forward (FF) blocks of a Hugging Face causal LM, per family.

Shared by every :mod:`llmeff` method that hooks an unmodified model (GRIFFIN, KV-cache policies, tensor
parallelism). Nothing here imports ``transformers``: modules are recognised by their attribute names,
so the helpers work on any transformers 4.4x/5.x model of the supported families and fail with
:class:`~llmeff.errors.UnsupportedModelError` (naming what is supported) on anything else.

Supported FF layouts:

========================  ================================  ===========================================
family                    FF module (``kind``)              projections
========================  ================================  ===========================================
Llama, Mistral, Qwen2/3,  ``layer.mlp`` (``"gated"``)        ``gate_proj``, ``up_proj``, ``down_proj``
Gemma, Gemma2, ...                                            (``nn.Linear``), ``act_fn``
Phi-3                     ``layer.mlp`` (``"gated"``)        fused ``gate_up_proj`` ([gate; up] rows),
                                                              ``down_proj``, ``activation_fn``
GPT-2                     ``block.mlp`` (``"plain"``)        ``c_fc``, ``c_proj`` (``Conv1D``: weight is
                                                              ``(in, out)``), ``act``
OPT                       the decoder layer (``"plain"``)    ``fc1``, ``fc2`` (``nn.Linear``),
                                                              ``activation_fn``; no MLP module
========================  ================================  ===========================================

:func:`find_mlps` returns :class:`FFSpec` records; each unpacks as ``(name, module, kind)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .errors import UnsupportedModelError

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "opt")

_LAYER_PATHS = (
    "model.layers",          # Llama, Mistral, Qwen2/3, Gemma/Gemma2, Phi-3 (*ForCausalLM)
    "layers",                # the same, base model given
    "model.language_model.layers",
    "transformer.h",         # GPT-2 (LMHead)
    "h",                     # GPT-2 base
    "model.decoder.layers",  # OPT (ForCausalLM)
    "decoder.layers",        # OPT base
)


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, layers)`` of the decoder-layer list of ``model`` (a ``*ForCausalLM`` or its base model)."""
    for path in _LAYER_PATHS:
        layers = _get(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return path, layers
    raise UnsupportedModelError(
        f"cannot find the decoder layers of {type(model).__name__}; supported families: {', '.join(SUPPORTED)}"
    )


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "nf") and hasattr(m, "nx")


@dataclass
class FFSpec:
    """One feed-forward block.

    Attributes:
        name: qualified name of ``module`` in the model.
        module: the FF module (or, for OPT, the decoder layer that holds ``fc1``/``fc2``).
        kind: ``"gated"`` (``down(act(gate(x)) * up(x))``) or ``"plain"`` (``out(act(in(x)))``).
        layer_idx: index of the decoder layer.
        gate, up, down: the projections (``gate`` is ``None`` for plain FFs; for Phi-3 ``gate`` and ``up``
            are both the fused ``gate_up_proj``, see ``fused``).
        act: the activation module/callable of the block.
        fused: ``True`` for a fused ``[gate; up]`` projection (Phi-3).
        conv1d: ``True`` when the projections are GPT-2 ``Conv1D`` (weights stored ``(in, out)``).
        owner_is_layer: ``True`` when there is no MLP module (OPT): hooks go on the projections.
    """

    name: str
    module: nn.Module
    kind: str
    layer_idx: int
    gate: nn.Module | None
    up: nn.Module
    down: nn.Module
    act: Callable
    fused: bool = False
    conv1d: bool = False
    owner_is_layer: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.name, self.module, self.kind))

    @property
    def d_ff(self) -> int:
        """Intermediate width (number of FF neurons)."""
        if self.conv1d:
            return self.up.nf
        n = self.up.out_features
        return n // 2 if self.fused else n

    @property
    def d_model(self) -> int:
        return self.up.nx if self.conv1d else self.up.in_features

    # -- weights in a common layout: rows index FF neurons -------------------------------------------
    def w_in(self) -> torch.Tensor:
        """Up (or plain input) weight as ``(d_ff, d_model)`` (a view, never a copy, except Conv1D: transposed view)."""
        if self.conv1d:
            return self.up.weight.t()
        w = self.up.weight
        return w[self.d_ff:] if self.fused else w

    def b_in(self) -> torch.Tensor | None:
        b = getattr(self.up, "bias", None)
        if b is None:
            return None
        return b[self.d_ff:] if self.fused else b

    def w_gate(self) -> torch.Tensor | None:
        """Gate weight ``(d_ff, d_model)`` (``None`` for plain FFs)."""
        if self.kind != "gated":
            return None
        w = self.gate.weight
        return w[: self.d_ff] if self.fused else w

    def b_gate(self) -> torch.Tensor | None:
        if self.kind != "gated":
            return None
        b = getattr(self.gate, "bias", None)
        if b is None:
            return None
        return b[: self.d_ff] if self.fused else b

    def w_out(self) -> torch.Tensor:
        """Down (output) weight as ``(d_model, d_ff)`` (``nn.Linear`` layout; Conv1D: transposed view)."""
        return self.down.weight.t() if self.conv1d else self.down.weight

    def b_out(self) -> torch.Tensor | None:
        return getattr(self.down, "bias", None)


def _spec_for(name: str, mod: nn.Module, idx: int, owner_is_layer: bool = False) -> FFSpec | None:
    g = lambda a: getattr(mod, a, None)  # noqa: E731
    if isinstance(g("gate_proj"), nn.Linear) and isinstance(g("up_proj"), nn.Linear) and isinstance(
        g("down_proj"), nn.Linear
    ):
        act = g("act_fn") or g("activation_fn") or g("act")
        if act is not None:
            return FFSpec(name, mod, "gated", idx, g("gate_proj"), g("up_proj"), g("down_proj"), act)
    if isinstance(g("gate_up_proj"), nn.Linear) and isinstance(g("down_proj"), nn.Linear):
        act = g("activation_fn") or g("act_fn") or g("act")
        if act is not None and g("gate_up_proj").out_features % 2 == 0:
            gu = g("gate_up_proj")
            return FFSpec(name, mod, "gated", idx, gu, gu, g("down_proj"), act, fused=True)
    if g("c_fc") is not None and g("c_proj") is not None and _is_conv1d(g("c_fc")) and _is_conv1d(g("c_proj")):
        return FFSpec(name, mod, "plain", idx, None, g("c_fc"), g("c_proj"), g("act"), conv1d=True)
    if isinstance(g("fc1"), nn.Linear) and isinstance(g("fc2"), nn.Linear):
        act = g("activation_fn") or g("act_fn") or g("act")
        if act is not None:
            return FFSpec(name, mod, "plain", idx, None, g("fc1"), g("fc2"), act, owner_is_layer=owner_is_layer)
    return None


def find_mlps(model: nn.Module) -> list[FFSpec]:
    """Every FF block of ``model``, in layer order. Each record unpacks as ``(name, module, kind)``.

    Raises:
        UnsupportedModelError: no decoder layers found, or a layer whose FF layout is unknown
            (e.g. mixture-of-experts blocks).
    """
    path, layers = find_layers(model)
    out = []
    for i, layer in enumerate(layers):
        spec = None
        for attr in ("mlp", "feed_forward", "ffn"):
            sub = getattr(layer, attr, None)
            if isinstance(sub, nn.Module):
                spec = _spec_for(f"{path}.{i}.{attr}", sub, i)
                if spec is not None:
                    break
        if spec is None:  # OPT: fc1/fc2 directly on the layer
            spec = _spec_for(f"{path}.{i}", layer, i, owner_is_layer=True)
        if spec is None:
            raise UnsupportedModelError(
                f"layer {path}.{i} ({type(layer).__name__}) has no FF block this library knows "
                f"(gate_proj/up_proj/down_proj, gate_up_proj/down_proj, c_fc/c_proj, fc1/fc2); "
                f"supported families: {', '.join(SUPPORTED)}"
            )
        out.append(spec)
    return out


def cache_keyword(model: nn.Module) -> str:
    """The keyword that ``model.forward`` takes its KV cache by: ``"cache"`` (newer transformers 5.x
    releases) or ``"past_key_values"`` (older ones), read from the signature so both work."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned: ``out.cache`` (newer transformers 5.x) or ``out.past_key_values``."""
    c = out.get("cache") if hasattr(out, "get") else None
    return c if c is not None else out.past_key_values


def activation_name(act: Callable) -> str | None:
    """A name the Triton kernels understand for an HF activation (``silu``, ``gelu``, ``gelu_tanh``,
    ``relu``), or ``None`` when it is something else (callers then use the torch path)."""
    n = type(act).__name__
    if n in ("SiLU", "SiLUActivation"):
        return "silu"
    if n in ("GELUTanh", "PytorchGELUTanh", "NewGELUActivation", "FastGELUActivation"):
        if n == "GELUTanh" and getattr(act, "use_gelu_tanh_python", False):
            return "gelu_tanh"
        return "gelu_tanh"
    if n == "GELUActivation":
        return "gelu"
    if n == "ReLU":
        return "relu"
    return None
