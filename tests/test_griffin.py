"""GRIFFIN (llmeff.griffin) on tiny random models of every supported family (CPU)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from _tiny_lms import FAMILIES, VOCAB, tiny_lm  # noqa: E402
from llmeff import griffin  # noqa: E402
from llmeff.errors import LLMEffValueError, UnsupportedModelError  # noqa: E402
from llmeff.models import cache_keyword, find_mlps, output_cache  # noqa: E402

GEN = dict(max_new_tokens=4, do_sample=False, output_logits=True, return_dict_in_generate=True)


def _batch(seed=0, B=3, S=9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, S), generator=g)
    am = torch.ones_like(ids)
    if B > 1:
        am[1, :3] = 0
    if B > 2:
        am[2, :1] = 0
    ids[am == 0] = 0
    return ids, am


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _decode(model, ids, am, cont):
    """Prefill ``ids`` then feed ``cont`` (B, C) as one decode forward; returns the decode logits."""
    out = model(input_ids=ids, attention_mask=am, use_cache=True)
    full = torch.cat([am, torch.ones_like(cont)], 1)
    kw = {cache_keyword(model): output_cache(out)}
    return model(input_ids=cont, attention_mask=full, use_cache=True, **kw).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_density_one_is_identity(family):
    model = tiny_lm(family)
    ids, am = _batch()
    base = model.generate(input_ids=ids, attention_mask=am, **GEN)
    base_fwd = model(input_ids=ids, attention_mask=am).logits
    with griffin.apply(model, density=1.0):
        out = model.generate(input_ids=ids, attention_mask=am, **GEN)
        fwd = model(input_ids=ids, attention_mask=am).logits
    assert torch.equal(out.sequences, base.sequences)
    for a, b in zip(out.logits, base.logits):
        assert torch.equal(a, b)
    assert torch.equal(fwd, base_fwd)


@pytest.mark.parametrize("family", FAMILIES)
def test_exit_restores_bit_exactly(family):
    model = tiny_lm(family)
    ids, am = _batch()
    before = _state(model)
    names = [n for n, _ in model.named_modules()]
    base = model.generate(input_ids=ids, attention_mask=am, **GEN)
    with griffin.apply(model, density=0.5) as g:
        out = model.generate(input_ids=ids, attention_mask=am, **GEN)
        assert g.experts[0] is not None and g.experts[0].shape == (3, round(0.5 * find_mlps(model)[0].d_ff))
    # GRIFFIN changed the generated logits while attached ...
    assert not all(torch.equal(a, b) for a, b in zip(out.logits, base.logits))
    # ... and nothing is left behind
    after = _state(model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert [n for n, _ in model.named_modules()] == names
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    again = model.generate(input_ids=ids, attention_mask=am, **GEN)
    assert torch.equal(again.sequences, base.sequences)
    for a, b in zip(again.logits, base.logits):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_per_sequence_with_left_padding(family):
    model = tiny_lm(family)
    ids, am = _batch()
    with griffin.apply(model, density=0.5) as g:
        out = model.generate(input_ids=ids, attention_mask=am, **GEN)
        batch_experts = [e.clone() for e in g.experts]
        for b in range(ids.shape[0]):
            keep = am[b].bool()
            one = model.generate(input_ids=ids[b:b + 1, keep], **GEN)
            for layer, e in enumerate(g.experts):
                assert torch.equal(e[0], batch_experts[layer][b]), (b, layer)
            assert torch.equal(one.sequences[0, -4:], out.sequences[b, -4:])
            for t in range(4):
                torch.testing.assert_close(one.logits[t][0], out.logits[t][b], atol=2e-4, rtol=1e-4)


def _masked_reference(model, ids, am, cont, experts):
    """Dense model whose decode FF activations are zeroed outside each sequence's experts."""
    specs = find_mlps(model)
    B = ids.shape[0]
    state = {"on": False}

    def mk(i):
        def hook(mod, args):
            if not state["on"]:
                return None
            z = args[0]
            m = torch.zeros(B, z.shape[-1], dtype=z.dtype)
            e = experts[i]
            m.scatter_(1, e.expand(B, -1) if e.shape[0] == 1 else e, 1.0)
            if z.dim() == 2:
                return (z * m.repeat_interleave(z.shape[0] // B, 0),)
            return (z * m[:, None, :],)
        return hook

    hs = [s.down.register_forward_pre_hook(mk(i)) for i, s in enumerate(specs)]
    try:
        out = model(input_ids=ids, attention_mask=am, use_cache=True)
        state["on"] = True
        full = torch.cat([am, torch.ones_like(cont)], 1)
        kw = {cache_keyword(model): output_cache(out)}
        return model(input_ids=cont, attention_mask=full, use_cache=True, **kw).logits
    finally:
        for h in hs:
            h.remove()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("B", [1, 2])
def test_decode_equals_masked_full_ff(family, B):
    """A multi-token continuation after the prompt is a decode step (cache position > 0): it uses only the
    selected neurons, exactly like the dense FF with the others zeroed."""
    model = tiny_lm(family)
    ids, am = _batch(1, B=B)
    cont = torch.randint(3, VOCAB, (B, 3), generator=torch.Generator().manual_seed(5))
    dense = _decode(model, ids, am, cont)
    with griffin.apply(model, density=0.4, batch_experts="per_sequence", backend="torch") as g:
        got = _decode(model, ids, am, cont)
        experts = [e.clone() for e in g.experts]
        assert g.ffs[0].mode == ("shared" if B == 1 else "per_seq")
    ref = _masked_reference(model, ids, am, cont, experts)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (got - dense).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_per_sequence_triton_path_matches_torch(family):
    pytest.importorskip("triton")
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    model = tiny_lm(family)
    ids, am = _batch(2, B=2)
    cont = torch.randint(3, VOCAB, (2, 2), generator=torch.Generator().manual_seed(6))
    with griffin.apply(model, density=0.5, backend="torch"):
        ref = _decode(model, ids, am, cont)
    with griffin.apply(model, density=0.5, backend="triton") as g:
        got = _decode(model, ids, am, cont)
        assert g.ffs[0].mode == "per_seq"
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_shared_batch_experts_and_selections():
    model = tiny_lm("llama")
    ids, am = _batch()
    specs = find_mlps(model)
    for sel in ("griffin", "magnitude", "random", "sample"):
        for be in ("per_sequence", "shared"):
            with griffin.apply(model, density=0.25, selection=sel, batch_experts=be, seed=3) as g:
                out = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=3, do_sample=False)
                assert out.shape == (3, 12)
                for e, s in zip(g.experts, specs):
                    assert e.shape[-1] == round(0.25 * s.d_ff)
                    assert (e.diff(dim=-1) > 0).all()            # sorted, distinct
                    assert e.shape[0] == (3 if (be == "per_sequence" and sel in ("griffin", "sample")) else 1)
    # static selections do not depend on the prompt; seeds reproduce
    with griffin.apply(model, density=0.5, selection="random", seed=1) as g1:
        e1 = [e.clone() for e in g1.experts]
    with griffin.apply(model, density=0.5, selection="random", seed=1) as g2:
        assert all(torch.equal(a, b) for a, b in zip(e1, g2.experts))


def test_griffin_scores_exclude_padding_and_normalise_rows():
    z = torch.randn(2, 5, 7)
    z[1, :2] = 1e6                                    # huge padding rows must not matter
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :2] = False
    s = griffin.griffin_scores(z, mask)
    ref = griffin.griffin_scores(z[1:, 2:], None)
    torch.testing.assert_close(s[1:], ref)
    zn = z[0] / z[0].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(s[0], zn.norm(dim=0))


