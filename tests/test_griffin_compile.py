"""GRIFFIN decode hooks are compile-friendly: a static-cache decode step compiles with fullgraph=True
(no graph breaks) and is not recompiled per token, nor per prompt."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _tiny_lms import tiny_lm  # noqa: E402
from llmeff import griffin  # noqa: E402
from llmeff.models import cache_keyword  # noqa: E402


@pytest.mark.parametrize("batch_experts", ["shared", "per_sequence"])
def test_static_cache_decode_compiles_once(batch_experts):
    model = tiny_lm("llama")
    kw = cache_keyword(model)
    counter = {"n": 0}

    def backend(gm, example_inputs):
        counter["n"] += 1
        return gm.forward

    torch._dynamo.reset()
    try:
        with griffin.apply(model, density=0.5, batch_experts=batch_experts, backend="torch") as g:
            step = torch.compile(model, backend=backend, fullgraph=True)
            for prompt in range(2):
                ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(prompt))
                cache = transformers.StaticCache(config=model.config, max_cache_len=24)
                out = model(input_ids=ids, use_cache=True, **{kw: cache})          # eager prefill
                ref_cache = None
                tok = out.logits[:, -1:].argmax(-1)
                for t in range(4):
                    o = step(input_ids=tok, position_ids=torch.full((2, 1), 8 + t), use_cache=True,
                             **{kw: cache})
                    tok = o.logits[:, -1:].argmax(-1)
                assert g.state.selected and ref_cache is None
            compiled = counter["n"]
        assert compiled == 1, f"{compiled} compilations for 2 prompts x 4 decode steps"
    finally:
        torch._dynamo.reset()


def test_compiled_decode_matches_eager():
    model = tiny_lm("qwen3")
    kw = cache_keyword(model)
    ids = torch.randint(3, 100, (1, 8), generator=torch.Generator().manual_seed(0))
    outs = []
    torch._dynamo.reset()
    try:
        for compiled in (False, True):
            with griffin.apply(model, density=0.5):
                cache = transformers.StaticCache(config=model.config, max_cache_len=24)
                out = model(input_ids=ids, use_cache=True, **{kw: cache})
                step = torch.compile(model, backend="eager", fullgraph=True) if compiled else model
                tok = out.logits[:, -1:].argmax(-1)
                logits = []
                for t in range(3):
                    o = step(input_ids=tok, position_ids=torch.full((1, 1), 8 + t), use_cache=True, **{kw: cache})
                    logits.append(o.logits)
                    tok = o.logits[:, -1:].argmax(-1)
                outs.append(torch.cat(logits, 1))
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(outs[0], outs[1])
