"""The base classes of the cache policies ("presses", after NVIDIA's kvpress).

A policy is a small, configuration-only object: it never holds tensors of a sequence. When applied to a model
(``with policy(model):`` or :func:`llmeff.kvcache.apply`) it makes one *cache layer* per attention layer; the
cache layers (transformers ``DynamicLayer`` subclasses, in :mod:`llmeff.kvcache._layers`) hold the kept
tokens and really drop the evicted ones.

Importing this module does not import ``transformers``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..errors import LLMEffValueError


class KVPolicy:
    """Base class of every cache policy.

    Subclasses implement :meth:`make_layer`, which returns the cache layer for one attention layer.
    """

    name = "policy"

    def make_layer(self, info, ctx):  # pragma: no cover - abstract
        """Return the cache layer (a ``transformers`` cache layer) for attention layer ``info.layer_idx``."""
        raise NotImplementedError

    def __call__(self, model):
        """``with policy(model): model.generate(...)``: the same as :func:`llmeff.kvcache.apply`."""
        from . import apply

        return apply(model, self)

    def describe(self) -> dict:
        return {"policy": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "policy")
        return f"{type(self).__name__}({args})"


class EvictionPolicy(KVPolicy):
    """A policy that keeps at most ``budget`` tokens per sequence and key-value head and evicts the rest.

    Subclasses give each cached token a keep priority (:meth:`priority`); the ``budget`` tokens of highest
    priority stay. Tokens that the attention mask hides from the newest query (padding) are evicted first.
    """

    needs_scores = False

    def __init__(self, budget: int):
        budget = int(budget)
        if budget < 1:
            raise LLMEffValueError(f"budget must be a positive number of tokens, got {budget}")
        self.budget = budget

    def priority(self, pos: torch.Tensor, scores: torch.Tensor | None, seen: int) -> torch.Tensor:
        """Keep priority (float, higher keeps) of cached tokens.

        Args:
            pos: (B, Hkv, L) int64 absolute positions of the cached tokens.
            scores: (B, Hkv, L) float32 accumulated attention (only when ``needs_scores``), else None.
            seen: number of tokens seen so far, including the newest.
        """
        raise NotImplementedError

    def make_layer(self, info, ctx):
        from ._layers import EvictionLayer

        return EvictionLayer(self, info, ctx)

    def describe(self) -> dict:
        return {"policy": self.name, "budget": self.budget}


class FullCache(KVPolicy):
    """Keeps everything (through the same code path as the other policies): the reference for tests and benchmarks."""

    name = "full"

    def make_layer(self, info, ctx):
        from ._layers import EvictionLayer

        return EvictionLayer(self, info, ctx)

    # used by EvictionLayer: never evicts
    budget = math.inf
    needs_scores = False

    def priority(self, pos, scores, seen):  # pragma: no cover - never called (infinite budget)
        return pos.float()


class PerLayer(KVPolicy):
    """Different policies for different layers: ``PerLayer({0: FullCache(), 1: H2O(64)}, default=StreamingLLM())``.

    ``policies`` is a mapping from layer index to policy, or a sequence with one policy per layer. Layers that it
    does not name use ``default`` (the full cache when None).
    """

    name = "per_layer"

    def __init__(self, policies: Mapping[int, KVPolicy] | Sequence[KVPolicy], default: KVPolicy | None = None):
        self.policies = dict(policies) if isinstance(policies, Mapping) else dict(enumerate(policies))
        self.default = default if default is not None else FullCache()

    def policy_for(self, layer_idx: int) -> KVPolicy:
        return self.policies.get(layer_idx, self.default)

    def make_layer(self, info, ctx):
        return self.policy_for(info.layer_idx).make_layer(info, ctx)

    def describe(self) -> dict:
        return {"policy": self.name, "layers": {k: v.describe() for k, v in self.policies.items()},
                "default": self.default.describe()}