def test_per_layer_density_and_errors():
    model = tiny_lm("llama")
    ids, am = _batch()
    with griffin.apply(model, density=0.5, per_layer={1: 1.0}) as g:
        model.generate(input_ids=ids, attention_mask=am, max_new_tokens=2, do_sample=False)
        assert g.experts[0] is not None and g.experts[1] is None
    with griffin.apply(model, per_layer=[0.25, 0.75]) as g:
        model.generate(input_ids=ids, attention_mask=am, max_new_tokens=2, do_sample=False)
        assert [e.shape[-1] for e in g.experts] == [18, 54]
    with pytest.raises(LLMEffValueError):
        griffin.apply(model, density=0.0)
    with pytest.raises(LLMEffValueError):
        griffin.apply(model, selection="nope")
    with pytest.raises(UnsupportedModelError):
        griffin.apply(torch.nn.Linear(3, 3))


def test_permanent_handle_attach_detach():
    model = tiny_lm("qwen2")
    ids, am = _batch()
    base = model.generate(input_ids=ids, attention_mask=am, **GEN)
    h = griffin.apply(model, density=0.5, permanent=True)
    assert h.attached
    out = model.generate(input_ids=ids, attention_mask=am, **GEN)
    h.detach()
    h.detach()                                         # idempotent
    # while attached the decode logits changed (the greedy tokens may or may not) ...
    assert max((a - b).abs().max().item() for a, b in zip(out.logits[1:], base.logits[1:])) > 1e-3
    # ... and after detach the model is the dense one again, bit for bit
    again = model.generate(input_ids=ids, attention_mask=am, **GEN)
    assert torch.equal(again.sequences, base.sequences)
    assert all(torch.equal(a, b) for a, b in zip(again.logits, base.logits))
    h2 = griffin.Griffin(model, density=0.5)
    with h2:
        assert h2.attached
    assert not h2.attached


