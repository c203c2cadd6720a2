"""KV-cache compression that really frees memory, on unmodified HF ``transformers`` (5.x) models.

One small class per policy (after NVIDIA's kvpress), applied with a context manager::

    from llmeff import kvcache
    with kvcache.apply(model, kvcache.H2O(budget=256)):
        out = model.generate(**inputs, max_new_tokens=64)
    # or: with kvcache.StreamingLLM(window=252, sink=4)(model): ...

Policies: :class:`StreamingLLM` (sinks + recent window), :class:`H2O` (heavy hitters + recent window),
:class:`LESS` (a learned constant-size low-rank state beside any eviction policy), :class:`ShadowKV` (low-rank
pre-RoPE keys, values offloaded to CPU, landmark-selected chunks rebuilt on the fly), :class:`FullCache` (keeps all,
the reference), :class:`PerLayer` (a policy per layer). Cache layers hold only what they keep; measure with
:func:`cache_memory`.

Importing this package does not import ``transformers``; applying a policy does.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from .base import EvictionPolicy, FullCache, KVPolicy, PerLayer
from .h2o import H2O
from .streaming import StreamingLLM

__all__ = ["apply", "cache_memory", "KVPolicy", "EvictionPolicy", "FullCache", "PerLayer", "StreamingLLM", "H2O",
           "LESS", "LESSMaps", "ShadowKV"]


def __getattr__(name):  # lazy: less/shadowkv pull in torch.nn modules only when used
    if name in ("LESS", "LESSMaps"):
        from . import less

        return getattr(less, name)
    if name == "ShadowKV":
        from .shadowkv import ShadowKV

        return ShadowKV
    raise AttributeError(name)


@dataclass
class ModelContext:
    """Model-level facts the cache layers need (filled lazily)."""

    model: object
    _rope: tuple | None = field(default=None, repr=False)

    def rope(self):
        if self._rope is None:
            from ._model import rope_params

            self._rope = rope_params(self.model)
        return self._rope


@contextlib.contextmanager
def apply(model, policy: KVPolicy):
    """Use ``policy`` for every cache the model fills inside the ``with`` block (``generate``, or a forward with
    ``use_cache=True`` / a ``cache=DynamicCache()``).

    On exit the hooks are removed and the attention implementation restored; caches filled inside the block are
    only usable inside a block applying the same policy object.
    """
    from ._layers import ATTN_NAME, PolicyLayer, register
    from ._model import attention_modules

    if not isinstance(policy, KVPolicy):
        raise TypeError(f"policy must be a llmeff.kvcache.KVPolicy, got {type(policy).__name__}")
    register()
    infos = attention_modules(model)
    ctx = ModelContext(model)
    handles = []
    configs = {}
    for info in infos:
        cfg = info.module.config
        configs[id(cfg)] = (cfg, cfg._attn_implementation)

    def make_pre(info):
        def pre(module, args, kwargs):
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is None or not hasattr(cache, "layers"):
                module._llmeff_kv_layer = None
                return None
            idx = info.layer_idx
            layers = cache.layers
            if len(layers) <= idx:
                if getattr(cache, "layer_class_to_replicate", None) is None:
                    module._llmeff_kv_layer = None
                    return None
                while len(layers) < idx:
                    layers.append(cache.layer_class_to_replicate())
                layers.append(None)
            lay = layers[idx]
            if isinstance(lay, PolicyLayer) and getattr(lay, "owner", None) is policy:
                lay.ctx = ctx  # a cache filled under the same policy in an earlier block
            else:
                if lay is not None and lay.get_seq_length() > 0:
                    from ..errors import LLMEffValueError

                    raise LLMEffValueError(
                        f"layer {idx} of the cache already holds {lay.get_seq_length()} tokens filled without the "
                        "policy; start from an empty cache inside the `with kvcache.apply(...)` block")
                lay = policy.make_layer(info, ctx)
                lay.owner = policy
                layers[idx] = lay
            lay.set_step(position_embeddings=kwargs.get("position_embeddings"),
                         position_ids=kwargs.get("position_ids"))
            module._llmeff_kv_layer = lay
            return None

        return pre

    def post(module, args, kwargs, output):
        module._llmeff_kv_layer = None
        return None

    try:
        for info in infos:
            handles.append(info.module.register_forward_pre_hook(make_pre(info), with_kwargs=True))
            handles.append(info.module.register_forward_hook(post, with_kwargs=True))
        for cfg, _ in configs.values():
            cfg._attn_implementation_internal = ATTN_NAME
        yield policy
    finally:
        for h in handles:
            h.remove()
        for cfg, impl in configs.values():
            cfg._attn_implementation_internal = impl
        for info in infos:
            info.module._llmeff_kv_layer = None


def cache_memory(cache) -> dict:
    """Bytes held by a cache's layers: ``{"device": ..., "host": ..., "tokens": [...kept per layer...]}``.

    Works for policy layers and for plain transformers layers (whose ``keys``/``values`` are counted)."""
    from ._layers import PolicyLayer, _tensor_bytes

    dev = host = 0
    for lay in cache.layers:
        if isinstance(lay, PolicyLayer):
            m = lay.memory_bytes()
            dev += m["device"]
            host += m["host"]
        else:
            dev += _tensor_bytes(getattr(lay, "keys", None), getattr(lay, "values", None))
    return {"device": dev, "host": host, "total": dev + host}
