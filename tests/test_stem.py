"""llmeff.stem: STEM FF blocks (token-indexed up projection), conversion, caches, editing, offload, save/load."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")

from llmeff import stem  # noqa: E402
from llmeff.errors import LLMEffValueError, MissingTokenIdsError, UnsupportedModelError  # noqa: E402

V, D, F = 97, 32, 48


def _llama(seed=0, layers=2, tie=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _stem(seed=0, layers=2, std=1.0):
    m = _llama(seed, layers)
    stem.convert(m, seed=seed, std=std)
    with torch.no_grad():                  # wider than HF's 0.02 init so tokens differ visibly
        for n, p in m.named_parameters():
            if p.ndim >= 2 and "up_embed" not in n:
                p.normal_(0, 0.2)
    return m


def test_stem_block_equation_and_shapes():
    torch.manual_seed(0)
    blk = stem.STEMMLP(D, F, V, torch.nn.SiLU())
    x = torch.randn(3, 5, D, dtype=torch.float64)
    ids = torch.randint(0, V, (3, 5))
    blk = blk.double()
    y = blk(x, token_ids=ids)
    assert y.shape == (3, 5, D)
    # independent reference: explicit loops over tokens in float64
    Wg, Wd, E = blk.gate_proj.weight, blk.down_proj.weight, blk.up_embed.weight
    for b in range(3):
        for s in range(5):
            g = Wg @ x[b, s]
            h = g / (1 + torch.exp(-g)) * E[ids[b, s]]
            torch.testing.assert_close(y[b, s], Wd @ h, rtol=1e-12, atol=1e-12)
    with pytest.raises(MissingTokenIdsError, match="without token ids"):
        blk(x)
    with pytest.raises(MissingTokenIdsError, match="do not match"):
        blk(x, token_ids=ids[:, :4])


def test_convert_leaves_no_dense_up_projection():
    m = _llama()
    n_before = sum(p.numel() for p in m.parameters())
    stem.convert(m)
    for layer in m.model.layers:
        assert isinstance(layer.mlp, stem.STEMMLP)
        assert not hasattr(layer.mlp, "up_proj")
        assert not any(isinstance(mod, torch.nn.Linear) and mod.out_features == F and mod is not layer.mlp.gate_proj
                       for mod in layer.mlp.modules())
        assert tuple(layer.mlp.up_embed.weight.shape) == (V, F)
    assert not any("up_proj" in n for n, _ in m.named_parameters())
    n_after = sum(p.numel() for p in m.parameters())
    assert n_after - n_before == 2 * (V * F - D * F)
    assert m.config.stem["layers"] == [0, 1]
    out = m(input_ids=torch.randint(0, V, (2, 6))).logits
    assert out.shape == (2, 6, V) and torch.isfinite(out).all()
    with pytest.raises(MissingTokenIdsError):
        m(inputs_embeds=torch.randn(1, 4, D))
    with pytest.raises(LLMEffValueError, match="already"):
        stem.convert(m)


def test_convert_rejects_unsupported_ff():
    from transformers import GPT2Config, GPT2LMHeadModel

    g = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    with pytest.raises(UnsupportedModelError, match="up_proj"):
        stem.convert(g)


def test_convert_from_trained_dense_uses_conditional_means():
    m = _llama(layers=1)
    ids = torch.randint(3, V, (11, 10))               # more than one calibration batch of 8 sequences
    ref = m.model.layers[0].mlp
    up_w = ref.up_proj.weight.detach().clone()
    captured = {}
    h = ref.register_forward_pre_hook(lambda mod, a: captured.setdefault("x", a[0].detach().clone()))
    m(input_ids=ids)
    h.remove()
    stem.convert(m, init="dense", calibration_ids=ids)
    E = m.model.layers[0].mlp.up_embed.weight.detach()
    u = (captured["x"].reshape(-1, D).double() @ up_w.double().T)
    flat = ids.reshape(-1)
    for v in flat.unique()[:5]:
        torch.testing.assert_close(E[v].double(), u[flat == v].mean(0), rtol=1e-5, atol=1e-6)
    unseen = next(v for v in range(V) if v not in set(flat.tolist()))
    torch.testing.assert_close(E[unseen].double(), u.mean(0), rtol=1e-5, atol=1e-6)


def test_stem_model_trains_loss_falls():
    torch.manual_seed(0)
    m = _llama(layers=2)
    stem.convert(m)
    m.train()
    # toy corpus: a fixed repeating pattern of 12 tokens, random windows
    pattern = torch.tensor([5, 9, 13, 17, 21, 9, 30, 44, 5, 61, 70, 88])
    stream = pattern.repeat(40)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        st = torch.randint(0, len(stream) - 17, (8,), generator=g)
        x = torch.stack([stream[s:s + 17] for s in st])
        logits = m(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert m.model.layers[0].mlp.up_embed.weight.grad is not None
    assert losses[0] > math.log(V) - 1.0
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0]


def test_generate_with_and_without_cache_and_left_padding():
    m = _stem()
    torch.manual_seed(1)
    ids = torch.randint(3, V, (2, 7))
    kw = dict(max_new_tokens=8, do_sample=False)
    a = m.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kw)
    b = m.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kw)
    assert torch.equal(a, b)
    assert len(set(a[0, 7:].tolist())) > 1                  # the test model does not just repeat a token
    # left padding: the short prompt padded on the left generates what it generates alone
    short = ids[1:, 3:]
    alone = m.generate(short, attention_mask=torch.ones_like(short), **kw)[:, 4:]
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)
    batch = torch.cat([ids[:1], padded], 0)
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    out = m.generate(batch, attention_mask=mask, **kw)
    assert torch.equal(out[1, 7:], alone[0])
    assert torch.equal(out[0, 7:], a[0, 7:])


def test_edited_rows_change_only_the_edited_tokens_predictions():
    m = _stem()
    a_tok, b_tok = 11, 23
    torch.manual_seed(2)
    clean = torch.randint(30, V, (4, 9))                   # never contains tokens 11 or 23
    with_a = clean.clone()
    with_a[:, 4] = a_tok
    before_clean, before_a = m(input_ids=clean).logits, m(input_ids=with_a).logits
    stem.swap_rows(m, a_tok, b_tok)
    after_clean, after_a = m(input_ids=clean).logits, m(input_ids=with_a).logits
    assert torch.equal(before_clean, after_clean)                      # bit-identical: rows never read
    assert torch.equal(before_a[:, :4], after_a[:, :4])               # positions before the edited token
    assert (before_a[:, 4:] - after_a[:, 4:]).abs().max() > 1e-3       # the edited token and after change
    # swapping rows makes token a compute exactly what b computed at layer level: token b's FF rows
    x = torch.randn(1, 1, D)
    blk = m.model.layers[0].mlp
    with torch.no_grad():
        torch.testing.assert_close(blk(x, token_ids=torch.tensor([[a_tok]])), (
            blk.down_proj(blk.act_fn(blk.gate_proj(x)) * stem.stem_modules(m)[0].up_embed.weight[a_tok])))
    stem.swap_rows(m, a_tok, b_tok)
    assert torch.equal(m(input_ids=with_a).logits, before_a)           # swapping back restores exactly
    # editing one layer only touches that layer's table
    w1 = m.model.layers[1].mlp.up_embed.weight.detach().clone()
    stem.copy_rows(m, b_tok, a_tok, layers=[0])
    assert torch.equal(m.model.layers[1].mlp.up_embed.weight, w1)
    assert torch.equal(m.model.layers[0].mlp.up_embed.weight[a_tok], m.model.layers[0].mlp.up_embed.weight[b_tok])


def test_offload_cpu_path_gives_identical_logits_and_tokens():
    m = _stem()
    ids = torch.randint(3, V, (2, 6))
    ref = m(input_ids=ids).logits
    gen = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    tables = [x.up_embed.weight.detach().clone() for x in stem.stem_modules(m)]
    with stem.offload(m, pin=False) as off:
        assert off.buffer.shape == (V, 2, F)
        assert torch.equal(m(input_ids=ids).logits, ref)
        assert torch.equal(m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False),
                           gen)
        stem.swap_rows(m, 5, 6)                            # edits reach the offloaded buffer
        assert torch.equal(off.buffer[5, 0], tables[0][6])
        stem.swap_rows(m, 5, 6)
    for x, t in zip(stem.stem_modules(m), tables):
        assert torch.equal(x.up_embed.weight, t)
    assert torch.equal(m(input_ids=ids).logits, ref)
    # the kernel-side gather needs CUDA: asking for it on a CPU model fails and leaves the tables in place
    with pytest.raises(LLMEffValueError, match="device"):
        stem.offload(m, pin=False, mode="device")
    assert all(x.up_embed.weight.requires_grad for x in stem.stem_modules(m))
    assert torch.equal(m(input_ids=ids).logits, ref)


@pytest.mark.gpu
def test_offloaded_tables_bit_identical_on_gpu():
    m = _stem().to("cuda")
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (3, 11), generator=g).cuda()
    ref = m(input_ids=ids).logits
    gen = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    one = ids[:1]
    gen1 = m.generate(one, attention_mask=torch.ones_like(one), max_new_tokens=12, do_sample=False)
    with torch.no_grad():
        ref_ng = m(input_ids=ids).logits                  # no grad: the fused Triton gather
    for mode in ("device", "host"):
        with stem.offload(m, mode=mode) as off:
            assert off.mode == mode
            assert off.buffer.device.type == "cpu" and off.buffer.is_pinned()
            assert all(x.up_embed.weight.device.type == "cpu" for x in stem.stem_modules(m))
            assert torch.equal(m(input_ids=ids).logits, ref)
            with torch.no_grad():
                assert torch.equal(m(input_ids=ids).logits, ref_ng)
            assert torch.equal(m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                          do_sample=False), gen)
            assert torch.equal(m.generate(one, attention_mask=torch.ones_like(one), max_new_tokens=12,
                                          do_sample=False), gen1)
        assert all(x.up_embed.weight.is_cuda for x in stem.stem_modules(m))
        assert torch.equal(m(input_ids=ids).logits, ref)


def test_save_load_round_trip(tmp_path):
    m = _stem()
    ids = torch.randint(3, V, (2, 6))
    ref = m(input_ids=ids).logits
    p = stem.save_pretrained(m, tmp_path / "s")
    with pytest.raises(FileExistsError):
        stem.save_pretrained(m, tmp_path / "s")
    m2 = stem.load(p)
    assert stem.is_stem(m2) and len(stem.stem_modules(m2)) == 2
    for a, b in zip(m.state_dict().items(), m2.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert torch.equal(m2(input_ids=ids).logits, ref)
    assert m2.lm_head.weight.data_ptr() == m2.model.embed_tokens.weight.data_ptr()   # still tied
    with pytest.raises(LLMEffValueError, match="dense model"):
        d = _llama()
        d.save_pretrained(tmp_path / "dense")
        stem.load(tmp_path / "dense")


def test_angular_spread_and_cost():
    e = torch.eye(4)
    r = stem.angular_spread(e)
    assert r["mean_cos"] == pytest.approx(0.0) and r["mean_angle_deg"] == pytest.approx(90.0)
    same = torch.ones(5, 3)
    assert stem.angular_spread(same)["mean_abs_cos"] == pytest.approx(1.0)
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # pairs: 45 deg, 90 deg, 45 deg -> mean cos (2 * sqrt(.5) + 0) / 3
    assert stem.angular_spread(v)["mean_cos"] == pytest.approx(2 * math.sqrt(0.5) / 3)
    dc, sc = stem.ff_cost(256, 1024, "dense"), stem.ff_cost(256, 1024, "stem")
    assert dc["flops"] == 6 * 256 * 1024 + 1024 and sc["flops"] == 4 * 256 * 1024 + 1024
    assert dc["bytes"] == 3 * 256 * 1024 * 2 and sc["bytes"] == (2 * 256 * 1024 + 1024) * 2


@pytest.mark.slow
def test_train_small_lm_stem_and_dense_share_data_and_steps(tmp_path):
    import json

    from llmeff.lm.train_small_lm import main

    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(30):
        (lib / f"m{i}.py").write_text(f'"""Module {i}."""\n' + f"def f{i}(x):\n    return x + {i}\n" * 20)
    data = tmp_path / "data"
    common = ["--smoke", "--stdlib", str(lib), "--man", "", "--site", "", "--max-site-mb", "0", "--steps", "3",
              "--data", str(data)]
    assert main(["--out", str(tmp_path / "s"), "--arch", "stem", *common]) == 0
    tok_bytes = (data / "tokenizer.json").read_bytes()
    assert main(["--out", str(tmp_path / "d"), "--arch", "dense", *common]) == 0
    assert (data / "tokenizer.json").read_bytes() == tok_bytes          # the second run reused the data
    rs = json.loads((tmp_path / "s" / "config.json").read_text())
    rd = json.loads((tmp_path / "d" / "config.json").read_text())
    assert rs["stem"]["layers"] == [0, 1] and "stem" not in rd
    assert rs["llmeff_train"]["steps"] == rd["llmeff_train"]["steps"] == 3
    assert rs["llmeff_train"]["tokens"] == rd["llmeff_train"]["tokens"]
    m = stem.load(tmp_path / "s")
    assert len(stem.stem_modules(m)) == 2
    ids = torch.randint(0, m.config.vocab_size, (1, 5))
    assert torch.isfinite(m(input_ids=ids).logits).all()