def test_flocking_statistic_runs():
    model = tiny_lm("llama")
    ids, am = _batch(B=2, S=12)
    st = griffin.flocking(model, ids, prompt_len=8, density=0.5, attention_mask=am)
    assert 0.0 <= st["overlap"] <= 1.0 and 0.0 <= st["mass"] <= 1.0
    assert len(st["overlap_per_layer"]) == 2


def test_import_llmeff_does_not_import_transformers_or_imaging():
    code = ("import sys, llmeff, llmeff.griffin, llmeff.models, llmeff._hooks; "
            "bad = [m for m in ('transformers', 'ebsd', 'tensorrpca', 'diffusion') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -- the chosen experts against the GRIFFIN statistic computed here, independently (float64 numpy) ---------

def _dense_prefill_activations(model, ids, am):
    """The FF intermediate activations ``(B, S, d_ff)`` of a dense prefill, per layer (float64 numpy)."""
    specs = find_mlps(model)
    zs = [None] * len(specs)
    B, S = ids.shape

    def mk(i):
        def hook(mod, args):
            z = args[0].detach().double()
            zs[i] = (z.reshape(B, S, -1) if z.dim() == 2 else z).numpy()
        return hook

    hs = [s.down.register_forward_pre_hook(mk(i)) for i, s in enumerate(specs)]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am, use_cache=False)
    finally:
        for h in hs:
            h.remove()
    return zs


def _griffin_stat(z, keep):
    """Paper's statistic: rows (tokens) scaled to unit l2 norm, then the l2 norm of each column (neuron)
    over the prompt's real tokens ``keep`` (bool, length S)."""
    zr = z[keep]
    zn = zr / np.linalg.norm(zr, axis=1, keepdims=True)
    return np.sqrt((zn ** 2).sum(0))


