"""llmeff.bridge: Bridge blocks on a tiny random Llama (CPU, seconds)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_lms import tiny_lm  # noqa: E402

from llmeff import bridge  # noqa: E402
from llmeff.bridge import rl, tasks  # noqa: E402
from llmeff.errors import LLMEffValueError  # noqa: E402


def _model(seed=0):
    m = tiny_lm("llama", seed=seed, layers=2)
    return m.float().eval()


def _randomise(br, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in br.blocks.values():
            b.o.copy_(torch.randn(b.o.shape, generator=g) * scale)


def _batch(B, T, seed=0, pad=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 101, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if pad:
        for r, k in pad.items():
            mask[r, :k] = 0
            ids[r, :k] = 0
    return ids, mask


def _logits(model, ids, mask, n=None):
    pos = bridge.position_ids_from_mask(mask)
    if n is None:
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    with bridge.groups(model, n):
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def test_zero_initialised_bridge_gives_identical_logits():
    m = _model()
    ids, mask = _batch(6, 7, pad={0: 2, 1: 2, 2: 2})        # group 0 (rows 0-2) left-padded
    ref = _logits(m, ids, mask)
    br = bridge.add_blocks(m, rank=8, heads=2)
    assert all(float(b.o.detach().abs().max()) == 0.0 for b in br.blocks.values())
    for n in (1, 2, 3, 6):
        assert torch.equal(_logits(m, ids, mask, n), ref)
    # and the sampled responses are the very same tokens
    out_b = bridge.generate(m, ids[:2, 3:], n=3, max_new_tokens=5, seed=3)
    br.remove()
    out_0 = bridge.generate(m, ids[:2, 3:], n=3, max_new_tokens=5, seed=3)
    assert torch.equal(out_b.responses, out_0.responses)


def test_samples_see_their_group_and_never_another_prompt():
    m = _model()
    br = bridge.add_blocks(m, rank=8, heads=2)
    _randomise(br)
    n, T, t0 = 3, 8, 4
    ids, mask = _batch(2 * n, T, seed=1)
    base = _logits(m, ids, mask, n)
    ids2 = ids.clone()
    ids2[1, t0:] = (ids2[1, t0:] + 7) % 98 + 3                # change sample j=1 of group 0 from position t0 on
    new = _logits(m, ids2, mask, n)
    # sample i=0 of the same group: unchanged before t0 (causal, same position only), changed from t0 on
    assert torch.equal(new[0, :t0], base[0, :t0])
    assert (new[0, t0:] - base[0, t0:]).abs().max() > 1e-3
    assert (new[2, t0:] - base[2, t0:]).abs().max() > 1e-3
    # the other prompt's group (rows 3-5) is bit-identical
    assert torch.equal(new[n:], base[n:])
    # without Bridge, sample 0 does not depend on sample 1 at all
    with br.disabled():
        assert torch.equal(_logits(m, ids2, mask, n)[0], _logits(m, ids, mask, n)[0])
    # nor with group_override=1 (the self-only control), which still changes the logits (blocks act per token)
    br.group_override = 1
    alone = _logits(m, ids, mask, n)
    assert torch.equal(_logits(m, ids2, mask, n)[0], alone[0])
    assert (alone[0] - base[0]).abs().max() > 1e-3


def test_without_groups_the_batch_is_one_group_with_a_warning():
    m = _model()
    br = bridge.add_blocks(m, rank=8, heads=2)
    _randomise(br)
    ids, mask = _batch(4, 5, seed=3)
    with pytest.warns(UserWarning, match="one group"):
        plain = _logits(m, ids, mask)
    assert torch.equal(plain, _logits(m, ids, mask, 4))


def test_padding_and_finished_samples_are_masked():
    m = _model()
    br = bridge.add_blocks(m, rank=8, heads=2)
    _randomise(br)
    ids, mask = _batch(3, 6, seed=2)
    mask[1, 4:] = 0                                         # sample 1 finished after position 3
    base = _logits(m, ids, mask, 3)
    ids2 = ids.clone()
    ids2[1, 4:] = 5                                         # what it holds after finishing does not matter
    new = _logits(m, ids2, mask, 3)
    assert torch.equal(new[0], base[0]) and torch.equal(new[2], base[2])


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_widths_run_and_groups_match_single_prompt_runs(n):
    m = _model()
    br = bridge.add_blocks(m, rank=8, heads=2)
    _randomise(br, scale=0.1)
    prompts = torch.tensor([[0, 0, 11, 12], [21, 22, 23, 24]])
    pm = (prompts != 0).long()
    out = bridge.generate(m, prompts, n=n, attention_mask=pm, max_new_tokens=5, temperature=0, return_logits=True)
    assert out.responses.shape == (2 * n, 5) and out.sequences.shape == (2 * n, 9)
    alone = bridge.generate(m, prompts[1:], n=n, max_new_tokens=5, temperature=0, return_logits=True)
    assert torch.equal(out.responses[n:], alone.responses)
    torch.testing.assert_close(out.logits[n:], alone.logits, atol=1e-5, rtol=1e-5)
    alone0 = bridge.generate(m, prompts[:1, 2:], n=n, max_new_tokens=5, temperature=0, return_logits=True)
    torch.testing.assert_close(out.logits[:n], alone0.logits, atol=1e-5, rtol=1e-5)


def test_cache_on_and_off_agree_and_match_teacher_forcing():
    m = _model()
    br = bridge.add_blocks(m, rank=8, heads=2)
    _randomise(br)
    prompts = torch.tensor([[0, 11, 12], [21, 22, 23]])
    pm = (prompts != 0).long()
    kw = dict(n=4, attention_mask=pm, max_new_tokens=6, temperature=1.0, seed=5, eos_token_id=7, return_logits=True)
    a = bridge.generate(m, prompts, use_cache=True, **kw)
    b = bridge.generate(m, prompts, use_cache=False, **kw)
    assert torch.equal(a.responses, b.responses) and torch.equal(a.response_mask, b.response_mask)
    assert len({tuple(r.tolist()) for r in a.responses[:4]}) > 1      # the group's samples differ
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    # the teacher-forced log-probs used by GRPO equal the generation's
    lp = rl.response_logprobs(m, a, 4)
    ref = torch.log_softmax(a.logits, -1).gather(-1, a.responses[..., None])[..., 0] * a.response_mask
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)


class _HalfReward(tasks.Problem):
    def reward(self, text):            # a reward a random model gets half the time: mixed groups
        return float(len(text) % 2 == 0)


def test_training_leaves_base_weights_bit_identical():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    br = bridge.add_blocks(m, rank=8, heads=2)
    assert all(not p.requires_grad for p in m.parameters())
    params = list(br.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    tok = tasks.CharTokenizer()
    probs = [_HalfReward("mul", f"{a}*{b}=", (a, b)) for a, b in [(12, 34), (56, 78), (91, 23)]]
    for s in range(3):
        st = rl.grpo_step(m, opt, params, tok, probs, n=4, seed=s)
        assert np.isfinite(st["loss"])
    assert any(float(b.o.detach().abs().max()) > 0 for b in br.blocks.values())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    br.remove()
    assert all(p.requires_grad for p in m.parameters())


def test_parameter_share_and_rank_choice():
    m = _model()
    br = bridge.add_blocks(m, heads=2, extra_frac=0.04)
    d = m.config.hidden_size
    b0 = br.blocks["0"]
    assert br.n_params() == len(br.blocks) * (4 * b0.rank * d + d)
    assert 0.02 < br.share() < 0.07
    br.remove()
    br2 = bridge.add_blocks(m, rank=4, heads=2, every=2)
    assert br2.layers == [1]


def test_save_load_roundtrip(tmp_path):
    m = _model()
    br = bridge.add_blocks(m, rank=8, heads=2)
    _randomise(br)
    ids, mask = _batch(4, 5)
    ref = _logits(m, ids, mask, 2)
    bridge.save(br, tmp_path / "b")
    with pytest.raises(LLMEffValueError):
        bridge.save(br, tmp_path / "b")
    br.remove()
    br2 = bridge.load(m, tmp_path / "b")
    assert torch.equal(_logits(m, ids, mask, 2), ref)
    br2.remove()


def test_bad_inputs_raise_named_errors():
    m = _model()
    bridge.add_blocks(m, rank=8, heads=2)
    ids, mask = _batch(4, 5)
    with pytest.raises(LLMEffValueError, match="groups of 3"):
        _logits(m, ids, mask, 3)
    with pytest.raises(LLMEffValueError, match="left-padded"):
        bridge.generate(m, ids[:1], attention_mask=torch.tensor([[1, 1, 1, 1, 0]]), n=2, max_new_tokens=2)
    with pytest.raises(LLMEffValueError, match="already"):
        bridge.add_blocks(m)
    with pytest.raises(LLMEffValueError):
        bridge.add_blocks(_model(), rank=5, heads=2)


# -- tasks and metrics ------------------------------------------------------------------------------------
def test_task_checker_by_hand():
    p = tasks.make_problem("psum", 62)
    assert p.answers() == ["3+59", "19+43", "31+31"]
    assert p.canonical("43+19") == "19+43" and p.reward("59+3") == 1.0
    assert p.reward("1+61") == 0.0 and p.reward("2+60") == 0.0 and p.reward("19+43+0") == 0.0
    q = tasks.make_problem("mul", 37, 48)
    assert q.prompt == "37*48=" and q.answers() == ["1776"]
    assert q.reward("1776") == 1.0 and q.reward("01776") == 0.0 and q.reward("1777") == 0.0
    a = tasks.make_problem("add", 417, 385)
    assert a.prompt == "417+385=" and a.answers() == ["802"] and a.reward("802") == 1.0 and a.reward("0802") == 0.0
    tok = tasks.CharTokenizer()
    assert tok.decode(tok.encode("P62=", bos=True) + tok.encode("3+59", eos=True) + [5, 6]) == "P62=3+59"


def test_training_never_sees_heldout_problems():
    rng = np.random.default_rng(0)
    drawn = tasks.sample_problems(4000, rng)
    assert not any(tasks.is_heldout(p) for p in drawn)
    held = tasks.heldout_problems(64)
    assert all(tasks.is_heldout(p) for p in held)
    assert sum(p.kind == "add" for p in held) == len({p.prompt for p in held if p.kind == "add"}) == 64
    assert sum(p.kind == "psum" for p in held) == 62          # every held-out even target, 1 in 4
    assert {p.kind for p in drawn} == {"add", "psum"}
    assert {p.kind for p in tasks.sample_problems(50, rng, kinds=("mul",))} == {"mul"}
    ids, mask, lm = tasks.sft_batch(tasks.CharTokenizer(), drawn[:5], rng)
    assert ids.shape == mask.shape == lm.shape and bool((mask[:, -1] == 1).all())


def test_set_metrics_by_hand():
    p62 = tasks.make_problem("psum", 62)           # 3 answers
    m = tasks.make_problem("mul", 12, 11)          # 132
    res = tasks.set_metrics([p62, m], [["3+59", "59+3", "19+43", "5+57"], ["131", "131", "132", "133"]])
    assert res["accuracy"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert res["consistency"] == pytest.approx(0.5)
    assert res["pass_at_n"] == 1.0
    assert res["majority"] == pytest.approx(0.5)    # psum: "3+59" twice (correct); mul: "131" (wrong)
    assert res["coverage"] == pytest.approx(2 / 3)  # {3+59, 19+43} of min(4, 3)
    assert res["distinct_correct"] == 2.0
    none = tasks.set_metrics([m], [["1", "2"]])
    assert none["pass_at_n"] == 0.0 and np.isnan(none["consistency"])


def test_load_of_a_mismatched_file_raises_and_leaves_the_model_untouched(tmp_path):
    m = _model()
    br = bridge.add_blocks(m, rank=8, heads=2)
    _randomise(br)
    bridge.save(br, tmp_path / "b")
    br.remove()
    grads = [p.requires_grad for p in m.parameters()]
    import json
    info = json.loads((tmp_path / "b" / "bridge.json").read_text())
    info["rank"] = 4                              # the tensors are rank 8: shapes no longer fit
    (tmp_path / "b" / "bridge.json").write_text(json.dumps(info))
    with pytest.raises(LLMEffValueError, match="shape"):
        bridge.load(m, tmp_path / "b")
    assert [p.requires_grad for p in m.parameters()] == grads
    br2 = bridge.add_blocks(m, rank=8, heads=2)   # no stale blocks left behind
    br2.remove()