def _topk_set(score, k):
    order = np.argsort(-score, kind="stable")
    # the k-th and (k+1)-th scores must be apart, or the top-k set is not unique (then the test is moot)
    assert score[order[k - 1]] - score[order[k]] > 1e-6 * abs(score[order[k - 1]])
    return np.sort(order[:k])


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "phi3"])
def test_chosen_experts_are_topk_of_independent_griffin_statistic(family):
    """Kills ``topk(..., largest=False)`` and any other change of which neurons are kept: per sequence and
    layer, the experts equal the top-k of the statistic computed in this test from the dense activations."""
    model = tiny_lm(family)
    ids, am = _batch(4, B=3, S=10)
    zs = _dense_prefill_activations(model, ids, am)
    density = 0.25
    with griffin.apply(model, density=density, batch_experts="per_sequence", backend="torch") as g:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am, use_cache=True)
        got = [e.clone().numpy() for e in g.experts]
    for layer, z in enumerate(zs):
        k = round(density * z.shape[-1])
        for b in range(ids.shape[0]):
            ref = _topk_set(_griffin_stat(z[b], am[b].bool().numpy()), k)
            np.testing.assert_array_equal(got[layer][b], ref, err_msg=f"layer {layer} seq {b}")
    # the chosen set carries more of the statistic than the complementary neurons (not a tie-break artefact)
    s = _griffin_stat(zs[0][0], am[0].bool().numpy())
    assert s[got[0][0]].min() > np.delete(s, got[0][0]).max()


@pytest.mark.parametrize("B", [2, 3])
def test_shared_experts_are_topk_of_pooled_statistic(B):
    """batch_experts="shared": one set for the batch, the top-k of sqrt(sum_b score_b^2)."""
    model = tiny_lm("llama")
    ids, am = _batch(6, B=B, S=10)
    zs = _dense_prefill_activations(model, ids, am)
    with griffin.apply(model, density=0.5, batch_experts="shared") as g:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am, use_cache=True)
        got = [e.clone().numpy() for e in g.experts]
    for layer, z in enumerate(zs):
        k = round(0.5 * z.shape[-1])
        pooled = np.sqrt(sum(_griffin_stat(z[b], am[b].bool().numpy()) ** 2 for b in range(B)))
        assert got[layer].shape == (1, k)
        np.testing.assert_array_equal(got[layer][0], _topk_set(pooled, k))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_magnitude_selection_is_topk_of_weight_norms(family):
    """selection="magnitude": gated ``||W_gate[j]|| * ||W_up[j]||``, plain ``||W_in[j]|| * ||W_out[:, j]||``,
    computed here from the weights in float64."""
    model = tiny_lm(family)
    with griffin.apply(model, density=0.25, selection="magnitude") as g:
        got = [e.clone().numpy() for e in g.experts]
    for layer, s in enumerate(find_mlps(model)):
        w_in = s.w_in().detach().double().numpy()
        a = np.linalg.norm(w_in, axis=1)
        if s.kind == "gated":
            b = np.linalg.norm(s.w_gate().detach().double().numpy(), axis=1)
        else:
            b = np.linalg.norm(s.w_out().detach().double().numpy(), axis=0)
        k = round(0.25 * s.d_ff)
        np.testing.assert_array_equal(got[layer][0], _topk_set(a * b, k))


@pytest.mark.parametrize("family, density", [("llama", 0.25), ("opt", 0.25), ("llama", 0.005)])
def test_flocking_statistic_against_independent_computation(family, density):
    """flocking(): per layer and sequence, overlap of the prompt's and the continuation's top-k GRIFFIN sets (|A&B|/k)
    and the continuation's normalised squared mass on the prompt's set, recomputed here in float64 numpy (a density
    that rounds to no neuron keeps one)."""
    model = tiny_lm(family)
    ids, am = _batch(8, B=2, S=12)
    P = 7
    st = griffin.flocking(model, ids, prompt_len=P, density=density, attention_mask=am)
    zs = _dense_prefill_activations(model, ids, am)
    ov, ms = [], []
    for z in zs:
        k = max(1, round(density * z.shape[-1]))
        o_l, m_l = [], []
        for b in range(2):
            keep = am[b].bool().numpy()
            pm, cm = keep.copy(), keep.copy()
            pm[P:] = False
            cm[:P] = False
            sp, sc = _griffin_stat(z[b], pm), _griffin_stat(z[b], cm)
            A, Bs = set(_topk_set(sp, k).tolist()), set(_topk_set(sc, k).tolist())
            o_l.append(len(A & Bs) / k)
            m_l.append((sc[list(A)] ** 2).sum() / (sc ** 2).sum())
        ov.append(np.mean(o_l))
        ms.append(np.mean(m_l))
    np.testing.assert_allclose(st["overlap_per_layer"], ov, atol=1e-6)
    np.testing.assert_allclose(st["mass_per_layer"], ms, atol=1e-5)
    assert st["overlap"] == pytest.approx(np.mean(ov), abs=1e-6) and st["chance"] == density


def _with_random_biases(model):
    """``model`` with every bias vector drawn from N(0, 0.3^2) (random init leaves them at 0)."""
    with torch.no_grad():
        for n, p_ in model.named_parameters():
            if p_.ndim == 1 and "bias" in n:
                p_.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("family", ["opt", "gpt2"])
def test_decode_with_nonzero_biases_equals_masked_full_ff(family):
    """Plain FFs with non-zero in/out biases (random init leaves them at 0): the per-sequence decode still equals the
    dense FF with the other neurons zeroed, and a tiny density keeps at least one neuron."""
    model = _with_random_biases(tiny_lm(family))
    ids, am = _batch(3, B=2)
    cont = torch.randint(3, VOCAB, (2, 2), generator=torch.Generator().manual_seed(7))
    with griffin.apply(model, density=0.4, batch_experts="per_sequence", backend="torch") as g:
        got = _decode(model, ids, am, cont)
        experts = [e.clone() for e in g.experts]
        assert g.ffs[0].mode == "per_seq"
    torch.testing.assert_close(got, _masked_reference(model, ids, am, cont, experts), atol=1e-4, rtol=1e-4)
    with griffin.apply(model, density=1e-3) as g:
        model(input_ids=ids, attention_mask=am, use_cache=True)
        assert all(e.shape[-1] == 1 for e in g.experts)


@pytest.mark.parametrize("B", [1, 2])
def test_gated_ff_with_biases_decode_equals_masked_full_ff(B):
    """A gated FF with gate/up/down biases (Llama with ``mlp_bias=True``; biases set non-zero): on the shared path
    (B = 1: sliced weights and biases) and the per-sequence path (B = 2) the decode step equals the dense model
    with the FF activations outside the chosen experts zeroed."""
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, mlp_bias=True)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for n, p_ in model.named_parameters():
            if p_.ndim >= 2:
                p_.normal_(0, 0.3)
            elif "mlp" in n and "bias" in n:
                p_.normal_(0, 0.3)
    spec = find_mlps(model)[0]
    assert spec.b_gate() is not None and spec.b_in() is not None and spec.b_out() is not None
    ids, am = _batch(4, B=B)
    cont = torch.randint(3, VOCAB, (B, 2), generator=torch.Generator().manual_seed(8))
    with griffin.apply(model, density=0.4, backend="torch") as g:
        got = _decode(model, ids, am, cont)
        experts = [e.clone() for e in g.experts]
        assert g.ffs[0].mode == ("shared" if B == 1 else "per_seq")
    torch.testing.assert_close(got, _masked_reference(model, ids, am, cont, experts), atol=1e-4, rtol=1e-4)


def test_documented_defaults_density_half_and_seed_zero():
    """``apply(model)`` / ``Griffin(model)``: density 0.5 (half the FF neurons kept per sequence), GRIFFIN selection
    per sequence; seed 0 by default (the random selection without a seed is the one with seed=0, and another
    seed gives another one); ``flocking`` defaults to density 0.5 as well."""
    model = tiny_lm("llama")
    ids, am = _batch()
    d_ff = find_mlps(model)[0].d_ff
    with griffin.apply(model) as g:
        model(input_ids=ids, attention_mask=am, use_cache=True)
        assert all(e.shape == (3, round(0.5 * d_ff)) for e in g.experts)
    g = griffin.Griffin(model).attach()
    try:
        model(input_ids=ids, attention_mask=am, use_cache=True)
        assert all(e.shape == (3, round(0.5 * d_ff)) for e in g.experts)
    finally:
        g.detach()

    def experts(**kw):
        if kw.pop("cls", False):
            h = griffin.Griffin(model, selection="random", **kw).attach()
        else:
            h = griffin.apply(model, selection="random", **kw)
        try:
            return [e.clone() for e in h.experts]
        finally:
            h.detach()

    for cls in (False, True):
        e0, e_default, e1 = experts(seed=0, cls=cls), experts(cls=cls), experts(seed=1, cls=cls)
        assert all(torch.equal(a, b) for a, b in zip(e0, e_default))
        assert not all(torch.equal(a, b) for a, b in zip(e0, e1))
    st = griffin.flocking(model, ids, 5, attention_mask=am)
    st_half = griffin.flocking(model, ids, 5, density=0.5, attention_mask=am)
    assert st["chance"] == 0.5 and st["overlap_per_layer"] == st_half["overlap_per_layer"]
    assert st["mass_per_layer"] == st_half["mass_per_layer"]


@pytest.mark.parametrize("family", ["opt", "gpt2"])
def test_shared_path_decode_with_nonzero_biases_equals_masked_full_ff(family):
    """B = 1 takes the shared path (sliced weights and biases copied once): with non-zero in/out biases on a
    plain FF the decode step equals the dense model with the FF activations outside the experts zeroed."""
    model = _with_random_biases(tiny_lm(family))
    ids, am = _batch(3, B=1)
    cont = torch.randint(3, VOCAB, (1, 2), generator=torch.Generator().manual_seed(7))
    with griffin.apply(model, density=0.4, backend="torch") as g:
        got = _decode(model, ids, am, cont)
        experts = [e.clone() for e in g.experts]
        assert g.ffs[0].mode == "shared"
    torch.testing.assert_close(got, _masked_reference(model, ids, am, cont, experts), atol=1e-4, rtol=1e-4)


def test_reset_forgets_prompt_experts_but_keeps_static_ones():
    """``reset()``: the experts chosen from the last prompt are dropped (the next decode step uses the full FF,
    like the dense model), while a static selection (magnitude) keeps its experts (decode = masked dense FF)."""
    model = tiny_lm("llama")
    ids, am = _batch(1, B=1)
    cont = torch.randint(3, VOCAB, (1, 3), generator=torch.Generator().manual_seed(5))
    dense = _decode(model, ids, am, cont)
    with griffin.apply(model, density=0.4, backend="torch") as g:
        out = model(input_ids=ids, attention_mask=am, use_cache=True)
        g.reset()
        full = torch.cat([am, torch.ones_like(cont)], 1)
        got = model(input_ids=cont, attention_mask=full, use_cache=True,
                    **{cache_keyword(model): output_cache(out)}).logits
    torch.testing.assert_close(got, dense, atol=1e-5, rtol=1e-5)
    with griffin.apply(model, density=0.4, selection="magnitude", backend="torch") as g:
        experts = [e.clone() for e in g.experts]
        out = model(input_ids=ids, attention_mask=am, use_cache=True)
        g.reset()
        got = model(input_ids=cont, attention_mask=full, use_cache=True,
                    **{cache_keyword(model): output_cache(out)}).logits
    ref = _masked_reference(model, ids, am, cont, experts)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert (ref - dense).abs().max() > 1e-2


def _relu_active_neurons(model, ids, am):
    """Per layer, the FF neurons (OPT: ReLU) with any non-zero activation on the prompt's real tokens (B = 1)."""
    specs = find_mlps(model)
    act = [None] * len(specs)

    def mk(i):
        def hook(mod, args):
            z = args[0].reshape(-1, args[0].shape[-1])[am.reshape(-1).bool()]
            act[i] = set(torch.nonzero(z.abs().sum(0) > 0).flatten().tolist())
        return hook

    hs = [s.down.register_forward_pre_hook(mk(i)) for i, s in enumerate(specs)]
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am)
    finally:
        for h in hs:
            h.remove()
    return act


@pytest.mark.parametrize("density", [0.2, 0.9])
def test_sample_selection_is_proportional_to_the_score_with_dead_relu_neurons(density):
    """``selection="sample"`` draws k neurons without replacement with probability proportional to the GRIFFIN
    score. OPT's ReLU leaves many neurons exactly 0 on a 2-token prompt (score 0): with k below the number of
    active neurons only active ones are drawn; with k above it, every active neuron is drawn and the rest are
    filled from the dead ones (no error)."""
    model = tiny_lm("opt")
    ids = torch.tensor([[5, 17]])
    am = torch.ones_like(ids)
    active = _relu_active_neurons(model, ids, am)
    d_ff = find_mlps(model)[0].d_ff
    k = round(density * d_ff)
    assert all(0 < len(a) < d_ff for a in active)
    with griffin.apply(model, density=density, selection="sample", seed=2) as g:
        model(input_ids=ids, attention_mask=am, use_cache=True)
        for e, a in zip(g.experts, active):
            chosen = set(e[0].tolist())
            assert len(chosen) == k
            assert chosen <= a if k <= len(a) else a <= chosen
    assert any(k <= len(a) for a in active) if density == 0.2 else all(k > len(a) for a in active)


def test_opt_decode_as_long_as_the_prompt_keeps_the_prompt_experts():
    """OPT flattens tokens to (B*S, d_ff): a decode step whose length equals the prompt's must not be taken for a
    prompt (no new selection from the decode activations); it equals the masked dense FF."""
    model = tiny_lm("opt")
    ids, am = _batch(2, B=1, S=4)
    cont = torch.randint(3, VOCAB, (1, 4), generator=torch.Generator().manual_seed(9))
    with griffin.apply(model, density=0.4, backend="torch") as g:
        out = model(input_ids=ids, attention_mask=am, use_cache=True)
        experts = [e.clone() for e in g.experts]
        full = torch.cat([am, torch.ones_like(cont)], 1)
        got = model(input_ids=cont, attention_mask=full, use_cache=True,
                    **{cache_keyword(model): output_cache(out)}).logits
        assert all(torch.equal(a, b) for a, b in zip(experts, g.experts))
    torch.testing.assert_close(got, _masked_reference(model, ids, am, cont, experts), atol=1e-4, rtol=1e-4)


def test_density_above_one_is_rejected():
    """density is a fraction of the FF neurons, in (0, 1]: 1.0 is accepted, 1.5 (or per layer 1.01) is not."""
    model = tiny_lm("llama")
    griffin.apply(model, density=1.0).detach()
    for kw in (dict(density=1.5), dict(per_layer={0: 1.01})):
        with pytest.raises(LLMEffValueError, match="density"):
            griffin.apply(model, **kw)


def test_decode_with_another_batch_size_says_which_sizes():
    """Per-sequence experts are chosen for the prompt's batch: a decode step with another batch size raises a
    LLMEffValueError that names both sizes (2 selected, 3 in the step) and the way out (reset)."""
    model = tiny_lm("llama")
    ids3, am3 = _batch(2, B=3)
    out3 = model(input_ids=ids3, attention_mask=am3, use_cache=True)       # a batch-3 cache, dense
    ids, am = _batch(1, B=2)
    cont = torch.randint(3, VOCAB, (3, 1), generator=torch.Generator().manual_seed(3))
    with griffin.apply(model, density=0.5, backend="torch") as g:
        model(input_ids=ids, attention_mask=am, use_cache=True)              # experts for a batch of 2
        assert g.ffs[0].mode == "per_seq"
        with pytest.raises(LLMEffValueError, match=r"batch of 2 sequences but the decode step has 3; call \.reset"):
            model(input_ids=cont, attention_mask=torch.cat([am3, torch.ones_like(cont)], 1), use_cache=True,
                  **{cache_keyword(model): output_cache(out3)})
